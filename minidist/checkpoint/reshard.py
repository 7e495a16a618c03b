"""Resharding: every rank's fragments → full named arrays → the fragments of another layout.

DeepSpeed refuses to load a ZeRO checkpoint onto a different data-parallel size (its flat
partitions are cut for the old world size); its *universal checkpoint*
(``deepspeed/checkpoint/universal_checkpoint.py`` and ``ds_to_universal.py``) was added to
fix exactly that: first merge every rank's partitions into one file per parameter (fp32
weights, ``exp_avg``, ``exp_avg_sq``), then let the new layout cut its own partitions out of
those. minidist does the same in memory at every load:

1. :func:`assemble` — place every fragment of every rank's shard into a full array
   ``universal[name][kind]`` (``kind``: ``param``, ``master``, ``exp_avg``…) and check that
   every element was covered exactly as the manifest promised;
2. :func:`minidist.checkpoint.layout.apply` — the loading rank cuts its part out.

Because a flat chunk is only a *view* of a range of elements, cutting and re-joining are
plain copies: a checkpoint resharded from 4 ranks to 2, or from ZeRO-3 to ZeRO-1, holds the
very same bits, and training continues exactly as the new layout would have.
"""
from __future__ import annotations

import os

import numpy as np

from .format import CheckpointError, shard_filename


def assemble(step_dir: str, shards: list[tuple[dict, dict]]) -> dict:
    """``universal[name] = {kind: full array, "step": int}`` from every rank's (arrays, meta)."""
    shapes = shards[0][1]["shapes"]
    full: dict[tuple, np.ndarray] = {}
    covered: dict[tuple, np.ndarray] = {}
    steps: dict[str, int] = {}
    for rank, (arrays, meta) in enumerate(shards):
        path = os.path.join(step_dir, shard_filename(rank))
        for fr in meta["fragments"]:
            name, kind = fr["name"], fr["kind"]
            if name not in shapes or fr["key"] not in arrays:
                raise CheckpointError(path, f"fragment {fr['key']!r} names an unknown parameter or is "
                                            f"missing from the file; the file is damaged")
            piece = arrays[fr["key"]]
            dst = full.setdefault((name, kind), np.zeros(shapes[name], dtype=piece.dtype))
            seen = covered.setdefault((name, kind), np.zeros(dst.shape, dtype=bool))
            target = _view(fr, dst)
            if target.size != piece.size:
                raise CheckpointError(path, f"fragment {fr['key']!r} has {piece.size} elements for a range "
                                            f"of {target.size}; the file is damaged")
            target[...] = piece.reshape(target.shape)
            _view(fr, seen)[...] = True
        for name, step in meta["steps"].items():
            if steps.setdefault(name, step) != step:
                raise CheckpointError(path, f"optimizer step {step} of {name} differs from another "
                                            f"rank's {steps[name]}; the ranks saved different steps")
    universal: dict[str, dict] = {name: {} for name in shapes}
    for (name, kind), arr in full.items():
        if not covered[(name, kind)].all():
            missing = int((~covered[(name, kind)]).sum())
            raise CheckpointError(step_dir, f"no shard holds {missing} element(s) of {kind} of {name}; "
                                            f"the checkpoint is incomplete")
        universal[name][kind] = arr
    for name, step in steps.items():
        universal[name]["step"] = step
    for name, u in universal.items():
        if "param" not in u:
            raise CheckpointError(step_dir, f"no shard holds the parameter {name}; the checkpoint is incomplete")
    return universal


def _view(fragment: dict, full: np.ndarray) -> np.ndarray:
    """The part of ``full`` (contiguous) a fragment covers: a flat range, or one range per dim."""
    if "flat" in fragment:
        lo, hi = fragment["flat"]
        return full.reshape(-1)[lo:hi]
    return full[tuple(slice(lo, hi) for lo, hi in fragment["slices"])]


def full_state_dict(universal: dict) -> dict:
    """name → the full-precision value of every parameter: the fp32 master where there is
    one (mixed precision), else the parameter itself (DeepSpeed's ``zero_to_fp32``)."""
    return {name: (u["master"] if "master" in u else u["param"]).copy() for name, u in universal.items()}
