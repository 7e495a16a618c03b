"""The side-by-side comparison: full fine-tuning against every method, measured.

One tiny GPT is pretrained on the ``copy`` task (:func:`pretrain`), then fine-tuned from
those weights on ``reverse`` — the same digits and vocabulary, a different mapping — by
each method of :data:`METHODS` (:func:`finetune`), for several seeds (the new parameters'
draws and the batches change with the seed; the pretrained model does not). Each run
records what the table and figure of the peft chapter show: trainable share, model-state
bytes and the peak on the simulated device, simulated step time, and the held-out loss —
the Trainer's evaluation on the task's evaluation stream, which training never draws from.

:func:`measure_costs` sets every measured cost beside its closed form
(:mod:`minidist.peft.costs`): trainable parameters, gradient and optimizer bytes, matmul
FLOPs of forward and weight-gradient FLOPs of backward, activation bytes, and the bytes each
rank sends per step under DDP, ZeRO-2 and ZeRO-3.

Each method trains at its own learning rate (PEFT methods are usually trained at higher
rates than the whole model): the one of :data:`LEARNING_RATES` with the lowest held-out loss
on seed :data:`SWEEP_SEED`, which is none of the table's seeds (:func:`sweep` reruns it).
"""
from __future__ import annotations

import contextlib
import copy

import numpy as np

from ..defaults import DDP, STRATEGY_LABELS, ZERO2, ZERO3, ZERO_STAGES, zero_strategy
from ..device import Device
from ..tensor import no_grad
from ..training.data import greedy_decode
from ..training.trainer import Trainer
from . import costs as C
from .trainer import PeftTrainer

MODEL = {"n_layer": 2, "n_embd": 32, "n_head": 4, "block_size": 16}
PRETRAIN = {"model": MODEL, "data": {"dataset": "copy", "n_digits": 3}, "steps": 100,
            "train_micro_batch_size_per_gpu": 16, "optimizer": {"type": "AdamW", "params": {"lr": 3e-3}},
            "eval_iters": 4}
TASK, STEPS = "reverse", 30
EXACT_MATCH_EXAMPLES = 50
ALL_LINEAR = ["c_attn", "c_proj", "c_fc"]             # every linear layer of a block ("c_proj" names two)


def _lora(r: int, **extra) -> dict:
    return {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": ALL_LINEAR, **extra}


# label -> (peft section or None for full fine-tuning, learning rate)
METHODS = {
    "full fine-tuning": (None, 1e-2),
    "adapter (m = 8)": ({"peft_type": "ADAPTER", "bottleneck_size": 8}, 3e-2),
    "prefix-tuning (p = 4)": ({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 4, "prefix_projection": True,
                               "encoder_hidden_size": 16}, 1e-1),
    "P-tuning v2 (p = 4)": ({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 4}, 1e-1),
    "LoRA r = 1": (_lora(1), 3e-2),
    "LoRA r = 4": (_lora(4), 3e-2),
    "LoRA r = 16": (_lora(16), 1e-2),
    "QLoRA r = 4": (_lora(4, load_in_4bit=True, paged_optimizer=True), 3e-2),
}
LEARNING_RATES = (3e-3, 1e-2, 3e-2, 1e-1)     # each method's rate above: the best of these on seed SWEEP_SEED
SWEEP_SEED = 10


def pretrain(seed: int = 0) -> dict:
    """The base model: trained on ``copy``; name → array."""
    t = Trainer({**PRETRAIN, "seed": seed})
    for step in range(PRETRAIN["steps"]):
        t.train_step(step)
    return t.model.state_dict()


def held_out(t: Trainer) -> dict:
    """The Trainer's held-out loss (its evaluation batches of the task's held-out stream) and
    the exact-match rate of greedy answers on :data:`EXACT_MATCH_EXAMPLES` held-out prompts."""
    model = t.model.eval()
    task = t.dataset
    with no_grad():
        loss = np.mean([float(model(x, y)[1].data) for x, y in task.eval_batches(t.micro_batch, t.cfg["eval_iters"])])
        exact = task.exact_match(lambda p: greedy_decode(model, p, task.answer_len), EXACT_MATCH_EXAMPLES)
    model.train()
    return {"val_loss": float(loss), "exact_match": exact}


def finetune_config(label: str, seed: int, steps: int = STEPS, **extra) -> dict:
    """The fine-tuning config of method ``label`` (a key of :data:`METHODS`)."""
    peft, lr = METHODS[label]
    cfg = copy.deepcopy(PRETRAIN)
    cfg["data"]["dataset"], cfg["steps"], cfg["seed"] = TASK, steps, seed
    cfg["optimizer"]["params"]["lr"] = lr
    cfg["peft"] = copy.deepcopy(peft)
    cfg.update(copy.deepcopy(extra))
    return cfg


def finetune(label: str, seed: int, pretrained: dict, steps: int = STEPS) -> dict:
    """One run: the measurements of one method and seed (module docstring)."""
    t = PeftTrainer(finetune_config(label, seed, steps), pretrained=pretrained)
    for step in range(steps):
        t.train_step(step)
    final = held_out(t)
    mem = t.device.memory
    return {"method": label, "seed": seed, "held_out_loss": final["val_loss"], "exact_match": final["exact_match"],
            "trainable": t.counts["trainable"], "share": t.counts["share"], "peak_bytes": mem.peak,
            "model_states": dict(t.strategy.model_states), "step_time": t.history[-1]["sim_time"] / steps,
            "losses": [h["loss"] for h in t.history]}


def sweep(pretrained: dict, labels=None) -> dict:
    """label → {learning rate: held-out loss} on :data:`SWEEP_SEED`: how :data:`METHODS`' rates
    were chosen (each is the lowest of its row)."""
    out = {}
    for label in labels or METHODS:
        peft, lr = METHODS[label]
        row = {}
        for rate in LEARNING_RATES:
            METHODS[label] = (peft, rate)
            try:
                row[rate] = finetune(label, SWEEP_SEED, pretrained)["held_out_loss"]
            finally:
                METHODS[label] = (peft, lr)
        out[label] = row
    return out


def summarize(results: list) -> dict:
    """label → {key: {"mean", "min", "max"}} over seeds, in the order of :data:`METHODS`."""
    out = {}
    for label in METHODS:
        runs = [r for r in results if r["method"] == label]
        if runs:
            out[label] = {k: {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v))}
                          for k in ("held_out_loss", "exact_match", "share", "peak_bytes", "step_time", "trainable")
                          for v in [[r[k] for r in runs]]}
            out[label]["model_states"] = runs[0]["model_states"]
            out[label]["seeds"] = len(runs)
    return out


