"""Unstructured pruning: scores, masks of exactly the asked sparsity, masks kept through fine-tuning.

The source notes' 权重剪枝 (weight pruning), criterion by criterion:

* **magnitude** (Han et al. 2015): a weight's score is ``|w|``;
* **first-order Taylor** (gradient-based; Molchanov et al. 2017, 2019): removing ``w``
  changes the loss by about ``−w·∂L/∂w``, so the score is ``Σ_b |w ⊙ ∂L_b/∂w|`` summed over a
  few training batches ``b`` (``L_b``: the batch's mean loss; the gradient of each batch is
  taken alone, then the absolute values are added);
* **L1-regularised** (the notes' L1/L2 正则化剪枝): train with ``λ·Σ|w|`` added to the loss
  (:class:`L1Trainer`), which pushes unneeded weights towards 0, then prune by magnitude.

**Masks** (:func:`masks_from_scores`): the ``k = round(sparsity · n)`` lowest-scored weights
are pruned (``round``: half to even), ties broken by position — the lower flat index is
pruned first (a stable sort). ``scope="layer"``: every tensor loses exactly ``round(s · n_t)``
of its ``n_t`` weights; ``scope="global"``: the ranking runs over all the tensors at once
(their flat concatenation in model order), so that layers lose different shares.
``mask = True`` keeps a weight.

**Keeping them pruned** (:class:`Pruning`): the masks are applied after every optimizer
step (``Trainer.fit(on_step=pruning.after_step)``), so a pruned weight is exactly 0 at every
forward however the optimizer moves it. :func:`iterative_prune` alternates pruning and
fine-tuning along a sparsity schedule (Han et al. 2015; the cubic schedule of Zhu & Gupta
2017): weights pruned once stay pruned (they are ranked first at every later stage).

An unstructured mask zeros single weights in dense matrices: without sparse kernels the
dense matmul costs the same FLOPs and the dense tensor the same bytes (measured by
:func:`~.targets.measure`); :func:`csr_bytes` says what a sparse format would hold instead.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ..tensor import Tensor
from ..training.trainer import Trainer
from .targets import linear_layers


def prunable(model) -> "OrderedDict[str, Tensor]":
    """name → weight of every linear layer (what pruning ranks), in model order."""
    return OrderedDict((f"{name}.weight", lin.weight) for name, _, _, lin in linear_layers(model))


def magnitude_scores(params: dict) -> dict:
    return {n: np.abs(p.data.astype(np.float64)) for n, p in params.items()}


def taylor_scores(model, params: dict, batches) -> dict:
    """``Σ_b |w ⊙ ∂L_b/∂w|`` over ``batches`` ``[(x, y), …]`` (training mode, gradients then cleared)."""
    scores = {n: np.zeros(p.shape) for n, p in params.items()}
    for x, y in batches:
        model.zero_grad()
        model(x, y)[1].backward()
        for n, p in params.items():
            scores[n] += np.abs(p.data.astype(np.float64) * p.grad)
    model.zero_grad()
    return scores


def _n_pruned(sparsity: float, n: int) -> int:
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    return int(round(sparsity * n))


def _mask(flat_scores: np.ndarray, k: int) -> np.ndarray:
    keep = np.ones(flat_scores.size, bool)
    keep[np.argsort(flat_scores, kind="stable")[:k]] = False                # lowest k, lower index first
    return keep


def masks_from_scores(scores: dict, sparsity: float, scope: str = "layer") -> dict:
    """name → boolean keep-mask pruning the lowest-scored ``round(sparsity · n)`` weights."""
    if scope == "layer":
        return {n: _mask(s.reshape(-1), _n_pruned(sparsity, s.size)).reshape(s.shape) for n, s in scores.items()}
    if scope != "global":
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    flat = np.concatenate([s.reshape(-1) for s in scores.values()])
    keep = _mask(flat, _n_pruned(sparsity, flat.size))
    out, i = {}, 0
    for n, s in scores.items():
        out[n] = keep[i:i + s.size].reshape(s.shape)
        i += s.size
    return out


def apply_masks(params: dict, masks: dict) -> None:
    """Set every pruned weight to exactly 0 (in place)."""
    for n, m in masks.items():
        params[n].data[~m] = 0


def measured_sparsity(params: dict) -> float:
    """Fraction of the weights that are exactly 0."""
    return sum(int((p.data == 0).sum()) for p in params.values()) / sum(p.size for p in params.values())


class Pruning:
    """Masks on a model's weights, re-applied after every optimizer step."""

    def __init__(self, model, masks: dict):
        self.params, self.masks = prunable(model), masks
        apply_masks(self.params, masks)

    def after_step(self, trainer=None, step=None) -> None:
        """``Trainer.fit(on_step=…)``: the step may have moved pruned weights; zero them again."""
        apply_masks(self.params, self.masks)


