"""The per-message fast path of the communicator (issue 24): a message's simulated times come
from one clock call per side (``Clock.send`` / ``Clock.receive``), a collective totals its
traffic in one pass (``MessageLog.traffic_since``), a buffered send returns one shared completed
request, and a receive into a buffer copies with or without a reshape. Each is checked against
the slow, obvious version it replaced."""
import numpy as np
import pytest

from minidist import distributed as dist
from minidist.device import Clock, Trace
from minidist.distributed.comm import SENT

pytestmark = [pytest.mark.dist, pytest.mark.timeout(60)]


def _reference_send(clock, stream, duration):
    t0 = clock.now(stream)
    return t0, clock.wait(stream, t0 + duration)


def _reference_receive(clock, stream, inport, arrival, duration):
    t_end = max(arrival, clock.now(inport) + duration)
    clock.wait(inport, t_end)
    return clock.wait(stream, t_end)


def test_clock_send_and_receive_equal_the_now_and_wait_calls_they_replace_bit_for_bit():
    rng = np.random.default_rng(0)
    fast, slow = Clock(Trace()), Clock(Trace())
    for _ in range(2000):
        stream = ["comm", "comm.dp", "h2d"][rng.integers(3)]
        duration = float(rng.choice([5e-6, 1e-7 * rng.random(), 3e-6]))
        if rng.random() < 0.5:
            assert fast.send(stream, duration) == _reference_send(slow, stream, duration)
        else:        # arrivals before, at and after the streams' times: every branch of the max
            busy, inport = slow.streams.get(stream, 0.0), slow.streams.get(stream + ".in", 0.0)   # not created
            now = max(busy, inport)
            arrival = float(rng.choice([0.0, now, now + rng.random() * 1e-5, inport + duration]))
            got = fast.receive(stream, stream + ".in", arrival, duration)
            assert got == _reference_receive(slow, stream, stream + ".in", arrival, duration)
        fast.wait("compute", fast.now("comm"))
        slow.wait("compute", slow.now("comm"))
        assert fast.streams == slow.streams and list(fast.streams) == list(slow.streams)


def _mixed(comm):
    x = np.arange(13.0) * (comm.rank + 1)
    dist.all_reduce(comm, x)
    dist.all_gather(comm, x[:4])
    mark = comm.log.mark()
    dist.reduce_scatter(comm, x, algorithm="pairwise")
    req = comm.isend(np.ones((2, 3)), (comm.rank + 1) % comm.size, tag=7)
    same = comm.recv((comm.rank - 1) % comm.size, tag=7, out=np.empty((2, 3)))     # same shape: no reshape
    req2 = comm.isend(np.ones((2, 3)) * 2, (comm.rank + 1) % comm.size, tag=8)
    flat = comm.recv((comm.rank - 1) % comm.size, tag=8, out=np.empty(6))          # another shape, same size
    done = comm.log.since(mark)
    return (req is SENT and req2 is SENT, req.wait(), same, flat, comm.log.traffic_since(mark),
            (done.bytes_sent(), done.bytes_received(), len(done.messages())), comm.log.collectives[-1])


def test_buffered_send_shared_request_receive_into_buffers_and_one_pass_traffic():
    for shared, waited, same, flat, traffic, slow, record in dist.spawn(_mixed, 3):
        assert shared and waited is None            # a buffered send: complete when posted
        np.testing.assert_array_equal(same, np.ones((2, 3)))
        np.testing.assert_array_equal(flat, np.full(6, 2.0))
        assert traffic == slow                      # the one-pass totals equal the three passes
        assert (record.bytes_sent, record.bytes_received, record.messages) == (5 * 8 * 2, 5 * 8 * 2, 2)
    assert dist.spawn(_exchange, 2, rendezvous=True) == [True, True]


def _exchange(comm):
    req = comm.isend(np.ones(2), 1 - comm.rank)
    comm.recv(1 - comm.rank)
    return req is not SENT and req.wait() is None   # a rendezvous send keeps its own request
