"""Flat buffers, buckets and shards: how data-parallel strategies see the parameters.

A strategy never communicates one tensor at a time (hundreds of small messages pay α
each); it packs parameters into **buckets** — contiguous flat buffers of a few million
elements, PyTorch DDP's ``bucket_cap_mb`` and DeepSpeed's ``reduce_bucket_size`` — and
moves a whole bucket per collective.

Buckets are filled in **reverse registration order**: backward produces the gradients of
the last layers first, so the first bucket to be complete is the one holding them
(Li et al. 2020, "PyTorch Distributed", §3.2.3).

**Padding and shards.** ZeRO cuts every bucket of ``n`` elements into ``p`` equal chunks
of ``c = ceil(n / p)`` elements: the bucket is padded with ``p·c − n`` zeros (at most
``p − 1``), exactly the padding of :func:`minidist.distributed.reduce_scatter`. Rank ``r`` owns
elements ``[r·c, (r+1)·c)`` of every bucket, so its shard is ``S = Σ_b c_b`` elements and
the memory formulas of ZeRO (Ψ/N per rank) hold with Ψ replaced by the padded
``Σ_b p·c_b`` — never more than ``(p−1)`` extra elements per bucket. With one bucket
(the default 5e8 elements) rank ``r`` owns ``[r·S, (r+1)·S)`` of the whole flat model.

Padding elements are zero in the parameters and in the gradients, so every optimizer in
:mod:`minidist.optim` leaves them at zero.
"""
from __future__ import annotations

import numpy as np

from ...memory import DTYPE_BYTES


def element_bytes(p) -> int:
    """Bytes per element of a parameter as accounted: its ``dtype_tag`` (an emulated format
    such as "fp16") or, without one, the NumPy itemsize (4 for float32, 8 for float64)."""
    tag = getattr(p, "dtype_tag", None)
    return DTYPE_BYTES[tag] if tag else np.dtype(p.dtype).itemsize


class Bucket:
    """A group of parameters seen as one flat buffer of ``padded = p·chunk`` elements.

    ``offsets[i]`` is where parameter ``i`` starts in the flat buffer; ``shapes`` and
    ``numels`` are remembered so that ZeRO-3 can free a parameter's data entirely.
    """

    def __init__(self, index: int, params: list, world_size: int):
        self.index = index
        self.params = list(params)
        self.shapes = [p.shape for p in self.params]
        self.numels = [int(np.prod(s)) for s in self.shapes]
        self.offsets = list(np.cumsum([0] + self.numels[:-1]).astype(int))
        self.numel = sum(self.numels)
        self.world_size = world_size
        self.chunk = -(-self.numel // world_size)          # c = ceil(n / p)
        self.padded = self.chunk * world_size
        self.dtype = self.params[0].dtype
        self.bytes_per_element = element_bytes(self.params[0])
        self.ready = 0                                     # grads completed in this backward

    def grad_ready(self) -> bool:
        """Count one more parameter whose gradient is complete; True (and reset) when the
        whole bucket is ready, i.e. when its collective can be launched."""
        self.ready += 1
        if self.ready < len(self.params):
            return False
        self.ready = 0
        return True

    def shard_range(self, rank: int) -> tuple[int, int]:
        return rank * self.chunk, (rank + 1) * self.chunk

    # -- packing and unpacking ---------------------------------------------------------------
    def flatten(self, arrays) -> np.ndarray:
        """Concatenate ``arrays`` (one per parameter, or None = zeros) into a padded flat buffer."""
        flat = np.zeros(self.padded, dtype=self.dtype)                       # (p·c,)
        for a, off, n in zip(arrays, self.offsets, self.numels):
            if a is not None:
                flat[off:off + n] = a.reshape(-1)
        return flat

    def flat_params(self) -> np.ndarray:
        return self.flatten([p.data for p in self.params])

    def flat_grads(self) -> np.ndarray:
        return self.flatten([p.grad for p in self.params])

    def views(self, flat: np.ndarray) -> list:
        """Per-parameter views into ``flat`` with the parameters' shapes (no copy)."""
        return [flat[off:off + n].reshape(s) for off, n, s in zip(self.offsets, self.numels, self.shapes)]

    def copy_into_params(self, flat: np.ndarray) -> None:
        for p, v in zip(self.params, self.views(flat)):
            p.data[...] = v

    def copy_into_grads(self, flat: np.ndarray) -> None:
        for p, v in zip(self.params, self.views(flat)):
            p.grad[...] = v

    def __repr__(self):
        return (f"Bucket({self.index}: {len(self.params)} params, {self.numel} elements, "
                f"padded {self.padded} = {self.world_size}×{self.chunk})")


def make_buckets(params, bucket_size: int, world_size: int) -> list[Bucket]:
    """Buckets of at most ``bucket_size`` elements, in reverse order of ``params`` (the order
    backward completes gradients). A parameter larger than ``bucket_size`` gets its own."""
    if bucket_size <= 0:
        raise ValueError(f"bucket size must be a positive number of elements, got {bucket_size}")
    buckets, current, size = [], [], 0
    for p in reversed(list(params)):
        if current and size + p.size > bucket_size:
            buckets.append(Bucket(len(buckets), current, world_size))
            current, size = [], 0
        current.append(p)
        size += p.size
    if current:
        buckets.append(Bucket(len(buckets), current, world_size))
    return buckets


def shard_elements(buckets) -> int:
    """S: the elements one rank owns, summed over buckets (Ψ/N up to padding)."""
    return sum(b.chunk for b in buckets)


def padded_elements(buckets) -> int:
    """Ψ plus the padding: Σ_b p·c_b."""
    return sum(b.padded for b in buckets)
