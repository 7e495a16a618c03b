"""Teacher ranks → student ranks: who serves whom, what travels, how many bytes.

With ``distillation.teacher_ranks: k`` on a world of W ranks, ranks 0 … k−1 hold the
frozen teacher and ranks k … W−1 the students, data parallel among themselves (DDP or a
ZeRO stage over the student group). Student j (its rank in the student group) is served
by teacher rank ``j mod k``. For every micro-batch a student consumes, its teacher runs
the forward pass on exactly that student's slice of the global batch and **sends** what
the loss needs; the student **receives** it before its own forward. Nothing flows back:
the teacher is frozen.

What travels, per micro-batch of b sequences of length s, vocabulary V:

* full soft targets: the teacher's logits, b·s·V values;
* with ``top_k: K``: the teacher's probabilities at temperature T for its K most likely
  tokens, b·s·K values, and their ids, b·s·K indices (uint16 when V ≤ 65 536). The
  student rebuilds a full distribution by spreading the remaining mass ``1 − Σ`` uniformly
  over the V − K other tokens (:class:`~minidist.distill.losses.TopK`);
* with Patient KD: each mapped teacher block's output, b·s·C values per block.

Values travel in the run's precision: 4 bytes in fp32 (8 with ``dtype: float64``), 2 in
fp16/bf16 (their bit patterns, :func:`~minidist.numerics.to_bits`). So the bytes a student
receives per step are ``micro-batches × b·s·(V or K·(value + index bytes)/value bytes) ×
value bytes`` — :func:`payload_bytes`. Co-located runs (``teacher_ranks: 0``, or one
process) build the same payload locally and decode it the same way, so they compute
exactly what a student rank would receive.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..memory import DTYPE_BYTES
from ..numerics import from_bits, to_bits
from .losses import TopK, top_k

TAG_VALUES, TAG_INDICES, TAG_HIDDEN = 40, 41, 42     # p2p tags; hidden block i uses TAG_HIDDEN + i
TAGS = range(TAG_VALUES, TAG_HIDDEN + 64)


def teacher_of(student: int, teacher_ranks: int) -> int:
    """World rank of the teacher serving student ``student`` (0-based in the student group)."""
    return student % teacher_ranks


def students_of(teacher: int, teacher_ranks: int, n_students: int) -> list[int]:
    """Student-group ranks that teacher rank ``teacher`` serves, in the order it serves them."""
    return [j for j in range(n_students) if teacher_of(j, teacher_ranks) == teacher]


def index_dtype(vocab_size: int):
    """The smallest unsigned integer type that holds a token id."""
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def payload_bytes(b: int, s: int, vocab: int, value_bytes: int, top_k: int | None = None,
                  n_embd: int = 0, hidden_blocks: int = 0) -> int:
    """Bytes of one micro-batch's payload (the formula the tests and the report check)."""
    soft = b * s * vocab * value_bytes if top_k is None else \
        b * s * top_k * (value_bytes + np.dtype(index_dtype(vocab)).itemsize)
    return int(soft + hidden_blocks * b * s * n_embd * value_bytes)


@dataclasses.dataclass
class Payload:
    """What a student needs from the teacher for one micro-batch."""

    soft: "np.ndarray | TopK"        # logits (b, s, V), or the top-K probabilities and ids
    hidden: dict                     # {teacher block (1-based): (b, s, C)} for Patient KD


class Wire:
    """Encodes a payload into the arrays that travel (and back), in the run's precision."""

    def __init__(self, dtype: str, vocab_size: int, temperature: float, top_k: int | None):
        self.dtype, self.vocab, self.temperature, self.top_k = dtype, vocab_size, temperature, top_k
        self.sixteen = DTYPE_BYTES[dtype] == 2             # fp16/bf16: send the 16-bit patterns
        self.value_bytes = DTYPE_BYTES[dtype]

    def _enc(self, x):
        return to_bits(x, self.dtype) if self.sixteen else np.ascontiguousarray(x, dtype=self.dtype)

    def _dec(self, x):
        return from_bits(x, self.dtype) if self.sixteen else x

    def encode(self, logits: np.ndarray, hidden: dict) -> list[tuple[int, np.ndarray]]:
        """(tag, array) pairs in sending order: soft targets, [ids], hidden blocks by number."""
        if self.top_k is None:
            out = [(TAG_VALUES, self._enc(logits))]
        else:
            tk = top_k(logits, self.top_k, self.temperature)
            out = [(TAG_VALUES, self._enc(tk.probs)), (TAG_INDICES, tk.indices.astype(index_dtype(self.vocab)))]
        return out + [(TAG_HIDDEN + i, self._enc(hidden[j])) for i, j in enumerate(sorted(hidden))]

    def decode(self, arrays: list[np.ndarray], blocks) -> Payload:
        values = self._dec(arrays[0])
        soft = values if self.top_k is None else TopK(values, arrays[1], self.vocab, self.temperature)
        rest = arrays[1 if self.top_k is None else 2:]
        return Payload(soft, {j: self._dec(a) for j, a in zip(sorted(blocks), rest)})

    def n_arrays(self, blocks) -> int:
        return (1 if self.top_k is None else 2) + len(blocks)


class LocalSource:
    """The teacher on this rank (co-located): encode and decode locally, nothing is sent."""

    def __init__(self, teacher, wire: Wire, blocks):
        self.teacher, self.wire, self.blocks = teacher, wire, tuple(blocks)

    def payload(self, x) -> Payload:
        logits, hidden = self.teacher.forward(x, self.blocks)
        return self.wire.decode([a for _, a in self.wire.encode(logits, hidden)], self.blocks)


class RemoteSource:
    """A student rank's side: receive each micro-batch's payload from its teacher rank."""

    def __init__(self, comm, teacher_rank: int, wire: Wire, blocks, first_wait: float):
        self.comm, self.src, self.wire, self.blocks = comm, teacher_rank, wire, tuple(blocks)
        self.first_wait = first_wait

    def payload(self, x) -> Payload:
        tags = [TAG_VALUES] + ([TAG_INDICES] if self.wire.top_k is not None else []) + \
            [TAG_HIDDEN + i for i in range(len(self.blocks))]
        timeout = self.comm.timeout
        if self.first_wait:
            # the first payload comes only after the teacher has been trained: a long, expected wait
            self.comm.timeout, self.first_wait = max(timeout, self.first_wait), 0.0
        try:
            # why: the teacher's outputs for exactly this student's micro-batch, before its forward
            arrays = [self.comm.recv(self.src, tag=t) for t in tags]
        finally:
            self.comm.timeout = timeout
        return self.wire.decode(arrays, self.blocks)


def serve(comm, teacher, wire: Wire, blocks, batches) -> int:
    """A teacher rank's loop: for each (student world rank, x) in ``batches``, run the forward
    on x and send the payload to that student. Returns the bytes sent."""
    sent = 0
    for dest, x in batches:
        logits, hidden = teacher.forward(x, blocks)
        for tag, arr in wire.encode(logits, hidden):
            # why: the student that consumes this micro-batch needs the teacher's view of it
            comm.send(arr, dest, tag=tag)
            sent += arr.nbytes
    return sent
