"""Wrong programs end with a clear error, never a hang.

No wall-clock assertion: each test checks *how* the job ended (the mismatch detected, the
other ranks woken by the failure) with receive timeouts far longer than the test's own
pytest-timeout, so a hang fails the test instead of passing slowly."""
import numpy as np
import pytest

from minidist import distributed as dist

pytestmark = [pytest.mark.dist, pytest.mark.timeout(60)]
NEVER = 600          # s: a receive timeout the test never reaches (pytest-timeout fails it first)


def mismatched(comm):
    x = np.ones(8)
    if comm.rank == 2:
        return dist.all_gather(comm, x[:2])        # the bug: everyone else is in all_reduce
    return dist.all_reduce(comm, x)


def test_debug_mode_names_the_rank_that_diverged():
    with pytest.raises(dist.CollectiveMismatchError) as info:
        dist.spawn(mismatched, 4, debug=True, timeout=NEVER)
    msg = str(info.value)
    assert "world rank(s) [2] called all_gather(algorithm='ring', shape=(2,)" in msg
    assert "world rank(s) [0, 1, 3] called all_reduce(algorithm='ring', shape=(8,)" in msg


def test_debug_mode_catches_different_shapes_and_algorithms():
    def main(comm):
        n = 5 if comm.rank == 1 else 4
        return dist.all_reduce(comm, np.ones(n), algorithm="ring")

    with pytest.raises(dist.CollectiveMismatchError, match=r"\[1\] called all_reduce\(algorithm='ring', shape=\(5,\)"):
        dist.spawn(main, 3, debug=True, timeout=NEVER)

    def algo(comm):
        return dist.all_reduce(comm, np.ones(4), algorithm="tree" if comm.rank == 0 else "ring")

    with pytest.raises(dist.CollectiveMismatchError, match=r"\[0\] called all_reduce\(algorithm='tree'"):
        dist.spawn(algo, 3, debug=True, timeout=NEVER)


def test_without_debug_the_message_headers_still_catch_a_mismatch():
    with pytest.raises(dist.CollectiveMismatchError, match="called different collectives"):
        dist.spawn(mismatched, 4, timeout=NEVER)


def test_deadlock_times_out_naming_both_ranks():
    def main(comm):
        if comm.rank == 0:
            return comm.recv(1, tag=3)              # rank 1 receives too: nobody sends
        return comm.recv(0, tag=3)

    with pytest.raises(dist.CommTimeoutError, match=r"rank [01] timed out after 0.5 s waiting to receive from rank [01]"):
        dist.spawn(main, 2, timeout=0.5)


def test_failing_rank_stops_the_others_and_spawn_reports_its_rank():
    woken = {}

    def main(comm):
        if comm.rank == 3:
            raise ValueError("bad batch")
        try:
            return dist.all_reduce(comm, np.ones(4))    # the others would wait for rank 3 forever
        except dist.CommError as exc:
            woken[comm.rank] = exc
            raise

    with pytest.raises(ValueError, match=r"\[rank 3 of 4\] bad batch") as info:
        dist.spawn(main, 4, timeout=NEVER)
    assert info.value.rank == 3
    # woken by the failure (not by a receive timeout), each told which rank failed and why
    assert sorted(woken) == [0, 1, 2]
    for exc in woken.values():
        assert isinstance(exc, dist.PeerFailedError) and "because rank 3 failed with ValueError" in str(exc)


def test_rank_that_returns_early_is_reported():
    def main(comm):
        if comm.rank == 1:
            return None                             # skips the collective
        return dist.all_reduce(comm, np.ones(4))

    with pytest.raises(dist.CommError, match="rank 1 has already returned"):
        dist.spawn(main, 3, timeout=NEVER)


def test_bad_arguments_are_rejected_clearly():
    with pytest.raises(ValueError, match="unknown reduction op 'avg'"):
        dist.spawn(lambda c: dist.all_reduce(c, np.ones(2), op="avg"), 2, timeout=3)
    with pytest.raises(ValueError, match="cannot send to or receive from itself"):
        dist.spawn(lambda c: c.send(np.ones(2), c.rank), 2, timeout=3)
    with pytest.raises(ValueError, match="needs 3 blocks"):
        dist.spawn(lambda c: dist.all_to_all(c, np.ones((2, 2))), 3, timeout=3)


def test_importing_dist_does_not_initialise_mpi():
    import subprocess
    import sys

    code = "import sys, minidist.distributed; print('mpi4py' in sys.modules, minidist.distributed.init())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    assert out.stdout.split() == ["False", "None"], out.stderr


# -- wrong programs that gave wrong numbers without a word -----------------------------------------
def _skipped_broadcast(comm):
    if comm.rank == 0:
        dist.broadcast(comm, np.arange(4.0), root=0)               # rank 1 skips this one
    return dist.broadcast(comm, np.full(2, 7.0) if comm.rank == 0 else np.zeros(2), root=0)


def _other_op(comm):
    return dist.all_reduce(comm, np.array([1.0, 5.0]) * (comm.rank + 1), op="sum" if comm.rank == 0 else "max")


def _other_root(comm):
    return dist.broadcast(comm, np.full(3, float(comm.rank)), root=comm.rank)


@pytest.mark.parametrize("program,words", [
    (_skipped_broadcast, "rank 1 called broadcast with float64 of shape (2,) but rank 0 with 4 element(s)"),
    (_other_op, "called all_reduce with op='max' but rank 0 with op='sum'"),           # got half sum, half max
    (_other_root, "never received, the first of broadcast"),                            # each kept its own
], ids=["skipped-broadcast", "other-op", "other-root"])
def test_a_skipped_call_another_op_or_root_is_an_error_not_wrong_numbers(program, words):
    """A receiver's broadcast buffer is checked against the root's array, every message carries
    the collective's root and reduction op, and a collective's message that no rank received is
    reported when the ranks return (each of these returned wrong numbers, exit 0)."""
    with pytest.raises(dist.CollectiveMismatchError, match=words.replace("(", r"\(").replace(")", r"\)")):
        dist.spawn(program, 2, timeout=NEVER)


def test_a_rank_s_os_error_names_the_rank_in_its_text():
    def main(comm):
        if comm.rank == 1:
            open("/nonexistent-dir/shard.bin")
        return comm.rank

    with pytest.raises(FileNotFoundError) as info:
        dist.spawn(main, 3, timeout=NEVER)
    assert "[rank 1 of 3]" in str(info.value) and info.value.rank == 1


def test_a_misspelt_p2p_mode_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("MINIDIST_P2P", "rendevous")
    with pytest.raises(ValueError, match="MINIDIST_P2P='rendevous'"):
        dist.spawn(lambda comm: None, 2)
