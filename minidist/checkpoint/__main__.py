"""``python -m minidist.checkpoint consolidate DIR OUT.npz`` | ``inspect DIR``.

``DIR`` is a ``--save`` folder (its ``latest`` checkpoint is used) or one step folder.
"""
from __future__ import annotations

import argparse
import os
import sys

from .consolidate import consolidate, describe
from .format import CheckpointError


def _check_out(out: str, source: str) -> None:
    folder = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise CheckpointError(out, "cannot be written (a folder, or its folder is missing or read-only); "
                                   "give a file path such as state.npz in a writable folder")
    inside = os.path.realpath(out)
    if os.path.commonpath([inside, os.path.realpath(source)]) == os.path.realpath(source):
        raise CheckpointError(out, f"is inside the checkpoint being read ({source}): writing there would overwrite "
                                   f"its shards, manifest or 'latest'; give a path outside it")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minidist.checkpoint", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("consolidate", help="write the full fp32 state dict as one .npz (DeepSpeed's zero_to_fp32)")
    c.add_argument("dir", help="a --save folder or one of its step folders")
    c.add_argument("out", help="the .npz file to write")
    i = sub.add_parser("inspect", help="print what a checkpoint holds (and verify its checksums)")
    i.add_argument("dir", help="a --save folder or one of its step folders")
    args = ap.parse_args(argv)
    try:
        if args.command == "inspect":
            text = describe(args.dir)
        else:
            _check_out(args.out, args.dir)
            state = consolidate(args.dir, args.out)
            text = f"wrote {len(state)} parameters ({sum(a.size for a in state.values()):,} elements) to {args.out}"
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
