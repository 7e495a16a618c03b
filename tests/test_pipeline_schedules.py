"""Pipeline schedules as data (no ranks): every schedule is a valid program for p ∈ {2,3,4,8}
and the micro-batch counts it supports, and its unit-time bubble and memory equal the
textbook's (Qi et al. 2023; Narayanan et al. 2021); zb_v built for other pass times keeps
its memory limit and is never slower than its hand-made order; the text Gantt chart is
drawn to scale."""
import random
import re

import pytest

from minidist.parallel.pipeline import (SCHEDULES, Action, Schedule, ScheduleError, build_schedule, replay,
                                       simulate, validate)
from minidist.parallel.pipeline.gantt import cells_per_unit
from minidist.parallel.pipeline.v_schedules import zb_v, zb_v_program

pytestmark = pytest.mark.pipeline

RANKS = (2, 3, 4, 8)


def supported(name, p):
    """The micro-batch counts the tests try for schedule ``name`` on ``p`` ranks."""
    if name == "interleaved_1f1b":
        return [p, 2 * p, 3 * p]
    if name == "zb_v":                                   # any m, like torch's (it pads to max(2p−1, m))
        return [1, 2, p - 1 or 1, p, 2 * p - 1, 2 * p, 2 * p + 1, 3 * p, 4 * p]
    if name == "dualpipe_v":
        return [2 * p, 2 * p + 1, 3 * p, 4 * p]
    return [1, 2, p - 1 or 1, p, p + 1, 2 * p, 3 * p + 1]


def cases():
    for name in SCHEDULES:
        for p in RANKS:
            for m in sorted(set(supported(name, p))):
                yield name, p, m


def gpipe_bubble(p, m):
    return (p - 1) / (m + p - 1)


