"""Real ``mpirun`` runs: our collectives vs mpi4py's built-ins, the same log as in-process,
and a wrong program that brings the job down with a clear error instead of hanging."""
import importlib.util
import json
import textwrap

import numpy as np
import pytest
from _mpi import run_mpi

from minidist import distributed as dist

pytestmark = [pytest.mark.mpi, pytest.mark.dist, pytest.mark.timeout(180)]

PROGRAM = textwrap.dedent('''
    import json, sys
    import numpy as np
    from minidist import distributed as dist

    def program(comm):
        """The same code on both backends; returns {name: result}."""
        p, r = comm.size, comm.rank
        rng = np.random.default_rng(r)
        x = rng.standard_normal(6 * p)                   # divisible: Reduce_scatter_block needs it
        odd = rng.standard_normal(37)                     # not divisible: the padding path
        out = {}
        for a in dist.algorithms("all_reduce"):
            out["all_reduce/" + a] = dist.all_reduce(comm, x, algorithm=a)
            out["all_reduce_max/" + a] = dist.all_reduce(comm, odd, op="max", algorithm=a)
        for a in dist.algorithms("reduce_scatter"):
            out["reduce_scatter/" + a] = dist.reduce_scatter(comm, x, algorithm=a)
        for a in dist.algorithms("all_gather"):
            out["all_gather/" + a] = dist.all_gather(comm, x[:5], algorithm=a)
        for a in dist.algorithms("broadcast"):
            out["broadcast/" + a] = dist.broadcast(comm, odd if r == 1 else np.zeros(37), root=1, algorithm=a)
        for a in dist.algorithms("all_to_all"):
            out["all_to_all/" + a] = dist.all_to_all(comm, x.reshape(p, 6), algorithm=a)
            out["all_to_all_1d/" + a] = dist.all_to_all(comm, x[:p], algorithm=a)   # one number per rank
        out["all_reduce_0d/ring"] = dist.all_reduce(comm, np.float64(x[0]))      # a 0-d input stays 0-d
        with comm.collective("custom_shift", "naive"):      # a collective written outside minidist.distributed
            out["custom_shift/naive"] = comm.sendrecv(x[:3], (r + 1) % p, (r - 1) % p)
        sub = comm.split(color=r % 2, key=-r)
        out["split/all_reduce"] = dist.all_reduce(sub, x[:4], algorithm="recursive_doubling")
        dist.barrier(comm)
        return out

    def reference(comm, name):
        """mpi4py's own collective for the same inputs."""
        from mpi4py import MPI
        W, p, r = MPI.COMM_WORLD, comm.size, comm.rank
        rng = np.random.default_rng(r)
        x, odd = rng.standard_normal(6 * p), rng.standard_normal(37)
        kind = name.split("/")[0]
        if kind == "all_reduce":
            y = np.empty_like(x); W.Allreduce(x, y); return y
        if kind == "all_reduce_max":
            y = np.empty_like(odd); W.Allreduce(odd, y, op=MPI.MAX); return y
        if kind == "reduce_scatter":
            y = np.empty(6); W.Reduce_scatter_block(x, y); return y
        if kind == "all_gather":
            y = np.empty(5 * p); W.Allgather(np.ascontiguousarray(x[:5]), y); return y
        if kind == "broadcast":
            y = odd.copy() if r == 1 else np.empty(37); W.Bcast(y, root=1); return y
        if kind == "all_to_all":
            y = np.empty((p, 6)); W.Alltoall(x.reshape(p, 6), y); return y
        if kind == "all_to_all_1d":
            y = np.empty(p); W.Alltoall(np.ascontiguousarray(x[:p]), y); return y
        if kind == "all_reduce_0d":
            return np.float64(W.allreduce(float(x[0])))
        return None

    if __name__ == "__main__":
        def main(comm):
            out = program(comm)
            diffs = {k: float(np.max(np.abs(v - reference(comm, k))))
                     for k, v in out.items() if reference(comm, k) is not None}
            with open(f"{sys.argv[1]}.{comm.rank}.json", "w") as f:
                json.dump({"log": comm.log.to_records(), "diffs": diffs, "backend": comm.backend,
                           "results": {k: v.tolist() for k, v in out.items()}}, f)
        dist.run_main(main, timeout=20)
''')

