"""The accuracy cost of each compression: held-out loss of a GPT trained by the Trainer, per seed.

One **seed** (:func:`seed_results`) trains the tiny GPT on the shipped English corpus with
:class:`~minidist.training.trainer.Trainer` (what ``python -m minidist.train`` runs; config
:func:`config`), then measures on the **held-out split** (the last 10 % of the corpus, the
batches :meth:`Trainer.evaluate` uses):

* every weight-only quantizer of :data:`SCHEMES` at each of :data:`BITS`, NF4 with double
  quantization, static W8A8 with min-max and with percentile calibration (calibration
  batches from the *training* split), dynamic W8A8 — no retraining;
* pruning without retraining: magnitude and first-order Taylor (per layer and global) at
  each of :data:`SPARSITIES`; structured pruning of heads and MLP channels by norm at each of
  :data:`UNIT_FRACTIONS` (compacted);
* variants that train :data:`EXTRA_STEPS` more steps from the trained model, beside the
  dense model trained as many more steps (the fair baseline: the small model is still
  improving): QAT at :data:`QAT_BITS`, then deployed; L1-regularised training then global
  magnitude pruning; iterative global magnitude pruning with fine-tuning along
  :data:`SPARSITIES` (``EXTRA_STEPS / len(SPARSITIES)`` steps per stage).

Extra steps draw new training batches (they continue the step count). :func:`summarize`
gives each number's mean, min and max over the seeds.
"""
from __future__ import annotations

import copy

import numpy as np

from ..tensor import no_grad
from ..training.trainer import Trainer
from . import prune as P
from .nf4 import quantize_nf4
from .ptq import calibrate, convert, prepare, quantize_dynamic, quantize_weights
from .qat import convert_qat, prepare_qat
from .quantize import quantize
from .structured import compact, structured_masks, unit_pairs, zero_units
from .targets import copy_model

MODEL = {"n_layer": 2, "n_embd": 32, "n_head": 4, "block_size": 32}
CONFIG = {"model": MODEL, "steps": 150, "train_micro_batch_size_per_gpu": 8, "eval_iters": 8,
          "optimizer": {"type": "AdamW", "params": {"lr": 3e-3}}}
EXTRA_STEPS = 20
BITS = (8, 4, 3, 2)
SCHEMES = {                                   # label → quantize() arguments (weights (in, out))
    "per-tensor symmetric": {"scheme": "symmetric", "granularity": "tensor"},
    "per-channel symmetric": {"scheme": "symmetric", "granularity": "channel"},
    "per-channel asymmetric": {"scheme": "asymmetric", "granularity": "channel"},
    "group-32 symmetric": {"scheme": "symmetric", "granularity": "group", "group_size": 32},
    "log2 per-channel": {"scheme": "log", "granularity": "channel"},
}
QAT_BITS = (2,)
QAT_SCHEME = "per-channel symmetric"
SPARSITIES = (0.25, 0.5, 0.75, 0.9)
UNIT_FRACTIONS = (0.25, 0.5, 0.75)
L1 = 1.2e-3
CALIBRATION_BATCHES = 4
_AFTER_TRAINING = 10 ** 6                    # step ids of calibration/Taylor batches: never trained on


def config(seed: int = 0, **overrides) -> dict:
    """The training config of one seed (the english corpus, seq_len 32: the defaults)."""
    return {**copy.deepcopy(CONFIG), "seed": seed, **overrides}


def train_base(seed: int = 0, **overrides) -> Trainer:
    """Train the GPT of :func:`config` from scratch; the trainer holds the model and the data."""
    trainer = Trainer(config(seed, **overrides))
    trainer.fit(progress=False)
    return trainer


def continue_training(base: Trainer, steps: int = EXTRA_STEPS, cls=Trainer, prepare_model=None, on_step=None,
                      **kw) -> Trainer:
    """A new trainer holding ``base``'s weights that trains ``steps`` more steps on the next
    batches (a fresh optimizer). ``prepare_model(model)`` runs before training (QAT's swap)."""
    start = base.cfg["steps"]
    trainer = cls(dict(base.cfg, steps=start + steps), **kw)
    trainer.model.load_state_dict(base.model.state_dict())
    trainer.start_step = start
    if prepare_model is not None:
        prepare_model(trainer.model)
    if steps:
        trainer.fit(progress=False, on_step=on_step)
    return trainer


def held_out_loss(model, trainer: Trainer, together: bool = True) -> float:
    """Mean loss over the held-out batches :meth:`Trainer.evaluate` uses (eval mode, no graph).
    ``together``: one forward of the equal-size batches stacked (the same mean up to rounding, a
    fraction of the interpreter's per-layer cost); ``False`` for a model whose numbers depend on
    the batch (dynamic W8A8 takes each activation's range over the batch it sees)."""
    batches = trainer.val_dataset.eval_batches(trainer.micro_batch, trainer.cfg["eval_iters"])
    was = model.training
    model.eval()
    with no_grad():
        if together:
            x, y = (np.concatenate(a) for a in zip(*batches))
            loss = float(model(x, y)[1].data)
        else:
            loss = float(np.mean([float(model(x, y)[1].data) for x, y in batches]))
    model.train(was)
    return loss


def training_batches(trainer: Trainer, n: int = CALIBRATION_BATCHES) -> list:
    """``n`` batches of the training split that training never draws (calibration, Taylor)."""
    return [trainer.dataset.get_batch(trainer.micro_batch, _AFTER_TRAINING + i, trainer.cfg["seed"])
            for i in range(n)]


