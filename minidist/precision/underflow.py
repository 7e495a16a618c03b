"""How much gradient a low-precision format loses to underflow, with and without loss scaling.

fp16's smallest subnormal is 2^-24: a gradient smaller than half of that rounds to exactly 0
(Micikevicius et al. 2018, Figure 3). These helpers measure it on real gradients — the share of
nonzero gradients flushed, and the share of Σ|g| they carried — for the demo and notebook 04.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..numerics.quantize import quantize


class GradientUnderflow(NamedTuple):
    """How much of a set of fp32 gradients a format would flush to zero."""

    fraction: float         # of the nonzero gradients that become exactly 0
    mass: float             # share of Σ|g| carried by those gradients
    count: int
    total: int


def gradient_underflow(grads, dtype: str = "fp16", scale: float = 1.0) -> GradientUnderflow:
    """Round ``scale · g`` to ``dtype`` and count the nonzero gradients that became 0.

    ``grads``: fp32 reference gradients (one array or a list). With ``scale = 1`` this is
    what storing them in fp16 loses; with a loss scale it is what survives scaling.
    """
    arrays = [grads] if isinstance(grads, np.ndarray) else [g for g in grads if g is not None]
    g = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    g = g[np.isfinite(g) & (g != 0)]
    zeroed = quantize(g * scale, dtype) == 0
    mass = float(np.abs(g[zeroed]).sum() / np.abs(g).sum()) if g.size else 0.0
    return GradientUnderflow(float(zeroed.mean()) if g.size else 0.0, mass, int(zeroed.sum()), int(g.size))


def lost_gradient_mass(reference, measured) -> GradientUnderflow:
    """Compare a low-precision run's gradients with fp32 ``reference`` ones (same step):
    the nonzero reference gradients that came out exactly 0, and their share of Σ|g|."""
    ref = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in reference])
    got = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in measured])
    nonzero = ref != 0
    lost = nonzero & (got == 0)
    total = float(np.abs(ref).sum())
    return GradientUnderflow(float(lost.sum() / max(nonzero.sum(), 1)),
                             float(np.abs(ref[lost]).sum() / total) if total else 0.0,
                             int(lost.sum()), int(nonzero.sum()))
