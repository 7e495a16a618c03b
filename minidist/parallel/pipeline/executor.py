"""The executor: runs any :class:`~.schedule.Schedule` on the ranks of ``grid.pp``, for real.

It knows nothing about 1F1B or zero-bubble: it walks this rank's action list in order.

* ``F(i, s)`` — take chunk s's input (token ids on chunk 0; otherwise the activation the
  previous chunk sent, received here, or handed over locally when both chunks are on this
  rank), run the chunk under autocast, keep the graph for B, and send the output on.
* ``B(i, s)`` — backward from the chunk's output with the gradient the next chunk sent
  back (from the loss on the last chunk), then send the gradient of the chunk's *input*
  back. Where the schedule also has ``W(i, s)``, only input gradients are computed now:
  ``backward(defer_weight_grad=True)`` returns the weight-gradient work, and
* ``W(i, s)`` runs it.
* ``F&B`` (:class:`~.schedule.OverlapFB`, with ``parallel.overlap_f_b``): DualPipe's pair, a
  forward and a backward of two micro-batches run as two lanes that take turns at every
  wait for communication (:mod:`.overlap`); each lane waits for its own input and sends its
  own output, so those messages travel under the other lane's compute too.

**Communication, one batch per action** (Megatron's ``_batched_p2p_ops``, picotron's
``bidirectional_pipeline_communicate``): after each action the rank posts, in one
:meth:`~minidist.distributed.Communicator.batch_isend_irecv`, the sends of what the action
produced and the receive of what its *next* action needs; that receive is waited for just
before the next action runs, and the sends at the end of the step (as torch's pipelining
runtime does). So a rank blocks only in a receive, until its peer has computed the data —
exactly the waits of :func:`~.schedule.simulate` — and a schedule that passes
:func:`~.schedule.validate` cannot hang here, whether a send completes at once (buffered)
or only once its receive is posted (``spawn(..., rendezvous=True)``, as MPI_Ssend and NCCL):
by the end of the step every receive has been posted. (Not modelled: NCCL runs the
operations of one stream in order, so an unwaited send can hold back a later receive.)

On the wire an activation or its gradient is b·s·h elements, at the training format's size
(2 bytes in fp16/bf16: the values already are fp16/bf16 numbers — autocast rounded them —
so 16 bits carry them exactly).

Measured per step: every action's start and end on the simulated compute clock (the
executed timeline), busy time, and — from the memory tracker — how many micro-batches'
activations the rank holds (bytes still charged for each (micro-batch, chunk) divided by
what its F charged).
"""
from __future__ import annotations

import contextlib

import numpy as np

from ...autocast import autocast
from ...tensor import Tensor
from .overlap import run_pair
from .schedule import OverlapFB
from .stage import carry_loss

MAX_TAG = 1 << 14


