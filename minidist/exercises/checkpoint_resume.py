"""Exercise: save and resume training so that the resumed run is bit-identical to one that
never stopped — what a checkpoint must hold besides the weights.

Reference: the same state :mod:`minidist.checkpoint` saves per rank (model, optimizer state by
parameter name, the data sampler's position, the iteration), here for one rank in memory.
"""
from __future__ import annotations

import copy
import math

import numpy as np

from .. import optim
from ..model import GPT, GPTConfig
from .grading import Wrong, on_case

NAME = "checkpoint_resume"
TOPIC = "checkpoint"
TITLE = "Checkpoint and resume: everything a bit-identical resume needs"
NOTEBOOK = "03_data_parallel_and_zero"
FUNCTIONS = ("save", "restore")
FORBIDDEN = ("minidist.checkpoint",)         # minidist's own checkpoints

STUB = '''"""Checkpoint and resume: after ``restore``, training must go on EXACTLY (bit for bit) as if
it had never stopped. The weights alone are not enough.

The grader trains a tiny minidist GPT with a ``trainer`` object that has

* ``trainer.model`` — the GPT; ``trainer.model.named_parameters()`` gives (name, p) pairs,
  ``p.data`` is the parameter's array;
* ``trainer.optimizer`` — a minidist optimizer (Adam, AdamW, or SGD with momentum). Its state
  is ``trainer.optimizer.state[id(p)]``: a dict per parameter, e.g. Adam's
  {"step": 3, "exp_avg": array, "exp_avg_sq": array}. It is keyed by ``id(p)``, and a new
  model's parameters have new ids: save it by parameter NAME;
* ``trainer.rng`` — the np.random.Generator that draws every batch (the data order);
* ``trainer.iteration`` — the number of steps done; the learning-rate schedule (warm-up, then
  cosine decay) reads it.

Write

* ``save(trainer) -> dict``: everything needed to resume, as a dict you own: COPIES of the
  arrays (training goes on after ``save`` and changes the live ones in place);
* ``restore(trainer, saved)``: put that state into a FRESH trainer built with the same
  settings (its weights come from another seed, its optimizer state is empty, its rng is new,
  its iteration is 0).

The grader trains k steps, saves, trains on, then restores into a fresh trainer and compares
the next steps with the run that never stopped: weights, optimizer state, the next batch,
the learning rate, bit for bit. Useful: ``a.copy()``, ``rng.bit_generator.state`` (get and
set), ``copy.deepcopy``. The grader also tries optimizers and step counts of its own, drawn
from the seed it prints.

Not allowed (the grader looks at what your code calls or imports): minidist.checkpoint.
Helpers of your own may have any name.
"""


def save(trainer):
    raise NotImplementedError


def restore(trainer, saved):
    raise NotImplementedError
'''

HINTS = [
    "Four things change while training: the weights, the optimizer's per-parameter state, the rng's "
    "position and the iteration counter. Save all four.",
    "Weights by name: {name: p.data.copy() for name, p in trainer.model.named_parameters()}; restore with "
    "p.data[...] = saved[name].",
    "Optimizer state by name: {name: copy.deepcopy(trainer.optimizer.state[id(p)]) ...}; restore with "
    "trainer.optimizer.state[id(p)] = copy.deepcopy(saved[name]) for the fresh model's p.",
    "The rng: trainer.rng.bit_generator.state is a dict; assigning it back puts the generator where it was.",
]

CFG = GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=8)
OPTIMIZERS = {"adam": {"lr": 1e-2}, "adamw": {"lr": 1e-2, "weight_decay": 0.1},
              "sgd": {"lr": 0.1, "momentum": 0.9}}


