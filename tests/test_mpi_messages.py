"""The MPI backend's messages under a real ``mpirun``: the header rides in the payload's frame
(one MPI message up to ``INLINE_BYTES``, a header frame then the payload in place above it),
yet every check it carries still fires with the same words as in-process, the message log is
the one the in-process backend writes (payload bytes, never the header's), and a wait sleeps
between polls instead of spinning. No wall-clock assertion: how each job ended, what it logged."""
import importlib.util
import json
import textwrap
from pathlib import Path

import pytest
from _mpi import run_mpi

from minidist import distributed as dist

pytestmark = [pytest.mark.mpi, pytest.mark.dist, pytest.mark.timeout(120)]

INLINE = 32 << 10       # minidist.distributed.mpi.INLINE_BYTES (not imported here: importing it starts MPI)

PROGRAM = textwrap.dedent('''
    import json, sys, time
    import numpy as np
    from minidist import distributed as dist

    INLINE = %d
    BIG = INLINE // 4 + 8          # float64 halves of 2·BIG elements are over the limit

    def payloads():
        """Arrays on both sides of the one-message limit, in every layout the header describes."""
        return {
            "f64": np.arange(10.0),
            "f32_at_limit": np.arange(INLINE // 4, dtype=np.float32),
            "f32_over_limit": np.arange(INLINE // 4 + 1, dtype=np.float32),
            "i8_3d": np.arange(2 * 3 * 5, dtype=np.int8).reshape(2, 3, 5),
            "bool": np.array([True, False, True]),
            "c128": np.arange(4) * (1 + 2j),
            "scalar": np.array(7.5),
            "empty": np.zeros((0, 3)),
            "big_2d": np.arange(300 * 50, dtype=np.float64).reshape(300, 50),
        }

    def program(comm):
        """The same code on both backends: plain messages with and without out=, collectives
        over and under the limit; returns {name: array}."""
        out, r = {}, comm.rank
        for name, x in payloads().items():
            if r == 0:
                comm.send(x, 1, tag=1)
                comm.send(x, 1, tag=2)
            elif r == 1:
                out["recv/" + name] = comm.recv(0, tag=1)
                buf = np.empty_like(x)
                out["recv_out/" + name] = comm.recv(0, tag=2, out=buf)
                assert out["recv_out/" + name] is buf
        rng = np.random.default_rng(r)
        for n in (6, 3 * INLINE // 8 + 5):                 # float64 chunks under and over the limit
            x = rng.standard_normal(n)
            out[f"all_reduce/{n}"] = dist.all_reduce(comm, x)
            out[f"all_gather/{n}"] = dist.all_gather(comm, x[:n // comm.size])
        if r < 2:   # both ranks wait for their send first: it completes once the receive is posted
            for n in (2048, 3 * INLINE // 8):                 # 16 KB in the frame, 96 KB apart
                mine = np.full(n, float(r))
                for buf in (np.empty(n), None):
                    req = comm.irecv(1 - r, tag=3, out=buf)
                    comm.isend(mine, 1 - r, tag=3).wait()
                    out[f"posted/{n}/{buf is None}"] = req.wait()
        if r < 2:   # two receives posted on one channel before either is waited for: matched in order
            sizes = (3 * INLINE // 8, 16, 3 * INLINE // 8 + 1)    # apart, in the frame, apart
            if r == 0:
                for k, n in enumerate(sizes):
                    comm.send(np.full(n, k + 0.5), 1, tag=4)
            else:
                reqs = [comm.irecv(0, tag=4) for _ in sizes]
                for k in (2, 0, 1):
                    out[f"in_order/{k}"] = reqs[k].wait()
        out["bcast"] = dist.broadcast(comm, np.arange(12.0).reshape(3, 4) if r == 0 else np.zeros((3, 4)), root=0)
        return out

    def refused(comm):
        """Wrong programs on fresh communicators: the error each rank raised (None: no error)."""
        r, said = comm.rank, {}

        def attempt(name, fn, timeout=20.0):
            c = comm.dup()
            c.timeout = timeout
            try:
                fn(c)
                said[name] = None
            except Exception as exc:
                said[name] = f"{type(exc).__name__}: {exc}"

        for n in (4, BIG):                                 # inline and separate payloads
            attempt(f"dtype/{n}", lambda c, n=n: dist.all_reduce(c, np.ones(n, np.float64 if r == 0 else np.float32)))
            attempt(f"shape/{n}", lambda c, n=n: dist.all_reduce(c, np.ones((2, n) if r == 0 else (n, 2))))
            attempt(f"op/{n}", lambda c, n=n: dist.all_reduce(c, np.ones(2 * n)) if r == 0
                    else dist.all_gather(c, np.ones(n)))
            attempt(f"recv_out/{n}", lambda c, n=n: c.send(np.ones(n + 1), 1) if r == 0
                    else c.recv(0, out=np.empty(n)))
        attempt("timeout", lambda c: c.recv(0, tag=5) if r == 1 else None, timeout=0.3)
        dist.barrier(comm)
        return said

    if __name__ == "__main__":
        def main(comm):
            out = program(comm)
            log = comm.log.to_records()
            said = refused(comm)
            # a wait sleeps between polls: rank 1 waits for a message rank 0 sends after 0.3 s
            from minidist.distributed import mpi
            naps = []
            real_sleep = mpi.time.sleep
            mpi.time.sleep = lambda s: (naps.append(s), real_sleep(s))
            try:
                if comm.rank == 0:
                    real_sleep(0.3)
                    comm.send(np.ones(3), 1, tag=9)
                elif comm.rank == 1:
                    comm.recv(0, tag=9)
            finally:
                mpi.time.sleep = real_sleep
            with open(f"{sys.argv[1]}.{comm.rank}.json", "w") as f:
                json.dump({"log": log, "said": said, "naps": naps,
                           "results": {k: [v.dtype.str, list(v.shape), v.tobytes().hex()] for k, v in out.items()}}, f)
        dist.run_main(main, timeout=20)
''' % INLINE)
BIG = INLINE // 4 + 8


