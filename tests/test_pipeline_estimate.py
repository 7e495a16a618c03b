"""The estimator's pipeline figures (minidist.estimate.pipeline) agree with the schedules
themselves: for every schedule and p ∈ {2, 3, 4, 8}, the bubble of a synchronous step and
the peak in-flight micro-batches per rank equal the simulation of build_schedule's action
lists — in closed form where the module states one (the textbook formulas are written here,
not read off the code), simulated where it says so — and no schedule beats the staircase.
`python -m minidist.estimate --pp N --schedule S --micro-batches M` prints them."""
import json
import random

import pytest

from minidist.estimate.cli import main
from minidist.estimate.pipeline import pipeline_bubble, runnable, staircase
from minidist.parallel.pipeline import SCHEDULES, build_schedule, simulate

pytestmark = [pytest.mark.pipeline, pytest.mark.estimate]

RANKS = (2, 3, 4, 8)


def textbook_bubble(name, p, m, v=1):
    """Idle share of a synchronous step with T_F = T_B = T_W, 1 − Σ busy / (p × step time); None
    where the estimator states no closed form (zb_v with m < p)."""
    if name == "naive":
        return (p - 1) / p
    if name in ("gpipe", "1f1b"):
        return (p - 1) / (m + p - 1)                      # Huang et al. 2019; Narayanan et al. 2021
    if name == "interleaved_1f1b":
        return (p - 1) / (v * m + p - 1)                  # Narayanan et al. 2021 §2.2.2
    if name in ("zb_h1", "zb_h2"):                        # (p−1) units of F/B ramps; fewer than p: more
        idle = p - 1 + max(0, p - m)
        return idle / (3 * m + idle)
    if name == "zb_v" and m < p:
        return None
    return (p - 1) / (6 * m + p - 1)                      # zb_v, dualpipe_v: chunks half the size


def textbook_in_flight(name, p, m, v=1):
    if name == "naive":
        return [1] * p
    if name == "gpipe":
        return [m] * p
    if name == "1f1b":
        return [min(p - r, m) for r in range(p)]
    if name == "interleaved_1f1b":                        # Korthikanti et al. 2022 §4.2.3 on rank 0; v = 1 too:
        # one chunk per rank still warms up 2(p−r−1) forwards, not 1F1B's p−r−1 (the estimate said 1F1B's)
        return [m] * p if m == p else [p + (p - 1) / v - 2 * r / v for r in range(p)]
    if name == "zb_h1":
        return [min(p, m)] * p
    if name == "zb_h2":
        return [2 * p - 1] * p if m >= 2 * p - 1 else [min(m, 2 * p - 1 - r) for r in range(p)]
    if name == "zb_v":
        return [p] * p if m >= 2 * p else None            # fewer: simulated
    return [p + 0.5] * p


def cases():
    for p in RANKS:
        for m in range(1, 4 * p + 2):
            for name in runnable(p, m):
                for v in ((1, 2, 3) if name == "interleaved_1f1b" else (1,)):
                    yield name, p, m, v


CASES = list(cases())


def test_every_schedule_and_count_is_covered():
    assert {c[0] for c in CASES} == set(SCHEDULES)
    assert {c[1] for c in CASES} == set(RANKS)


@pytest.mark.parametrize("p", RANKS)
def test_estimator_equals_the_schedules_simulation(p):
    for name, _, m, v in (c for c in CASES if c[1] == p):
        est = pipeline_bubble(name, p, m, v)
        tl = simulate(build_schedule(name, p, m, v))
        where = f"{name} p={p} m={m} v={v}"
        assert est["bubble_fraction"] == pytest.approx(tl.bubble_fraction, abs=1e-12), where
        assert est["peak_in_flight_per_rank"] == pytest.approx(tl.peak_in_flight, abs=1e-12), where
        assert est["peak_in_flight"] == max(est["peak_in_flight_per_rank"])
        bubble, in_flight = textbook_bubble(name, p, m, v), textbook_in_flight(name, p, m, v)
        if bubble is not None:
            assert est["bubble_fraction"] == pytest.approx(bubble, abs=1e-12), where
        if in_flight is not None:
            assert est["peak_in_flight_per_rank"] == pytest.approx(in_flight), where
        assert est["method"] == ("simulated" if name == "zb_v" and m < 2 * p else "closed form"), where


def test_the_ordering_the_issue_asks_for():
    """ZB-H1 about a third of 1F1B's bubble time, ZB-H2 no worse, the V schedules below ZB-H1."""
    for p in RANKS:
        m = 2 * p
        b = {name: pipeline_bubble(name, p, m) for name in SCHEDULES}
        assert b["zb_h1"]["bubble_time"] == pytest.approx(b["1f1b"]["bubble_time"] / 3)
        assert b["zb_h2"]["bubble_fraction"] <= b["zb_h1"]["bubble_fraction"]
        assert b["zb_v"]["bubble_fraction"] < b["zb_h1"]["bubble_fraction"]
        assert b["dualpipe_v"]["bubble_fraction"] < b["zb_h1"]["bubble_fraction"]
        assert b["zb_h2"]["bubble_fraction"] > 0                  # synchronous: the paper's 0 is not reached
        assert "post-validation" in b["zb_h2"]["note"] and "post-validation" in b["zb_v"]["note"]


