"""Test the traffic, not only the result: bytes, messages and peers of every rank vs the textbook
(tests/_textbook.py, all 23 algorithms), who talks to whom, and the simulated time vs the α-β
cost model of Thakur, Rabenseifner & Gropp (2005)."""
import numpy as np
import pytest
from _textbook import ROOT, TEXTBOOK

from minidist import distributed as dist
from minidist.device import PRESETS
from minidist.distributed import cost

pytestmark = [pytest.mark.dist, pytest.mark.timeout(60)]      # in-process ranks: a hang fails in a minute

SPEC = PRESETS["A100-80GB-NVLink"]
ELEMS = 840                  # per rank-chunk; divisible by every p in 1..8 when multiplied by p


def run_one(comm, op, alg, n_elems, dtype=np.float32, root=0):
    """Call one collective with n_elems total elements (rooted ones at ``root``); return its
    log and record."""
    p = comm.size
    x = np.ones(n_elems, dtype=dtype)
    if op == "all_gather":
        dist.all_gather(comm, np.ones(n_elems // p, dtype), algorithm=alg)
    elif op == "scatter":
        dist.scatter(comm, x.reshape(p, -1) if comm.rank == root else None, root=root, algorithm=alg)
    elif op == "gather":
        dist.gather(comm, np.ones(n_elems // p, dtype), root=root, algorithm=alg)
    elif op in ("broadcast", "reduce"):
        dist.COLLECTIVES[op](comm, x, root=root, algorithm=alg)
    elif op == "all_to_all":
        dist.all_to_all(comm, x.reshape(p, -1), algorithm=alg)
    elif op == "barrier":
        dist.barrier(comm)
    else:
        dist.COLLECTIVES[op](comm, x, algorithm=alg)
    return comm.log, comm.log.collectives[-1]


ALL = [(op, alg) for op in dist.ALGORITHMS for alg in dist.algorithms(op)]


@pytest.mark.parametrize("p", [2, 3, 4, 5, 8])
def test_simulated_time_matches_alpha_beta_model(p):
    n = ELEMS * p
    for op, alg in ALL:
        logs = dist.spawn(lambda c, op=op, alg=alg: run_one(c, op, alg, n)[1], p)
        simulated = max(rec.t_end for rec in logs)          # all ranks start at t = 0
        predicted = cost.time(op, alg, 4 * n, p, SPEC)
        if alg == "tree":                                     # the pipelined tree's formula is a bound
            assert simulated <= predicted * (1 + 1e-9), (op, alg, p)
        elif p & (p - 1) == 0 or (alg in ("ring", "pairwise", "linear", "binomial", "dissemination")
                                  or (op, alg) == ("all_gather", "bruck")):
            assert simulated == pytest.approx(predicted, rel=1e-9), (op, alg, p)
        else:                      # MPICH's fold, Bruck's uneven last round: within a few percent
            assert simulated == pytest.approx(predicted, rel=0.02), (op, alg, p)


def test_the_textbook_covers_every_algorithm():
    assert set(TEXTBOOK) == {(op, alg) for op in dist.COLLECTIVES for alg in dist.algorithms(op)}


@pytest.mark.parametrize("p", [2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("op,alg", sorted(TEXTBOOK))
def test_every_rank_sends_the_textbook_bytes_to_the_textbook_peers(op, alg, p):
    """Bytes, number of messages and destinations of every rank, for every algorithm."""
    pow2_only, textbook = TEXTBOOK[op, alg]
    if pow2_only and p & (p - 1):
        p = 1 << p.bit_length()       # MPICH's fold for other p: covered by test_volumes_for_any_world_size
    n = 4 * ELEMS * p                  # float32 bytes
    logs = dist.spawn(lambda c: run_one(c, op, alg, ELEMS * p, root=ROOT)[0], p)
    for r, log in enumerate(logs):
        sends = log.messages()
        got = (log.bytes_sent(), len(sends), {e.peer for e in sends})
        assert got == textbook(n, p, r), f"{op}[{alg}] p={p} rank {r}: {got} vs {textbook(n, p, r)}"
    busiest = max(textbook(n, p, r)[0] for r in range(p))
    if (op, alg) in cost.SENT and not p & (p - 1):     # the library's table agrees (power-of-two p)
        assert cost.bytes_sent(op, alg, n, p) == busiest, (op, alg, p)


@pytest.mark.parametrize("p", [3, 5, 6, 7])
def test_volumes_for_any_world_size(p):
    n = ELEMS * p
    nbytes = 4 * n

    def main(comm):
        out = {}
        for op, alg in [("all_reduce", "ring"), ("all_gather", "ring"), ("reduce_scatter", "ring"),
                        ("reduce_scatter", "pairwise"), ("all_gather", "bruck"), ("broadcast", "binomial"),
                        ("all_to_all", "pairwise")]:
            m = comm.log.mark()
            run_one(comm, op, alg, n)
            out[op, alg] = (comm.log.since(m).bytes_sent(), comm.log.since(m).bytes_received())
        return out

    res = dist.spawn(main, p)
    for r in range(p):
        assert res[r]["all_reduce", "ring"] == (2 * (p - 1) * nbytes // p,) * 2        # 2(p-1)/p·n each way
        for key in [("all_gather", "ring"), ("reduce_scatter", "ring"), ("reduce_scatter", "pairwise"),
                    ("all_gather", "bruck"), ("all_to_all", "pairwise")]:
            assert res[r][key] == ((p - 1) * nbytes // p,) * 2, key                      # (p-1)/p·n
        assert res[r]["broadcast", "binomial"][1] == (0 if r == 0 else nbytes)          # n per non-root
    assert sum(res[r]["broadcast", "binomial"][0] for r in range(p)) == (p - 1) * nbytes


def test_ring_messages_form_a_ring_and_padding_is_counted():
    p, n = 4, 10                                 # 10 elements: chunks of 3, 2 padded
    logs = dist.spawn(lambda c: (dist.all_reduce(c, np.ones(n)), c.log)[1], p)
    for r, log in enumerate(logs):
        sends = log.messages("all_reduce")
        assert {e.peer for e in sends} == {(r + 1) % p}          # only ever to the right neighbour
        assert {e.peer for e in log.messages("all_reduce", "recv")} == {(r - 1) % p}
        assert [e.phase for e in sends] == ["reduce_scatter"] * 3 + ["all_gather"] * 3
        assert all(e.nbytes == 3 * 8 for e in sends)             # ceil(10/4) float64 elements
        assert log.summary() == {"all_reduce": {"bytes_sent": 144, "bytes_received": 144, "messages": 6}}


def test_receive_never_completes_before_the_send_arrives():
    def main(comm):
        dist.all_reduce(comm, np.ones(1000), algorithm="rabenseifner")
        dist.broadcast(comm, np.ones(5000), root=2, algorithm="scatter_allgather")
        return comm.log.entries

    logs = dist.spawn(main, 6)
    sends = {}
    for entries in logs:
        for e in entries:
            if e.direction == "send":
                sends.setdefault((e.rank, e.peer), []).append(e)
    for entries in logs:
        for e in entries:
            if e.direction == "recv":
                s = sends[e.peer, e.rank].pop(0)             # FIFO per pair
                assert e.t_start == s.t_start and e.nbytes == s.nbytes
                assert e.t_end >= s.t_end == pytest.approx(s.t_start + SPEC.message_time(s.nbytes))


def test_wire_dtype_counts_emulated_bytes():
    def main(comm):
        g = np.ones(64, dtype=np.float32)
        a = dist.all_reduce(comm, g, wire_dtype="bf16")
        b = dist.all_gather(comm, g[:16], bytes_per_element=2)
        return a, b, comm.log.summary()

    for a, b, summary in dist.spawn(main, 4):
        assert a.dtype == np.float32 and np.all(a == 4) and b.shape == (64,)
        assert summary["all_reduce"]["bytes_sent"] == 2 * 3 * 16 * 2        # 2(p-1) chunks of 16 × 2 B
        assert summary["all_gather"]["bytes_sent"] == 3 * 16 * 2


def test_async_op_overlaps_compute_and_wait_syncs_the_compute_stream():
    def main(comm):
        dev = comm.device
        dev.compute("matmul", int(1e9))                      # compute stream: 1e9 / 312e12 s
        t_issue = dev.clock.now("compute")
        work = dist.all_reduce(comm, np.ones(1 << 16, dtype=np.float32), async_op=True)
        dev.compute("more", int(1e9))                        # overlaps the all-reduce
        t_overlap = dev.clock.now("compute")
        out = work.wait()
        return t_issue, t_overlap, work.completion_time, dev.clock.now("compute"), comm.log.collectives[0], out

    for t_issue, t_overlap, done, t_after, rec, out in dist.spawn(main, 4):
        assert rec.t_start == pytest.approx(t_issue)             # issued by compute: starts after it
        assert done == pytest.approx(t_issue + cost.time("all_reduce", "ring", 4 << 16, 4, SPEC))
        assert t_overlap < done                                   # compute ran while comm was busy
        assert t_after == pytest.approx(done)                     # wait() = stream synchronisation
        assert np.all(out == 4)


def test_plain_send_recv_and_trace_events():
    def main(comm):
        if comm.rank == 0:
            comm.send(np.arange(6.0).reshape(2, 3), dest=1, tag=7)
            return None
        y = comm.recv(0, tag=7)                       # shape and dtype travel with the message
        return y, comm.log.entries, comm.device.clock.now("compute"), comm.device.trace.events

    _, (y, entries, t_compute, events) = dist.spawn(main, 2)
    assert y.shape == (2, 3) and y[1, 2] == 5.0
    (e,) = entries
    assert (e.op, e.algorithm, e.direction, e.peer, e.nbytes, e.tag) == ("recv", "p2p", "recv", 0, 48, 7)
    assert t_compute == pytest.approx(SPEC.message_time(48))   # compute waited for the data
    sender_events = dist.spawn(lambda c: (dist.barrier(c), c.device.trace.events)[1], 2)[0]
    assert any(ev["tid"] == "comm" and ev["name"].startswith("barrier") for ev in sender_events)


def test_trace_has_each_collective_with_its_messages_inside(tmp_path):
    import json

    from minidist.device import export_chrome_trace

    def main(comm):
        dist.all_reduce(comm, np.ones(300), algorithm="rabenseifner")
        return comm.device

    devices = dist.spawn(main, 4)
    doc = export_chrome_trace(devices, tmp_path / "trace.json")
    assert json.loads((tmp_path / "trace.json").read_text()) == doc
    for dev in devices:
        (coll,) = [e for e in dev.trace.events if e["name"] == "all_reduce[rabenseifner]"]
        sends = [e for e in dev.trace.events if e["name"].startswith("send")]
        assert len(sends) == 4 and all(e["tid"] == "comm" for e in sends)      # 2 halving + 2 doubling
        assert all(coll["ts"] <= e["ts"] and e["ts"] + e["dur"] <= coll["ts"] + coll["dur"] + 1e-9 for e in sends)


def test_message_patterns_as_data():
    # binomial broadcast on 8 ranks: round k doubles the informed set, distance 4, 2, 1
    pattern = dist.message_pattern("broadcast", "binomial", p=8)
    for k, distance in enumerate((4, 2, 1)):
        round_k = [m for m in pattern if m.step == k]
        assert len(round_k) == 2 ** k and all(m.dst - m.src == distance for m in round_k)
    assert sorted(m.dst for m in pattern) == list(range(1, 8))          # each non-root reached once
    # ring all-reduce: 2(p-1) messages per rank, all to the right neighbour, in the schedule's order
    ring = dist.message_pattern("all_reduce", "ring", p=5, n_elems=50)
    assert len(ring) == 5 * 2 * 4 and all(m.dst == (m.src + 1) % 5 and m.nbytes == 40 for m in ring)
    # dissemination barrier: ⌈log2 p⌉ rounds of zero-byte messages to r + 2^k
    bar = dist.message_pattern("barrier", "dissemination", p=6)
    assert {(m.step, (m.dst - m.src) % 6, m.nbytes) for m in bar} == {(0, 1, 0), (1, 2, 0), (2, 4, 0)}
