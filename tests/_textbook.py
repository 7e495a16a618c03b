"""What every rank of every collective algorithm sends, written from the algorithms'
descriptions (Thakur, Rabenseifner & Gropp 2005; Bruck et al. 1997; Patarasuk & Yuan 2009;
Hensgen, Finkel & Manber 1988), not read from minidist — test_dist_traffic and the
notebook tests compare the message logs with it.

``TEXTBOOK[op, algorithm] = (pow2_only, f)``; ``f(n, p, r)`` is ``(bytes sent, messages
sent, ranks sent to)`` of rank r when the collective moves n bytes: the full vector; for
all-gather, gather and scatter the p blocks together; for all-to-all one rank's p blocks.
Rooted collectives are rooted at ``ROOT``. ``pow2_only``: the formula assumes p is a power
of two (MPICH's fold adds messages otherwise).
"""
ROOT = 1
TREE_SEGMENTS = 4            # all_reduce(algorithm="tree") pipelines the vector in 4 segments


def _lg(p):                  # ⌈log2 p⌉
    return (p - 1).bit_length()


def _low(v, p):
    """Lowest set bit of a relative rank (the root's: 2^⌈log2 p⌉): in a binomial tree v's
    parent is v − low, its children v + 2^k for 2^k < low (those < p)."""
    return v & -v if v else 1 << _lg(p)


def _binomial_children(v, p):
    return [v + (1 << k) for k in range(_lg(p)) if (1 << k) < _low(v, p) and v + (1 << k) < p]


def _subtree(v, p):          # ranks in v's binomial subtree: v, v+1, …, v+low−1 (cut at p)
    return min(_low(v, p), p - v)


def _heap_children(r, p):    # the binary tree of all_reduce("tree"): 0 → {1, 2} → {3..6} …
    return [c for c in (2 * r + 1, 2 * r + 2) if c < p]


def _plus(*parts):
    return sum(x[0] for x in parts), sum(x[1] for x in parts), set().union(*(x[2] for x in parts))


def _ring(n, p, r, rounds=1):         # rounds × (p−1) chunks of n/p to the right neighbour
    return rounds * (p - 1) * n // p, rounds * (p - 1), {(r + 1) % p}


def _direct(n, p, r):                 # one block of n/p straight to every other rank
    return (p - 1) * n // p, p - 1, set(range(p)) - {r}


def _hypercube(n, p, r, per_round):   # log p rounds with the partner r XOR 2^k
    k = _lg(p)
    return sum(per_round(i) for i in range(k)), k, {r ^ (1 << i) for i in range(k)}


def _binomial_bcast(n, p, r, root=ROOT):        # each rank forwards the whole vector to its children
    kids = _binomial_children((r - root) % p, p)
    return len(kids) * n, len(kids), {(c + root) % p for c in kids}


def _binomial_scatter(n, p, r, root=ROOT):      # a parent hands each child its subtree's blocks
    kids = _binomial_children((r - root) % p, p)
    return sum(_subtree(c, p) for c in kids) * n // p, len(kids), {(c + root) % p for c in kids}


def _binomial_up(n, p, r, blocks, root=ROOT):   # one message to the parent (none from the root)
    v = (r - root) % p
    return (0, 0, set()) if v == 0 else (blocks(v) * n // p, 1, {(v - _low(v, p) + root) % p})


def _linear(n, p, r, nbytes, to_root):          # to_root: every rank → root; else root → every rank
    if to_root:
        return (0, 0, set()) if r == ROOT else (nbytes, 1, {ROOT})
    return ((p - 1) * nbytes, p - 1, set(range(p)) - {r}) if r == ROOT else (0, 0, set())


def _tree_all_reduce(n, p, r):
    up = (0, 0, set()) if r == 0 else (n, TREE_SEGMENTS, {(r - 1) // 2})      # partial sums up
    kids = _heap_children(r, p)
    return _plus(up, (len(kids) * n, TREE_SEGMENTS * len(kids), set(kids)))      # results down


def _bruck_all_gather(n, p, r):       # round k: min(2^k, p − 2^k) blocks to r − 2^k
    rounds = range(_lg(p))
    return sum(min(1 << k, p - (1 << k)) for k in rounds) * n // p, _lg(p), {(r - (1 << k)) % p for k in rounds}


def _shifts(p, r):                    # r + 2^k: Bruck's all-to-all, the dissemination barrier
    return {(r + (1 << k)) % p for k in range(_lg(p))}


TEXTBOOK = {
    ("all_reduce", "ring"): (False, lambda n, p, r: _ring(n, p, r, rounds=2)),           # 2(p−1)/p·n
    ("all_reduce", "recursive_doubling"): (True, lambda n, p, r: _hypercube(n, p, r, lambda k: n)),
    ("all_reduce", "rabenseifner"): (True, lambda n, p, r: _plus(                          # halving + doubling
        _hypercube(n, p, r, lambda k: n >> (k + 1)), _hypercube(n, p, r, lambda k: (n // p) << k))),
    ("all_reduce", "reduce_broadcast"): (False, lambda n, p, r: _plus(                     # both rooted at 0
        _binomial_up(n, p, r, lambda v: p, root=0), _binomial_bcast(n, p, r, root=0))),
    ("all_reduce", "tree"): (False, _tree_all_reduce),
    ("reduce_scatter", "ring"): (False, _ring),
    ("reduce_scatter", "recursive_halving"): (True, lambda n, p, r: _hypercube(n, p, r, lambda k: n >> (k + 1))),
    ("reduce_scatter", "pairwise"): (False, _direct),
    ("all_gather", "ring"): (False, _ring),
    ("all_gather", "recursive_doubling"): (True, lambda n, p, r: _hypercube(n, p, r, lambda k: (n // p) << k)),
    ("all_gather", "bruck"): (False, _bruck_all_gather),
    ("broadcast", "linear"): (False, lambda n, p, r: _linear(n, p, r, n, to_root=False)),
    ("broadcast", "binomial"): (False, _binomial_bcast),
    ("broadcast", "scatter_allgather"): (False, lambda n, p, r: _plus(_binomial_scatter(n, p, r), _ring(n, p, r))),
    ("reduce", "linear"): (False, lambda n, p, r: _linear(n, p, r, n, to_root=True)),
    ("reduce", "binomial"): (False, lambda n, p, r: _binomial_up(n, p, r, lambda v: p)),   # partial sums: n
    ("scatter", "linear"): (False, lambda n, p, r: _linear(n, p, r, n // p, to_root=False)),
    ("scatter", "binomial"): (False, _binomial_scatter),
    ("gather", "linear"): (False, lambda n, p, r: _linear(n, p, r, n // p, to_root=True)),
    ("gather", "binomial"): (False, lambda n, p, r: _binomial_up(n, p, r, lambda v: _subtree(v, p))),
    ("all_to_all", "pairwise"): (False, _direct),
    ("all_to_all", "bruck"): (True, lambda n, p, r: (_lg(p) * n // 2, _lg(p), _shifts(p, r))),   # p/2 blocks a round
    ("barrier", "dissemination"): (False, lambda n, p, r: (0, _lg(p), _shifts(p, r))),
}
