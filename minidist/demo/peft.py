"""Chapter: parameter-efficient fine-tuning — what each method trains, costs and reaches.

A tiny GPT pretrained on ``copy`` is fine-tuned on ``reverse`` by full fine-tuning, Houlsby
adapters, prefix-tuning, P-tuning v2, LoRA at r = 1, 4, 16 and QLoRA (:mod:`minidist.peft.compare`),
for several seeds spread over the ranks; the held-out loss of each comes from the Trainer's
evaluation on the task's held-out stream. Beside it, every cost measured on the simulated
device is printed next to its closed form (:mod:`minidist.peft.costs`): trainable
parameters, gradient and optimizer bytes, FLOPs, activation bytes, and the bytes each rank
sends per step under DDP, ZeRO-2 and ZeRO-3 on this chapter's ranks.
"""
from __future__ import annotations

import numpy as np

from .. import distributed as dist
from ..model import GPT, GPTConfig, one_rank_shapes
from ..peft import compare as P
from ..peft import get_peft_model, lora_layers, merge_and_unload
from ..plotting.peft import plot_comparison, plot_costs
from .jobs import run_jobs
from ..tensor import no_grad
from ..training.data import TASK_ALPHABET

TITLE = "Parameter-efficient fine-tuning: adapters, prefixes, LoRA and QLoRA side by side"

SEEDS = 3
TRAFFIC = ("full fine-tuning", "adapter (m = 8)", "prefix-tuning (p = 4)", "P-tuning v2 (p = 4)", "LoRA r = 4")
VOCAB = len(TASK_ALPHABET)                  # the synthetic tasks' vocabulary


def _pretrained(comm) -> dict:
    """Pretrained on rank 0 and broadcast: every rank fine-tunes the same base."""
    shapes = one_rank_shapes(GPTConfig(**P.MODEL, vocab_size=VOCAB))
    flat = np.zeros(sum(int(np.prod(s)) for s in shapes.values()), np.float32)
    if comm.rank == 0:
        state = P.pretrain()
        flat = np.concatenate([state[n].ravel() for n in shapes])
    # why: the other ranks fine-tune their share of the runs from the same pretrained weights
    flat = dist.broadcast(comm, flat, root=0)
    out, i = {}, 0
    for name, shape in shapes.items():
        n = int(np.prod(shape))
        out[name] = flat[i:i + n].reshape(shape).copy()
        i += n
    return out


def merge_check(pretrained: dict) -> float:
    """Largest |logits| difference of a float64 LoRA model before and after merging (after a
    random update of A and B, so that the merge changes W)."""
    model = GPT(GPTConfig(**P.MODEL, vocab_size=VOCAB), dtype=np.float64)
    model.load_state_dict(pretrained)
    get_peft_model(model, P.METHODS["LoRA r = 4"][0])
    rng = np.random.default_rng(1)
    for layer in lora_layers(model):
        layer.lora_B.data[...] = rng.normal(0, 0.1, layer.lora_B.shape)
    idx = rng.integers(0, VOCAB, (4, 10))
    with no_grad():
        before = model(idx)[0].data
        after = merge_and_unload(model)(idx)[0].data
    return float(np.max(np.abs(before - after)))


def _fmt(s: dict, f: str = ".3f") -> str:
    return f"{s['mean']:{f}} [{s['min']:{f}}, {s['max']:{f}}]"


def _print(summary: dict, costs: dict, traffic: dict, merged: float, world: int) -> None:
    print(f"GPT {P.MODEL['n_layer']} layers × {P.MODEL['n_embd']} pretrained on copy ({P.PRETRAIN['steps']} steps), "
          f"fine-tuned on {P.TASK} ({P.STEPS} steps); held-out loss mean [min, max] over {SEEDS} seeds")
    print(f"{'method':<24} {'trainable':>9} {'share':>7} {'states B':>9} {'peak B':>8} {'step µs':>8} "
          f"{'held-out loss':>24} {'exact':>6}")
    for label, s in summary.items():
        ms = s["model_states"]
        print(f"{label:<24} {s['trainable']['mean']:>9.0f} {s['share']['mean']:>7.2%} "
              f"{ms['total'] + ms['host']:>9} {s['peak_bytes']['mean']:>8.0f} {s['step_time']['mean'] * 1e6:>8.2f} "
              f"{_fmt(s['held_out_loss']):>24} {s['exact_match']['mean']:>6.2f}")
    print("one step on one rank, measured = formula:")
    print(f"{'method':<24} {'trainable':>15} {'kept':>6} {'grad B':>13} {'optim B':>15} {'param B':>15} "
          f"{'fwd FLOPs/token':>17} {'dW FLOPs/token':>15} {'activ. B':>9}")
    for label, c in costs.items():
        tok = c["tokens"]
        print(f"{label:<24} {c['trainable']:>7} = {c['trainable_formula']:<5} {c['stored']:>6} "
              f"{c['gradients']:>6} = {c['gradients_formula']:<5} {c['optimizer']:>7} = {c['optimizer_formula']:<6}"
              f"{c['parameters']:>7} = {c['parameters_formula']:<6}"
              f"{c['forward_flops'] // tok:>8} = {c['forward_flops_formula'] // tok:<7}"
              f"{c['dw_flops'] // tok:>7} = {c['dw_flops_formula'] // tok:<6}{c['activations']:>9}"
              + ("  (optimizer states paged to the host)" if c["paged"] else ""))
    print(f"bytes one rank sends per step on {world} ranks, measured = formula (ZeRO-3: of which frozen shards):")
    for label, t in traffic.items():
        print(f"{label:<24} " + "   ".join(
            f"{name} {v['measured']} = {v['formula']}" + (f" ({v['frozen_gathered']} frozen)" if name == "ZeRO-3" else "")
            for name, v in t.items()))
    print(f"LoRA merged into W vs unmerged, float64 logits: max |difference| = {merged:.1e}")


def run(comm, out_dir) -> dict:
    pretrained = _pretrained(comm)
    jobs = [(label, seed) for seed in range(SEEDS) for label in P.METHODS]
    mine = run_jobs([(P.finetune, label, seed, pretrained) for k, (label, seed) in enumerate(jobs)
                     if k % comm.size == comm.rank])
    traffic = {label: P.traffic(comm, label, pretrained) for label in TRAFFIC}
    # why: rank 0 prints the tables and draws the figures from every rank's runs
    gathered = dist.gather_object(comm, mine)
    if comm.rank != 0:
        return {}
    results = sorted((r for part in gathered for r in part), key=lambda r: (list(P.METHODS).index(r["method"]),
                                                                            r["seed"]))
    summary = P.summarize(results)
    costs = {label: P.one_step_costs(label, pretrained) for label in P.METHODS}
    merged = merge_check(pretrained)
    _print(summary, costs, traffic, merged, comm.size)
    plot_comparison(summary, results, SEEDS, out_dir / "14_peft_comparison.png")
    plot_costs(costs, traffic, comm.size, out_dir / "14_peft_costs.png")
    return {"results": results, "summary": summary, "costs": costs, "traffic": traffic, "merged": merged}
