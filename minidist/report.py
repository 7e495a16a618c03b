"""The training report (SPEC §10): config, per-step losses, per-rank memory and traffic."""
from __future__ import annotations

import json


def rank_report(trainer) -> dict:
    """What one rank measured: memory by category and bytes moved."""
    dev = trainer.device
    comm = trainer.comm
    by_op = comm.log.summary() if comm is not None else {}
    return {
        "rank": trainer.rank,
        "coords": {"dp": trainer.rank, "tp": 0, "pp": 0},
        "memory": dev.memory.summary(),
        "host_memory": dev.host.summary(),
        "flops": dev.flops,
        "sim_time": dev.clock.time,
        "comm": {
            "bytes_sent": sum(v["bytes_sent"] for v in by_op.values()),
            "bytes_received": sum(v["bytes_received"] for v in by_op.values()),
            "by_op": by_op,
        },
    }


def build_report(trainer, ranks: list[dict]) -> dict:
    """The whole job's report, assembled on rank 0 from every rank's :func:`rank_report`."""
    report = {
        "config": trainer.cfg,
        "world_size": trainer.world_size,
        "model": {"n_params": trainer.model.num_parameters(), **vars(trainer.model_config)},
        "steps": trainer.history,
        "final": trainer.final,
        "wall_time_s": trainer.wall_time,
        "ranks": ranks,
    }
    try:
        from .estimate import estimate
        report["estimate"] = estimate(trainer.cfg, trainer.world_size)
    except ImportError:  # pragma: no cover - estimate ships with the package
        report["estimate"] = None
    return report


def write_report(report: dict, path) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=1, default=_jsonable)


def _jsonable(o):
    import numpy as np
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
