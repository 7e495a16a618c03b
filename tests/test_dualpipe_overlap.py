"""DualPipe's overlapped F&B pair (``parallel.overlap_f_b``, minidist.parallel.pipeline.overlap):
the pairs are data in the schedule; a pair's two lanes take turns at every wait for
communication, so its duration is the two passes' sequential one less the hidden
communication — exactly, on the simulated clock; a DualPipeV step with tensor-parallel
collectives in its chunks is bit-identical with and without overlap and shorter, by no more
than the communication its pairs hide; bad input is refused naming the key."""
import copy

import numpy as np
import pytest
from _refusal import trainer_errors

from minidist import distributed as dist
from minidist.parallel.pipeline import OverlapFB, build_schedule, simulate, validate
from minidist.parallel.pipeline.overlap import hidden_time, run_pair
from minidist.testing import train_steps

pytestmark = [pytest.mark.pipeline, pytest.mark.timeout(60)]


@pytest.mark.parametrize("p", [1, 2, 3, 4])
def test_pairs_are_a_forward_then_a_whole_backward_of_dualpipe_v(p):
    """Phases 4 and 5 of DualPipeV: rank r runs 2·(m−2p+r+1) + (p−r−1) pairs, the bottom rank
    one fewer (DualPipe runs its first F0, B1 apart); validate checks them, and they cannot
    deadlock even as blocks that wait for both inputs."""
    for m in (2 * p, 2 * p + 3):
        s = build_schedule("dualpipe_v", p, m)
        validate(s)
        simulate(s, overlap=True)
        for r in range(p):
            mine = [x for x in s.program(r, overlap=True) if isinstance(x, OverlapFB)]
            assert len(mine) == 2 * (m - 2 * p + r + 1) + (p - r - 1) - (r == p - 1)
            for x in mine:
                assert (x.forward.op, x.backward.op) == ("F", "B")
                assert x.forward.micro_batch != x.backward.micro_batch
                assert (x.backward.micro_batch, x.backward.stage) not in s._split
        flat = [a for r in range(p) for x in s.program(r, overlap=True)
                for a in ((x.forward, x.backward) if isinstance(x, OverlapFB) else (x,))]
        assert sorted(map(str, flat)) == sorted(str(a) for acts in s.actions for a in acts)
    assert build_schedule("zb_v", 2, 4).overlap == ()


COLLECTIVES = {"all_reduce": dist.all_reduce,                      # tensor parallelism's
               "all_to_all": dist.all_to_all}                      # expert parallelism's dispatch and combine


def _passes(comm, dev, flops, x, collective):
    """A forward and a backward of a toy chunk: compute, a collective, compute, …"""
    def make(tag, steps):
        def run():
            y = x * tag
            for k in range(steps):
                dev.compute(f"{tag}.{k}", flops)
                y = COLLECTIVES[collective](comm, y)     # blocking: the lane waits for it
            dev.compute(f"{tag}.end", flops)
            return y
        return run
    return make(1.0, 2), make(2.0, 3)


def _pair_on_two_ranks(comm, overlapped, flops, collective):
    dev = comm.device
    forward, backward = _passes(comm, dev, flops, np.arange(4.0).reshape(2, 2) + comm.rank, collective)
    t0 = dev.clock.now("compute")
    if overlapped:
        pair = run_pair(dev, forward, backward)
        return {"time": pair["t1"] - t0, "out": pair["results"], "hidden": pair["hidden"], "comm": pair["comm"],
                "check": hidden_time(pair["spans"])}
    out = [forward(), backward()]
    return {"time": dev.clock.now("compute") - t0, "out": out}


@pytest.mark.parametrize("collective", list(COLLECTIVES))
@pytest.mark.parametrize("flops", [1e3, 1e5, 1e7])
def test_a_pair_is_shorter_by_exactly_the_communication_it_hides(flops, collective):
    """Sequentially every blocking collective is exposed; overlapped, the other lane computes
    under it: the pair is shorter by the hidden time, measured on the pair's own spans."""
    seq = dist.spawn(_pair_on_two_ranks, 2, False, flops, collective)
    ovl = dist.spawn(_pair_on_two_ranks, 2, True, flops, collective)
    for a, b in zip(seq, ovl):
        for x, y in zip(a["out"], b["out"]):
            assert np.array_equal(x, y)
        assert b["hidden"] > 0
        assert b["hidden"] <= b["comm"] + 1e-18
        assert a["time"] - b["time"] == pytest.approx(b["hidden"], rel=1e-9, abs=1e-18)


BASE = {"model": {"n_layer": 4, "n_embd": 16, "n_head": 2, "block_size": 8},
        "data": {"dataset": "copy", "n_digits": 3, "seq_len": 7}, "dtype": "float64",
        "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 4, "steps": 2,
        "optimizer": {"type": "Adam", "params": {"lr": 1e-2}}}
DEVICE = {"flops": 1e9}            # a chunk's matmuls and a TP all-reduce take comparable time