def test_any_times_exact_and_never_below_the_staircase():
    """With unequal T_F, T_B, T_W the estimator's bubble is the simulated step of the schedule
    build_schedule makes for those times: in closed form for the schedules whose order and
    formula do not depend on the times' ratio, simulated (and said so) for ZB-H2 (m > p) and
    the V schedules. No schedule idles less than the staircase, (p−1)·T_F/c per rank with c
    chunks per rank; ZB-H2 and the V schedules reach it at equal times."""
    rng = random.Random(0)
    for _ in range(6):
        times = tuple(round(rng.uniform(0.3, 2.0), 2) for _ in range(3))
        for name, p, m, v in CASES[::7]:
            tl = simulate(build_schedule(name, p, m, v, times=times), *times)
            est = pipeline_bubble(name, p, m, v, *times)
            where = f"{name} p={p} m={m} times={times}"
            assert est["bubble_fraction"] == pytest.approx(tl.bubble_fraction, abs=1e-12), where
            assert est["peak_in_flight_per_rank"] == pytest.approx(tl.peak_in_flight, abs=1e-12), where
            simulated = name in ("zb_v", "dualpipe_v") or (name == "zb_h2" and m > p)
            assert est["method"] == ("simulated" if simulated else "closed form"), where
            assert ("simulated" in est["note"]) == simulated, where
            assert est["bubble_time"] >= staircase(name, p, v, times[0]) - 1e-12, where
    for name, p, m, v in CASES:
        if name in ("zb_v", "dualpipe_v") and m >= p or name == "zb_h2" and m > p:
            assert pipeline_bubble(name, p, m, v)["bubble_time"] == pytest.approx(staircase(name, p, v))


@pytest.mark.parametrize("name,m,match", [("dualpipe_v", 7, "'dualpipe_v' needs at least 2 × pipeline ranks = 8"),
                                          ("dualpipe_v", 4, "'dualpipe_v' needs at least"),
                                          ("interleaved_1f1b", 6, "divisible by the pipeline ranks p \\(4\\)")])
def test_counts_a_schedule_cannot_run_are_refused_like_build_schedule(name, m, match):
    with pytest.raises(ValueError, match=match):
        pipeline_bubble(name, 4, m, v=2)
    with pytest.raises(ValueError):
        build_schedule(name, 4, m, virtual_stages=2 if name == "interleaved_1f1b" else 1)


def test_cli_pipeline_alone(capsys):
    assert main(["--pp", "4", "--schedule", "ZB-H1", "--micro-batches", "8"]) == 0
    text = capsys.readouterr().out
    row = [line for line in text.splitlines() if line.startswith("zb_h1")][0]
    assert "<-" in row and f"{3 / 27:.1%}" in row and row.split()[-4:] == ["4"] * 4
    assert "synchronous flush" in text and "post-validation" in text
    one = [line for line in text.splitlines() if line.startswith("1f1b")][0]
    assert one.split()[-4:] == ["4", "3", "2", "1"]                   # min(p−r, m)
    assert main(["--pp", "4", "--schedule", "dualpipe_v", "--micro-batches", "8", "--json"]) == 0
    rows = {r["schedule"]: r for r in json.loads(capsys.readouterr().out)["pipeline"]}
    assert set(rows) == set(SCHEDULES)
    assert rows["dualpipe_v"]["bubble_fraction"] == pytest.approx(3 / 51)
    assert rows["dualpipe_v"]["peak_in_flight_per_rank"] == [4.5] * 4


@pytest.mark.parametrize("argv,fix", [
    (["--pp", "4", "--schedule", "dualpipe_v", "--micro-batches", "6"], "at least 2 × pipeline ranks = 8"),
    (["--pp", "4", "--schedule", "fancy"], "choose one of naive"),
    (["--pp", "4", "--schedule", "interleaved_1f1b", "--micro-batches", "6"], "divisible by --pp 4"),
])
def test_cli_bad_pipeline_input(argv, fix, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and fix in capsys.readouterr().err


def test_the_config_estimate_uses_the_pass_times_the_schedule_is_built_for():
    """``parallel.pass_times`` builds zb_v for those times; the config's estimate states its
    bubble for the same times (not the unit-time one)."""
    from minidist.estimate import estimate
    from minidist.estimate.pipeline import pipeline_bubble
    cfg = {"parallel": {"pipeline": 4, "schedule": "zb_v", "pass_times": [1.0, 2.0, 1.0]},
           "model": {"n_layer": 8}, "gradient_accumulation_steps": 8}
    got = estimate(cfg, 4)["pipeline"]["bubble_fraction"]
    assert got == pipeline_bubble("zb_v", 4, 8, 1, 1.0, 2.0, 1.0)["bubble_fraction"]
    assert got != pipeline_bubble("zb_v", 4, 8)["bubble_fraction"]


def test_the_interleaved_refusal_offers_the_counts_that_run():
    from minidist.estimate.pipeline import check_pipeline
    with pytest.raises(ValueError, match="use 4$"):                  # it said "use 4 or 4"
        check_pipeline("interleaved_1f1b", 4, 3)
    with pytest.raises(ValueError, match="use 4 or 8$"):
        check_pipeline("interleaved_1f1b", 4, 5)