@pytest.mark.parametrize("name,p,m", list(cases()))
def test_every_schedule_is_a_valid_program(name, p, m):
    s = build_schedule(name, p, m, virtual_stages=2 if name == "interleaved_1f1b" else 1)
    validate(s)                                         # one F, one B (and ≤ one W), no deadlock
    n_passes = sum(len(a) for a in s.actions)
    splits = sum(a.op == "W" for acts in s.actions for a in acts)
    assert n_passes == 2 * m * s.n_stages + splits
    assert sorted(s.stage_to_rank) == sorted(list(range(p)) * (s.n_stages // p))
    tl = simulate(s)
    b = tl.bubble_fraction
    if name == "naive":
        assert b == pytest.approx((p - 1) / p)
        assert tl.peak_in_flight == [1] * p
    elif name == "gpipe":
        assert b == pytest.approx(gpipe_bubble(p, m))
        assert tl.peak_in_flight == [m] * p
    elif name == "1f1b":
        assert b == pytest.approx(gpipe_bubble(p, m))
        assert tl.peak_in_flight == [min(p - r, m) for r in range(p)]
    elif name == "interleaved_1f1b":
        v = 2
        assert b == pytest.approx((p - 1) / (v * m + p - 1))
        if m > p:                                        # Korthikanti et al. 2022 §4.2.3
            assert tl.peak_in_flight[0] == pytest.approx(p + (p - 1) / v)
    else:
        one_f = simulate(build_schedule("1f1b", p, m)).bubble_fraction
        h1 = simulate(build_schedule("zb_h1", p, m)).bubble_fraction
        assert b < one_f
        if name == "zb_h1" and m >= p:                   # bubble (p−1)(T_F+T_B−T_W): a third of 1F1B's
            assert b == pytest.approx((p - 1) / (3 * m + p - 1))
            assert max(tl.peak_in_flight) == p           # 1F1B's memory
        if name in ("zb_h1", "zb_h2") and m < p:         # fewer micro-batches idle more than the formula
            assert b > (p - 1) / (3 * m + p - 1)
        if name == "zb_h2":
            assert b <= h1 + 1e-12
            assert max(tl.peak_in_flight) <= 2 * p - 1
        if name in ("zb_v", "dualpipe_v") and m >= p:    # half-size chunks: the V's lower bound
            assert b == pytest.approx((p - 1) / (6 * m + p - 1))
            assert b < h1
        if name == "zb_v":
            assert max(tl.peak_in_flight) == min(p, m)   # 2p chunks of L/(2p) layers: 1F1B's memory
        if name == "dualpipe_v":
            assert max(tl.peak_in_flight) == p + 0.5


@pytest.mark.parametrize("name", SCHEDULES)
def test_lower_bound_no_synchronous_schedule_can_beat(name):
    """No schedule of the same shape can do better than the staircase: rank p−1 cannot start
    before p−1 chunk forwards, rank 0 ends with the last backward; all reach it for m ≥ 2p."""
    p, m = 4, 8
    s = build_schedule(name, p, m, virtual_stages=2 if name == "interleaved_1f1b" else 1)
    tl = simulate(s)
    chunks = s.n_stages // p
    work = 3 * m * chunks                                # F + B + W per chunk-micro-batch
    bound = (p - 1) / (work + p - 1)
    assert tl.bubble_fraction >= bound - 1e-12
    if name.startswith("zb") or name == "dualpipe_v":
        assert tl.bubble_fraction == pytest.approx(bound)


def test_zb_h2_fills_each_ranks_span():
    """ZB-H2 (m ≥ 2p−1): no idle unit between a rank's first and last pass."""
    tl = simulate(build_schedule("zb_h2", 4, 8))
    for r, events in enumerate(tl.events):
        span = events[-1][2] - events[0][1]
        assert span == pytest.approx(tl.busy[r]), f"rank {r} idles inside its span"


def test_stage_to_rank_shapes():
    assert build_schedule("interleaved_1f1b", 4, 8, 2).stage_to_rank == [0, 1, 2, 3, 0, 1, 2, 3]
    assert build_schedule("zb_v", 3, 6).stage_to_rank == [0, 1, 2, 2, 1, 0]
    assert build_schedule("1f1b", 3, 4).actions[2][:2] == [Action("F", 0, 2), Action("B", 0, 2)]


def test_text_gantt():
    text = str(build_schedule("1f1b", 4, 8))
    rows = [line for line in text.splitlines() if line.startswith("rank")]
    assert len(rows) == 4
    assert rows[0].split("|")[1].split()[:4] == ["F0", "F1", "F2", "F3"]
    assert "bubble 0.273" in text                          # 3/11


@pytest.mark.parametrize("name,times", [("zb_v", (1, 1, 1)), ("zb_h1", (1, 1, 1)), ("interleaved_1f1b", (1, 1, 1)),
                                        ("1f1b", (1, 1, 1)), ("zb_v", (1, 1.5, 0.5)), ("dualpipe_v", (2, 1, 1)),
                                        ("interleaved_1f1b", (1, 2, 1))])
def test_text_gantt_to_scale(name, times):
    """A chunk's pass is drawn 1/v as long as a stage's: the chart has step × cells-per-unit
    cells per row, and the printed step is the simulation's, in units of one stage's pass."""
    v = 3 if name == "interleaved_1f1b" else 1
    s = build_schedule(name, 3, 6, v, times=times)
    tl = simulate(s, *times)
    text = str(s)
    q = cells_per_unit(s)
    for line in (x for x in text.splitlines() if x.startswith("rank")):
        assert len(line.split("|")[1].split()) == round(tl.step_time * q)
    step = float(re.search(r"step ([\d.]+) units", text).group(1))
    assert step == pytest.approx(tl.step_time, abs=1e-3)
    assert f"a cell is {'1 unit' if q == 1 else f'1/{q} unit'}" in text


def test_chunk_passes_count_by_their_size():
    """With equal times ZB-V (2 chunks per rank) and ZB-H1 do the same work per rank: the V's
    step is the shorter one, not twice as long (p = 4, m = 8: 25.5 against 27 units)."""
    v, h1 = simulate(build_schedule("zb_v", 4, 8)), simulate(build_schedule("zb_h1", 4, 8))
    assert (v.step_time, h1.step_time) == (25.5, 27)
    assert v.busy == h1.busy == [24.0] * 4
    inter = simulate(build_schedule("interleaved_1f1b", 2, 4, 3), 3, 3, 3)
    assert {round(b - a, 9) for events in inter.events for _, a, b in events} == {1, 2}   # F 1, B + W 2


@pytest.mark.parametrize("name", SCHEDULES)
def test_replay_removes_the_messages_time(name):
    """replay: the executed actions with their own durations and free messages — a run whose
    messages took 0.3 units replays as the same schedule with messages that take none."""
    s = build_schedule(name, 4, 8, 2 if name == "interleaved_1f1b" else 1)
    slow = simulate(s, 1, 2, 1, t_comm=0.3)
    timelines = [[(a.op, a.micro_batch, a.stage, t0, t1) for a, t0, t1 in events] for events in slow.events]
    free = replay(s, timelines)
    assert free.step_time == pytest.approx(simulate(s, 1, 2, 1).step_time)
    assert free.busy == pytest.approx(slow.busy)
    assert free.step_time <= slow.step_time


def test_zb_v_memory_limit_and_times():
    """zb_v keeps its memory limit (p micro-batches by default, or ``max_in_flight``) whatever the
    times, and is never slower than its hand-made order (the one torch runs) for any times."""
    rng = random.Random(0)
    for _ in range(30):
        p, m = rng.choice([2, 3, 4, 8]), rng.randint(1, 20)
        times = tuple(round(rng.uniform(0.3, 3), 2) for _ in range(3))
        limit = rng.choice([None, p + 0.5, p + 1, 2 * p])
        s = zb_v(p, m, times, limit)
        tl = validate(s)
        tl = simulate(s, *times)
        assert max(tl.peak_in_flight) <= (p if limit is None else limit), (p, m, times, limit)
        hand = Schedule("zb_v", p, m, s.stage_to_rank, [zb_v_program(r, p, m) for r in range(p)])
        assert tl.step_time <= simulate(hand, *times).step_time + 1e-9, (p, m, times, limit)
    assert build_schedule("zb_v", 4, 8, times=(1, 2, 1)).times == (1, 2, 1)
    for bad in ((1, 0, 1), (1, 2), "fast"):
        with pytest.raises(ValueError, match="three positive numbers"):
            build_schedule("zb_v", 2, 4, times=bad)
    with pytest.raises(ValueError, match="at least the 4 micro-batches"):
        zb_v(4, 8, max_in_flight=3)


def test_zero_bubble_with_fewer_micro_batches_than_ranks_idles_more_than_its_formula():
    """README: (p−1)/(3m+p−1) holds for m ≥ p; p = 2, m = 1 runs F, F, B, B, W in a chain: 0.4."""
    for name in ("zb_h1", "zb_h2"):
        assert simulate(build_schedule(name, 2, 1)).bubble_fraction == pytest.approx(0.4)


def test_numpy_integer_sizes_build_the_same_schedule_with_python_ints():
    import numpy as np
    for name in ("1f1b", "interleaved_1f1b", "zb_v"):
        v = 2 if name == "interleaved_1f1b" else 1
        got = build_schedule(name, np.int64(2), np.int32(4), virtual_stages=np.int64(v))
        want = build_schedule(name, 2, 4, virtual_stages=v)
        assert got.actions == want.actions and type(got.ranks) is int and type(got.micro_batches) is int


def test_aliases_and_unknown_names():
    assert build_schedule("Schedule1F1B", 2, 4).name == "1f1b"
    assert build_schedule("ScheduleZBVZeroBubble", 2, 4).name == "zb_v"
    assert build_schedule("ScheduleDualPipeV", 2, 4).name == "dualpipe_v"
    with pytest.raises(ValueError, match="choose one of naive, gpipe, 1f1b"):
        build_schedule("fancy", 2, 4)


@pytest.mark.parametrize("name,use", [("ScheduleInterleavedZeroBubble", "'zb_h1'"), ("zb1p", "'zb_h1'"),
                                      ("ZB-2p", "'zb_h2'")])
def test_names_of_schedules_minidist_does_not_build_are_refused(name, use):
    """The paper's searched ZB-1p/ZB-2p and torch's multi-chunk interleaved zero bubble are not
    the hand-made one-chunk ZB-H1/ZB-H2: the name is refused, saying what to use."""
    with pytest.raises(ValueError, match=f"does not build.*{use}"):
        build_schedule(name, 2, 4)


@pytest.mark.parametrize("name,m,match", [("dualpipe_v", 3, "at least 2 × pipeline ranks = 4"),
                                          ("dualpipe_v", 2, "at least 2 × pipeline ranks"),
                                          ("interleaved_1f1b", 3, "multiple of the pipeline ranks")])
def test_micro_batches_a_schedule_cannot_run(name, m, match):
    with pytest.raises(ValueError, match=match):
        build_schedule(name, 2, m, virtual_stages=2 if name == "interleaved_1f1b" else 1)


def test_validator_catches_broken_programs():
    good = build_schedule("1f1b", 2, 2)
    missing = Schedule("x", 2, 2, [0, 1], [good.actions[0][:-1], good.actions[1]])
    with pytest.raises(ScheduleError, match="B of micro-batch 1 on chunk 0 is missing"):
        validate(missing)
    wrong_rank = Schedule("x", 2, 1, [0, 1], [[Action("F", 0, 0), Action("B", 0, 0), Action("F", 0, 1)],
                                              [Action("B", 0, 1)]])
    with pytest.raises(ScheduleError, match="chunk 1 lives on rank 1"):
        validate(wrong_rank)
    # rank 1 waits for B before doing its F: B(0, 1) needs F(0, 1) — a deadlock
    dead = Schedule("x", 2, 1, [0, 1], [[Action("F", 0, 0), Action("B", 0, 0)],
                                        [Action("B", 0, 1), Action("F", 0, 1)]])
    with pytest.raises(ScheduleError, match="deadlock"):
        validate(dead)


@pytest.mark.parametrize("p,m,advice", [(2, 1, "use 2"), (4, 3, "use 4"), (4, 5, "use 4 or 8")])
def test_interleaved_names_the_micro_batch_counts_that_run(p, m, advice):
    """m must be a multiple of p: the message offers the nearest multiples (one when m < p; it
    said "use 2 or 2")."""
    from minidist.parallel.pipeline.interleaved import interleaved_1f1b
    with pytest.raises(ValueError, match=f"{advice}$"):
        interleaved_1f1b(p, m)


@pytest.mark.parametrize("p,m", [(4, 4), (4, 6), (4, 7), (4, 8), (3, 5), (2, 3)])
def test_zb_h2_idles_inside_a_ranks_span_only_below_2p_minus_1(p, m):
    """README: from m ≥ 2p−1 ZB-H2 leaves no idle unit inside any rank's span (its bubble
    formula holds from m ≥ p); at p = m = 4 the ranks idle 3, 2, 1, 0 inside theirs."""
    from minidist.parallel.pipeline import build_schedule, simulate
    tl = simulate(build_schedule("zb_h2", p, m))
    inside = [max(e for _, _, e in ev) - min(s for _, s, _ in ev) - busy for ev, busy in zip(tl.events, tl.busy)]
    want = [0.0] * p if m >= 2 * p - 1 else [float(p - 1 - r) for r in range(p)]
    assert inside == pytest.approx(want, abs=1e-12)
