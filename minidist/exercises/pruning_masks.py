"""Exercise: magnitude and first-order Taylor pruning masks, per layer and global, of exactly the asked sparsity.

Reference: ``minidist.compression.prune`` (``magnitude_scores``, ``masks_from_scores``; the
Taylor score of ``taylor_scores``), minidist/compression/prune.py.
"""
from __future__ import annotations

import contextvars

import numpy as np

from ..compression.prune import masks_from_scores, prunable
from ..model import GPT, GPTConfig
from .grading import Wrong, on_case

NAME = "pruning_masks"
TOPIC = "compression"
TITLE = "Pruning masks: magnitude |w| and Taylor Σ|w·g|, per layer and global, exactly k pruned"
NOTEBOOK = "11_inference_and_compression"
FUNCTIONS = ("magnitude_masks", "taylor_masks")
FORBIDDEN = ("minidist.compression", "torch", "jax")

STUB = '''"""Which weights to prune: magnitude (Han et al. 2015) and first-order Taylor (Molchanov et al. 2017).

``weights`` is a dict name -> float64 array (a GPT's linear weights, any shapes), in a fixed
order. Return a dict with the same names -> boolean arrays of the same shapes, where
**True means KEEP** the weight and False means prune it.

``magnitude_masks(weights, sparsity, scope)``
    score = |w|.

``taylor_masks(weights, grads, sparsity, scope)``
    ``grads[name]`` is a list of arrays, the gradient of each of a few batches' mean loss
    with respect to that weight. Removing w changes the loss by about -w·dL/dw, so
        score = sum over the batches b of |w * grads[name][b]|
    (take the absolute value per batch, then add).

Exactly which weights go:

* ``scope == "layer"``: in every tensor of n weights, prune exactly k = round(sparsity · n)
  of them (Python's round: half to even), those with the LOWEST scores;
* ``scope == "global"``: one ranking over all tensors together — k = round(sparsity · N),
  N the total count — so layers lose different shares;
* ties: the weight at the lower position is pruned first. Positions: each tensor
  flattened row-major (``.reshape(-1)``); for "global", the tensors one after another in
  the dict's order. (A stable sort of the scores, ``np.argsort(s, kind="stable")``, does
  exactly this.) Never prune by a threshold: ``score <= t`` takes every tied weight.

``sparsity`` is the fraction PRUNED, 0 <= sparsity <= 1.

NumPy only. Not allowed (the grader looks at what your code calls or imports):
minidist.compression, torch, jax.
"""
import numpy as np


def magnitude_masks(weights, sparsity, scope="layer"):
    raise NotImplementedError


def taylor_masks(weights, grads, sparsity, scope="layer"):
    raise NotImplementedError
'''

HINTS = [
    "k = round(sparsity * n); order = np.argsort(scores.reshape(-1), kind='stable'); keep = np.ones(n, bool); "
    "keep[order[:k]] = False.",
    "Global: flat = np.concatenate([s.reshape(-1) for s in scores.values()]), mask it once, then cut it back "
    "into the tensors' sizes and shapes in the same order.",
    "Taylor: score = sum(np.abs(w * g) for g in grads[name]) — the absolute value of each batch's term, then the sum.",
]


def _magnitude(weights):
    return {n: np.abs(np.asarray(w, np.float64)) for n, w in weights.items()}


def _taylor(weights, grads):
    return {n: sum(np.abs(np.asarray(w, np.float64) * g) for g in grads[n]) for n, w in weights.items()}


def reference():
    class Reference:
        @staticmethod
        def magnitude_masks(weights, sparsity, scope="layer"):
            return masks_from_scores(_magnitude(weights), sparsity, scope)

        @staticmethod
        def taylor_masks(weights, grads, sparsity, scope="layer"):
            return masks_from_scores(_taylor(weights, grads), sparsity, scope)
    return Reference


# -- typical mistakes: each a complete wrong implementation -------------------------------------------
def _masks(scores, sparsity, scope, k_rule=round, largest=False, pruned_true=False, keep_fraction=False,
           threshold=False, late_ties=False, layer_instead=False, sorted_names=False):
    if keep_fraction:
        sparsity = 1 - sparsity
    names_in_order = sorted(scores) if sorted_names else list(scores)
    groups = [[n] for n in scores] if scope == "layer" or layer_instead else [names_in_order]
    out = {}
    for names in groups:
        flat = np.concatenate([scores[n].reshape(-1) for n in names])
        k = int(k_rule(sparsity * flat.size))
        keep = np.ones(flat.size, bool)
        if threshold and k:
            keep[flat <= np.sort(flat)[k - 1]] = False
        else:
            s = -flat if largest else flat
            position = np.arange(flat.size)
            order = np.lexsort((-position if late_ties else position, s))      # by score, then position
            keep[order[:k]] = False
        i = 0
        for n in names:
            out[n] = (~keep if pruned_true else keep)[i:i + scores[n].size].reshape(scores[n].shape)
            i += scores[n].size
    return out


