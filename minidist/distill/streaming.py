"""Teacher ranks → student ranks: who serves whom, what travels, how many bytes.

With ``distillation.teacher_ranks: k`` on a world of W ranks, ranks 0 … k−1 hold the
frozen teacher and ranks k … W−1 the students, laid out among themselves as any run is
(data parallel, ZeRO, tensor and pipeline parallel: D replicas of t × p ranks). Replica d is
served by teacher rank ``d mod k``. For every micro-batch a replica consumes, its teacher runs
the forward pass once on exactly that replica's slice of the global batch and **sends** each
of the replica's ranks what *its* part of the loss needs (:func:`student_need`); the rank
**receives** it before its forward. Nothing flows back: the teacher is frozen.

* without a pipeline every rank takes the KD loss — each tensor rank of the replica (the head
  gathers the whole vocabulary: the loss needs every logit) receives the soft targets and,
  with Patient KD, every matched teacher block's hidden states;
* with a pipeline the soft targets go to the ranks of the last chunk's stage (its tensor
  ranks), and each matched teacher block's states to the ranks of the stage holding the
  student block it is matched with (:mod:`.student`); a stage that needs nothing gets nothing.

What travels, per micro-batch of b sequences of length s, vocabulary V:

* full soft targets: the teacher's logits, b·s·V values;
* with ``top_k: K``: the teacher's probabilities at temperature T for its K most likely
  tokens, b·s·K values, and their ids, b·s·K indices (uint16 when V ≤ 65 536). The
  student rebuilds a full distribution by spreading the remaining mass ``1 − Σ`` uniformly
  over the V − K other tokens (:class:`~minidist.distill.losses.TopK`);
* with Patient KD: each mapped teacher block's output, b·s·C values per block (the whole
  sequence, under sequence parallelism too: the student gathers its states to compare).

Values travel in the run's precision: 4 bytes in fp32 (8 with ``dtype: float64``), 2 in
fp16/bf16 (their bit patterns, :func:`~minidist.numerics.to_bits`). So, with m micro-batches
per step, P matched blocks and w bytes a value, **the stream carries per step**

    D · t · m · [b·s·(V·w, or K·(w + index bytes)) + P·b·s·C·w]   bytes   (:func:`stream_bytes`)

in every layout: each of a replica's t tensor columns receives the soft targets once (on the
stage taking the KD loss) and each matched block's states once (on the stage holding it); one
column's share is :func:`payload_bytes` per micro-batch. Co-located runs (``teacher_ranks:
0``, or one process) build the same payload locally and decode it the same way, so they
compute exactly what a student rank would receive.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..memory import DTYPE_BYTES
from ..parallel.grid import GridShape
from ..parallel.pipeline import build_schedule
from ..parallel.pipeline.stage import split_layers
from ..numerics import from_bits, to_bits
from .losses import TopK, top_k

TAG_VALUES, TAG_INDICES, TAG_HIDDEN = 40, 41, 42     # p2p tags; hidden block i uses TAG_HIDDEN + i
TAGS = range(TAG_VALUES, TAG_HIDDEN + 64)


def teacher_of(replica: int, teacher_ranks: int) -> int:
    """World rank of the teacher serving the student replica ``replica`` (its data-parallel index)."""
    return replica % teacher_ranks


def replicas_of(teacher: int, teacher_ranks: int, replicas: int) -> list[int]:
    """Student replicas that teacher rank ``teacher`` serves, in the order it serves them."""
    return [d for d in range(replicas) if teacher_of(d, teacher_ranks) == teacher]


def index_dtype(vocab_size: int):
    """The smallest unsigned integer type that holds a token id."""
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def payload_bytes(b: int, s: int, vocab: int, value_bytes: int, top_k: int | None = None,
                  n_embd: int = 0, hidden_blocks: int = 0, soft: bool = True) -> int:
    """Bytes of one micro-batch's payload to one rank (the formula the tests and the report
    check): the soft targets (unless ``soft`` is False) and ``hidden_blocks`` blocks' states."""
    logits = b * s * vocab * value_bytes if top_k is None else \
        b * s * top_k * (value_bytes + np.dtype(index_dtype(vocab)).itemsize)
    return int(logits * soft + hidden_blocks * b * s * n_embd * value_bytes)


def stream_bytes(replicas: int, tp: int, micro_batches: int, b: int, s: int, vocab: int, value_bytes: int,
                 top_k: int | None = None, n_embd: int = 0, hidden_blocks: int = 0) -> int:
    """Bytes the teacher ranks send per step, all of them together: D · t · m · one column's
    payload (the soft targets once, every matched block's states once; see the module)."""
    return replicas * tp * micro_batches * payload_bytes(b, s, vocab, value_bytes, top_k, n_embd, hidden_blocks)


