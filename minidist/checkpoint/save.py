"""Saving: every rank writes its own shard, rank 0 the manifest, then ``latest``.

Megatron-LM's ``--save DIR --save-interval N``: after every N-th optimizer step, every rank
calls :func:`save_checkpoint` (a collective, like DeepSpeed's ``engine.save_checkpoint``):

1. each rank writes ``step_XXXXXXXX/rank_RRRRR.npz`` (atomically, :mod:`.format`) with
   what it holds (:func:`minidist.checkpoint.layout.fragments`: parameters, fp32 masters,
   optimizer moments — never gradients, they are rebuilt by the next backward) and its
   metadata: the optimizer step counts, the loss scaler, the dropout RNGs, the data
   position (the next step: a batch is a pure function of ``(seed, step)``), its loss
   history and its simulated clock;
2. the ranks tell rank 0 their file's size and SHA-256 — on the control channel
   (:meth:`~minidist.distributed.comm.Communicator.exchange_objects`: bookkeeping, not
   training traffic, so it is neither logged nor on the simulated clock);
3. rank 0 writes ``manifest.json``, then ``latest``; a last exchange makes every rank wait
   for it, so when ``save_checkpoint`` returns anywhere the checkpoint is complete.
"""
from __future__ import annotations

import os

from ..nn import Dropout
from .format import (FORMAT, FORMAT_VERSION, LATEST, MANIFEST, encode_shard, manifest_checksum, sha256,
                     shard_filename, step_dirname, write_atomic, write_json_atomic)
from ..parallel.grid import GridShape
from .layout import fragments
from .model_parallel import full_shapes, placement_of


def layout_of(trainer) -> dict:
    """The world layout a checkpoint records: strategy, ZeRO stage, precision and grid."""
    s = trainer.strategy
    n = trainer.world_size
    shape = GridShape(n, trainer.cfg["parallel"]["tensor"], trainer.cfg["parallel"]["pipeline"])
    return {"strategy": s.name, "zero_stage": s.stage, "offload": bool(s.offload),
            "precision": trainer.precision.dtype if trainer.precision is not None else trainer.cfg["dtype"],
            "world_size": n, "grid": {"dp": shape.dp, "tp": shape.tp, "pp": shape.pp},
            "ranks": [{"rank": r, "coords": shape.coords(r)} for r in range(n)]}


def dropout_rngs(model) -> list:
    """The per-layer dropout generators (:class:`~minidist.nn.DropoutRNG`), in module order;
    a tensor- or context-parallel layer's generator wraps the one-rank layer's (``.rng``, maybe twice)."""
    out = []
    for m in model.modules():
        if isinstance(m, Dropout):
            r = m.rng
            while hasattr(r, "rng"):
                r = r.rng
            out.append(r)
    return out


def rank_state(trainer, step: int) -> tuple[dict, dict]:
    """(arrays, meta) of this rank's shard after ``step`` completed optimizer steps. The
    shapes are the one-rank model's, whatever this rank holds of it."""
    frags = fragments(trainer.strategy, placement_of(trainer))
    shapes = {name: list(shape) for name, shape in full_shapes(trainer).items()}
    precision = trainer.precision
    meta = {"rank": trainer.rank, "world_size": trainer.world_size, "step": int(step),
            "fragments": frags.index, "steps": frags.steps, "shapes": shapes,
            "scaler": precision.scaler.state_dict() if precision is not None else None,
            "precision_history": [list(h) for h in precision.history] if precision is not None else None,
            "dropout_rng": [{"key": r.key, "state": r._sequential.bit_generator.state}
                            for r in dropout_rngs(trainer.model)],
            "history": trainer.history, "clock": dict(trainer.device.clock.streams),
            "consumed_samples": int(step) * trainer.micro_batch * trainer.accumulation * trainer.dp_size}
    return frags.arrays, meta


def _exchange(comm, obj) -> list:
    return [obj] if comm is None or comm.size == 1 else comm.exchange_objects(obj)


def save_checkpoint(trainer, root: str, step: int) -> str:
    """Collective: save this rank's state after ``step`` optimizer steps under ``root``;
    returns the step folder. ``latest`` names it once every rank's shard is on disk."""
    step_dir = os.path.join(root, step_dirname(step))
    os.makedirs(step_dir, exist_ok=True)
    arrays, meta = rank_state(trainer, step)
    data = encode_shard(arrays, meta)
    name = shard_filename(trainer.rank)
    write_atomic(os.path.join(step_dir, name), data)
    # why: rank 0 writes the manifest, which lists every rank's file and checksum (and loss)
    entry = {"rank": trainer.rank, "file": name, "bytes": len(data), "sha256": sha256(data)}
    # (under pipeline parallelism only the last stage's ranks know the loss: the others send None)
    holds_loss = trainer.pipeline is None or trainer.pipeline.holds_loss
    files = _exchange(trainer.comm, (entry, [h["loss"] for h in trainer.history] if holds_loss else None))
    if trainer.rank == 0:
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "step": int(step),
                    "world_size": trainer.world_size, "config": trainer.cfg, "layout": layout_of(trainer),
                    "parameters": meta["shapes"], "files": [e for e, _ in files],
                    # the job's loss of each step so far: the mean of the ranks' slices
                    "losses": [float(sum(v) / len(v)) for v in zip(*(losses for _, losses in files if losses))],
                    "consumed_samples": meta["consumed_samples"]}
        manifest["manifest_sha256"] = manifest_checksum(manifest)
        write_json_atomic(os.path.join(step_dir, MANIFEST), manifest)
        write_atomic(os.path.join(root, LATEST), (step_dirname(step) + "\n").encode())   # last: the commit point
    # why: no rank goes on (or reads `latest`) before the checkpoint is complete
    _exchange(trainer.comm, None)
    return step_dir


def saver(root: str, interval: int = 0):
    """The ``on_step`` callback of :meth:`Trainer.fit` for ``--save root --save-interval
    interval``: a checkpoint after every ``interval``-th step (0: none) and after the last."""
    def on_step(trainer, step: int) -> None:
        done = step + 1
        if (interval and done % interval == 0) or done == trainer.cfg["steps"]:
            save_checkpoint(trainer, root, done)
    return on_step
