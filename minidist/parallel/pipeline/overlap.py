"""DualPipe's overlapped pair: one micro-batch's forward chunk run *during* another's backward.

DeepSeek-AI 2024, DeepSeek-V3 technical report §3.2.1 (DualPipe, Figure 4): a forward chunk
and a backward chunk of two different micro-batches are run together on one rank, their
pieces interleaved so that the communication of one (the expert all-to-all dispatch and
combine, the pipeline's sends) travels while the other computes. torch.distributed.pipelining
names this action ``OVERLAP_F_B`` (its ``ScheduleDualPipeV`` emits it with the forward and the
backward as ``sub_actions``); here it is :class:`~.schedule.OverlapFB`, and
:meth:`~.schedule.Schedule.program` groups a schedule's pairs into it.

**How it runs.** minidist computes every number eagerly, one op after the other; only time
is simulated (:mod:`minidist.device`). The two passes of a pair run as two *lanes* — two
threads of the rank that take turns, never at the same moment — on one clock with one
compute stream and one comm stream, as on one GPU:

* a lane runs its ops on the compute stream until it must **wait for communication** (a
  blocking collective's ``Work.wait``, a receive: ``clock.wait("compute", t)``);
* there it hands the turn to the other lane, which computes while the first lane's message
  is on the wire; when the other lane waits in turn, the first resumes at
  ``max(compute stream, t)`` — its wait is only what the other's compute did not cover.

The turn passes at *every* such wait, whatever the times, so every rank of a group hands over
at the same points and their collectives meet in the same order (DualPipe's interleaving is
fixed by hand too). The numbers are those of the sequential F then B, bit for bit: the same
ops on the same arrays, only their simulated start times move.

Without overlap a pair costs ``compute(F) + comm(F) + compute(B) + comm(B)`` (every blocking
collective exposed); overlapped it costs less by the **hidden communication**: the time the
comm stream carries one lane's message while the compute stream runs the other lane's ops
(:func:`hidden_time`, measured on the pair's own spans).
"""
from __future__ import annotations

import contextvars
import threading

from ...device import Clock
from ...distributed import let_others_run

FORWARD, BACKWARD = 0, 1
LANE_NAMES = ("forward", "backward")
_lane: contextvars.ContextVar = contextvars.ContextVar("minidist_overlap_lane", default=None)


class _LaneClock(Clock):
    """The rank's clock while a pair runs: the same streams, but a compute-stream wait inside a
    lane hands the turn to the other lane first."""

    def __init__(self, base: Clock, trace, lanes: "_Lanes"):
        super().__init__(trace)
        self.streams = base.streams          # the same dict: time moves on the rank's own streams
        self.lanes = lanes

    def wait(self, stream: str, until: float) -> float:
        if stream == "compute" and _lane.get() is not None:
            self.lanes.switch(_lane.get())   # why: this lane waits on the wire; the other computes
        return super().wait(stream, until)


class _LaneTrace:
    """The rank's trace while a pair runs: every event still goes to it, and each compute op
    and each collective or message is also noted as a span of the lane that ran it."""

    def __init__(self, base, lanes: "_Lanes"):
        self.base, self.lanes = base, lanes
        self.rank, self.enabled, self.events = base.rank, base.enabled, base.events

    def complete(self, name, cat, stream, start, end, args=None):
        self.base.complete(name, cat, stream, start, end, args)
        lane = _lane.get()
        if lane is not None and cat in ("compute", "comm"):
            self.lanes.spans.append((lane, cat, start, end))


class _Lanes:
    """Two threads of one rank taking turns (a baton): only the lane whose turn it is runs."""

    def __init__(self, probe=None):
        self.cond = threading.Condition()
        self.turn = FORWARD
        self.alive = [True, True]
        self.errors: list = [None, None]
        self.spans: list = []                # (lane, "compute" or "comm", start, end)
        self.switches = 0
        self.probe = probe                   # () -> number: what each lane changes it by is summed
        self.delta = [0.0, 0.0]
        self._mark = 0.0

    def _take(self, lane: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn == lane)
        if self.probe is not None:
            self._mark = self.probe()

    def _give(self, lane: int, to: int) -> None:
        if self.probe is not None:
            self.delta[lane] += self.probe() - self._mark
        with self.cond:
            self.turn = to
            self.cond.notify_all()

    def switch(self, lane: int) -> None:
        other = 1 - lane
        if not self.alive[other]:
            return
        self.switches += 1
        self._give(lane, other)
        self._take(lane)

    def run(self, fns: tuple) -> list:
        """Run ``fns[0]`` (the forward) and ``fns[1]`` (the backward) as the two lanes, the
        forward first; return their results once both have finished."""
        results: list = [None, None]

        def main(lane):
            _lane.set(lane)
            self._take(lane)
            try:
                results[lane] = fns[lane]()
            except BaseException as exc:     # noqa: BLE001 - re-raised by run() below
                self.errors[lane] = exc
            finally:
                self.alive[lane] = False
                self._give(lane, 1 - lane)

        # each lane runs in a copy of the rank's context: its device, autocast and grad mode
        threads = [threading.Thread(target=contextvars.copy_context().run, args=(main, lane),
                                    name=f"{threading.current_thread().name}-{LANE_NAMES[lane]}", daemon=True)
                   for lane in (FORWARD, BACKWARD)]
        with let_others_run():               # the lanes wait for messages: other ranks must run meanwhile
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        for exc in self.errors:
            if exc is not None:
                raise exc
        return results


def run_pair(device, forward, backward, probe=None) -> dict:
    """Run ``forward()`` and ``backward()`` overlapped on ``device``'s clock (see the module
    docstring). Returns their results and the pair's measurements: start, end, each lane's
    spans on each stream, the hidden communication time, and what ``probe()`` (e.g. the
    activation bytes held) changed by in each lane."""
    base, base_trace = device.clock, device.trace
    lanes = _Lanes(probe)
    t0 = base.now("compute")
    device.trace = _LaneTrace(base_trace, lanes)
    device.clock = _LaneClock(base, device.trace, lanes)
    try:
        results = lanes.run((forward, backward))
    finally:
        device.clock, device.trace = base, base_trace
    t1 = base.now("compute")
    return {"results": results, "t0": t0, "t1": t1, "spans": lanes.spans, "switches": lanes.switches,
            "hidden": hidden_time(lanes.spans), "delta": lanes.delta,
            "compute": [sum(e - s for ln, st, s, e in lanes.spans if ln == lane and st == "compute")
                        for lane in (FORWARD, BACKWARD)],
            "comm": sum(e - s for _, st, s, e in lanes.spans if st == "comm")}


def hidden_time(spans: list) -> float:
    """How long one lane's communication (comm stream) ran while the *other* lane computed
    (compute stream): the length of the intersection, summed over both directions."""
    total = 0.0
    for lane in (FORWARD, BACKWARD):
        comm = _union([(s, e) for ln, st, s, e in spans if ln == lane and st == "comm"])
        comp = _union([(s, e) for ln, st, s, e in spans if ln != lane and st == "compute"])
        total += sum(max(0.0, min(e1, e2) - max(s1, s2)) for s1, e1 in comm for s2, e2 in comp)
    return total


def _union(intervals: list) -> list:
    out: list = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        elif e > s:
            out.append((s, e))
    return out
