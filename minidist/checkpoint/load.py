"""Loading: check everything first, then let this rank's layout take its part.

``--load DIR`` runs in two halves, so that a bad checkpoint fails the same way on every
rank, before any message is sent, and nothing is half-loaded:

1. :func:`read_checkpoint` (every process, before the ranks start): find the step folder
   (``latest``), read the manifest, check every shard's size and SHA-256, rebuild the full
   named arrays (:func:`~minidist.checkpoint.reshard.assemble`); :func:`check_compatible`
   compares the saved config with this run's — the model, dtype, precision and optimizer
   must match; the world size, ZeRO stage, offload and bucket sizes may change (resharding);
2. :func:`load_into` (each rank, after its Trainer is built): check that names, shapes and
   optimizer-state kinds fit this model, then copy — parameters, fp32 masters, moments and
   step counts (:func:`~minidist.checkpoint.layout.apply`), the loss scaler, the dropout
   RNGs, the loss history, the simulated clock — and set the step to continue from.

With the same world size each rank takes back its own metadata, so the run continues bit
for bit as if it had never stopped; on another world size the per-rank history is the
job's mean loss the manifest recorded.
"""
from __future__ import annotations

import dataclasses
import os

from ..numerics.quantize import quantize
from ..precision.mixed import MixedPrecisionStep
from .format import CheckpointError, MANIFEST, read_manifest, read_shards, resolve
from .layout import apply, holds_optimizer_state, state_keys
from .model_parallel import full_shapes, local_universal
from .save import dropout_rngs, layout_of
from .reshard import assemble

# config keys that must be the same to load (the rest — world size, ZeRO stage, offload,
# buckets, steps, batch sizes, learning rate — may change)
# the model: must match even to load the weights alone (--load-weights-only)
MODEL_KEYS = ("model.block_size", "model.vocab_size", "model.n_layer", "model.n_head", "model.n_embd", "model.bias",
              "model.moe.num_experts", "model.moe.every_n_layers")      # None: no mixture of experts
# what else decides the trajectory: must match to resume (the layout, steps and lr may change)
TRAJECTORY_KEYS = ("dtype", "fp16.enabled", "bf16.enabled", "optimizer.type", "seed", "data.dataset",
                   "data.seq_len", "data.n_digits", "data.val_fraction", "model.dropout", "gradient_clipping",
                   "model.moe.top_k", "model.moe.capacity_factor", "model.moe.aux_loss_coef",
                   "model.moe.z_loss_coef", "model.moe.group_size")
MUST_MATCH = MODEL_KEYS + TRAJECTORY_KEYS


@dataclasses.dataclass
class Checkpoint:
    """A checkpoint read and checked: its folder, manifest, every rank's metadata, and the
    full named arrays (``universal[name][kind]``)."""

    step_dir: str
    manifest: dict
    metas: list
    universal: dict

    @property
    def step(self) -> int:
        return int(self.manifest["step"])


def read_checkpoint(path: str) -> Checkpoint:
    """Find, verify and assemble the checkpoint at ``path`` (a --save folder or a step folder)."""
    step_dir = resolve(path)
    manifest = read_manifest(step_dir)
    shards = read_shards(step_dir, manifest)
    return Checkpoint(step_dir, manifest, [meta for _, meta in shards], assemble(step_dir, shards))


def _get(cfg: dict, key: str):
    for part in key.split("."):
        cfg = cfg.get(part) if isinstance(cfg, dict) else None
    return cfg


def _shown(cfg: dict, key: str) -> str:
    """A config value for a message; a key whose optional section is absent says so."""
    section = key.rsplit(".", 1)[0]
    if "." in section and _get(cfg, section) is None:
        return f"nothing (no {section} section)"
    return repr(_get(cfg, key))


def _global_batch(cfg: dict, world_size: int) -> int:
    par = cfg["parallel"]
    cp = (par.get("context") or {}).get("size", 1)        # context-parallel ranks share their sequences
    dp = world_size // (par["tensor"] * par["pipeline"] * cp)
    return cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"] * dp


def check_compatible(ckpt: Checkpoint, cfg: dict, world_size: int | None = None, weights_only: bool = False) -> None:
    """Refuse a checkpoint this config cannot continue: another model always; to resume (not
    ``weights_only``) also anything that changes the trajectory — dtype, precision, optimizer
    and its hyper-parameters but lr, seed, data, dropout, clipping, the global batch
    (micro-batch × accumulation × data-parallel degree) and its split into micro-steps (the data
    of micro-step j of step s are drawn for s·k + j) — naming the key and the way out."""
    saved = ckpt.manifest["config"]
    where = os.path.join(ckpt.step_dir, MANIFEST)
    switch = "; to start a new run from its weights only, add --load-weights-only"
    for key in MODEL_KEYS if weights_only else MUST_MATCH:
        if key.split(".")[0] not in cfg:
            continue                                       # a section this version does not have
        if _get(saved, key) != _get(cfg, key):
            raise CheckpointError(where, f"was saved with config key '{key}' = {_shown(saved, key)}, but this "
                                         f"run has {_shown(cfg, key)}; use the saved value"
                                         + (" (the model must match to load its weights)" if key in MODEL_KEYS
                                            else " to resume" + switch))
    if weights_only:
        return
    params = {k: v for k, v in cfg["optimizer"]["params"].items() if k != "lr"}
    saved_params = {k: v for k, v in saved["optimizer"]["params"].items() if k != "lr"}
    if params != saved_params:
        raise CheckpointError(where, f"was saved with optimizer.params {saved_params} (lr aside), this run has "
                                     f"{params}; use the saved values to resume" + switch)
    if world_size is not None:
        before, now = _global_batch(saved, ckpt.manifest["world_size"]), _global_batch(cfg, world_size)
        if before != now:
            raise CheckpointError(where, f"was trained on a global batch of {before} sequences (micro-batch × "
                                         f"accumulation × data-parallel degree), this run's is {now}; keep "
                                         f"{before} to resume" + switch)
        k_before, k_now = saved["gradient_accumulation_steps"], cfg["gradient_accumulation_steps"]
        if k_before != k_now:      # the data of micro-step j of step s are drawn for (s·k + j): another k, other data
            raise CheckpointError(where, f"was trained in {k_before} micro-step(s) of {before // k_before} sequences "
                                         f"(gradient_accumulation_steps = {k_before}), this run splits the same "
                                         f"global batch into {k_now} of {now // k_now}: its data order (and dropout "
                                         f"masks) would follow neither run; keep gradient_accumulation_steps = "
                                         f"{k_before} to resume" + switch)
    if ckpt.step > cfg["steps"]:
        raise CheckpointError(where, f"is at step {ckpt.step}, past this run's steps = {cfg['steps']}; "
                                     f"raise 'steps' to continue training")


