"""The training loop: config → model, data, optimizer on a simulated device → steps → report.

One :class:`Trainer` runs on one rank. On a single rank it is plain training; the
parallel strategies of :mod:`minidist.parallel` plug in as the ``strategy`` that decides
how gradients are synchronised and how the optimizer step is taken.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from . import optim
from .config import data_config, load_config
from .data import TextDataset, make_dataset
from .device import Device
from .model import GPT, GPTConfig
from .tensor import no_grad


class Trainer:
    """Trains the GPT of ``config`` on this rank. ``comm`` is None for single-rank runs."""

    def __init__(self, config=None, comm=None, device=None):
        self.world_size = comm.size if comm is not None else 1
        self.rank = comm.rank if comm is not None else 0
        self.cfg = cfg = load_config(config, self.world_size)
        self.comm = comm
        self.device = device or (comm.device if comm is not None else Device(cfg["device"], rank=0))
        self.dataset = make_dataset(data_config(cfg))
        self.val_dataset = make_dataset(data_config(cfg), split="val") if isinstance(self.dataset, TextDataset) \
            else self.dataset
        mcfg = dict(cfg["model"])
        if mcfg["vocab_size"] is None:
            mcfg["vocab_size"] = self.dataset.vocab_size
        elif mcfg["vocab_size"] < self.dataset.vocab_size:
            from .config import ConfigError
            raise ConfigError("model.vocab_size", f"{mcfg['vocab_size']} is smaller than the dataset's "
                                                  f"vocabulary ({self.dataset.vocab_size}); remove the key to derive it")
        self.model_config = GPTConfig(**mcfg)
        with self.device:
            self.model = GPT(self.model_config, seed=cfg["seed"])
            self.optimizer = optim.build(cfg["optimizer"]["type"], self.model.parameters(),
                                         **cfg["optimizer"]["params"])
        self.micro_batch = cfg["train_micro_batch_size_per_gpu"]
        self.accumulation = cfg["gradient_accumulation_steps"]
        self.history: list[dict] = []

    # -- one step -----------------------------------------------------------------------------
    def batch(self, step: int, micro: int):
        """This rank's micro-batch: a slice of the global batch drawn from (seed, step, micro)."""
        global_b = self.micro_batch * self.world_size
        x, y = self.dataset.get_batch(global_b, step * self.accumulation + micro, self.cfg["seed"])
        lo = self.rank * self.micro_batch
        return x[lo:lo + self.micro_batch], y[lo:lo + self.micro_batch]

    def train_step(self, step: int) -> float:
        dev = self.device
        total = 0.0
        with dev:
            for micro in range(self.accumulation):
                x, y = self.batch(step, micro)
                _, loss = self.model(x, y)
                # mean over the accumulated micro-batches = mean over the global batch
                (loss * (1.0 / self.accumulation)).backward()
                total += float(loss.data) / self.accumulation
            self._clip_gradients()
            n = self.model.num_parameters()
            dev.compute("optimizer.step", 10 * n)      # ~10 elementwise FLOPs per parameter (Adam)
            self.optimizer.step()
            self.optimizer.zero_grad()
            dev.clock.sync()
        self.history.append({"step": step, "loss": total, "loss_scale": None, "sim_time": dev.clock.time})
        return total

    def _clip_gradients(self) -> None:
        clip = self.cfg["gradient_clipping"]
        if clip > 0:
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            norm = float(np.sqrt(sum(float((g * g).sum()) for g in grads)))
            if norm > clip:
                for g in grads:
                    g *= clip / (norm + 1e-6)

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate(self) -> dict:
        """Validation loss (and exact-match accuracy for synthetic tasks); not on the sim clock."""
        self.model.eval()
        out = {}
        with no_grad():
            if isinstance(self.val_dataset, TextDataset):
                losses = [float(self.model(x, y)[1].data)
                          for x, y in self.val_dataset.eval_batches(self.micro_batch, self.cfg["eval_iters"])]
                out["val_loss"] = float(np.mean(losses))
                out["unigram_entropy"] = float(self.val_dataset.unigram_entropy())
            if hasattr(self.dataset, "exact_match"):
                from .data import greedy_decode
                out["exact_match"] = float(self.dataset.exact_match(
                    lambda prompt: greedy_decode(self.model, prompt, self.dataset.answer_len)))
                losses = [float(self.model(x, y)[1].data)
                          for x, y in self.dataset.eval_batches(self.micro_batch, self.cfg["eval_iters"])]
                out["val_loss"] = float(np.mean(losses))
        self.model.train()
        return out

    # -- the whole run ------------------------------------------------------------------------
    def fit(self, progress: bool = True, stream=None) -> dict:
        stream = stream or sys.stderr
        steps = self.cfg["steps"]
        t0 = time.perf_counter()
        for step in range(steps):
            loss = self.train_step(step)
            if progress and self.rank == 0:
                rate = (step + 1) / max(time.perf_counter() - t0, 1e-9)
                bar = "#" * int(20 * (step + 1) / steps)
                print(f"\r[{bar:<20}] step {step + 1}/{steps} loss {loss:.4f} ({rate:.1f} steps/s)",
                      end="" if step + 1 < steps else "\n", file=stream, flush=True)
            interval = self.cfg["eval_interval"]
            if interval and (step + 1) % interval == 0 and step + 1 < steps:
                self.history[-1].update(self.evaluate())
        self.final = self.evaluate()
        self.wall_time = time.perf_counter() - t0
        return self.final
