"""A pipeline schedule as plain data: per-rank lists of actions, built and checked without ranks.

DeepSpeed's ``runtime/pipe/schedule.py`` made the point: a schedule is a *program* — a list
of instructions per rank — and the engine that runs it knows nothing about 1F1B or
zero-bubble. Here an instruction is an :class:`Action`:

* ``Action("F", i, s)`` — forward of micro-batch ``i`` through model chunk (stage) ``s``;
* ``Action("B", i, s)`` — its backward: the whole backward, or, when the schedule also has
  ``Action("W", i, s)``, only the input-gradient half that the previous stage waits for;
* ``Action("W", i, s)`` — the weight-gradient half, which nobody waits for (Qi et al. 2023).

``stage`` is the *global* chunk index ``0 … n_stages−1``; ``Schedule.stage_to_rank[s]`` says
which rank holds chunk ``s``. Dependencies follow from the model alone: ``F(i, s)`` needs
``F(i, s−1)``; ``B(i, s)`` needs ``F(i, s)`` and ``B(i, s+1)``; ``W(i, s)`` needs ``B(i, s)``.

:func:`validate` checks a schedule is a program that can run (every pass exactly once, on
the right rank) and :func:`simulate` runs it on an imaginary clock: each rank takes its next
action as soon as the action's inputs exist — exactly what the executor's blocking receives
do — so a schedule that deadlocks here would hang the executor.

**Time unit.** ``simulate``'s times ``t_f``, ``t_b``, ``t_w`` are those of one *stage* of
L/p layers — what one rank holds in 1F1B. A schedule with v chunks per rank (interleaved
1F1B, the V schedules) cuts the model into v·p chunks of L/(v·p) layers, so each of its
passes takes 1/v of that: ZB-V and ZB-H1 do the same work per rank, and their step times
compare directly.
"""
from __future__ import annotations

import dataclasses

OPS = ("F", "B", "W")


@dataclasses.dataclass(frozen=True)
class Action:
    """One instruction of one rank: ``op`` ∈ F, B, W of ``micro_batch`` on chunk ``stage``."""

    op: str
    micro_batch: int
    stage: int

    def __str__(self) -> str:
        return f"{self.op}{self.micro_batch}s{self.stage}"


@dataclasses.dataclass(frozen=True)
class OverlapFB:
    """A forward and a backward of two micro-batches run together on one rank, so that the
    communication of one hides under the compute of the other (DeepSeek-V3's DualPipe;
    torch's ``OVERLAP_F_B`` action with its two ``sub_actions``): see :mod:`.overlap`."""

    forward: Action          # Action("F", i, s)
    backward: Action         # Action("B", j, s′), a whole backward (no W of its own)

    op = "F&B"

    def __str__(self) -> str:
        return f"{self.forward}&{self.backward}"


@dataclasses.dataclass
class Schedule:
    """Every rank's actions in execution order, and which rank holds which chunk."""

    name: str
    ranks: int
    micro_batches: int
    stage_to_rank: list
    actions: list                       # actions[r]: list of Action, rank r's program
    times: tuple = (1.0, 1.0, 1.0)      # the T_F, T_B, T_W the order was built for (only zb_v's depends on them)
    overlap: tuple = ()                 # (F, B) pairs that may run overlapped (DualPipe's), each F just before its B

    @property
    def n_stages(self) -> int:
        return len(self.stage_to_rank)

    @property
    def virtual_stages(self) -> int:
        """Chunks per rank (v of interleaved 1F1B, 2 for the V schedules, else 1)."""
        return self.n_stages // self.ranks

    def stages_of(self, rank: int) -> list:
        """The chunks rank ``rank`` holds, in model order."""
        return [s for s, r in enumerate(self.stage_to_rank) if r == rank]

    @property
    def _split(self) -> set:
        """The (micro_batch, stage) pairs whose backward is split into B and a later W."""
        return {(a.micro_batch, a.stage) for acts in self.actions for a in acts if a.op == "W"}

    def program(self, rank: int, overlap: bool = False) -> list:
        """Rank ``rank``'s actions; with ``overlap``, each of the schedule's (F, B) pairs is one
        :class:`~.overlap.OverlapFB` (torch's ``OVERLAP_F_B``) instead of two actions."""
        acts = self.actions[rank]
        pairs = dict(self.overlap) if overlap else {}
        out, k = [], 0
        while k < len(acts):
            a = acts[k]
            if a in pairs and k + 1 < len(acts) and acts[k + 1] == pairs[a]:
                out.append(OverlapFB(a, acts[k + 1]))
                k += 2
            else:
                out.append(a)
                k += 1
        return out

    def __str__(self) -> str:
        from .gantt import text_gantt      # noqa: PLC0415 (gantt imports this module: cycle)
        return text_gantt(self)