def load_weights(trainer, ckpt: Checkpoint) -> None:
    """DeepSpeed's ``load_module_only``: this rank's part of the checkpoint's weights (the fp32
    masters where there are some), nothing else — a new run, at step 0, with a fresh
    optimizer, loss scaler, data position and history."""
    mine = full_shapes(trainer)
    for name, shape in mine.items():
        if name not in ckpt.universal or tuple(ckpt.universal[name]["param"].shape) != shape:
            raise CheckpointError(ckpt.step_dir, f"has no parameter {name} of shape {shape}; load it with the "
                                                 f"model config it was saved with")
    weights = {}
    for name in mine:
        u = ckpt.universal[name]
        w = u.get("master", u["param"])
        # in mixed precision the model holds the master rounded to the 16-bit format
        weights[name] = {"param": quantize(w, trainer.precision.dtype), "master": w} \
            if trainer.precision is not None else {"param": w}
    apply(trainer.strategy, local_universal(trainer, weights))


def load_into(trainer, ckpt: Checkpoint) -> None:
    """Give this rank its part of ``ckpt`` and continue from its step (checked first)."""
    strategy, where = trainer.strategy, ckpt.step_dir
    mine = full_shapes(trainer)             # the one-rank model's, as the checkpoint records them
    if set(mine) != set(ckpt.universal):
        missing, extra = sorted(set(mine) - set(ckpt.universal)), sorted(set(ckpt.universal) - set(mine))
        raise CheckpointError(where, f"does not fit this model: parameters missing {missing[:3]}, unexpected "
                                     f"{extra[:3]}; load it with the model config it was saved with")
    for name, shape in mine.items():
        if tuple(ckpt.universal[name]["param"].shape) != shape:
            raise CheckpointError(where, f"parameter {name} has shape {tuple(ckpt.universal[name]['param'].shape)}, "
                                         f"this model {shape}; load it with the model config it was saved with")
    universal = local_universal(trainer, ckpt.universal)    # my stages' parameters, my tp slices of them
    keys = state_keys(strategy)
    for name, u in universal.items():
        if "step" in u and holds_optimizer_state(strategy) and not keys <= set(u):
            raise CheckpointError(where, f"has optimizer state {sorted(set(u) - {'param', 'master', 'step'})} "
                                         f"for {name}, this optimizer needs {sorted(keys)}; keep "
                                         f"optimizer.params (e.g. SGD momentum) as saved")
        if trainer.precision is not None and "master" not in u:
            raise CheckpointError(where, f"has no fp32 master of {name}; it was not saved in mixed precision")
    # the same layout (world size and grid): each rank takes back its own metadata
    saved_grid = ckpt.manifest["layout"].get("grid", {"dp": ckpt.manifest["world_size"], "tp": 1, "pp": 1})
    same_world = ckpt.manifest["world_size"] == trainer.world_size and saved_grid == layout_of(trainer)["grid"]
    meta = ckpt.metas[trainer.rank if same_world else 0]
    if trainer.precision is not None and meta["scaler"]["type"] != type(trainer.precision.scaler).__name__:
        raise CheckpointError(where, f"holds a {meta['scaler']['type']}, this run a "
                                     f"{type(trainer.precision.scaler).__name__}; keep fp16.loss_scale as saved")
    apply(strategy, universal)
    if trainer.precision is not None:
        trainer.precision.scaler.load_state_dict(meta["scaler"])
        trainer.precision.history[:] = [MixedPrecisionStep(int(s), float(sc), bool(o), bool(k))
                                        for s, sc, o, k in meta["precision_history"]]
    for r, rng in zip(dropout_rngs(trainer.model), meta["dropout_rng"]):
        r.key = tuple(rng["key"]) if rng["key"] is not None else None
        r._sequential.bit_generator.state = rng["state"]
    history = [dict(h) for h in meta["history"]]
    if not same_world:                          # my slice's losses are not the old ranks': the job's mean
        for h, loss in zip(history, ckpt.manifest["losses"]):
            h["loss"], h["job_mean"] = loss, True
    trainer.history[:] = history
    trainer.device.clock.streams.update(meta["clock"])
    trainer.start_step = ckpt.step