MASK_MISTAKES = [
    ({"largest": True}, "you pruned the HIGHEST scores: prune the lowest (the weights that matter least)"),
    ({"pruned_true": True}, "your masks are inverted: True means KEEP the weight, False means prune it"),
    ({"keep_fraction": True}, "you kept a fraction `sparsity` of the weights: sparsity is the fraction PRUNED"),
    ({"k_rule": np.floor}, "you pruned floor(sparsity · n) weights (int() truncates): k = round(sparsity · n)"),
    ({"k_rule": lambda v: np.floor(v + 0.5)}, "you rounded sparsity · n half up: round() takes a half to the EVEN "
                                               "integer (Python's round, np.round): 2.5 → 2"),
    ({"k_rule": np.ceil}, "you pruned ceil(sparsity · n) weights: k = round(sparsity · n)"),
    ({"sorted_names": True}, "you ranked the tensors in the order of their sorted names: the global ranking "
                             "concatenates them in the dict's own order, so ties fall to the tensor that comes first"),
    ({"threshold": True}, "you pruned by a threshold (score <= the k-th smallest): every weight tied at the "
                          "threshold goes, more than k; rank and take exactly k"),
    ({"late_ties": True}, "ties go the wrong way: among equal scores the LOWER position is pruned first "
                          "(np.argsort(..., kind='stable'))"),
    ({"layer_instead": True}, "you ranked each tensor apart: scope 'global' ranks all tensors together"),
]
TAYLOR_MISTAKES = [
    (lambda w, gs: np.abs(w * sum(gs)), "you summed the gradients before taking |·|: the score is "
                                        "Σ_b |w · g_b|, the absolute value of each batch's term, then the sum"),
    (lambda w, gs: sum(np.abs(g) for g in gs), "your score is Σ|g|, the gradient alone: the first-order "
                                                "Taylor term is w · g (a large gradient on a zero weight costs nothing)"),
    (lambda w, gs: sum((w * g) ** 2 for g in gs), "you squared w·g: the score asked is Σ_b |w · g_b|"),
    (lambda w, gs: np.abs(w * gs[-1]), "you used only the last batch's gradient: add |w · g_b| over all batches"),
]


def _describe(masks, want, what):
    for n in want:
        got = np.asarray(masks[n])
        if got.shape != want[n].shape:
            raise Wrong(f"{what}: the mask of {n!r} has shape {got.shape}, its weight {want[n].shape}")
        if got.dtype != bool:
            raise Wrong(f"{what}: the mask of {n!r} is {got.dtype}; return booleans (True = keep)")
    bad = [n for n in want if not np.array_equal(np.asarray(masks[n]), want[n])]
    n = bad[0]
    got, exp = np.asarray(masks[n]).reshape(-1), want[n].reshape(-1)
    i = int(np.flatnonzero(got != exp)[0])
    pruned = {k: int((~np.asarray(m)).sum()) for k, m in masks.items()}
    return (f"{what}: tensor {n!r}, position {i}: expected {'keep' if exp[i] else 'prune'}, got "
            f"{'keep' if got[i] else 'prune'}; you pruned {pruned[n]} of its {exp.size} weights, expected "
            f"{int((~exp).sum())} ({len(bad)} of {len(want)} tensors differ)")


def _check_masks(masks, want, scores, sparsity, scope, what, taylor=None):
    if not isinstance(masks, dict) or set(masks) != set(want):
        got = sorted(masks) if isinstance(masks, dict) else type(masks).__name__
        raise Wrong(f"{what}: return a dict with the weights' names {sorted(want)}, got {got}")
    if all(np.array_equal(np.asarray(masks[n]), want[n]) for n in want):
        return
    text = _describe(masks, want, what)
    for kw, why in MASK_MISTAKES:
        if all(np.array_equal(np.asarray(masks[n]), m) for n, m in _masks(scores, sparsity, scope, **kw).items()):
            raise Wrong(f"{text} — {why}")
    if taylor is not None:
        weights, grads = taylor
        for fn, why in TAYLOR_MISTAKES:
            s = {n: fn(np.asarray(w, np.float64), grads[n]) for n, w in weights.items()}
            if all(np.array_equal(np.asarray(masks[n]), m) for n, m in masks_from_scores(s, sparsity, scope).items()):
                raise Wrong(f"{text} — {why}")
    raise Wrong(text)