# -- construction helpers shared by the schedule families ------------------------------------
def check_sizes(name: str, ranks: int, micro_batches: int, virtual_stages: int = 1) -> None:
    """The counts every schedule needs: positive integers."""
    for key, value in (("ranks", ranks), ("micro_batches", micro_batches), ("virtual_stages", virtual_stages)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"schedule {name!r}: {key} must be a positive integer, got {value!r}")


def one_chunk_per_rank(ranks: int) -> list:
    return list(range(ranks))


def v_shape(ranks: int) -> list:
    """Two chunks per rank in a V: chunk s < p on rank s, chunk s ≥ p on rank 2p−1−s, so rank 0
    holds the first and the last chunk (embedding and loss on one rank)."""
    return list(range(ranks)) + list(range(ranks - 1, -1, -1))


# -- checking ---------------------------------------------------------------------------------
class ScheduleError(ValueError):
    """A schedule is not a valid program: a pass is missing, repeated, misplaced or stuck."""


def validate(s: Schedule) -> Timeline:
    """Raise :class:`ScheduleError` unless every (micro-batch, chunk) has one F and one B (and at
    most one W) on the rank that holds the chunk, and the program runs without deadlock; return
    its :class:`Timeline` with F = B = W = 1 per stage."""
    seen: dict = {}
    for r, acts in enumerate(s.actions):
        for a in acts:
            if a.op not in OPS:
                raise ScheduleError(f"{s.name}: rank {r} has unknown op {a.op!r} in {a}")
            if not (0 <= a.micro_batch < s.micro_batches and 0 <= a.stage < s.n_stages):
                raise ScheduleError(f"{s.name}: rank {r} has {a}, outside {s.micro_batches} micro-batches × "
                                    f"{s.n_stages} chunks")
            if s.stage_to_rank[a.stage] != r:
                raise ScheduleError(f"{s.name}: {a} is on rank {r} but chunk {a.stage} lives on rank "
                                    f"{s.stage_to_rank[a.stage]}")
            if a in seen:
                raise ScheduleError(f"{s.name}: {a} appears twice (ranks {seen[a]} and {r})")
            seen[a] = r
    for i in range(s.micro_batches):
        for st in range(s.n_stages):
            for op in ("F", "B"):
                if Action(op, i, st) not in seen:
                    raise ScheduleError(f"{s.name}: {op} of micro-batch {i} on chunk {st} is missing")
    for f, b in s.overlap:
        acts = s.actions[s.stage_to_rank[f.stage]]
        k = acts.index(f) if f in acts else -1
        if f.op != "F" or b.op != "B" or (b.micro_batch, b.stage) in s._split or not 0 <= k < len(acts) - 1 \
                or acts[k + 1] != b:
            raise ScheduleError(f"{s.name}: overlapped pair {f}&{b} is not a forward followed on its rank by a "
                                f"whole backward")
    if s.overlap:
        simulate(s, overlap=True)       # the pairs, each waiting for both inputs, must not deadlock either
    return simulate(s)  # raises ScheduleError on a deadlock


@dataclasses.dataclass
class Timeline:
    """Start and end of every action on an imaginary clock, and what follows from them."""

    schedule: Schedule
    events: list            # events[r]: list of (Action, start, end)
    step_time: float
    busy: list              # busy time per rank
    in_flight: list         # peak (micro-batch, chunk) pairs holding activations, per rank

    @property
    def bubble_fraction(self) -> float:
        """1 − Σ busy / (ranks × step time): the idle share of the ranks' time."""
        return 1.0 - sum(self.busy) / (self.schedule.ranks * self.step_time)

    @property
    def peak_in_flight(self) -> list:
        """Per rank, peak micro-batches whose activations are held, in units of one stage of
        L/p layers (a chunk of the interleaved or V schedules counts 1/v)."""
        scale = self.schedule.ranks / self.schedule.n_stages
        return [n * scale for n in self.in_flight]


