"""Run a student's collective on in-process ranks and judge its result and its traffic.

The student's function runs on ``dist.spawn`` ranks, exactly as minidist's own collectives
do; every message it sends is in ``comm.log`` (op ``"send"`` for a plain ``comm.send``), so
the checks can test *the communication itself* (tinygrad's ``test_allreduce.py``): how many
messages, how large, to whom.

**Tagged inputs.** To say *which* contributions a wrong chunk holds, rank ``r`` gives
``B**r`` in every element (``B = 2p + 1``). A correct sum is ``Σ_r B**r``; any sum of the
inputs decodes digit by digit into "rank r's data counted k times" — so a chunk that
missed rank 0, or counted rank 3 twice, is named as such.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .. import distributed as dist
from ..distributed.log import MessageEntry
from .grading import Wrong, as_array, expected_got

# minidist's own collectives (and the modules that implement them): the collectives exercises forbid
# calling or importing them, never a helper of the student's that has the same name
COLLECTIVES = ("minidist.distributed.all_reduce", "minidist.distributed.reduce_scatter",
               "minidist.distributed.all_gather", "minidist.distributed.reduce", "minidist.distributed.broadcast",
               "minidist.distributed.halving_doubling", "minidist.distributed.collectives")
RANK_TIMEOUT = 5.0       # seconds a rank waits for a message before the grader calls it a hang


@dataclasses.dataclass(frozen=True)
class Sent:
    """One message a rank sent: the peer (world rank) and bytes of its log entry, and the dtype
    of the array it was sent from (the log has bytes only: 8·k bytes are k float64 or 2·k
    float32 elements, and a check must not take one for the other). ``dtype`` is None where
    the messages could not be matched to their arrays (a sub-communicator's, say)."""

    peer: int
    nbytes: int
    dtype: np.dtype | None
    entry: MessageEntry


def run_on_ranks(fn, inputs) -> tuple[list, list]:
    """``fn(comm, inputs[rank])`` on ``len(inputs)`` ranks: (results, each rank's :class:`Sent`
    messages). Raises :class:`Wrong` if a rank's function modified its input array."""
    def main(comm):
        mark = comm.log.mark()
        x = inputs[comm.rank].copy()
        dtypes, isend = [], comm.isend

        def recording_isend(*args, **kwargs):      # every send, sendrecv and batch goes through isend
            dtypes.append(np.asarray(args[0] if args else kwargs.get("x")).dtype)
            return isend(*args, **kwargs)
        comm.isend = recording_isend
        try:
            out = fn(comm, x)
        finally:
            del comm.isend
        entries = comm.log.since(mark).messages(direction="send")
        if len(dtypes) != len(entries):
            dtypes = [None] * len(entries)
        sends = [Sent(e.peer, e.nbytes, d, e) for e, d in zip(entries, dtypes)]
        return out, sends, np.array_equal(x, inputs[comm.rank])

    runs = dist.spawn(main, len(inputs), timeout=RANK_TIMEOUT)
    changed = [r for r, run in enumerate(runs) if not run[2]]
    if changed:
        raise Wrong(f"rank {changed[0]}'s input array was modified by your function; work on a copy "
                    f"(e.g. x.reshape(-1).copy()) so that the caller's data stays intact.")
    return [r[0] for r in runs], [r[1] for r in runs]


def chunk_bounds(n: int, p: int) -> list[tuple[int, int]]:
    """Element range of each of the p chunks of ``c = ceil(n/p)`` (the last ones may be short)."""
    c = -(-n // p)
    return [(min(i * c, n), min((i + 1) * c, n)) for i in range(p)]


def tagged_inputs(p: int, n: int) -> tuple[list, int]:
    base = 2 * p + 1
    return [np.full(n, float(base ** r)) for r in range(p)], base


def decode(value: float, p: int, base: int) -> list[int] | None:
    """How many times each rank's tagged input is in ``value`` (None if it is no such sum)."""
    if not np.isfinite(value) or value < 0 or value != np.round(value):
        return None
    v, counts = int(value), []
    for _ in range(p):
        v, k = divmod(v, base)
        counts.append(k)
    return counts if v == 0 else None


def explain_counts(counts, p: int) -> str:
    if counts is None:
        return "a value that is no sum of the ranks' inputs (divided? overwritten by a buffer?)"
    missing = [r for r in range(p) if counts[r] == 0]
    extra = [f"rank {r}'s {counts[r]} times" for r in range(p) if counts[r] > 1]
    parts = []
    if missing:
        parts.append(f"misses the data of rank{'s' if len(missing) > 1 else ''} "
                     f"{', '.join(map(str, missing))}")
    if extra:
        parts.append(f"counts {', '.join(extra)}")
    return " and ".join(parts) or "the right sum"


def tagged_diagnosis(fn, p: int, n: int, chunk_of_result, rule: str = "") -> str:
    """Run ``fn`` on tagged inputs and name, per rank, the first chunk whose sum is wrong.

    ``chunk_of_result(result, rank, chunk, p)`` picks a chunk out of a rank's result (or None
    when that rank's result does not hold that chunk); ``n`` should be a multiple of p."""
    inputs, base = tagged_inputs(p, n)
    try:
        outs, _ = run_on_ranks(fn, inputs)
    except Exception:  # noqa: BLE001 - the main check already reported how it failed
        return ""
    lines = []
    for r, out in enumerate(outs):
        for c in range(p):
            try:
                part = chunk_of_result(np.asarray(out, dtype=np.float64), r, c, p)
            except (TypeError, ValueError, IndexError):
                return ""
            if part is None or part.size == 0:
                continue
            counts = decode(float(part.reshape(-1)[0]), p, base)
            if counts != [1] * p:
                lines.append(f"rank {r}, chunk {c}: {explain_counts(counts, p)}")
                break
    if not lines:
        return ""
    return ("Giving rank r the value (2p+1)^r in every element shows which data each chunk holds:\n  "
            + "\n  ".join(lines[:4]) + (f"\n{rule}" if rule else ""))


def check_results(outs, expected, p: int, what: str, bounds=None, hint: str = "", dtype=None) -> None:
    """Every rank's result equals ``expected[rank]``; a wrong one is named by rank and chunk.
    With ``dtype`` (the input's), no result may be narrower (float32 inputs compared to 1e-5)."""
    rtol = 1e-5 if dtype is not None and np.dtype(dtype) == np.float32 else 1e-9
    for r, (got, exp) in enumerate(zip(outs, expected)):
        check_dtype(got, dtype, f"{what}: rank {r}")
        got = as_array(got, f"rank {r}")
        exp = np.asarray(exp, dtype=np.float64)
        if got.shape != exp.shape:
            raise Wrong(f"{what}: rank {r} returned shape {got.shape}, expected {exp.shape}. {hint}".strip())
        scale = float(np.abs(exp).max()) if exp.size else 1.0
        bad = ~np.isclose(got, exp, rtol=rtol, atol=rtol * scale)
        if bad.any():
            i = int(np.flatnonzero(bad.reshape(-1))[0])
            chunk = ""
            if bounds is not None:
                c = next(k for k, (a, b) in enumerate(bounds) if a <= i < b)
                chunk = f" chunk {c} (elements {bounds[c][0]}..{bounds[c][1] - 1} of the flattened array),"
            raise Wrong(f"{what}: rank {r},{chunk} element {i}: {expected_got(exp.reshape(-1)[i], got.reshape(-1)[i])}; "
                        f"{int(bad.sum())} of {bad.size} elements wrong. {hint}".strip())


def check_dtype(got, dtype, where: str) -> None:
    """The dtype is kept: a result may be x's dtype or a wider float, never a narrower one
    (a float64 input summed in float32 loses half its digits)."""
    if dtype is None or not isinstance(got, np.ndarray):
        return
    dtype = np.dtype(dtype)
    if got.dtype.kind != "f" or got.dtype.itemsize < dtype.itemsize:
        raise Wrong(f"{where} returned a {got.dtype} array for a {dtype} input: keep x's dtype (make buffers "
                    f"with dtype=x.dtype); {got.dtype} cannot hold every {dtype} sum.")


def elements(entry, dtype) -> float:
    """A message's size in elements of ``dtype`` (the array's own: 4 bytes for float32)."""
    return entry.nbytes / np.dtype(dtype).itemsize


def _count(v: float):
    return int(v) if v == int(v) else round(v, 2)


def describe_sends(sends, dtype=np.float64) -> str:
    return ", ".join(f"{_count(elements(e, dtype))} elements to rank {e.peer}" for e in sends[:6]) + \
        (" …" if len(sends) > 6 else "")


def check_ring_traffic(sends, p: int, n: int, steps: int, exact_chunk: bool, name: str,
                       dtype=np.float64, shape=None) -> None:
    """A ring: every rank sends ``steps`` messages, each one chunk of about n/p elements of the
    array's ``dtype`` (or of float64, for a solution that works in a float64 buffer), all to
    its right neighbour (rank+1) % p. Wrong patterns are named (gather-to-root, whole vector,
    wrong neighbour, extra or missing steps, rows of an unflattened array)."""
    dtype = np.dtype(dtype)
    if dtype.itemsize < 8 and all(e.dtype in (None, np.float64) for r in range(p) for e in sends[r]) and \
            all(len(sends[r]) == steps and
                                  all(e.nbytes % 8 == 0 and e.nbytes // 8 in ({-(-n // p)} if exact_chunk else
                                                                              {n // p, -(-n // p)}) for e in sends[r])
                                  for r in range(p)) and all(e.peer == (r + 1) % p for r in range(p) for e in sends[r]):
        return              # a ring that works in float64: the same number of elements, each 8 bytes
    c = -(-n // p)
    allowed = {c} if exact_chunk else {n // p, c}
    what = f"a {dtype} array of {n} elements" + (f", shape {tuple(shape)}" if shape is not None and len(shape) > 1 else "")
    to_zero = [r for r in range(1, p) if sends[r] and all(e.peer == 0 for e in sends[r])]
    if p > 2 and len(to_zero) == p - 1:
        raise Wrong(f"traffic: ranks 1..{p - 1} all send to rank 0: that is gather-to-root (reduce then "
                    f"broadcast), not a ring. In a ring every rank sends only to its right neighbour "
                    f"(rank + 1) % p and receives only from its left one, so no rank is a bottleneck.")
    for r in range(p):
        right = (r + 1) % p
        peers = sorted({e.peer for e in sends[r]} - {right})
        if peers:
            raise Wrong(f"traffic: rank {r} sends to rank{'s' if len(peers) > 1 else ''} "
                        f"{', '.join(map(str, peers))}, but in a ring rank {r} sends only to its right "
                        f"neighbour {right} = (rank + 1) % {p} (and receives from (rank - 1) % {p}).")
        sizes = [_count(elements(e, dtype)) for e in sends[r]]
        if sizes and max(sizes) >= n and n > c:
            raise Wrong(f"traffic on {what}: rank {r} sends the whole array ({n} elements) in one message: "
                        f"{describe_sends(sends[r], dtype)}. A ring cuts it into {p} chunks of "
                        f"{'ceil(n/p) = ' if exact_chunk else 'about n/p = '}{c} elements and passes one "
                        f"chunk per step — that is what makes it bandwidth-optimal.")
        if len(sizes) != steps:
            raise Wrong(f"traffic on {what}: rank {r} sent {len(sizes)} messages ({describe_sends(sends[r], dtype)}); "
                        f"{name} on {p} ranks takes exactly {steps} steps of one message each.")
        wrong = [s for s in sizes if s not in allowed]
        if wrong:
            want = f"{c} elements (ceil({n}/{p}), padding included)" if exact_chunk else \
                f"one chunk of the flattened array ({' or '.join(map(str, sorted(allowed)))} elements)"
            why = ""
            if shape is not None and len(shape) > 1 and all(s % int(np.prod(shape[1:])) == 0 for s in sizes):
                why = (f" Each of your messages is a number of whole rows of the {tuple(shape)} array: "
                       f"np.array_split(x, p) splits a 2-D array along its first axis; cut x.reshape(-1) instead.")
            raise Wrong(f"traffic on {what}: rank {r} sent messages of {sizes} {dtype} elements; each step sends "
                        f"{want}.{why}")
