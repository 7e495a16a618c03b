"""Simulated scale (README "Simulating many ranks"): 64 in-process ranks behave as 4 do.

The speed is measured by benchmarks/bench_scaling.py, never timed here. These tests check what
the speed-ups must not change: a 64-rank DDP and ZeRO-3 step equal one rank on the same global
batch and send the formula's bytes in the ring's number of messages, and a world of 64 parked
ranks still wakes at once when one rank fails.
"""
import importlib.util
import pathlib
import threading
import time

import numpy as np
import pytest

from minidist import distributed as dist
from minidist.testing import train_steps

pytestmark = [pytest.mark.zero, pytest.mark.dist, pytest.mark.timeout(120)]

P = 64
TINY = {"model": {"n_layer": 1, "n_embd": 4, "n_head": 1, "block_size": 4},
        "data": {"dataset": "copy", "n_digits": 1}, "dtype": "float64", "steps": 1,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}}}


def _config(micro, stage):
    return {**TINY, "train_micro_batch_size_per_gpu": micro, "zero_optimization": {"stage": stage}}


def _rank(comm, stage):
    run = train_steps(comm, _config(1, stage))
    log = run["trainer"].step_log
    return {"params": run["params"][-1], "bytes": log.bytes_sent(), "messages": len(log.messages()),
            "buckets": [b.numel for b in run["trainer"].strategy.buckets]}


@pytest.mark.parametrize("stage", [0, 3])
def test_64_ranks_step_like_one_rank_and_send_the_formulas_bytes(stage):
    """One sequence per rank on 64 ranks = one rank on 64 sequences (float64, relative 1e-9);
    every rank sends the ring's bytes: DDP 2·(p−1)·⌈Ψ/p⌉ elements (Li et al. 2020, one
    bucket), ZeRO-3 two all-gathers and a reduce-scatter of every unit's shard, 3·(p−1)·S
    (Rajbhandari et al. 2020 §7), in p−1 messages per ring collective."""
    ref = train_steps(None, _config(P, 0))["params"][-1]
    runs = dist.spawn(_rank, P, stage)
    for rank, run in enumerate(runs):
        for name, value in ref.items():
            err = np.max(np.abs(run["params"][name] - value)) / np.max(np.abs(value))
            assert err <= 1e-9, f"rank {rank}: {name} differs from one rank by {err:.3g} (relative)"
    buckets = runs[0]["buckets"]                  # DDP: the whole model; ZeRO-3: one per unit
    shard = sum(-(-n // P) for n in buckets)      # ⌈n/p⌉ of each, padded
    if stage == 0:
        assert buckets == [sum(v.size for v in ref.values())]
        collectives, elements = 2, 2 * (P - 1) * shard        # reduce-scatter + all-gather
    else:
        collectives, elements = 3 * len(buckets), 3 * (P - 1) * shard
    assert {run["bytes"] for run in runs} == {elements * 8}
    assert {run["messages"] for run in runs} == {collectives * (P - 1)}


def test_a_failure_wakes_all_64_parked_ranks_at_once():
    """63 ranks wait in a receive from rank 0 (each parked on its own lock); rank 0 fails: every
    one stops with PeerFailedError long before its 60 s timeout."""
    parked = threading.Barrier(P)

    def main(comm):
        with dist.let_others_run():           # a wait for threads, not a message: give up the run token
            parked.wait()
        if comm.rank == 0:
            time.sleep(0.2)                   # let the others park in their receive
            raise ValueError("rank 0 gives up")
        comm.recv(0)

    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="rank 0 gives up"):
        dist.spawn(main, P, timeout=60)
    assert time.perf_counter() - t0 < 30


def test_bench_scaling_counts_the_rings_messages(capsys, monkeypatch):
    """The benchmark's rank function on 4 ranks: its message counts are the ring's (its times
    are measured, never asserted), and its table prints a row per world size."""
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_scaling.py"
    spec = importlib.util.spec_from_file_location("bench_scaling", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench, "RING_MESSAGES", 1)            # the fewest all-reduces the timing takes
    p = 4
    ranks = dist.spawn(bench.rank_main, p, bench.DDP, 1, 1)
    assert [r["messages"] for r in ranks] == [2 * (p - 1)] * p                  # one bucket, one ring all-reduce
    assert [r["ring_messages"] for r in ranks] == [2 * (p - 1)] * p
    bench.report(bench.DDP, {p: bench.world_numbers(ranks)})
    out = capsys.readouterr().out
    assert "DDP" in out and f"{2 * p * (p - 1):>9}" in out
