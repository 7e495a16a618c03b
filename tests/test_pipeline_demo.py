"""The demo chapter 'pipeline' on 4 in-process ranks: its table's theory equals the textbook
formulas (written here), what it measured on the simulated clock stays within a stated bound of
the theory, and its figures are written."""
import pytest

from minidist import distributed as dist
from minidist.defaults import SCHEDULES
from minidist.demo import pipeline as chapter

pytestmark = [pytest.mark.pipeline, pytest.mark.timeout(120)]

P = 4
M = chapter.TABLE_M * P                      # the table's micro-batches
V = chapter.V
SPLIT = {"zb_h1", "zb_h2", "zb_v", "dualpipe_v"}    # schedules with a W pass
# measured − theory: F, B and W of a chunk differ by a few per cent here (the chapter prints
# them), and the last rank also computes the loss
BOUND = 0.015


def textbook(name, p, m):
    """(bubble fraction, peak in flight per rank) with T_F = T_B = T_W and a synchronous flush."""
    if name == "naive":
        return (p - 1) / p, [1] * p
    if name == "gpipe":
        return (p - 1) / (m + p - 1), [m] * p
    if name == "1f1b":
        return (p - 1) / (m + p - 1), [min(p - r, m) for r in range(p)]
    if name == "interleaved_1f1b":                        # m > p: rank 0 holds p + (p−1)/v
        return (p - 1) / (V * m + p - 1), [p + (p - 1) / V - 2 * r / V for r in range(p)]
    if name == "zb_h1":
        return (p - 1) / (3 * m + p - 1), [p] * p
    if name == "zb_h2":
        return (p - 1) / (3 * m + p - 1), [2 * p - 1] * p
    return (p - 1) / (6 * m + p - 1), [p] * p if name == "zb_v" else [p + 0.5] * p


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    return dist.spawn(chapter.run, P, out)[0], out


def test_table_theory_is_the_textbook_and_measured_is_close(result):
    res, _ = result
    rows = {r["schedule"]: r for r in res["rows"]}
    assert list(rows) == list(SCHEDULES)
    for name, r in rows.items():
        bubble, in_flight = textbook(name, P, M)
        assert r["m"] == M
        assert r["bubble_theory"] == pytest.approx(bubble, abs=1e-12), name
        assert r["in_flight_theory"] == pytest.approx(in_flight), name
        gap = r["bubble_measured"] - r["bubble_theory"]
        assert -0.002 <= gap <= BOUND, f"{name}: measured {r['bubble_measured']:.4f}"
        measured = r["in_flight_measured"]
        if name in SPLIT:          # after a split B only what W needs stays: never above theory
            assert all(x <= t + 1e-9 for x, t in zip(measured, r["in_flight_theory"])), name
            assert measured[0] == pytest.approx(in_flight[0]), name
        else:                      # the memory tracker counts whole micro-batches
            assert measured == pytest.approx(in_flight, abs=1e-9), name
    step = {name: r["step_ms"] for name, r in rows.items()}
    assert step["gpipe"] == pytest.approx(step["1f1b"])               # same bubble, same time
    assert step["naive"] > step["1f1b"] > step["interleaved_1f1b"] > step["zb_h1"] > step["dualpipe_v"]
    assert max(step["zb_v"], step["dualpipe_v"]) < min(step["zb_h1"], step["zb_h2"])


def test_timelines_hold_every_action(result):
    res, _ = result
    for r in res["rows"]:
        planned, executed = r["planned"], r["executed"]
        assert sorted(b[:4] for b in planned) == sorted(b[:4] for b in executed), r["schedule"]
        chunks = 2 if r["schedule"] in ("interleaved_1f1b", "zb_v", "dualpipe_v") else 1
        # the planned chart to scale: a chunk's forward is 1/chunks of a stage's unit
        assert {round(b[5] - b[4], 9) for b in planned if b[1] == "F"} == {1 / chunks}, r["schedule"]
        count = {op: sum(b[1] == op for b in executed) for op in "FBW"}
        assert count["F"] == count["B"] == M * P * chunks, r["schedule"]      # one F, one B per chunk-micro-batch
        if r["schedule"] == "dualpipe_v":                                      # splits only the B of its tail
            assert 0 < count["W"] < M * P * chunks
        else:
            assert count["W"] == (M * P * chunks if r["schedule"] in SPLIT else 0), r["schedule"]
        # the executed clock: the rank's actions never overlap, and the busy share is 1 − bubble
        busy = 0.0
        for rank in range(P):
            spans = sorted((b[4], b[5]) for b in executed if b[0] == rank)
            assert all(e0 <= s1 + 1e-12 for (_, e0), (s1, _) in zip(spans, spans[1:]))
            busy += sum(e - s for s, e in spans)
        assert 1 - busy / (P * r["step_ms"]) == pytest.approx(r["bubble_measured"], abs=1e-9)
    planned_step = {r["schedule"]: max(b[5] for b in r["planned"]) for r in res["rows"]}
    assert planned_step["zb_v"] == 25.5 < planned_step["zb_h1"] == 27           # same work, less idle


def test_sweep_shrinks_the_bubble_and_figures_are_written(result):
    res, out = result
    for name in SCHEDULES:
        pts = sorted((r["m"], r["bubble_measured"]) for r in res["sweep"] if r["schedule"] == name)
        assert len(pts) >= 2, name
        if name != "naive":
            assert all(b1 < b0 for (_, b0), (_, b1) in zip(pts, pts[1:])), name
    for name in ("06_pipeline_schedules.png", "06_bubble_vs_microbatches.png"):
        assert (out / name).stat().st_size > 20_000