def _run_magnitude(sol, weights, sparsity, scope, what):
    with on_case(sol, what):
        masks = sol.magnitude_masks({n: w.copy() for n, w in weights.items()}, sparsity, scope)
    want = reference().magnitude_masks(weights, sparsity, scope)
    _check_masks(masks, want, _magnitude(weights), sparsity, scope, what)


def _run_taylor(sol, weights, grads, sparsity, scope, what):
    with on_case(sol, what):
        masks = sol.taylor_masks({n: w.copy() for n, w in weights.items()},
                                 {n: [g.copy() for g in gs] for n, gs in grads.items()}, sparsity, scope)
    want = reference().taylor_masks(weights, grads, sparsity, scope)
    _check_masks(masks, want, _taylor(weights, grads), sparsity, scope, what, (weights, grads))


def gpt_weights_and_grads(seed: int, n_batches: int = 3):
    """A tiny GPT's linear weights and each batch's gradients (float64), as the Taylor score needs."""
    cfg = GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=8)
    model = contextvars.Context().run(lambda: GPT(cfg, seed=seed, dtype=np.float64))
    rng = np.random.default_rng(seed)
    params = prunable(model)
    grads = {n: [] for n in params}
    for _ in range(n_batches):
        model.zero_grad()
        x, y = rng.integers(0, 11, (2, 8)), rng.integers(0, 11, (2, 8))
        model(x, y)[1].backward()
        for n, p in params.items():
            grads[n].append(p.grad.copy())
    return {n: p.data.copy() for n, p in params.items()}, grads


SMALL = {"a": np.array([[0.5, -0.1, 0.3], [-0.7, 0.05, 0.2]]), "b": np.array([0.01, -0.02, 0.9, 0.4, -0.03])}
TIED = {"a": np.array([0.2, 0.1, 0.1, 0.3, 0.1, 0.5]), "b": np.array([[0.1, 0.4], [0.1, 0.6]])}
HALF = {"w": np.array([0.3, -0.1, 0.5, 0.2, -0.4])}                  # s·n = 0.5 · 5 = 2.5: round() gives 2
UNSORTED = {"b": np.array([0.1, 0.9]), "a": np.array([0.1, 0.8])}   # the ranking's order is the dict's, b first


def _magnitude_case(weights, sparsity, scope, what):
    return lambda sol: _run_magnitude(sol, weights, sparsity, scope, what)


def check_taylor(sol):
    w, g = gpt_weights_and_grads(7)
    _run_taylor(sol, w, g, 0.5, "layer", "a GPT's weights and 3 batches' gradients, sparsity 0.5, per layer")
    _run_taylor(sol, w, g, 0.3, "global", "a GPT's weights and 3 batches' gradients, sparsity 0.3, global")


def held_out(sol, rng):
    """Another GPT (seed from the grader's), sparsities with fractional s·n, both scopes."""
    w, g = gpt_weights_and_grads(int(rng.integers(1 << 30)), int(rng.integers(2, 5)))
    for scope in ("layer", "global"):
        for s in (float(rng.uniform(0.05, 0.95)), float(rng.choice([0.0, 1.0]))):
            _run_magnitude(sol, w, s, scope, f"held out: magnitude, sparsity {s:.4g}, {scope}")
            _run_taylor(sol, w, g, s, scope, f"held out: Taylor ({len(g[next(iter(g))])} batches), "
                                             f"sparsity {s:.4g}, {scope}")


CHECKS = [
    ("magnitude, per layer: the lowest |w| of each tensor", _magnitude_case(SMALL, 0.4, "layer", "sparsity 0.4, per layer")),
    ("magnitude, global: one ranking over all tensors", _magnitude_case(SMALL, 0.5, "global", "sparsity 0.5, global")),
    ("exactly round(sparsity · n) pruned", _magnitude_case(SMALL, 0.25, "layer", "sparsity 0.25 (k = round(s·n))")),
    ("ties: the lower position first, no threshold", _magnitude_case(TIED, 0.3, "global", "tied scores, sparsity 0.3, "
                                                                                          "global")),
    ("half of 5 weights: round(2.5) = 2, half to even", _magnitude_case(HALF, 0.5, "layer", "sparsity 0.5 of 5 "
                                                                                         "weights (s·n = 2.5)")),
    ("global ties follow the dict's order, not the names'", _magnitude_case(UNSORTED, 0.25, "global",
                                                                           "tied scores in {'b': …, 'a': …}, global")),
    ("Taylor: Σ_b |w · g_b| on a GPT's gradients", check_taylor),
    ("held out: another GPT, other sparsities, both scopes", held_out),
]