def weight_quantizer(label: str, bits: int):
    return lambda w: quantize(w, bits, **SCHEMES[label])


# -- quantization ------------------------------------------------------------------------------------
def quantization_losses(base: Trainer) -> dict:
    """Held-out loss of every post-training quantization variant (no retraining)."""
    model = base.model
    out = {"fp32": base.final["val_loss"]}             # the trainer's own held-out evaluation
    for label in SCHEMES:
        out[label] = {b: held_out_loss(quantize_weights(copy_model(model), weight_quantizer(label, b)), base)
                      for b in BITS}
    out["NF4 (double quant)"] = held_out_loss(quantize_weights(copy_model(model), quantize_nf4), base)
    cal = training_batches(base)
    for name, kw in (("W8A8 static, min-max", {}), ("W8A8 static, percentile 99.9", {"percentile": 99.9})):
        m = prepare(copy_model(model), "percentile" if kw else "minmax", **kw)
        out[name] = held_out_loss(convert(calibrate(m, cal)), base)
    out["W8A8 dynamic"] = held_out_loss(quantize_dynamic(copy_model(model)), base, together=False)
    return out


def qat_losses(base: Trainer) -> dict:
    """QAT ``EXTRA_STEPS`` steps at each of :data:`QAT_BITS`, deployed; and the PTQ of the
    dense model trained as long, for comparison."""
    spec = SCHEMES[QAT_SCHEME]
    dense = continue_training(base)
    out = {"dense": dense.final["val_loss"]}
    for b in QAT_BITS:
        q = continue_training(base, prepare_model=lambda m, b=b: prepare_qat(m, b, **spec))
        out[f"QAT {b}-bit"] = held_out_loss(convert_qat(q.model), base)
        out[f"dense, then PTQ {b}-bit"] = held_out_loss(
            quantize_weights(copy_model(dense.model), weight_quantizer(QAT_SCHEME, b)), base)
    return out


# -- pruning -------------------------------------------------------------------------------------------
def one_shot_pruning_losses(base: Trainer) -> dict:
    """criterion → {sparsity: held-out loss} without retraining, and structured pruning."""
    scored = copy_model(base.model).train()
    params = P.prunable(scored)
    scores = {"magnitude": P.magnitude_scores(params),       # once per model: every scope and sparsity
              "taylor": P.taylor_scores(scored, params, training_batches(base))}
    out = {}
    for criterion in ("magnitude", "taylor"):
        for scope in ("layer", "global"):
            row = {}
            for s in SPARSITIES:
                m = copy_model(base.model)
                P.Pruning(m, P.masks_from_scores(scores[criterion], s, scope))
                row[s] = held_out_loss(m, base)
            out[f"{criterion}, {scope}"] = row
    out["structured: heads + channels by norm"] = {f: structured_loss(base, f) for f in UNIT_FRACTIONS}
    return out


def structured_loss(base: Trainer, fraction: float) -> float:
    m = copy_model(base.model)
    pairs = unit_pairs(m)
    masks = structured_masks(pairs, fraction)
    zero_units(pairs, masks)
    compact(pairs, masks)
    return held_out_loss(m, base)


def trained_pruning_losses(base: Trainer, dense_loss: float) -> dict:
    """L1-regularised training then global magnitude pruning; iterative prune + fine-tune."""
    l1 = continue_training(base, cls=P.L1Trainer, l1=L1)
    out = {"dense": dense_loss, "L1 then magnitude, global": {}}
    weights = np.concatenate([p.data.ravel() for p in P.prunable(l1.model).values()])
    out["l1_near_zero"] = float((np.abs(weights) < 1e-3).mean())
    for s in SPARSITIES:
        m = copy_model(l1.model)
        P.prune_weights(m, s, "magnitude", "global")
        out["L1 then magnitude, global"][s] = held_out_loss(m, base)
    it = continue_training(base, steps=0)
    stages = P.iterative_prune(it, SPARSITIES, EXTRA_STEPS // len(SPARSITIES), "magnitude", "global")
    out["iterative magnitude + fine-tune"] = {s: row["val_loss"] for s, row in zip(SPARSITIES, stages)}
    out["iterative_sparsity"] = [row["sparsity"] for row in stages]
    return out


def seed_results(seed: int, keep_model: bool = False):
    """Every held-out loss of one seed (see the module docstring); with ``keep_model``, the
    pair ``(results, trainer of the trained model)``."""
    base = train_base(seed)
    qat = qat_losses(base)
    out = {"seed": seed, "base": base.final["val_loss"], "quantization": quantization_losses(base), "qat": qat,
           "pruning": one_shot_pruning_losses(base), "trained_pruning": trained_pruning_losses(base, qat["dense"])}
    return (out, base) if keep_model else out


def summarize(values) -> dict:
    """``{"mean", "min", "max"}`` of per-seed numbers (nested dicts: per key)."""
    if isinstance(values[0], dict):
        return {k: summarize([v[k] for v in values]) for k in values[0]}
    if isinstance(values[0], (list, tuple)):
        return {"mean": list(np.mean(values, axis=0)), "min": list(np.min(values, axis=0)),
                "max": list(np.max(values, axis=0))}
    a = np.asarray(values, np.float64)
    return {"mean": float(a.mean()), "min": float(a.min()), "max": float(a.max())}
