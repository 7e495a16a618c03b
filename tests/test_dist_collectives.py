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
