"""One full-precision state dict out of a sharded checkpoint, and a look inside one.

DeepSpeed ships ``zero_to_fp32.py`` beside every ZeRO checkpoint: it merges the ranks' flat
fp32 partitions into one ``state_dict`` that loads into the model without DeepSpeed.
:func:`consolidate` is the same for every minidist layout — the fp32 masters where the run
was mixed precision, the parameters otherwise (float64 runs stay float64) — written as one
``.npz`` of ``name → array`` that ``GPT.load_state_dict(dict(np.load(OUT)))`` takes.
"""
from __future__ import annotations

import os

from .format import MANIFEST, npz_bytes, write_atomic
from .load import read_checkpoint
from .reshard import full_state_dict


def consolidate(path: str, out: str) -> dict:
    """Write the full state dict of the checkpoint at ``path`` to ``out`` (.npz); return it."""
    state = full_state_dict(read_checkpoint(path).universal)
    write_atomic(out, npz_bytes(state))
    return state


def describe(path: str) -> str:
    """What a checkpoint holds, as text: step, layout, files (verified), every parameter."""
    ckpt = read_checkpoint(path)
    m, lay = ckpt.manifest, ckpt.manifest["layout"]
    cfg = m["config"]
    lines = [f"checkpoint {ckpt.step_dir} (format version {m['format_version']}): after step {m['step']}, "
             f"{m.get('consumed_samples', '?')} samples consumed",
             f"layout: {lay['strategy']} (ZeRO stage {lay['zero_stage']}{', offload' if lay['offload'] else ''}), "
             f"{lay['precision']}, {m['world_size']} rank(s), grid {lay['grid']}",
             f"model: {cfg['model']}, optimizer {cfg['optimizer']['type']} {cfg['optimizer']['params']}"]
    scaler = ckpt.metas[0].get("scaler")
    if scaler:
        lines.append(f"loss scaler: {scaler['type']}, scale {scaler['cur_scale']:g} at iteration {scaler['cur_iter']}")
    losses = m.get("losses") or []
    if losses:
        lines.append(f"loss: {losses[0]:.4f} at step 0 -> {losses[-1]:.4f} at step {len(losses) - 1}")
    lines.append(f"files ({os.path.join(ckpt.step_dir, MANIFEST)} lists {len(m['files'])}, all checksums verified):")
    for f in m["files"]:
        lines.append(f"  {f['file']}  {f['bytes']:>10,} bytes  sha256 {f['sha256'][:16]}…")
    lines.append(f"{'parameter':<36} {'shape':<14} held")
    total = 0
    for name, u in ckpt.universal.items():
        kinds = ", ".join(k for k in u if k != "step") + (f" (step {u['step']})" if "step" in u else "")
        total += u["param"].size
        lines.append(f"{name:<36} {str(tuple(u['param'].shape)):<14} {kinds}")
    lines.append(f"{len(ckpt.universal)} parameters, {total:,} elements")
    return "\n".join(lines)
