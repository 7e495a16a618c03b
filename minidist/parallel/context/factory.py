"""The layer factory of a context-parallel rank: the one GPT of :mod:`minidist.model` on this
rank's ``s/cp`` positions of every sequence.

:class:`ContextParallelLayers` wraps another factory — the plain :class:`~minidist.layers.Layers`
or Megatron's :class:`~minidist.parallel.tensor.TensorParallelLayers` — and changes only what
depends on the sequence (Megatron-LM's ``get_batch_on_this_cp_rank`` plus its CP attention)::

    GPT(config, seed, layers=ContextParallelLayers(TensorParallelLayers(grid.tp), grid.cp, "ring"))

* ``context_tokens`` — the embedding reads this rank's tokens only, at their own positions
  (zigzag chunks for ring attention, :mod:`.layout`; consecutive ones for Ulysses), so every
  layer outside attention (LayerNorm, MLP, dropout, the LM head and the loss) works on ``s/cp``
  tokens, untouched;
* ``attention`` — the core becomes :func:`.ring.ring_attention` or
  :func:`.ulysses.ulysses_attention` over ``grid.cp``;
* ``cross_entropy`` — this rank's targets; its loss is ``cp · Σ_mine / N`` (N: the targets
  of the whole sequence), so that the mean over the cp ranks is the one-rank loss and the
  gradients averaged over dp × cp (the trainer's data-parallel group) are the one-rank
  gradients;
* ``dropout`` — a token-region mask is the one-rank mask at this rank's positions (drawn
  whole, then sliced, as :mod:`minidist.parallel.tensor.random` does for tensor parallelism).

Parameters are untouched: every cp rank holds the wrapped factory's (replicated) layers.
A forward without gradients (evaluation, generation with a KV cache) runs the whole sequence
on every cp rank — the same numbers, no messages — as the pipeline engine evaluates its
whole model.
"""
from __future__ import annotations

import contextlib

import numpy as np

from ...tensor import is_grad_enabled
from ..tensor.random import SlicedGenerator
from .layout import positions, split_problem
from .ring import ring_attention
from .ulysses import heads_problem, ulysses_attention

ALGORITHMS = ("ring", "ulysses")
LAYOUT = {"ring": "zigzag", "ulysses": "contiguous"}


class PositionsGenerator:
    """``rng.random(shape)`` as if axis 1 (positions) held the whole sequence, keeping this
    rank's positions: a dropout mask over this rank's tokens that is the one-rank mask's."""

    def __init__(self, rng, factory: "ContextParallelLayers"):
        self.rng, self.factory = rng, factory

    @property
    def key(self):                      # the trainer's per-step key lives on the wrapped generator
        return self.rng.key

    @key.setter
    def key(self, value) -> None:
        self.rng.key = value

    def random(self, shape) -> np.ndarray:
        mine = self.factory.positions
        if mine is None:
            return self.rng.random(shape)
        whole = list(shape)
        whole[1] = self.factory.seq                           # the one-rank shape
        return np.take(self.rng.random(tuple(whole)), mine, axis=1)


