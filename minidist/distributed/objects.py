"""Python objects between ranks: what rank 0 collects to write a report or a trace.

mpi4py's lowercase ``comm.gather(obj)`` pickles any object; here the object is encoded as
UTF-8 JSON (so only plain data — dicts, lists, numbers, strings, NumPy scalars and arrays —
can travel) and sent as a ``uint8`` array over the same point-to-point layer as every
collective. The receiver needs no length message: shape and dtype travel with an array
on both backends. The messages are logged like any other.
"""
from __future__ import annotations

import json

import numpy as np

OBJECT_TAG = 7


def jsonable(o):
    """``json.dump``'s ``default``: NumPy scalars and arrays as Python numbers and lists
    (also what :func:`minidist.report.write_report` uses)."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"a {type(o).__name__} is not JSON: only plain data (dicts, lists, numbers, strings, "
                    f"NumPy scalars and arrays) can be sent or written")


def encode(obj) -> np.ndarray:
    """``obj`` as UTF-8 JSON bytes in a uint8 array."""
    return np.frombuffer(json.dumps(obj, default=jsonable).encode(), dtype=np.uint8)


def decode(data: np.ndarray):
    return json.loads(np.ascontiguousarray(data, dtype=np.uint8).tobytes().decode())


def gather_object(comm, obj, root: int = 0, tag: int = OBJECT_TAG):
    """Every rank's ``obj`` at ``root``, as a list in rank order; None on the other ranks.

    A linear gather: each rank sends to the root, which receives from each in turn (the
    objects are small and of different sizes, so a tree would buy nothing). ``comm=None``
    or one rank: ``[obj]``.
    """
    if comm is None or comm.size == 1:
        return [obj]
    if not 0 <= root < comm.size:
        raise ValueError(f"gather_object: root {root} is not a rank of a world of {comm.size}")
    if comm.rank != root:
        # why: only the root writes the file; it needs every rank's part
        comm.send(encode(obj), root, tag=tag)
        return None
    return [obj if src == root else decode(comm.recv(src, tag=tag)) for src in range(comm.size)]
