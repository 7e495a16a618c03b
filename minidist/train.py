"""``python -m minidist.train --config CONFIG.json [--world-size N] [--report REPORT.json]``

Trains the tiny GPT with a DeepSpeed-style config. Under ``mpirun -n N`` the world is MPI's;
otherwise ``--world-size`` in-process ranks (default 1). Every rank validates the config
before any message is sent, so a bad config fails the same way everywhere and never
hangs. Rank 0 gathers every rank's report and writes it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import distributed as dist
from .training.composition import support_matrix
from .training.config import ConfigError, data_config, load_config
from .training.config_distillation import student_world
from .training.data import make_dataset
from .device import export_chrome_trace
from .estimate import estimate
from .memory import OutOfMemoryError
from .precision.loss_scaler import LossScaleAtMinimumError
from .distill.runner import distill_rank
from .distill.resume import check_resume, nothing_to_train, read_distill_checkpoint
from .distill.teacher import read_teacher
from ._malloc import tune_process
from .demo.threads import single_threaded_blas
from .report import (build_distill_report, build_report, distill_rank_report, format_data_parallel,
                     format_distillation, rank_report, write_report)
from .training.trainer import Trainer, TrainingDivergedError
from .checkpoint import CheckpointError, check_compatible, load_into, load_weights, read_checkpoint, saver
from .peft.trainer import PeftTrainer, pretrained_weights

def run(config, comm=None, progress=True, save=None, save_interval=0, loaded=None, weights_only=False):
    """Train on this rank; returns (trainer, rank_report). ``loaded``: a checkpoint already
    read and verified (:func:`minidist.checkpoint.read_checkpoint`) to continue from — or,
    with ``weights_only``, whose weights start a new run (DeepSpeed's ``load_module_only``);
    ``save``/``save_interval``: where and how often to checkpoint (Megatron's flags). A config
    with a ``peft`` section fine-tunes (:class:`~minidist.peft.trainer.PeftTrainer`): the
    checkpoint's weights are loaded before the method freezes them and adds its own."""
    if isinstance(config, (str, os.PathLike)):      # a path, as Trainer takes one
        config = _read_config(config)
    if (config or {}).get("peft") is not None:      # fine-tuning: the base's weights go in before the method
        trainer = PeftTrainer(config, comm, pretrained=pretrained_weights(loaded) if loaded is not None else None)
    else:
        trainer = Trainer(config, comm)
        if loaded is not None:
            (load_weights if weights_only else load_into)(trainer, loaded)
    trainer.fit(progress=progress, on_step=saver(save, save_interval) if save else None)
    return trainer, rank_report(trainer)


def _rank_main(comm, config, progress, trace_path=None, ckpt=None):
    trainer, rr = run(config, comm, progress, **(ckpt or {}))
    # why: rank 0 writes the report (and the trace) of the whole job
    ranks = dist.gather_object(comm, rr)
    traces = dist.gather_object(comm, trainer.device.trace.events) if trace_path else None
    if ranks is None:
        return trainer, None
    if trace_path:
        export_chrome_trace(traces, trace_path)
    return trainer, build_report(trainer, ranks)


def _distill_rank_main(comm, config, progress, ckpt=None):
    run = distill_rank(comm, config, progress, **(ckpt or {}))
    # why: rank 0 (it holds the teacher) writes the report of the whole job
    ranks = dist.gather_object(comm, distill_rank_report(run))
    return None if ranks is None else build_distill_report(run, ranks)


def _distill_main(config, args, mpi, device, ckpt) -> int:
    """A config with a ``distillation`` section: teacher, then student (minidist.distill);
    ``ckpt``: --save/--load, as :mod:`minidist.distill.resume` reads them."""
    if args.trace:
        print("note: --trace is not written for distillation runs", file=sys.stderr)
    if mpi:
        report = dist.run_main(_distill_rank_main, config, not args.quiet, ckpt, device=device)
    elif args.world_size == 1:
        report = _distill_rank_main(None, config, not args.quiet, ckpt)
    else:
        report = dist.spawn(_distill_rank_main, args.world_size, config, not args.quiet, ckpt, device=device)[0]
    if report is None:                                       # not rank 0
        return 0
    if args.report:                  # written before anything is printed: a reader gone (| head) loses no file
        write_report(report, args.report)
    print(f"done: teacher then student on {report['world_size']} rank(s), student final loss "
          f"{report['steps'][-1]['loss']:.4f}")
    print(format_distillation(report))
    if args.report:
        print(f"report written to {args.report}")
    return 0


class UsageError(ValueError):
    """A command-line argument is wrong; the message names it and says what to give instead."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"argument {flag}: {message}")


def _read_config(path):
    """The JSON object in ``path`` ({} without one); errors name the file and the place."""
    if not path:
        return {}
    try:
        with open(path) as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise UsageError("--config", f"{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}; "
                                      f"fix the file (JSON needs double quotes and no trailing commas)") from None
    except UnicodeDecodeError:
        raise UsageError("--config", f"{path} is not a text file; give a JSON config") from None
    except OSError as e:
        raise UsageError("--config", f"cannot read {path}: {e.strerror}; give an existing JSON file") from None
    if not isinstance(config, dict):      # null or a string would be read as "no config" or as a path
        raise ConfigError("<root>", f"the config must be a JSON object, got {type(config).__name__} "
                                    f"{str(config)[:60]!r} in {path}")
    return config


def _check_output(flag: str, path) -> None:
    """An output file's folder must exist now, not after the whole run."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(flag, f"{path} is a folder; give a file name such as {os.path.join(path, 'out.json')}")
    if not os.path.isdir(folder):
        raise UsageError(flag, f"the folder {folder} does not exist; create it first or choose another path")
    if not os.access(folder, os.W_OK):
        raise UsageError(flag, f"the folder {folder} is not writable; choose another path")


def available_memory() -> int | None:
    """Bytes of memory this machine can still give (Linux's MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _check_memory(cfg, world: int) -> None:
    """In-process ranks share this machine's memory: refuse a world that cannot fit, from
    the analytic per-rank estimate (model states + activations, :mod:`minidist.estimate`) plus the data and
    the interpreter's own bookkeeping (about 2× the estimate + 4 MiB, measured), plus the
    trace and memory timeline every step appends to (about 48 KiB per step, measured)."""
    students = student_world(cfg, world)       # distillation's teacher ranks: the student's layout is on the rest
    per_rank = 2 * estimate(cfg, students)["memory_per_device"] + 4 * 2**20 + cfg["steps"] * 48 * 2**10
    free = available_memory()
    if free is not None and world * per_rank > free:
        raise UsageError("--world-size", f"{world} in-process rank(s) of this config need about "
                                         f"{world * per_rank / 2**30:.1f} GiB ({per_rank / 2**20:.0f} MiB each: model "
                                         f"states and activations) but {free / 2**30:.1f} GiB are free; use fewer "
                                         f"ranks, a smaller model or a smaller train_micro_batch_size_per_gpu")
    if world > 64:
        print(f"note: {world} in-process ranks are {world} threads sharing {os.cpu_count()} core(s); every step "
              f"will be slow", file=sys.stderr)


def _note_unused(config: dict, cfg: dict, dataset=None) -> None:
    """Say which keys the user set that this layout (or this dataset) does not use (rank 0 only)."""
    par, given = cfg["parallel"], config.get("parallel") or {}
    unused = [(k, why) for k, why in (("make_vocab_size_divisible_by", "pads the vocabulary only under "
                                       "parallel.tensor > 1"),
                                      ("schedule", "only a pipeline (parallel.pipeline > 1) runs a schedule"),
                                      ("virtual_stages", "only a pipeline (parallel.pipeline > 1) has stages"))
              if k in given and (par["tensor"] == 1 if k == "make_vocab_size_divisible_by" else par["pipeline"] == 1)]
    notes = [f"parallel.{key} has no effect here: {why}" for key, why in unused]
    if "auto_cast" in (config.get("fp16") or {}):
        notes.append("fp16.auto_cast has no effect here: an fp16 run already rounds every op's inputs and "
                     "outputs to fp16 (minidist.autocast), whatever the key says")
    given_seq = (config.get("data") or {}).get("seq_len")
    if dataset is not None and given_seq is not None and given_seq != dataset.seq_len:
        notes.append(f"data.seq_len {given_seq} has no effect here: the {cfg['data']['dataset']!r} task's "
                     f"sequences are {dataset.seq_len} tokens long (its n_digits sets them)")
    if dist.launch_rank() == 0:
        for note in notes:
            print(f"note: {note}", file=sys.stderr)


def _checkpoint_args(args, cfg) -> dict:
    """--save/--save-interval/--load, checked (and the checkpoint read and verified) before
    any rank starts, so that every rank fails the same way."""
    if args.save_interval < 0:
        raise UsageError("--save-interval", f"must be >= 0 steps (0: only after the last step), got {args.save_interval}")
    if args.save_interval and not args.save:
        raise UsageError("--save-interval", "needs --save DIR to say where the checkpoints go")
    if args.save:
        if os.path.exists(args.save) and not os.path.isdir(args.save):
            raise UsageError("--save", f"{args.save} is a file; give a folder for the checkpoints")
        try:
            os.makedirs(args.save, exist_ok=True)
        except OSError as e:
            raise UsageError("--save", f"cannot create {args.save}: {e.strerror}; choose a writable folder") from None
    if args.load_weights_only and not args.load:
        raise UsageError("--load-weights-only", "needs --load DIR: the checkpoint whose weights start this run")
    loaded = None
    if args.load and cfg["distillation"] is not None:   # a save point of teacher then student (minidist.distill)
        loaded = read_distill_checkpoint(args.load)
        check_resume(loaded, cfg, args.world_size, weights_only=args.load_weights_only)
        note = None if args.load_weights_only else nothing_to_train(loaded, cfg)
        if note and dist.launch_rank() == 0:
            print(note, file=sys.stderr)
    elif args.load:
        loaded = read_checkpoint(args.load)
        check_compatible(loaded, cfg, args.world_size, weights_only=args.load_weights_only)
        if not args.load_weights_only and loaded.step == cfg["steps"] and dist.launch_rank() == 0:
            print(f"note: {loaded.step_dir} is at step {loaded.step} = this run's steps: nothing to train; "
                  f"evaluating it (raise 'steps' to train on)", file=sys.stderr)
    return {"save": args.save, "save_interval": args.save_interval, "loaded": loaded,
            "weights_only": args.load_weights_only}


# what a run stops with when the input or the training is at fault: the message says it all
RUN_ERRORS = (ConfigError, CheckpointError, TrainingDivergedError, LossScaleAtMinimumError, OutOfMemoryError,
              dist.CommError)


def _launch(config, cfg, args, mpi, ckpt):
    """Run every rank: under mpirun, as N in-process threads, or as one rank."""
    if mpi:
        return dist.run_main(_rank_main, config, not args.quiet, args.trace, ckpt, device=cfg["device"])
    if args.world_size == 1:
        trainer, rr = run(config, None, not args.quiet, **ckpt)
        if args.trace:
            export_chrome_trace([trainer.device.trace.events], args.trace)
        return trainer, build_report(trainer, [rr])
    return dist.spawn(_rank_main, args.world_size, config, not args.quiet, args.trace, ckpt,
                      device=cfg["device"])[0]


def _startup_errors(problems: list) -> str:
    """The start-up checks' errors of every rank (None: the rank's checks passed), said once:
    plainly when every rank found the same, else naming the ranks of each."""
    said = {}
    for rank, p in enumerate(problems):
        said.setdefault(p, []).append(rank)
    if len(said) == 1:
        return f"error: {problems[0]}"
    return "\n".join(f"error on rank(s) {', '.join(map(str, ranks))} of {len(problems)}: {p}"
                     for p, ranks in said.items() if p is not None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minidist.train", description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="DeepSpeed-style JSON config file (default: all defaults)")
    ap.add_argument("--world-size", type=int, default=None, help="in-process ranks when not under mpirun (default 1)")
    ap.add_argument("--report", help="write the JSON report here")
    ap.add_argument("--trace", help="write every rank's simulated timeline here (Chrome/Perfetto JSON)")
    ap.add_argument("--save", metavar="DIR", help="write checkpoints into DIR (Megatron-LM's --save)")
    ap.add_argument("--save-interval", type=int, default=0, metavar="N",
                    help="a checkpoint every N steps (default: only after the last step)")
    ap.add_argument("--load", metavar="DIR", help="continue from DIR's latest checkpoint (any world size or ZeRO stage)")
    ap.add_argument("--load-weights-only", action="store_true",
                    help="with --load: start a new run from the checkpoint's weights only (DeepSpeed's "
                         "load_module_only): step 0, fresh optimizer; the config may change all but the model")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--support-matrix", action="store_true",
                    help="print which features compose (minidist/training/composition.py) and exit")
    args = ap.parse_args(argv)
    if args.support_matrix:
        print(support_matrix())
        return 0
    if args.world_size is not None and args.world_size < 1:
        ap.error(f"--world-size must be >= 1, got {args.world_size}")
    tune_process()  # a command owns its process: it may retune malloc and the GC; import minidist must not
    mpi = dist.is_mpi_launch()
    world = None
    if mpi:
        from mpi4py import MPI   # here, not at the top: importing mpi4py initialises MPI, wanted only under mpirun
        world = MPI.COMM_WORLD.Get_size()
        if args.world_size not in (None, world):
            if dist.launch_rank() == 0:         # every rank sees the same conflict: one of them says it
                ap.error(f"--world-size {args.world_size} but mpirun started {world} processes: under mpirun the "
                         f"world is MPI's; drop --world-size or use mpirun -n {args.world_size}")
            return 2
    args.world_size = world or args.world_size or 1
    if args.world_size > 1:   # ranks share the cores: BLAS threads inside each would spin against them
        single_threaded_blas()
    try:
        config = _read_config(args.config)
        cfg = load_config(config, args.world_size)    # fail fast, on every rank, before any message
        dataset = make_dataset(data_config(cfg))
        make_dataset(data_config(cfg), split="val")     # a val split too short for seq_len: said before launch
        _check_output("--report", args.report)
        _check_output("--trace", args.trace)
        if not mpi:
            _check_memory(cfg, args.world_size)
        if cfg["peft"] is not None and (args.save or (args.load and not args.load_weights_only)):
            flag = "--save" if args.save else "--load"
            raise UsageError(flag, "a fine-tuning run (peft section) starts from --load DIR --load-weights-only and "
                                   "does not write or resume checkpoints here; drop " + flag)
        ckpt = _checkpoint_args(args, cfg)
        _note_unused(config, cfg, dataset)
        if (cfg["distillation"] or {}).get("teacher", {}).get("load"):
            read_teacher(cfg)                   # a missing or damaged teacher checkpoint: refused before launch
    except (ConfigError, UsageError, CheckpointError, ValueError, OSError) as e:
        problem = e
    else:
        problem = None
    if mpi:
        # the checks ran on every rank, and a rank may fail alone (a file its node lacks): agree
        # first, so that no rank goes on into the run's collectives and waits for one that left
        problems = MPI.COMM_WORLD.allgather(None if problem is None else str(problem))
        if any(p is not None for p in problems):
            if dist.launch_rank() == 0:
                print(_startup_errors(problems), file=sys.stderr, flush=True)
            return 2
    elif problem is not None:
        print(f"error: {problem}", file=sys.stderr, flush=True)
        return 2
    if cfg["distillation"] is not None:
        try:
            return _distill_main(config, args, mpi, cfg["device"], ckpt)
        except RUN_ERRORS as e:                 # the run stopped with a clear message: no traceback
            print(f"error: {e}", file=sys.stderr)
            return 1
    try:
        result = _launch(config, cfg, args, mpi, ckpt)
    except RUN_ERRORS as e:                     # the run stopped with a clear message: no traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    trainer, report = result
    if report is None:                                       # not rank 0
        return 0
    if args.report:                  # written before anything is printed: a reader gone (| head) loses no file
        write_report(report, args.report)
    rr = report["ranks"][0]
    fin = report["final"]
    line = ", ".join(f"{k} {v:.4f}" for k, v in fin.items())
    print(f"done: {trainer.cfg['steps']} steps on {report['world_size']} rank(s), final loss "
          f"{trainer.history[-1]['loss']:.4f}, {line}, peak memory {rr['memory']['peak_bytes'] / 2**20:.2f} MiB "
          f"(rank 0), simulated {rr['sim_time'] * 1e3:.3f} ms")
    if trainer.precision is not None:
        skipped = sum(h["skipped"] for h in trainer.history)
        print(f"mixed precision: {trainer.precision.dtype}, loss scale {trainer.history[-1]['loss_scale']:g} "
              f"at the last step, {skipped} of {len(trainer.history)} steps skipped on overflow")
    print(format_data_parallel(report))
    if args.report:
        print(f"report written to {args.report}")
    if args.trace:
        print(f"trace of {report['world_size']} rank(s) written to {args.trace} (open it in https://ui.perfetto.dev)")
    return 0


def quiet_broken_pipe(entry):
    """Run ``entry()``; a reader that closed the pipe (``… | head -1``) ends it quietly, as
    the Python documentation recommends for command-line tools."""
    try:
        status = entry()
        sys.stdout.flush()                                # here, not at exit: a closed pipe is caught below
        return status
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())             # no second error when Python flushes stdout
        return 0


if __name__ == "__main__":
    sys.exit(quiet_broken_pipe(main))