class ContextParallelLayers:
    """The layers of one context-parallel rank (``group`` = ``grid.cp``) around ``inner``, the
    factory of its tensor-parallel layout; everything not about the sequence is ``inner``'s."""

    def __init__(self, inner, group, algorithm: str = "ring"):
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown context-parallel algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
        self.inner, self.group, self.algorithm = inner, group, algorithm
        self.layout = LAYOUT[algorithm]
        self.positions = None           # this forward's positions (None: the whole sequence)
        self.seq = None                 # the whole sequence's length

    def __getattr__(self, name):
        if name == "inner":             # not yet set (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    cp = property(lambda self: self.group.size)

    # -- regions -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def sequence(self, T: int):
        """One forward over ``T`` positions: split over the cp ranks when it records gradients.
        The positions stay set after the forward: a recomputation in backward
        (activation checkpointing) runs on the same ones."""
        self.positions, self.seq = None, T
        if is_grad_enabled():
            problem = split_problem(T, self.cp, self.layout)
            if problem:
                raise ValueError(problem.replace("ring attention", f"context parallelism ({self.algorithm})"))
            self.positions = positions(self.group.rank, self.cp, T, self.layout)
        with self.inner.sequence(T if self.positions is None else len(self.positions)):
            yield

    def context_tokens(self, ids, start: int = 0):
        if self.positions is None:
            return self.inner.context_tokens(ids, start)
        if start:
            raise ValueError("context parallelism splits whole sequences; a KV cache runs without gradients")
        return np.ascontiguousarray(ids[:, self.positions]), self.positions    # (B, T/cp): my tokens

    def attention(self, q, k, v, is_causal: bool = True, dropout_p: float = 0.0, rng=None):
        if self.positions is None:
            return self.inner.attention(q, k, v, is_causal=is_causal, dropout_p=dropout_p, rng=rng)
        if self.algorithm == "ring":
            return ring_attention(q, k, v, self.group, is_causal, self.layout, dropout_p, rng)
        return ulysses_attention(q, k, v, self.group, is_causal, dropout_p, rng)

    def cross_entropy(self, logits, targets):
        if self.positions is None:
            return self.inner.cross_entropy(logits, targets)
        t = np.asarray(targets)
        mine = t[:, self.positions]                           # (B, T/cp): my positions' targets
        loss = self.inner.cross_entropy(logits, mine)         # mean over my targets
        counted, counted_mine = int((t != -1).sum()), int((mine != -1).sum())
        weight = self.cp * counted_mine / max(counted, 1)     # 1 when every rank has as many targets
        if weight != 1.0:
            loss = loss * np.asarray(weight, dtype=loss.data.dtype)
        return loss

    def full_logits(self, logits):
        if self.positions is not None:
            raise ValueError("under context parallelism each rank holds the logits of its positions only: give "
                             "targets, or run the forward under no_grad (every rank then reads the whole sequence)")
        return self.inner.full_logits(logits)

    def dropout(self, p: float, seed: int, region: str = "tokens"):
        """The wrapped factory's dropout; in the token regions its mask is taken at this
        rank's positions (beneath a tensor-parallel slice, which cuts those further)."""
        d = self.inner.dropout(p, seed, region)
        if region == "tokens":
            holder = d.rng if isinstance(d.rng, SlicedGenerator) else d
            holder.rng = PositionsGenerator(holder.rng, self)
        return d


def config_problem(cfg: dict, world_size: int, seq_len: int) -> tuple[str, str] | None:
    """The first thing wrong with ``parallel.context`` of a (merged) config, or None: cp must
    divide the world with the other dimensions, the sequence split into cp (Ulysses) or
    2·cp (ring) chunks, and, for Ulysses, every tensor-parallel rank's heads into cp."""
    par, m = cfg["parallel"], cfg["model"]
    cp, algorithm = par["context"]["size"], par["context"]["algorithm"]
    if cp == 1:
        return None
    others = par["tensor"] * par["pipeline"]
    if world_size % (cp * others):
        return "parallel.context.size", (f"world size {world_size} is not divisible by tensor × pipeline × context "
                                         f"= {others * cp}: use a world size that is a multiple of {others * cp} "
                                         f"or another parallel.context.size")
    problem = split_problem(seq_len, cp, LAYOUT[algorithm])
    if problem:
        return "parallel.context.size", problem.replace("ring attention", f"context parallelism ({algorithm})")
    local = seq_len // cp
    if par["sequence_parallel"] and local % par["tensor"]:
        return "parallel.sequence_parallel", (f"each context-parallel rank holds {local} positions, not divisible "
                                              f"by parallel.tensor {par['tensor']}: choose a sequence length that is "
                                              f"a multiple of {cp * par['tensor']}")
    if algorithm == "ulysses" and m["n_head"] % par["tensor"] == 0:
        problem = heads_problem(m["n_head"] // par["tensor"], cp)
        if problem:
            return "parallel.context.size", problem
    return None


def layers_for(cfg: dict, grid, inner):
    """This rank's factory: ``inner`` (plain or Megatron's), wrapped over ``grid.cp`` when cp > 1."""
    context = cfg["parallel"]["context"]
    if context["size"] == 1:
        return inner
    return ContextParallelLayers(inner, grid.cp, context["algorithm"])
