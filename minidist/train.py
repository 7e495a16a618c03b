"""``python -m minidist.train --config CONFIG.json [--world-size N] [--report REPORT.json]``

Trains the tiny GPT with a DeepSpeed-style config. Under ``mpirun -n N`` the world is MPI's;
otherwise ``--world-size`` in-process ranks (default 1). Every rank validates the config
before any message is sent, so a bad config fails the same way everywhere and never
hangs. Rank 0 gathers every rank's report and writes it.
"""
from __future__ import annotations

import argparse
import json
import sys

from . import distributed as dist
from .training.config import ConfigError, data_config, load_config
from .training.data import make_dataset
from .device import export_chrome_trace
from .distill.runner import distill_rank
from ._malloc import tune_malloc
from .report import (build_distill_report, build_report, distill_rank_report, format_data_parallel,
                     format_distillation, rank_report, write_report)
from .training.trainer import Trainer

def run(config, comm=None, progress=True):
    """Train on this rank; returns (trainer, rank_report)."""
    trainer = Trainer(config, comm)
    trainer.fit(progress=progress)
    return trainer, rank_report(trainer)


def _rank_main(comm, config, progress, trace_path=None):
    trainer, rr = run(config, comm, progress)
    # why: rank 0 writes the report (and the trace) of the whole job
    ranks = dist.gather_object(comm, rr)
    traces = dist.gather_object(comm, trainer.device.trace.events) if trace_path else None
    if ranks is None:
        return trainer, None
    if trace_path:
        export_chrome_trace(traces, trace_path)
    return trainer, build_report(trainer, ranks)


def _distill_rank_main(comm, config, progress):
    run = distill_rank(comm, config, progress)
    # why: rank 0 (it holds the teacher) writes the report of the whole job
    ranks = dist.gather_object(comm, distill_rank_report(run))
    return None if ranks is None else build_distill_report(run, ranks)


def _distill_main(config, args, mpi, device) -> int:
    """A config with a ``distillation`` section: teacher, then student (minidist.distill)."""
    if args.trace:
        print("note: --trace is not written for distillation runs", file=sys.stderr)
    if mpi:
        report = dist.run_main(_distill_rank_main, config, not args.quiet, device=device)
    elif args.world_size == 1:
        report = _distill_rank_main(None, config, not args.quiet)
    else:
        report = dist.spawn(_distill_rank_main, args.world_size, config, not args.quiet, device=device)[0]
    if report is None:                                       # not rank 0
        return 0
    print(f"done: teacher then student on {report['world_size']} rank(s), student final loss "
          f"{report['steps'][-1]['loss']:.4f}")
    print(format_distillation(report))
    if args.report:
        write_report(report, args.report)
        print(f"report written to {args.report}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minidist.train", description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="DeepSpeed-style JSON config file (default: all defaults)")
    ap.add_argument("--world-size", type=int, default=1, help="in-process ranks when not under mpirun")
    ap.add_argument("--report", help="write the JSON report here")
    ap.add_argument("--trace", help="write every rank's simulated timeline here (Chrome/Perfetto JSON)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if args.world_size < 1:
        ap.error(f"--world-size must be >= 1, got {args.world_size}")
    tune_malloc()  # a command owns its process: it may retune malloc; import minidist must not
    mpi = dist.is_mpi_launch()
    world = None
    if mpi:
        from mpi4py import MPI
        world = MPI.COMM_WORLD.Get_size()
    try:
        config = json.load(open(args.config)) if args.config else {}
        cfg = load_config(config, world or args.world_size)    # fail fast, on every rank, before any message
        make_dataset(data_config(cfg))
    except (ConfigError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg["distillation"] is not None:
        return _distill_main(config, args, mpi, cfg["device"])
    if mpi:
        result = dist.run_main(_rank_main, config, not args.quiet, args.trace, device=cfg["device"])
    elif args.world_size == 1:
        trainer, rr = run(config, None, progress=not args.quiet)
        if args.trace:
            export_chrome_trace([trainer.device.trace.events], args.trace)
        result = (trainer, build_report(trainer, [rr]))
    else:
        result = dist.spawn(_rank_main, args.world_size, config, not args.quiet, args.trace,
                            device=cfg["device"])[0]
    trainer, report = result
    if report is None:                                       # not rank 0
        return 0
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
        write_report(report, args.report)
        print(f"report written to {args.report}")
    if args.trace:
        print(f"trace of {report['world_size']} rank(s) written to {args.trace} (open it in https://ui.perfetto.dev)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