def simulate(s: Schedule, t_f: float = 1.0, t_b: float = 1.0, t_w: float = 1.0,
             t_comm: float = 0.0, durations: dict | None = None, overlap: bool = False) -> Timeline:
    """Run the schedule on a clock where F, B, W of one stage of L/p layers take ``t_f``,
    ``t_b``, ``t_w`` (a B without a W is the whole backward, ``t_b + t_w``), a pass of one of
    a rank's v chunks 1/v of that, and a message between ranks ``t_comm``; ``durations``
    (Action -> time), when given, is each action's own time instead (see :func:`replay`).

    Each rank executes its list in order; an action starts when the rank is free and its
    inputs have arrived. If no rank can move while actions remain, the schedule deadlocks.
    ``overlap``: each of the schedule's overlapped pairs (:class:`OverlapFB`) starts once the
    inputs of both passes are there, and sends both outputs when both are done, as the
    executor runs it (the compute of the two passes adds up: no communication is modelled
    inside a pass here, so there is nothing to hide)."""
    split = s._split
    chunk = s.ranks / s.n_stages                 # a chunk's share of a stage's layers
    t_f, t_b, t_w = t_f * chunk, t_b * chunk, t_w * chunk
    programs = [s.program(r, overlap) for r in range(s.ranks)]
    end: dict = {}                               # (op, i, stage) -> end time
    pos = [0] * s.ranks
    free = [0.0] * s.ranks
    events = [[] for _ in range(s.ranks)]
    busy = [0.0] * s.ranks
    held = [0] * s.ranks
    peak = [0] * s.ranks
    remaining = sum(len(a) for a in programs)
    while remaining:
        moved = False
        for r in range(s.ranks):
            while pos[r] < len(programs[r]):
                item = programs[r][pos[r]]
                acts = (item.forward, item.backward) if isinstance(item, OverlapFB) else (item,)
                ready = [_inputs_ready(s, a, end, t_comm) for a in acts]
                if None in ready:
                    break
                t = max(free[r], *ready)
                for a in acts:
                    if durations is not None:
                        dur = durations[a]
                    else:
                        dur = {"F": t_f, "W": t_w}.get(a.op, t_b if (a.micro_batch, a.stage) in split else t_b + t_w)
                    events[r].append((a, t, t + dur))
                    t += dur
                    busy[r] += dur
                    if a.op == "F":
                        held[r] += 1
                        peak[r] = max(peak[r], held[r])
                    elif a.op == "W" or (a.micro_batch, a.stage) not in split:
                        held[r] -= 1             # the last pass of this micro-batch frees its activations
                for a in acts:                   # a pair's outputs leave when both passes are done
                    end[(a.op, a.micro_batch, a.stage)] = t
                free[r] = t
                pos[r] += 1
                remaining -= 1
                moved = True
        if not moved:
            stuck = {r: str(programs[r][pos[r]]) for r in range(s.ranks) if pos[r] < len(programs[r])}
            raise ScheduleError(f"{s.name}: deadlock — every rank waits for an input that never comes: {stuck}")
    return Timeline(s, events, max(free), busy, peak)


def replay(s: Schedule, timelines: list) -> Timeline:
    """The executed step again, each action taking the time it took, but every message free:
    what the schedule alone leaves idle. ``timelines[r]``: rank r's executed actions as
    ``(op, micro_batch, stage, start, end)`` (the pipeline engine's measurement)."""
    durations = {Action(op, i, st): t1 - t0 for events in timelines for op, i, st, t0, t1 in events}
    return simulate(s, durations=durations)


def _inputs_ready(s: Schedule, a: Action, end: dict, t_comm: float):
    """Time the inputs of ``a`` are available on its rank, or None if one is not computed yet."""
    deps = []
    if a.op == "F" and a.stage > 0:
        deps.append(("F", a.micro_batch, a.stage - 1))
    elif a.op == "B":
        deps.append(("F", a.micro_batch, a.stage))
        if a.stage < s.n_stages - 1:
            deps.append(("B", a.micro_batch, a.stage + 1))
    elif a.op == "W":
        deps.append(("B", a.micro_batch, a.stage))
    t = 0.0
    for d in deps:
        if d not in end:
            return None
        hop = t_comm if s.stage_to_rank[d[2]] != s.stage_to_rank[a.stage] else 0.0
        t = max(t, end[d] + hop)
    return t