def to_wire(x: np.ndarray, fmt: str | None) -> np.ndarray:
    """The 16-bit array that carries fp16/bf16 values (exactly); other formats as they are."""
    if fmt == "fp16":
        return x.astype(np.float16)
    if fmt == "bf16":                                   # the upper half of each float32
        return (np.ascontiguousarray(x, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return x


def from_wire(x: np.ndarray, fmt: str | None) -> np.ndarray:
    if fmt == "fp16":
        return x.astype(np.float32)
    if fmt == "bf16":
        return (x.astype(np.uint32) << 16).view(np.float32)
    return x


class PipelineExecutor:
    """Runs ``schedule`` on this rank (``comm`` = the pipeline group, its rank = pipeline rank)."""

    def __init__(self, schedule, chunks: dict, comm, device, overlap: bool = False):
        self.s, self.chunks, self.comm, self.device = schedule, chunks, comm, device
        self.overlap = overlap              # run the schedule's (F, B) pairs overlapped (:mod:`.overlap`)
        self.fmt = None                     # the step's wire format, set by :meth:`run`
        self.rank = comm.rank if comm is not None else 0
        self.split = schedule._split

    def _tag(self, i: int, stage: int, backward: bool) -> int:
        """One tag per (micro-batch, boundary, direction): messages can never be confused."""
        return (2 * (i * self.s.n_stages + stage) + backward) % MAX_TAG

    def run(self, inputs: list, targets: list, scale_loss, before_forward=None, fmt: str | None = None,
            around=None) -> dict:
        """One step's schedule. ``scale_loss(loss)`` gives the tensor backward starts from;
        ``before_forward(i)`` is called before every forward (dropout keys); ``around(action)``,
        a context manager, wraps the compute of every action (ZeRO-3 gathers and releases the
        chunk's parameters in it: :meth:`~minidist.parallel.data.zero3.ZeRO3.pipeline_action`). Returns the
        micro-batches' losses (last chunk's rank only), the executed timeline and busy time.
        ``fmt``: "fp16"/"bf16" under mixed precision (autocast and the wire format), else None."""
        self.fmt = fmt
        clock, mem = self.device.clock, self.device.memory
        s, me = self.s, self.rank
        inbox: dict = {}           # (i, stage, "act"|"grad") -> array handed over on this rank
        x_in, out, work = {}, {}, {}
        held, charged = {}, {}     # activation bytes per (i, stage), and what its F charged
        losses, events, sends, pairs = {}, [], [], []
        aux: dict = {}             # micro-batch -> MoE losses of this rank's chunks but the last
        experts: dict = {}         # MoE layer id -> load per expert and drops over the step
        busy, peak, t_begin = 0.0, 0.0, clock.now("compute")
        posted: dict = {}          # (i, stage, kind) -> receive posted with the previous action's sends
        around = around or (lambda a: contextlib.nullcontext())

        def forward(a, data) -> list:
            i, st = a.micro_batch, a.stage
            if st > 0:
                data = x_in[(i, st)] = Tensor(data, requires_grad=True)
            if before_forward is not None:
                before_forward(i)
            with around(a), autocast(self.fmt):
                y = self.chunks[st].forward(data, targets[i] if st == s.n_stages - 1 else None)
                extra = self.chunks[st].moe_loss()            # this chunk's MoE aux + z losses, or None
                self.chunks[st].moe_statistics(experts)       # load per expert, drops
                if extra is not None and st == s.n_stages - 1:
                    y = y + extra
                elif extra is not None:
                    aux[i] = aux.get(i, 0.0) + float(extra.data)
                    y = carry_loss(y, scale_loss(extra))
            if st == s.n_stages - 1:
                losses[i] = float(y.data)
                out[(i, st)] = scale_loss(y)
                return []
            out[(i, st)] = y
            return [(y.data, i, st + 1, "act")]

        def backward(a, grad) -> list:
            i, st = a.micro_batch, a.stage
            with around(a):
                w = out.pop((i, st)).backward(grad, defer_weight_grad=(i, st) in self.split)
            if w is not None:
                work[(i, st)] = w
            return [(x_in.pop((i, st)).grad, i, st - 1, "grad")] if st > 0 else []

        def take(a):
            """The input of F or B ``a``: token ids, or what another chunk sent (received here)."""
            if a.op == "F":
                return inputs[a.micro_batch] if a.stage == 0 else \
                    self._receive(a.micro_batch, a.stage - 1, "act", inbox, posted)
            return None if a.stage == s.n_stages - 1 else self._receive(a.micro_batch, a.stage + 1, "grad", inbox,
                                                                        posted)

        program = s.program(me, self.overlap)
        for k, item in enumerate(program):
            before = mem.current["activations"]
            if isinstance(item, OverlapFB):
                def lane(a, pass_):
                    def run():
                        # the input's wait and the output's sends belong to the pass: they too
                        # can travel while the other lane computes
                        return self._communicate(pass_(a, take(a)), None, inbox, posted)
                    return run
                f, b = item.forward, item.backward
                pair = run_pair(self.device, lane(f, forward), lane(b, backward),
                                probe=lambda: mem.current["activations"])
                sends += pair["results"][0] + pair["results"][1]
                outgoing = []
                t0 = min([st for _, kind, st, _ in pair["spans"] if kind == "compute"], default=pair["t0"])
                mid = t0 + pair["compute"][0]  # the Gantt chart's split: F's compute, then the rest
                done = [(f, t0, mid, pair["delta"][0]), (b, mid, pair["t1"], pair["delta"][1])]
                pairs.append({"forward": f, "backward": b, **{key: pair[key] for key in
                              ("t0", "t1", "spans", "hidden", "compute", "comm", "switches")}})
            else:
                a = item
                data = take(a) if a.op != "W" else None
                t0 = clock.now("compute")
                if a.op == "F":
                    outgoing = forward(a, data)
                elif a.op == "B":
                    outgoing = backward(a, data)
                else:
                    with around(a):
                        work.pop((a.micro_batch, a.stage)).run()
                    outgoing = []
                done = [(a, t0, None, None)]
            sends += self._communicate(outgoing, program[k + 1] if k + 1 < len(program) else None, inbox, posted)
            t1 = clock.now("compute")
            busy += t1 - done[0][1]
            total = mem.current["activations"] - before
            for a, a0, a1, delta in done:
                events.append((a, a0, t1 if a1 is None else a1))
                key = (a.micro_batch, a.stage)
                delta = total if delta is None else delta
                held[key] = held.get(key, 0) + delta
                if a.op == "F":
                    charged[key] = max(delta, 1)
            peak = max(peak, sum(b / charged[k] for k, b in held.items() if b > 0))
        for req in sends:
            req.wait()
        return {"losses": [losses[i] for i in sorted(losses)], "events": events, "busy": busy,
                "moe_losses": sum(aux.values()) / len(inputs), "moe": experts,
                "t_begin": t_begin, "t_end": clock.now("compute"), "pairs": pairs,
                "peak_in_flight": peak * s.ranks / s.n_stages}

    def _communicate(self, outgoing: list, nxt, inbox: dict, posted: dict) -> list:
        """One batch: the sends of what an action produced and the receive the next action
        ``nxt`` needs (outputs for a chunk on this rank go to ``inbox``, no message).
        Returns the send requests, waited for at the end of the step."""
        ops = []
        for x, i, to_stage, kind in outgoing:
            peer = self.s.stage_to_rank[to_stage]
            if peer == self.rank:                     # the next chunk is on this rank: no message
                inbox[(i, to_stage, kind)] = x
                continue
            from_stage = to_stage - 1 if kind == "act" else to_stage + 1
            # why: chunk ``to_stage`` lives on rank ``peer``; it needs this activation for its forward
            # (kind "act") or this gradient of its output for its backward (kind "grad")
            ops.append(("isend", to_wire(x, self.fmt), peer,
                        self._tag(i, min(from_stage, to_stage), kind == "grad")))
        needs = []                                    # (action, what it receives); both passes of a pair
        for a in ((nxt.forward, nxt.backward) if isinstance(nxt, OverlapFB) else (nxt,)):
            need = self._remote_input(a)
            if need is not None:
                i, from_stage, kind = need
                # why: posted now, with this action's sends, so that a neighbour sending to this rank
                # while this rank sends to it never waits for a receive that is not posted yet
                ops.append(("irecv", None, self.s.stage_to_rank[from_stage],
                            self._tag(i, min(from_stage, a.stage), kind == "grad")))
                needs.append((a, need))
        reqs = self.comm.batch_isend_irecv(ops) if ops else []
        for a, need in reversed(needs):
            posted[(need[0], a.stage, need[2])] = reqs.pop()
        return reqs

    def _remote_input(self, a):
        """(micro-batch, producing stage, kind) of the message action ``a`` receives, or None
        when it needs none (a first forward, the last chunk's backward, a W, an input made on
        this rank)."""
        if a is None or a.op == "W":
            return None
        from_stage = a.stage - 1 if a.op == "F" else a.stage + 1
        if not 0 <= from_stage < self.s.n_stages or self.s.stage_to_rank[from_stage] == self.rank:
            return None
        return a.micro_batch, from_stage, "act" if a.op == "F" else "grad"

    def _receive(self, i: int, from_stage: int, kind: str, inbox: dict, posted: dict) -> np.ndarray:
        to_stage = from_stage + 1 if kind == "act" else from_stage - 1
        if (i, to_stage, kind) in inbox:
            return inbox.pop((i, to_stage, kind))
        req = posted.pop((i, to_stage, kind), None)
        if req is None:                               # the step's first action: nothing posted it
            peer = self.s.stage_to_rank[from_stage]
            # why: this chunk's input (or its output's gradient) was computed by chunk ``from_stage`` on ``peer``
            req = self.comm.irecv(peer, self._tag(i, min(from_stage, to_stage), kind == "grad"))
        return from_wire(req.wait(), self.fmt)
