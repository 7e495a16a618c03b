"""minidist's schedules against torch.distributed.pipelining's, without torch: the action
orders of torch's schedule classes are stored in tests/data/torch_pipeline_orders.json
(written by tests/make_pipeline_reference.py) and simulated on minidist's clock beside
minidist's own, with equal pass times and with uneven ones. Every schedule torch also has
is never slower than torch's order on the same (p, m) and holds no more micro-batches."""
import json
import pathlib

import pytest

from minidist.parallel.pipeline import Action, Schedule, build_schedule, simulate, validate
from minidist.parallel.pipeline.schedule import one_chunk_per_rank, v_shape
from minidist.parallel.pipeline.v_schedules import zb_v_program

pytestmark = pytest.mark.pipeline

REFERENCE = json.loads((pathlib.Path(__file__).with_name("data") / "torch_pipeline_orders.json").read_text())
# T_F, T_B, T_W of one stage: equal; B = 2F; B = 1.5F with W = 0.5F; W = 2F; and a few more
TIMES = [(1, 1, 1), (1, 2, 1), (1, 1.5, 0.5), (1, 1, 2), (1, 3, 1), (2, 1, 1), (1, 0.5, 0.5), (1, 2, 2)]
SAME_ORDER = {"gpipe", "1f1b", "zb_h1", "dualpipe_v"}   # minidist's list is torch's, for every stored (p, m)


def parse(token: str) -> Action:
    op, rest = token[0], token[1:]
    i, stage = rest.split("s")
    return Action(op, int(i), int(stage))


def torch_schedule(name: str, key: str) -> Schedule:
    p, m = map(int, key.split(","))
    rows = REFERENCE["schedules"][name]["orders"][key]
    chunks = 1 if name in ("gpipe", "1f1b", "zb_h1") else 2
    stages = (one_chunk_per_rank(p) if chunks == 1 else v_shape(p) if name in ("zb_v", "dualpipe_v")
              else [s % p for s in range(2 * p)])
    return Schedule(REFERENCE["schedules"][name]["torch_class"], p, m, stages,
                    [[parse(t) for t in row.split()] for row in rows])


def cases():
    for name, entry in REFERENCE["schedules"].items():
        for key in entry["orders"]:
            yield name, key


def idle(tl) -> float:
    """Idle time per rank, in units of one stage's pass."""
    return tl.step_time - sum(tl.busy) / tl.schedule.ranks


def test_the_reference_covers_every_shared_schedule():
    assert set(REFERENCE["schedules"]) == {"gpipe", "1f1b", "interleaved_1f1b", "zb_h1", "zb_v", "dualpipe_v"}
    assert {int(k.split(",")[0]) for k in REFERENCE["schedules"]["zb_v"]["orders"]} == {2, 3, 4, 8}


@pytest.mark.parametrize("name", list(REFERENCE["schedules"]))
def test_never_slower_than_torch_and_no_more_memory(name):
    for _, key in (c for c in cases() if c[0] == name):
        theirs = torch_schedule(name, key)
        validate(theirs)                                       # torch's list is a valid program here too
        p, m = theirs.ranks, theirs.micro_batches
        if name in SAME_ORDER:
            assert build_schedule(name, p, m).actions == theirs.actions, f"{name} {key}"
        for times in TIMES:
            ours = build_schedule(name, p, m, 2 if name == "interleaved_1f1b" else 1, times=times)
            a, b = simulate(ours, *times), simulate(theirs, *times)
            where = f"{name} p={p} m={m} times={times}: ours {a.step_time:g}, torch's {b.step_time:g}"
            assert a.step_time <= b.step_time + 1e-9, where
            assert max(a.peak_in_flight) <= max(b.peak_in_flight) + 1e-9, where


def test_zb_v_hand_made_order_is_torchs():
    """zb_v's F/B order is torch's ScheduleZBVZeroBubble (the W passes then move with the times),
    padded to max(2p−1, m) micro-batches like torch's, so any m runs."""
    for _, key in (c for c in cases() if c[0] == "zb_v"):
        theirs = torch_schedule("zb_v", key)
        p, m = theirs.ranks, theirs.micro_batches
        assert [zb_v_program(r, p, m) for r in range(p)] == theirs.actions, key
        ours = build_schedule("zb_v", p, m, times=(1, 2, 1))
        assert [[a for a in acts if a.op != "W"] for acts in ours.actions] == \
               [[a for a in acts if a.op != "W"] for acts in theirs.actions], key


def test_the_issues_example_and_where_zb_v_gains():
    """Idle time per rank, in units of one stage's forward, p = 4: m = 8 with B = 2F, zb_v built
    for those times idles 3 like torch's order; with W = 2F it idles only the staircase, 1.5
    (torch's order: 2.5); with m = p = 4 and equal times 1.5 (torch's, padded to 2p−1: 3)."""
    def both(p, m, times):
        ours = simulate(build_schedule("zb_v", p, m, times=times), *times)
        return idle(ours), idle(simulate(torch_schedule("zb_v", f"{p},{m}"), *times))
    assert both(4, 8, (1, 2, 1)) == pytest.approx((3, 3))
    assert both(4, 8, (1, 1, 2)) == pytest.approx((1.5, 2.5))
    assert both(4, 4, (1, 1, 1)) == pytest.approx((1.5, 3))