BAD = textwrap.dedent('''
    import sys
    import numpy as np
    from minidist import distributed as dist

    def main(comm):
        x = np.ones(8)
        if sys.argv[1] == "raise" and comm.rank == 2:
            raise ValueError("bad batch on purpose")
        if sys.argv[1] == "deadlock":
            return comm.recv((comm.rank + 1) % comm.size)   # everyone receives, nobody sends
        if sys.argv[1] != "raise" and comm.rank == 1:
            return dist.all_gather(comm, x[:2])     # the bug: the others are in all_reduce
        return dist.all_reduce(comm, x)

    dist.run_main(main, timeout=2 if sys.argv[1] == "deadlock" else 60, debug=sys.argv[1] == "debug")
''')


@pytest.mark.parametrize("p", [4, 5])
def test_mpi_matches_mpi4py_and_in_process_log(p, tmp_path):
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    proc = run_mpi(p, [script, tmp_path / "out"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads((tmp_path / f"out.{r}.json").read_text()) for r in range(p)]

    # 1. equal to mpi4py's Allreduce, Reduce_scatter_block, Allgather, Bcast, Alltoall
    for r, run in enumerate(runs):
        assert run["backend"] == "mpi"
        assert len(run["diffs"]) == 2 * 5 + 3 + 3 + 3 + 2 + 2 + 1
        assert np.shape(run["results"]["all_reduce_0d/ring"]) == ()
        assert np.shape(run["results"]["all_to_all_1d/pairwise"]) == (p,)
        for name, diff in run["diffs"].items():
            tol = 0.0 if name.startswith(("all_reduce_max", "all_gather", "broadcast", "all_to_all")) else 1e-12
            assert diff <= tol, (r, name, diff)

    # 2. the same program in-process: identical results and identical message logs
    spec = importlib.util.spec_from_file_location("mpi_program", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    local = dist.spawn(lambda comm: (module.program(comm), comm.log.to_records()), p, timeout=10)
    for r, (out, log) in enumerate(local):
        assert np.shape(out["all_reduce_0d/ring"]) == () and np.shape(out["all_to_all_1d/pairwise"]) == (p,)
        for name, value in out.items():
            np.testing.assert_array_equal(np.asarray(runs[r]["results"][name]), value, err_msg=name)
        assert runs[r]["log"] == log


@pytest.mark.parametrize("mode", ["debug", "nodebug", "raise", "deadlock"])
def test_mpi_wrong_program_aborts_with_a_clear_error(mode, tmp_path):
    script = tmp_path / "bad.py"
    script.write_text(BAD)
    proc = run_mpi(3, [script, mode], timeout=120)
    assert proc.returncode != 0
    err = proc.stderr
    if mode != "deadlock":              # the job was brought down by the error, not by the ranks' 60 s timeout
        assert "CommTimeoutError" not in err and "timed out" not in err, err[-2000:]
    if mode == "raise":
        assert "rank 2 of 3 failed" in err and "ValueError: bad batch on purpose" in err
    elif mode == "deadlock":
        assert "CommTimeoutError" in err and "timed out after 2 s waiting to receive from rank" in err
    elif mode == "debug":
        assert "CollectiveMismatchError" in err and "world rank(s) [1] called all_gather" in err
    else:
        assert "CollectiveMismatchError" in err and "called different collectives" in err


OTHER_OP = textwrap.dedent("""
    import numpy as np
    from minidist import distributed as dist

    def main(comm):
        return dist.all_reduce(comm, np.array([1.0, 5.0]) * (comm.rank + 1), op="sum" if comm.rank == 0 else "max")

    dist.run_main(main, timeout=30)
""")


def test_mpi_ranks_giving_another_reduction_op_abort_naming_it(tmp_path):
    """The root and reduction op ride in the header's algorithm slot (above its CRC-32): ranks
    that disagree are stopped under MPI too (they returned half a sum, half a max)."""
    script = tmp_path / "op.py"
    script.write_text(OTHER_OP)
    proc = run_mpi(2, [script], timeout=60)
    assert proc.returncode != 0
    assert "CollectiveMismatchError" in proc.stderr and "with op='max' but rank 0 with op='sum'" in proc.stderr