def _load(script):
    spec = importlib.util.spec_from_file_location("mpi_messages_program", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _as_record(v):
    return [v.dtype.str, list(v.shape), v.tobytes().hex()]


def test_frames_keep_results_log_and_checks_of_the_in_process_backend(tmp_path):
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    p = 2
    proc = run_mpi(p, [script, tmp_path / "out"], timeout=100)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads((tmp_path / f"out.{r}.json").read_text()) for r in range(p)]
    module = _load(script)

    # 1. the same arrays (dtype, shape, bytes) and the same message log as in-process
    local = dist.spawn(lambda comm: (module.program(comm), comm.log.to_records()), p, timeout=20)
    for r, (out, log) in enumerate(local):
        assert runs[r]["results"] == {k: _as_record(v) for k, v in out.items()}
        assert runs[r]["log"] == log
    # the payload over the limit was really sent (not a header frame only), and the log counts
    # the payload's bytes, never the header's
    sizes = {e["nbytes"] for e in runs[0]["log"] if e["op"] == "send" and e["direction"] == "send" and e["tag"] == 1}
    assert {x.nbytes for x in module.payloads().values()} == sizes
    assert max(sizes) > INLINE and INLINE in sizes

    # 2. every wrong program refused on the receiving ranks with the in-process backend's words
    said = [run["said"] for run in runs]
    for n in (4, BIG):
        for r in range(p):
            assert said[r][f"dtype/{n}"].startswith(f"CollectiveMismatchError: rank {r} called all_reduce with ")
            assert " in another shape" in said[r][f"shape/{n}"]
            assert "called different collectives" in said[r][f"op/{n}"]
        assert said[0][f"dtype/{n}"] == (
            f"CollectiveMismatchError: rank 0 called all_reduce with float64 of shape ({n},) but rank 1 with {n} "
            "element(s) of float32: every rank must pass an array of the same shape and dtype (rerun with "
            "debug=True to see every rank's call)")
        assert said[0][f"recv_out/{n}"] is None
        assert said[1][f"recv_out/{n}"] == (f"ValueError: recv into a float64 buffer of {n} elements but rank 0 "
                                             f"sent float64 of shape ({n + 1},)")
    assert said[0]["timeout"] is None
    assert said[1]["timeout"].startswith("CommTimeoutError: rank 1 timed out after 0.3 s waiting to receive from "
                                         "rank 0 in a plain send/recv")

    # 3. in-process, the same wrong programs say the same (the header checks live in comm.py)
    inproc = dist.spawn(module.refused, p, timeout=20)
    for r in range(p):
        for name, text in said[r].items():
            if name.split("/")[0] in ("dtype", "shape", "op"):
                assert inproc[r][name] == text, (r, name)

    # 4. the 0.3 s wait slept between polls, from short naps up to the longest (no spinning)
    naps = runs[1]["naps"]
    assert naps and min(naps) < 1e-5 and max(naps) >= 1e-4


def test_bench_allreduce_prints_message_costs_and_ratios():
    """The benchmark's tables, on tiny sizes (its numbers are measured, never asserted)."""
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_allreduce.py"
    proc = run_mpi(2, [bench, "--sizes", "1K,64K", "--repeats", "2", "--reps", "2", "--rounds", "5"], timeout=100)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    for backend in ("MPI Send/Recv", "minidist MPI backend", "minidist in-process"):   # one-way µs, overhead
        assert sum(ln.startswith(backend) for ln in lines) == 1, (backend, proc.stdout)
    table = [ln.split() for ln in lines if ln.split() and ln.split()[0] in ("1024", "65536")]
    assert [t[0] for t in table] == ["1024", "65536"]
    assert any(ln.startswith("ratio at 64 KB:") for ln in lines)
