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
from .format import (FORMAT, FORMAT_VERSION, LATEST, MANIFEST, encode_shard, sha256, shard_filename,
                     step_dirname, write_atomic, write_json_atomic)
from .layout import fragments, param_shapes


def layout_of(trainer) -> dict:
    """The world layout a checkpoint records: strategy, ZeRO stage, precision and grid."""
    s = trainer.strategy
    n = trainer.world_size
    return {"strategy": s.name, "zero_stage": s.stage, "offload": bool(s.offload),
            "precision": trainer.precision.dtype if trainer.precision is not None else trainer.cfg["dtype"],
            "world_size": n, "grid": {"dp": n, "tp": 1, "pp": 1},
            "ranks": [{"rank": r, "coords": {"dp": r, "tp": 0, "pp": 0}} for r in range(n)]}


def rank_state(trainer, step: int) -> tuple[dict, dict]:
    """(arrays, meta) of this rank's shard after ``step`` completed optimizer steps."""
    frags = fragments(trainer.strategy)
    shapes = {name: list(shape) for name, shape in param_shapes(trainer.strategy).items()}
    precision = trainer.precision
    meta = {"rank": trainer.rank, "world_size": trainer.world_size, "step": int(step),
            "fragments": frags.index, "steps": frags.steps, "shapes": shapes,
            "scaler": precision.scaler.state_dict() if precision is not None else None,
            "precision_history": [list(h) for h in precision.history] if precision is not None else None,
            "dropout_rng": [{"key": m.rng.key, "state": m.rng._sequential.bit_generator.state}
                            for m in trainer.model.modules() if isinstance(m, Dropout)],
            "history": trainer.history, "clock": dict(trainer.device.clock.streams),
            "consumed_samples": int(step) * trainer.micro_batch * trainer.accumulation * trainer.world_size}
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
    files = _exchange(trainer.comm, (entry, [h["loss"] for h in trainer.history]))
    if trainer.rank == 0:
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "step": int(step),
                    "world_size": trainer.world_size, "config": trainer.cfg, "layout": layout_of(trainer),
                    "parameters": meta["shapes"], "files": [e for e, _ in files],
                    # the job's loss of each step so far: the mean of the ranks' slices
                    "losses": [float(sum(v) / len(v)) for v in zip(*(losses for _, losses in files))],
                    "consumed_samples": meta["consumed_samples"]}
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
