"""``python -m minidist.exercises``: hand out, grade and explain the classroom exercises.

    python -m minidist.exercises list
    python -m minidist.exercises start NAME [DIR]          # writes DIR/NAME.py (the stub)
    python -m minidist.exercises check NAME [DIR|FILE]     # grades DIR/NAME.py
    python -m minidist.exercises check NAME --reference    # grades minidist's own implementation
    python -m minidist.exercises check --all DIR [--json]  # every exercise in DIR: a score sheet
    python -m minidist.exercises check NAME [DIR] --seed N # the held-out inputs of an earlier run
    python -m minidist.exercises hint NAME

``check`` exits with status 0 only when every check passes. Each run draws held-out inputs
from a seed it prints (and puts in ``--json``); ``--seed N`` grades on the same inputs again.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import EXERCISES, get, grade, topics
from .grading import new_seed


def _path(name: str, where: str) -> str:
    return where if where.endswith(".py") else os.path.join(where, f"{name}.py")


def cmd_list(_args) -> int:
    print(f"{len(EXERCISES)} exercises over {len(topics())} topics "
          f"(start one with: python -m minidist.exercises start NAME [DIR])\n")
    print(f"{'name':<32} {'topic':<16} {'notebook':<28} title")
    for m in EXERCISES.values():
        print(f"{m.NAME:<32} {m.TOPIC:<16} {m.NOTEBOOK:<28} {m.TITLE}")
    return 0


def cmd_start(args) -> int:
    ex = get(args.name)
    path = _path(ex.NAME, args.dir)
    if os.path.exists(path) and not args.force:
        print(f"{path} already exists; keep your work, or pass --force to overwrite it", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(ex.STUB)
    print(f"wrote {path}: read its docstring, fill in the functions, then run\n"
          f"  python -m minidist.exercises check {ex.NAME} {args.dir}")
    return 0


def _progress(text: str) -> None:
    """One line per check on stderr while the student waits (stdout stays the grade, or the JSON)."""
    print(text, file=sys.stderr, flush=True)


def cmd_check(args) -> int:
    seed = new_seed() if args.seed is None else args.seed
    if args.all:
        reports = [grade(ex, _path(ex.NAME, args.all), seed=seed, progress=_progress) for ex in EXERCISES.values()]
    elif args.name is None:
        print("check needs an exercise NAME or --all DIR", file=sys.stderr)
        return 2
    else:
        ex = get(args.name)
        reports = [grade(ex, reference=True, seed=seed, progress=_progress) if args.reference else
                   grade(ex, _path(ex.NAME, args.dir), seed=seed, progress=_progress)]
    ok = all(r.status == "passed" for r in reports)
    if args.json:
        sheet = {"passed": ok, "seed": seed, "score": round(sum(r.score for r in reports), 3), "max_score": len(reports),
                 "exercises": [r.to_dict() for r in reports]}
        print(json.dumps(sheet, indent=2))
    else:
        print("\n\n".join(r.text() for r in reports))
        if len(reports) > 1:
            done = sum(r.status == "passed" for r in reports)
            print(f"\n{done}/{len(reports)} exercises passed; score {sum(r.score for r in reports):.2f}"
                  f"/{len(reports)}")
        print(f"(held-out inputs from seed {seed}: add --seed {seed} to grade on the same ones again)")
    return 0 if ok else 1


def cmd_hint(args) -> int:
    ex = get(args.name)
    hints = ex.HINTS if args.n is None else ex.HINTS[:args.n]
    for i, h in enumerate(hints, 1):
        print(f"{i}. {h}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minidist.exercises", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the exercises, their topics and notebooks").set_defaults(fn=cmd_list)
    p = sub.add_parser("start", help="write the stub file NAME.py into DIR")
    p.add_argument("name")
    p.add_argument("dir", nargs="?", default=".")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(fn=cmd_start)
    p = sub.add_parser("check", help="grade DIR/NAME.py (or --all DIR, or --reference)")
    p.add_argument("name", nargs="?")
    p.add_argument("dir", nargs="?", default=".", help="folder holding NAME.py, or the .py file itself")
    p.add_argument("--all", metavar="DIR", help="grade every exercise's file in DIR")
    p.add_argument("--reference", action="store_true", help="grade minidist's own implementation")
    p.add_argument("--json", action="store_true", help="print a JSON score sheet")
    p.add_argument("--seed", type=int, help="draw the held-out inputs from this seed (default: a fresh one, printed)")
    p.set_defaults(fn=cmd_check)
    p = sub.add_parser("hint", help="hints for one exercise")
    p.add_argument("name")
    p.add_argument("n", nargs="?", type=int, help="show only the first N hints")
    p.set_defaults(fn=cmd_hint)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except ValueError as exc:     # an unknown exercise name
        print(exc, file=sys.stderr)
        return 2
    except OSError as exc:        # a folder that is a file, a read-only place, a full disk…
        where = exc.filename or getattr(args, "dir", "")
        print(f"cannot write or read {where}: {exc.strerror}; give a folder you can write to "
              f"(python -m minidist.exercises start NAME DIR) or the student's .py file", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