class Trainer:
    """One rank's training loop, as small as it can be: the state a checkpoint must hold."""

    def __init__(self, opt: str = "adam", seed: int = 0, data_seed: int = 0, warmup: int = 3, total: int = 12):
        self.model = GPT(CFG, seed=seed, dtype=np.float64)
        self.optimizer = optim.build(opt, self.model.parameters(), **OPTIMIZERS[opt])
        self.base_lr, self.warmup, self.total = self.optimizer.lr, warmup, total
        self.rng = np.random.default_rng(data_seed)
        self.iteration = 0
        self.last_batch = None

    def lr_at(self, it: int) -> float:
        """Linear warm-up, then cosine decay to a tenth (nanoGPT's get_lr)."""
        if it < self.warmup:
            return self.base_lr * (it + 1) / self.warmup
        frac = min(1.0, (it - self.warmup) / max(1, self.total - self.warmup))
        return self.base_lr * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))

    def train_step(self) -> None:
        self.optimizer.lr = self.lr_at(self.iteration)
        x = self.rng.integers(0, CFG.vocab_size, (2, CFG.block_size))    # (B, T) from the data rng
        self.last_batch = x
        self.model(x, np.roll(x, -1, axis=1))[1].backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.iteration += 1


def reference():
    class Reference:
        @staticmethod
        def save(trainer):
            return _snapshot(trainer)

        @staticmethod
        def restore(trainer, saved):
            for name, p in trainer.model.named_parameters():
                p.data[...] = saved["weights"][name]
                if name in saved["optimizer"]:
                    trainer.optimizer.state[id(p)] = copy.deepcopy(saved["optimizer"][name])
            trainer.rng.bit_generator.state = copy.deepcopy(saved["rng"])
            trainer.iteration = saved["iteration"]
    return Reference


def _snapshot(t: Trainer) -> dict:
    """The state a checkpoint must hold, copied (the grader's own record, and the reference's save)."""
    params = dict(t.model.named_parameters())
    return {"weights": {n: p.data.copy() for n, p in params.items()},
            "optimizer": {n: copy.deepcopy(t.optimizer.state[id(p)]) for n, p in params.items()
                          if id(p) in t.optimizer.state},
            "rng": copy.deepcopy(t.rng.bit_generator.state), "iteration": t.iteration}


def _resume(sol, opt: str, before: int, after: int, seed: int):
    """Train ``before`` steps, save, train ``after`` more (the run that never stops); restore the
    save into a fresh trainer. Returns (the run, the fresh trainer, the grader's record at the save)."""
    run = Trainer(opt, seed=seed, data_seed=seed + 1)
    for _ in range(before):
        run.train_step()
    record = _snapshot(run)
    with on_case(sol, f"save after {before} steps ({opt})"):
        saved = sol.save(run)
    for _ in range(after):
        run.train_step()
    fresh = Trainer(opt, seed=seed + 100, data_seed=seed + 200)
    with on_case(sol, f"restore into a fresh trainer ({opt})"):
        sol.restore(fresh, saved)
    return run, fresh, record


def _later(run: Trainer, record: dict, name: str, got) -> bool:
    """Whether ``got`` is the run's live array now (a reference saved, not a copy)."""
    live = dict(run.model.named_parameters())[name].data
    return np.array_equal(got, live) and not np.array_equal(got, record["weights"][name])