@dataclasses.dataclass(frozen=True)
class Need:
    """What one student rank's part of the loss needs from the teacher per micro-batch."""

    soft: bool                       # the soft targets (this rank takes the KD loss)
    blocks: tuple                    # teacher blocks (1-based) whose hidden states it compares


def student_need(cfg: dict, pairs, student: int, students: int) -> tuple[int, Need]:
    """(replica, :class:`Need`) of student-group rank ``student`` of ``students`` laid out as
    ``cfg["parallel"]`` says (the Trainer's grid: tensor fastest, then data, then pipeline).
    ``pairs``: Patient KD's (student block, teacher block) pairs, 1-based."""
    par = cfg["parallel"]
    at = GridShape(students, tp=par["tensor"], pp=par["pipeline"]).coords(student)
    if par["pipeline"] == 1:
        return at["dp"], Need(True, tuple(sorted(j for _, j in pairs)))
    sched = build_schedule(par["schedule"], par["pipeline"], cfg["gradient_accumulation_steps"],
                           par["virtual_stages"], times=par["pass_times"])
    layers = split_layers(cfg["model"]["n_layer"], sched.n_stages)
    mine = sched.stages_of(at["pp"])
    held = {i for st in mine for i in layers[st]}
    return at["dp"], Need(sched.n_stages - 1 in mine, tuple(sorted(j for i, j in pairs if i - 1 in held)))


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

    def encode(self, logits: np.ndarray, hidden: dict, soft: bool = True) -> list[tuple[int, np.ndarray]]:
        """(tag, array) pairs in sending order: soft targets, [ids] (unless ``soft`` is False),
        hidden blocks by number."""
        out = []
        if soft and self.top_k is None:
            out = [(TAG_VALUES, self._enc(logits))]
        elif soft:
            tk = top_k(logits, self.top_k, self.temperature)
            out = [(TAG_VALUES, self._enc(tk.probs)), (TAG_INDICES, tk.indices.astype(index_dtype(self.vocab)))]
        return out + [(TAG_HIDDEN + i, self._enc(hidden[j])) for i, j in enumerate(sorted(hidden))]

    def tags(self, need: Need) -> list[int]:
        """The tags of :meth:`encode`'s arrays for ``need``, in its order."""
        soft = ([TAG_VALUES] + ([TAG_INDICES] if self.top_k is not None else [])) if need.soft else []
        return soft + [TAG_HIDDEN + i for i in range(len(need.blocks))]

    def decode(self, arrays: list[np.ndarray], blocks, soft: bool = True) -> Payload:
        n = (1 if self.top_k is None else 2) if soft else 0
        values = None
        if soft:
            values = self._dec(arrays[0])
            values = values if self.top_k is None else TopK(values, arrays[1], self.vocab, self.temperature)
        return Payload(values, {j: self._dec(a) for j, a in zip(sorted(blocks), arrays[n:])})


class LocalSource:
    """The teacher on this rank (co-located): encode and decode locally, nothing is sent."""

    def __init__(self, teacher, wire: Wire, blocks):
        self.teacher, self.wire, self.blocks = teacher, wire, tuple(blocks)

    def payload(self, x) -> Payload:
        logits, hidden = self.teacher.forward(x, self.blocks)
        return self.wire.decode([a for _, a in self.wire.encode(logits, hidden)], self.blocks)


class RemoteSource:
    """A student rank's side: receive each micro-batch's payload (what ``need`` says) from its
    teacher rank, in the order the teacher sends them (the replica's micro-batches in order)."""

    def __init__(self, comm, teacher_rank: int, wire: Wire, need: Need, first_wait: float):
        self.comm, self.src, self.wire, self.need = comm, teacher_rank, wire, need
        self.first_wait = first_wait

    def payload(self, x) -> Payload:
        timeout = self.comm.timeout
        if self.first_wait:
            # the first payload comes only after the teacher has been trained: a long, expected wait
            self.comm.timeout, self.first_wait = max(timeout, self.first_wait), 0.0
        try:
            # why: the teacher's outputs for exactly this student's micro-batch, before its forward
            arrays = [self.comm.recv(self.src, tag=t) for t in self.wire.tags(self.need)]
        finally:
            self.comm.timeout = timeout
        return self.wire.decode(arrays, self.need.blocks, self.need.soft)


def serve(comm, teacher, wire: Wire, batches) -> int:
    """A teacher rank's loop: for each (x, [(student world rank, :class:`Need`), …]) in
    ``batches``, run the forward on x once and send each of those students what it needs.
    Returns the bytes sent."""
    sent = 0
    for x, receivers in batches:
        blocks = tuple(sorted({j for _, need in receivers for j in need.blocks}))
        logits, hidden = teacher.forward(x, blocks)
        for dest, need in receivers:
            for tag, arr in wire.encode(logits, {j: hidden[j] for j in need.blocks}, need.soft):
                # why: the student that consumes this micro-batch needs the teacher's view of it
                comm.send(arr, dest, tag=tag)
                sent += arr.nbytes
    return sent
