"""Run a few training steps of a config and collect what the equivalence tests compare.

The contract of every strategy (CS336 assignment 2: the serial model is the
reference): after every step, the parameters equal those of one rank trained on the
same global batch. :func:`train_steps` runs one rank's side of that check::

    ref = train_steps(serial_config)                          # one rank, micro-batch p·b
    runs = dist.spawn(train_steps, p, parallel_config)        # p ranks, micro-batch b each
    max_abs_diff(runs[0]["params"][-1], ref["params"][-1])
"""
from __future__ import annotations

import copy

import numpy as np

from .peft.trainer import PeftTrainer
from .training.trainer import Trainer


def train_steps(comm, config: dict | None = None, steps: int | None = None) -> dict:
    """Train ``steps`` steps on this rank; return per-step full parameters (the one-rank
    model's names and values under every layout: a collective for ZeRO-3, tensor and
    pipeline parallelism), the history, the model-state snapshot and the expected numbers."""
    if config is None and isinstance(comm, dict):       # train_steps(config) on one rank
        comm, config = None, comm
    cls = PeftTrainer if isinstance(config, dict) and config.get("peft") is not None else Trainer
    trainer = cls(copy.deepcopy(config), comm)
    steps = trainer.cfg["steps"] if steps is None else steps
    params = []
    for step in range(steps):
        trainer.train_step(step)
        params.append(trainer.full_parameters())
    s = trainer.strategy
    exp_bytes = s.expected_bytes_sent(trainer.accumulation) if hasattr(s, "shard") else s.expected_bytes_sent()
    return {"params": params, "history": trainer.history, "model_states": s.model_states,
            "expected_model_states": s.expected_model_states(), "expected_bytes_sent": exp_bytes,
            "strategy": s.name, "n_params": trainer.n_params, "shard": getattr(s, "shard", None),
            "peak_by_category": dict(trainer.device.memory.peak_by_category),
            "host": dict(trainer.device.host.current), "trainer": trainer}


def max_abs_diff(a: dict, b: dict) -> float:
    """Largest elementwise difference between two name → array dicts with the same keys."""
    if set(a) != set(b):
        raise KeyError(f"different parameter names: {sorted(set(a) ^ set(b))}")
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
