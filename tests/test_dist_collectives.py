"""Every collective × algorithm × world size 1..8 in-process equals a NumPy reference."""
import numpy as np
import pytest

from minidist import distributed as dist

pytestmark = pytest.mark.dist

SHAPE = (3, 5)              # 15 elements: not divisible by most world sizes (padding path)
NP_OPS = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min, "prod": np.prod}


def data(rank, shape=SHAPE, seed=0):
    return np.random.default_rng(seed + 100 * rank).uniform(0.5, 1.5, size=shape)


def check(got, want, op="sum"):
    if op in ("max", "min"):
        np.testing.assert_array_equal(got, want)           # exact: no arithmetic involved
    else:
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def every_collective(comm):
    """Run every collective with every algorithm; return {(name, algorithm, op): result}."""
    p, r = comm.size, comm.rank
    x = data(r)
    out = {}
    for alg in dist.algorithms("all_reduce"):
        for op in dist.OPS:
            out["all_reduce", alg, op] = dist.all_reduce(comm, x, op=op, algorithm=alg)
    for alg in dist.algorithms("reduce_scatter"):
        for op in ("sum", "max", "mean"):
            out["reduce_scatter", alg, op] = dist.reduce_scatter(comm, x, op=op, algorithm=alg)
    for alg in dist.algorithms("reduce"):
        for op in ("sum", "min"):
            out["reduce", alg, op] = dist.reduce(comm, x, root=p - 1, op=op, algorithm=alg)
    for alg in dist.algorithms("broadcast"):
        src = data(r, seed=7) if r == p // 2 else np.zeros(SHAPE)
        out["broadcast", alg, None] = dist.broadcast(comm, src, root=p // 2, algorithm=alg)
    for alg in dist.algorithms("all_gather"):
        out["all_gather", alg, None] = dist.all_gather(comm, data(r, (2, 3)), algorithm=alg)
    for alg in dist.algorithms("scatter"):
        blocks = np.arange(p * 4.0).reshape(p, 2, 2) if r == 0 else None
        out["scatter", alg, None] = dist.scatter(comm, blocks, root=0, algorithm=alg)
    for alg in dist.algorithms("gather"):
        out["gather", alg, None] = dist.gather(comm, data(r, (4,)), root=p - 1 - (p > 2), algorithm=alg)
    for alg in dist.algorithms("all_to_all"):
        blocks = np.stack([np.full(3, 10.0 * r + j) for j in range(p)])    # (p, 3): j -> rank j
        out["all_to_all", alg, None] = dist.all_to_all(comm, blocks, algorithm=alg)
    dist.barrier(comm)
    return out


@pytest.mark.parametrize("p", range(1, 9))
def test_every_collective_matches_numpy(p):
    results = dist.spawn(every_collective, p, timeout=5)
    xs = np.stack([data(r) for r in range(p)])                           # (p, 3, 5)
    c = -(-xs[0].size // p)
    for r, res in enumerate(results):
        for (name, alg, op), got in res.items():
            where = f"{name}[{alg}] op={op} p={p} rank={r}"
            if name == "all_reduce":
                assert got.shape == SHAPE, where
                check(got, NP_OPS[op](xs, axis=0), op)
            elif name == "reduce_scatter":
                full = np.zeros(p * c)
                full[:xs[0].size] = NP_OPS[op](xs, axis=0).ravel()
                assert got.shape == (c,), where
                # padding is zeros: max/mean of zeros is zero, so the whole chunk compares
                check(got, full[r * c:(r + 1) * c], op)
            elif name == "reduce":
                if r == p - 1:
                    check(got, NP_OPS[op](xs, axis=0), op)
                else:
                    assert got is None, where
            elif name == "broadcast":
                np.testing.assert_array_equal(got, data(p // 2, seed=7), err_msg=where)
            elif name == "all_gather":
                want = np.concatenate([data(q, (2, 3)).ravel() for q in range(p)])
                np.testing.assert_array_equal(got, want, err_msg=where)
            elif name == "scatter":
                np.testing.assert_array_equal(got, np.arange(p * 4.0).reshape(p, 2, 2)[r], err_msg=where)
            elif name == "gather":
                if r == p - 1 - (p > 2):
                    np.testing.assert_array_equal(got, np.stack([data(q, (4,)) for q in range(p)]))
                else:
                    assert got is None, where
            elif name == "all_to_all":
                np.testing.assert_array_equal(got, np.stack([np.full(3, 10.0 * q + r) for q in range(p)]),
                                              err_msg=where)


def test_inputs_are_not_modified_and_integer_ops():
    def main(comm):
        x = np.arange(6, dtype=np.int64) + comm.rank
        before = x.copy()
        outs = [dist.all_reduce(comm, x, algorithm=a) for a in dist.algorithms("all_reduce")]
        assert np.array_equal(x, before)
        return outs, dist.all_reduce(comm, x, op="mean")

    for outs, mean in dist.spawn(main, 3, timeout=5):
        for o in outs:
            assert o.dtype == np.int64 and np.array_equal(o, 3 * np.arange(6) + 3)
        np.testing.assert_allclose(mean, np.arange(6) + 1.0)


def test_algorithms_lists_every_classic_algorithm():
    assert dist.algorithms("all_reduce") == sorted(
        ["ring", "recursive_doubling", "rabenseifner", "reduce_broadcast", "tree"])
    assert dist.algorithms("broadcast") == ["binomial", "linear", "scatter_allgather"]
    assert dist.algorithms("all_gather") == ["bruck", "recursive_doubling", "ring"]
    assert dist.algorithms("reduce_scatter") == ["pairwise", "recursive_halving", "ring"]
    with pytest.raises(ValueError, match="unknown all_reduce algorithm 'nccl'"):
        dist.spawn(lambda c: dist.all_reduce(c, np.ones(2), algorithm="nccl"), 2, timeout=3)
    with pytest.raises(ValueError, match="unknown collective"):
        dist.algorithms("allreduce")


def test_split_makes_groups_ordered_by_key():
    def main(comm):
        # 3D-grid style: even/odd world ranks form two groups, reversed order via the key
        sub = comm.split(color=comm.rank % 2, key=-comm.rank)
        total = dist.all_reduce(sub, np.array([comm.rank]))
        none = comm.split(color=None if comm.rank == 0 else 1)
        return sub.rank, sub.size, [sub.world_rank(i) for i in range(sub.size)], total, none is None

    res = dist.spawn(main, 5, timeout=5)
    assert res[0][2] == [4, 2, 0]            # ordered by key = -rank
    assert res[1][2] == [3, 1]
    assert [r[0] for r in res] == [2, 1, 1, 0, 0]
    assert [int(r[3][0]) for r in res] == [6, 4, 6, 4, 6]
    assert [r[4] for r in res] == [True, False, False, False, False]


@pytest.mark.parametrize("p", [1, 2, 3, 5])
def test_zero_d_inputs_and_one_number_per_rank_keep_their_shapes(p):
    """A 0-d input (a NumPy scalar or array) comes back 0-d from every reducing and
    broadcasting collective and gathers to (p,); an all-to-all of one number per rank (blocks
    of shape (p,), MPI_Alltoall with count 1) delivers rank j's number to row j."""
    def main(comm):
        r = comm.rank
        got = {("all_reduce", a): dist.all_reduce(comm, np.float64(r + 1), algorithm=a)
               for a in dist.algorithms("all_reduce")}
        got.update({("broadcast", a): dist.broadcast(comm, np.array(7.0 if r == 0 else 0.0), algorithm=a)
                    for a in dist.algorithms("broadcast")})
        got["reduce", "binomial"] = dist.reduce(comm, np.array(float(r)), root=0)
        got["gather", "binomial"] = dist.gather(comm, np.array(float(r)), root=0)
        got.update({("all_to_all", a): dist.all_to_all(comm, np.arange(comm.size) + 10.0 * r, algorithm=a)
                    for a in dist.algorithms("all_to_all")})
        return got

    for r, got in enumerate(dist.spawn(main, p, timeout=10)):
        for (name, alg), value in got.items():
            where = f"{name}[{alg}] on rank {r} of {p}"
            if name == "all_reduce":
                assert value.shape == () and value == p * (p + 1) / 2, where
            elif name == "broadcast":
                assert value.shape == () and value == 7.0, where
            elif name == "reduce" and r == 0:
                assert value.shape == () and value == p * (p - 1) / 2, where
            elif name == "gather" and r == 0:
                assert value.shape == (p,) and list(value) == list(range(p)), where
            elif name == "all_to_all":
                np.testing.assert_array_equal(value, 10.0 * np.arange(p) + r, err_msg=where)


def test_recv_into_something_it_cannot_write_is_refused_and_strided_out_is_filled():
    def main(comm):
        if comm.rank == 0:
            for _ in range(4):
                comm.send(np.arange(4.0), 1)
            return None
        errors = []
        for bad in (np.float64(0.0), np.zeros(4)[::-1].copy().view(), np.zeros(4, np.float32)):
            if bad.dtype == np.float64 and isinstance(bad, np.ndarray):
                bad.setflags(write=False)
            try:
                comm.recv(0, out=bad)
            except (TypeError, ValueError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
        strided = np.zeros((4, 2))[:, 0]              # not contiguous: filled through its own layout
        comm.recv(0, out=strided)
        return errors, strided.copy()

    errors, strided = dist.spawn(main, 2, timeout=10)[1]
    assert len(errors) == 3, errors
    assert errors[0].startswith("TypeError: recv(out=...) needs a NumPy array") and "a[j:j+1]" in errors[0]
    assert "read-only" in errors[1]
    assert errors[2] == "ValueError: recv into a float32 buffer of 4 elements but rank 0 sent float64 of shape (4,)"
    np.testing.assert_array_equal(strided, np.arange(4.0))
