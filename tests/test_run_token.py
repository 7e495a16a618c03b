"""The in-process backend's run token (minidist.distributed.inproc): one rank runs at a time,
hands the token on only while it waits for a message, and a rank that waits for something
else is slow, never stuck."""
import threading
import time

import numpy as np
import pytest

from minidist import distributed as dist
from minidist.distributed import inproc

pytestmark = [pytest.mark.dist, pytest.mark.timeout(60)]


def _spans(world: int, work_s: float = 0.02):
    """Every rank: spin ``work_s`` of pure Python (holding the GIL as little as any loop), ring a
    message, spin again; returns each rank's (start, end) of both spins, and the all-reduce."""
    def busy(until):
        while time.perf_counter() < until:
            pass

    def main(comm):
        spans = []
        for _ in range(2):
            t0 = time.perf_counter()
            busy(t0 + work_s)
            spans.append((t0, time.perf_counter()))
            total = dist.all_reduce(comm, np.full(3, comm.rank + 1.0))
        return spans, total
    return dist.spawn(main, world)


def _overlaps(results) -> int:
    spans = sorted(s for spans, _ in results for s in spans)
    return sum(b[0] < a[1] for a, b in zip(spans, spans[1:]))


def test_one_rank_runs_at_a_time_and_the_numbers_are_the_same(monkeypatch):
    monkeypatch.delenv("MINIDIST_RUNNING_RANKS", raising=False)
    results = _spans(4)
    assert _overlaps(results) == 0                      # no two ranks' compute stretches overlap
    assert all(np.array_equal(total, np.full(3, 10.0)) for _, total in results)


def test_running_ranks_lets_several_run_at_once(monkeypatch):
    """MINIDIST_RUNNING_RANKS=4: the four ranks' first stretches run together (each starts
    before the others end), as they did before the token."""
    monkeypatch.setenv("MINIDIST_RUNNING_RANKS", "4")
    results = _spans(4, work_s=0.1)
    assert _overlaps(results) > 0
    assert all(np.array_equal(total, np.full(3, 10.0)) for _, total in results)


def test_a_wait_for_threads_is_slow_not_stuck():
    """Rank 0 holds the token while it waits in a threading.Barrier for the others: they take
    the token after TOKEN_WAIT_S without it, reach the barrier, and the job ends."""
    barrier = threading.Barrier(3)

    def main(comm):
        barrier.wait()
        return dist.all_reduce(comm, np.ones(2))
    t0 = time.perf_counter()
    out = dist.spawn(main, 3, timeout=20)
    assert all(np.array_equal(o, np.full(2, 3.0)) for o in out)
    assert time.perf_counter() - t0 < 10 * inproc.TOKEN_WAIT_S


def test_let_others_run_hands_the_token_on_for_the_wait():
    """The same wait inside ``dist.let_others_run()``: nobody waits for the token, so the
    barrier passes in well under TOKEN_WAIT_S (without it, it takes TOKEN_WAIT_S at least)."""
    barrier = threading.Barrier(8)

    def main(comm):
        with dist.let_others_run():
            barrier.wait()
        return comm.rank
    t0 = time.perf_counter()
    assert dist.spawn(main, 8) == list(range(8))
    assert time.perf_counter() - t0 < inproc.TOKEN_WAIT_S / 2


def test_let_others_run_outside_spawn_does_nothing():
    with dist.let_others_run():
        assert dist.all_reduce(dist.single_rank_comm(), np.ones(2)).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("bad", ["0", "-2", "two"])
def test_a_bad_running_ranks_is_named(monkeypatch, bad):
    monkeypatch.setenv("MINIDIST_RUNNING_RANKS", bad)
    with pytest.raises(ValueError, match=f"MINIDIST_RUNNING_RANKS must be a whole number >= 1.*got '{bad}'"):
        dist.spawn(lambda comm: comm.rank, 2)