def config(overlap, **par):
    cfg = copy.deepcopy(BASE)
    cfg["parallel"] = {"pipeline": 2, "tensor": 2, "schedule": "dualpipe_v", "overlap_f_b": overlap, **par}
    return cfg


def step_time(runs) -> float:
    steps = [r["trainer"].pipeline.steps[-1] for r in runs]
    return max(s["t_end"] for s in steps) - min(s["t_begin"] for s in steps)


def test_dualpipe_v_overlap_is_bit_identical_and_shorter_by_at_most_what_it_hides():
    off = dist.spawn(train_steps, 4, config(False), device=DEVICE)
    on = dist.spawn(train_steps, 4, config(True), device=DEVICE)
    for a, b in zip(off, on):
        assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
        assert [h["bytes_sent"] for h in a["history"]] == [h["bytes_sent"] for h in b["history"]]
        for pa, pb in zip(a["params"], b["params"]):
            assert all(np.array_equal(pa[k], pb[k]) for k in pb)
    saved = step_time(off) - step_time(on)
    replica = [r for r in on if r["trainer"].grid.coords["tp"] == 0]
    pairs = [p for r in replica for p in r["trainer"].pipeline.steps[-1]["pairs"]]
    s = replica[0]["trainer"].pipeline.schedule
    assert len(pairs) == len(s.overlap)
    hidden = sum(p["hidden"] for p in pairs)
    assert all(0 < p["hidden"] <= p["comm"] for p in pairs)
    # the step is a longest path through the ranks' actions: shortening pairs by what they
    # hide shortens it by at most the sum
    assert 0 < saved <= hidden, (saved, hidden)
    measured = [r["trainer"].pipeline.measured() for r in replica]        # what the train report shows
    assert sum(m["hidden_communication"] for m in measured) == pytest.approx(hidden, rel=1e-12)
    assert sum(m["overlapped_pairs"] for m in measured) == len(s.overlap)


def test_the_expert_all_to_all_hides_under_the_other_pass():
    """DeepSeek-V3's case: an MoE model, experts over 2 of the data-parallel ranks, DualPipeV on 2
    pipeline ranks; the pairs hide the dispatch and combine all-to-alls."""
    moe = {"num_experts": 4, "top_k": 2, "capacity_factor": 1.0}
    runs = {}
    for on in (False, True):
        cfg = config(on, tensor=1, expert=2)
        cfg["model"]["moe"] = moe
        runs[on] = dist.spawn(train_steps, 4, cfg, device={"flops": 1e10})
    for a, b in zip(runs[False], runs[True]):
        assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
        assert [h["bytes_sent"] for h in a["history"]] == [h["bytes_sent"] for h in b["history"]]
        for pa, pb in zip(a["params"], b["params"]):
            assert all(np.array_equal(pa[k], pb[k]) for k in pb)
    replica = [r for r in runs[True] if r["trainer"].grid.coords["dp"] == 0]
    pairs = [p for r in replica for p in r["trainer"].pipeline.steps[-1]["pairs"]]
    saved = step_time(runs[False]) - step_time(runs[True])
    assert 0 < saved <= sum(p["hidden"] for p in pairs)


@pytest.mark.parametrize("par,world", [({"schedule": "1f1b"}, 4), ({"pipeline": 1}, 2)])
def test_overlap_needs_dualpipe_v_on_a_pipeline(par, world):
    errors = trainer_errors(config(True, **par), world)
    assert all(e is not None and "parallel.overlap_f_b" in e and "dualpipe_v" in e for e in errors), errors


MPI_SCRIPT = """
import json, sys
from minidist import distributed as dist
from minidist.testing import train_steps
cfg = json.loads(sys.argv[1])
def main(comm):
    run = train_steps(comm, cfg)
    step = run["trainer"].pipeline.steps[-1]
    got = dist.gather_object(comm, [[h["loss"] for h in run["history"]], step["t_end"] - step["t_begin"]])
    if comm.rank == 0:
        print("RANKS", json.dumps(got))
dist.run_main(main)
"""


@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_mpirun_runs_the_overlapped_pairs_as_in_process():
    """Under mpirun the two lanes of a pair are threads of an MPI process taking turns: the same
    losses and the same simulated step as the in-process ranks."""
    import json

    from _mpi import run_mpi
    cfg = config(True, tensor=1, expert=2)
    cfg["model"]["moe"] = {"num_experts": 4, "top_k": 2, "capacity_factor": 1.0}
    p = run_mpi(4, ["-c", MPI_SCRIPT, json.dumps(cfg)], timeout=100)
    assert p.returncode == 0, p.stderr
    got = json.loads(next(ln for ln in p.stdout.splitlines() if ln.startswith("RANKS")).split(" ", 1)[1])
    runs = dist.spawn(train_steps, 4, cfg)
    for r, run in enumerate(runs):
        step = run["trainer"].pipeline.steps[-1]
        assert got[r] == [[h["loss"] for h in run["history"]], step["t_end"] - step["t_begin"]]
