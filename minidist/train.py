"""``python -m minidist.train --config CONFIG.json [--world-size N] [--report REPORT.json]``

Trains the tiny GPT with a DeepSpeed-style config. Under ``mpirun`` the world is MPI's;
otherwise ``--world-size`` in-process ranks (default 1).
"""
from __future__ import annotations

import argparse
import json
import sys

from .config import ConfigError, data_config, load_config
from .data import make_dataset
from .report import build_report, rank_report, write_report
from .trainer import Trainer


def run(config, comm=None, progress=True):
    """Train on this rank; returns (trainer, rank_report)."""
    trainer = Trainer(config, comm)
    trainer.fit(progress=progress)
    return trainer, rank_report(trainer)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minidist.train", description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="DeepSpeed-style JSON config file (default: all defaults)")
    ap.add_argument("--world-size", type=int, default=1, help="in-process ranks when not under mpirun")
    ap.add_argument("--report", help="write the JSON report here")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if args.world_size < 1:
        ap.error(f"--world-size must be >= 1, got {args.world_size}")
    try:
        config = json.load(open(args.config)) if args.config else {}
        cfg = load_config(config, args.world_size)           # fail fast, before any rank starts
        make_dataset(data_config(cfg))
    except (ConfigError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    trainer, rr = run(config, None, progress=not args.quiet)
    report = build_report(trainer, [rr])
    fin = report["final"]
    line = ", ".join(f"{k} {v:.4f}" for k, v in fin.items())
    print(f"done: {trainer.cfg['steps']} steps, final loss {trainer.history[-1]['loss']:.4f}, {line}, "
          f"peak memory {rr['memory']['peak_bytes'] / 2**20:.2f} MiB, simulated {rr['sim_time'] * 1e3:.3f} ms")
    if args.report:
        write_report(report, args.report)
        print(f"report written to {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