def _check_state(sol, opt, before, after, seed, parts):
    run, fresh, record = _resume(sol, opt, before, after, seed)
    where = f"{opt}, saved after {before} steps, restored into a fresh trainer"
    params = dict(fresh.model.named_parameters())
    if "weights" in parts:
        for name, p in params.items():
            if np.array_equal(p.data, record["weights"][name]):
                continue
            why = (f"they are the weights {after} steps LATER: you saved references to the live arrays, which "
                   f"training kept changing — save copies (p.data.copy())" if _later(run, record, name, p.data) else
                   "they are the fresh trainer's own initial weights: restore the saved ones into p.data"
                   if np.array_equal(p.data, Trainer(opt, seed=seed + 100).model.state_dict()[name]) else
                   f"largest difference {np.abs(p.data - record['weights'][name]).max():.3g}")
            raise Wrong(f"{where}: parameter {name} is not what it was at the save: {why}.")
    if "optimizer" in parts:
        for name, p in params.items():
            want = record["optimizer"].get(name)
            got = fresh.optimizer.state.get(id(p))
            if want is None:
                continue
            if got is None:
                raise Wrong(f"{where}: the optimizer has no state for parameter {name}: restore each parameter's "
                            f"state ({', '.join(want)}) by NAME — optimizer.state is keyed by id(p), and the "
                            f"fresh model's parameters have new ids.")
            for key, value in want.items():
                mine = got.get(key)
                same = np.array_equal(mine, value) if isinstance(value, np.ndarray) else mine == value
                if not same:
                    what = (f"the step count is {mine!r}, it was {value!r}: the saved state is the live dict, "
                            f"which training kept changing — save a copy (copy.deepcopy)"
                            if key == "step" and isinstance(mine, int) and mine > value else
                            f"the step count is {mine!r}, it was {value!r}: Adam's bias correction 1 - beta**step "
                            f"starts over" if key == "step" else
                            f"{key} holds the values {after} steps later: save copies of the optimizer's arrays"
                            if isinstance(mine, np.ndarray) and np.array_equal(mine, run.optimizer.state[
                                id(dict(run.model.named_parameters())[name])][key]) else
                            f"{key} differs from the saved one")
                    raise Wrong(f"{where}: optimizer state of {name}: {what}.")
    if "data" in parts:
        if fresh.rng.bit_generator.state != record["rng"]:
            replay = Trainer(opt, seed=seed, data_seed=seed + 1)
            fresh_start = fresh.rng.bit_generator.state == np.random.default_rng(seed + 200).bit_generator.state
            raise Wrong(f"{where}: the data sampler's rng is not where it was at the save"
                        + (" — it starts over (a new generator's state)" if fresh_start else
                           " — it is the state of a later step" if fresh.rng.bit_generator.state ==
                           replay.rng.bit_generator.state else "")
                        + ": the next batches differ from the run that never stopped. Save "
                          "trainer.rng.bit_generator.state (a copy) and assign it back.")
    if "iteration" in parts and fresh.iteration != record["iteration"]:
        raise Wrong(f"{where}: trainer.iteration is {fresh.iteration}, it was {record['iteration']}: the "
                    f"learning-rate schedule would restart its warm-up (lr {fresh.lr_at(fresh.iteration):.4g} "
                    f"instead of {fresh.lr_at(record['iteration']):.4g} at the next step).")
    if "continue" in parts:
        for _ in range(after):
            fresh.train_step()
        for name, p in dict(fresh.model.named_parameters()).items():
            live = dict(run.model.named_parameters())[name].data
            if not np.array_equal(p.data, live):
                raise Wrong(f"{where}: after {after} more steps, parameter {name} differs from the run that never "
                            f"stopped by up to {np.abs(p.data - live).max():.3g}: a resume must be bit-identical.")


def _check(opt, before, after, seed, parts):
    return lambda sol: _check_state(sol, opt, before, after, seed, parts)


def held_out(sol, rng):
    """Every optimizer (SGD's momentum buffer is not Adam's exp_avg), saves early and late."""
    for opt in OPTIMIZERS:
        _check_state(sol, opt, int(rng.integers(1, 6)), int(rng.integers(1, 4)), int(rng.integers(1000)),
                     ("weights", "optimizer", "data", "iteration", "continue"))


ALL = ("weights", "optimizer", "data", "iteration", "continue")
CHECKS = [
    ("the weights are restored as they were at the save (copies, not live arrays)", _check("adam", 3, 2, 0, ("weights",))),
    ("Adam's moments and step count are restored, by parameter name", _check("adam", 3, 2, 1, ("optimizer",))),
    ("the data sampler's rng is restored: the same next batches", _check("adam", 3, 2, 2, ("data",))),
    ("the iteration is restored: the learning-rate schedule goes on", _check("adam", 2, 2, 3, ("iteration",))),
    ("3 steps after the resume equal the run that never stopped, bit for bit", _check("adam", 4, 3, 4, ALL)),
    ("held out: Adam, AdamW and SGD with momentum, saved after 1 to 5 steps", held_out),
]