CRITERIA = ("magnitude", "taylor")


def _scores(model, params, criterion: str, batches) -> dict:
    """The criterion's scores, refusing an unknown criterion and Taylor scoring without batches."""
    if criterion not in CRITERIA:
        raise ValueError(f"pruning criterion must be one of {list(CRITERIA)}, got {criterion!r}")
    if criterion == "magnitude":
        return magnitude_scores(params)
    if batches is None:
        raise ValueError("criterion='taylor' scores |w·∂L/∂w| on data: give batches=[(x, y), ...] "
                         "(or use criterion='magnitude', which needs none)")
    return taylor_scores(model, params, batches)


def prune_weights(model, sparsity: float, criterion: str = "magnitude", scope: str = "layer", batches=None) -> Pruning:
    """Score (``"magnitude"`` or ``"taylor"`` on ``batches``), mask and zero the weights."""
    return Pruning(model, masks_from_scores(_scores(model, prunable(model), criterion, batches), sparsity, scope))


# -- L1-regularised training ---------------------------------------------------------------------------
def l1_penalty(params: dict) -> Tensor:
    """``Σ|w|`` as a graph node: ``Σ w·sign(w)``, whose (sub)gradient is ``sign(w)``."""
    total = None
    for p in params.values():
        term = (p * np.sign(p.data)).sum()
        total = term if total is None else total + term
    return total


class L1Trainer(Trainer):
    """The ordinary trainer with ``l1 · Σ|w|`` over the linear weights added to the loss."""

    def __init__(self, config, l1: float, **kw):
        super().__init__(config, **kw)
        self.l1 = l1

    def compute_loss(self, x, y, step, micro):
        loss = super().compute_loss(x, y, step, micro)
        return loss + l1_penalty(prunable(self.model)) * np.asarray(self.l1, loss.dtype)


# -- iterative pruning -------------------------------------------------------------------------------
def cubic_schedule(final: float, stages: int) -> list[float]:
    """Zhu & Gupta (2017)'s gradual schedule ``s_i = s_f·(1 − (1 − i/n)^3)``, i = 1…n."""
    return [final * (1 - (1 - i / stages) ** 3) for i in range(1, stages + 1)]


def iterative_prune(trainer, schedule, steps_per_stage: int, criterion: str = "magnitude",
                    scope: str = "layer", batches=None) -> list[dict]:
    """Prune to each sparsity of ``schedule`` and fine-tune ``steps_per_stage`` steps with the
    masks kept; weights pruned at one stage are ranked first at the next. Returns per stage
    ``{"sparsity", "pruned_loss", "val_loss"}`` (held out, before and after fine-tuning)."""
    params = prunable(trainer.model)
    keep = {n: np.ones(p.shape, bool) for n, p in params.items()}
    rows = []
    for s in schedule:
        scores = _scores(trainer.model, params, criterion, batches)
        scores = {n: np.where(keep[n], v, -1.0) for n, v in scores.items()}   # already pruned: first
        keep = masks_from_scores(scores, s, scope)
        pruning = Pruning(trainer.model, keep)
        before = trainer.evaluate()["val_loss"]
        trainer.cfg["steps"] = trainer.start_step + steps_per_stage
        after = trainer.fit(progress=False, on_step=pruning.after_step)["val_loss"]
        trainer.start_step = trainer.cfg["steps"]
        rows.append({"sparsity": measured_sparsity(params), "pruned_loss": before, "val_loss": after})
    return rows


def csr_bytes(w: np.ndarray, value_bytes: int = 4, index_bytes: int = 4) -> int:
    """Bytes of ``w`` in CSR (values, column indices, row pointers), built and measured."""
    w = np.asarray(w)
    rows, cols = np.nonzero(w)
    values = w[rows, cols].astype(f"f{value_bytes}")
    col_idx = cols.astype(f"i{index_bytes}")
    row_ptr = np.searchsorted(rows, np.arange(w.shape[0] + 1)).astype(f"i{index_bytes}")
    return values.nbytes + col_idx.nbytes + row_ptr.nbytes