# ----------------------------------------------------------------------------- costs beside formulas

def _model(cfg: dict, vocab: int) -> dict:
    return {**cfg["model"], "vocab_size": vocab, "bias": True}


def one_step_costs(label: str, pretrained: dict, B: int = 8) -> dict:
    """One training step of method ``label`` on one rank: measured and formula side by side."""
    cfg = finetune_config(label, 0, 1, train_micro_batch_size_per_gpu=B)
    t = PeftTrainer(cfg, pretrained=pretrained)
    dev = t.device
    x, y = t.batch(0, 0)
    T = x.shape[1]
    before, m0 = dict(dev.flops_by_op), dev.matmul_flops
    with dev:
        loss = t.model(x, y)[1]
        forward, m1 = dev.matmul_flops - m0, dev.matmul_flops
        activations = dev.memory.current["activations"]
        t.strategy.scale_loss(loss).backward()
    backward = dev.matmul_flops - m1
    dw = sum(v - before.get(k, 0) for k, v in dev.flops_by_op.items() if k.endswith((".dW", ".db")))
    t.strategy.step()
    model, peft = _model(cfg, t.model_config.vocab_size), t.cfg["peft"]
    w, K = 4, t.strategy.state_bytes_per_element()
    states = t.strategy.model_states
    n_t = C.trainable_parameters(model, peft)
    return {"trainable": t.counts["trainable"], "trainable_formula": n_t,
            "stored": C.trainable_parameters(model, peft, training=False),
            "gradients": states["gradients"], "gradients_formula": w * n_t,
            "optimizer": states["optimizer_states"] + states["host"], "optimizer_formula": K * n_t,
            "paged": states["host"] > 0, "parameters": states["parameters"],
            "parameters_formula": w * n_t + _frozen_formula(model, peft, t.counts["frozen"]),
            "forward_flops": forward, "forward_flops_formula": C.forward_matmul_flops(model, peft, B, T),
            "backward_flops": backward, "dw_flops": dw, "dw_flops_formula": C.weight_gradient_flops(model, peft, B, T),
            "activations": activations, "tokens": B * T}


def _frozen_formula(model: dict, peft, frozen: int) -> int:
    """Bytes of the frozen weights: 4 each, or NF4 for QLoRA's quantized linears."""
    if peft is None:
        return 0
    if not peft.get("load_in_4bit"):
        return 4 * frozen
    linears = [d_in * d_out for d_in, d_out in C.block_linear_shapes(model["n_embd"])] * model["n_layer"]
    nf4 = sum(C.nf4_bytes(n, peft["bnb_4bit_use_double_quant"]) for n in linears)
    return nf4 + 4 * (frozen - sum(linears))


@contextlib.contextmanager
def fresh_device(comm):
    """A new simulated device for this rank during the block (its own memory and clock)."""
    old = comm.device
    comm.device = Device(old.spec, rank=comm.rank)
    try:
        with comm.device:
            yield comm.device
    finally:
        comm.device = old


STAGES = {STRATEGY_LABELS[name]: ZERO_STAGES[name] for name in (DDP, ZERO2, ZERO3)}     # "DDP": 0, "ZeRO-2": 2, …


def traffic(comm, label: str, pretrained: dict) -> dict:
    """Bytes this rank sends in one step of method ``label`` under DDP, ZeRO-2 and ZeRO-3 over
    the ranks of ``comm`` (a collective), beside :func:`minidist.peft.costs.bytes_per_step`."""
    out = {}
    for name, stage in STAGES.items():
        cfg = finetune_config(label, 0, 1, train_micro_batch_size_per_gpu=2, zero_optimization={"stage": stage})
        if cfg["peft"] is not None and cfg["peft"].get("load_in_4bit") and stage == 3:
            continue                                # refused: the 4-bit base is not partitioned
        with fresh_device(comm):
            t = PeftTrainer(cfg, comm, pretrained=pretrained)
            t.train_step(0)
        s = t.strategy
        if stage == 3:
            units = [b.numel for b in s.buckets]
            frozen = [f.numel for f in s.frozen_buckets if f is not None]
        else:
            units, frozen = [s.numel], []
        strategy = DDP if stage == 0 else zero_strategy(stage)
        out[name] = {"measured": t.history[0]["bytes_sent"],
                     "formula": C.bytes_per_step(strategy, comm.size, units, frozen, 4),
                     "frozen_gathered": C.bytes_per_step(strategy, comm.size, [], frozen, 4)}
    return out
