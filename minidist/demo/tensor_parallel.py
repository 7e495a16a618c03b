"""Chapter: tensor and sequence parallelism (Megatron-LM; Korthikanti et al. 2022).

Everything shown is measured on the tiny GPT, on the tour's ranks:

1. which slice of each weight matrix lives on which tp rank — computed by cutting the
   one-rank weights with the same ``shard_state_dict`` the model uses (figure 05_weight_shards);
2. the same training run with no parallelism, TP and TP + SP: the weights equal one rank's,
   the activation peak per rank equals Korthikanti's formula mapped onto the engine, and the
   tensor-parallel bytes per step equal the count of every collective (figure 05_activation_bytes);
3. the bytes each rank sends per layer, by collective: TP's two all-reduces forward and two
   backward, SP's all-gathers and reduce-scatters of the same volume plus the re-gather of
   the column-parallel inputs (figure 05_layer_collectives).

TP ``t`` runs on the most of the tour's ranks that form whole groups of ``t`` (4 ranks: DP 2 ×
TP 2 and TP 4; 3 ranks: TP 2 on the first 2, and no TP 4), the others sitting it out.
"""
from __future__ import annotations

import copy

import numpy as np

from ..device import Device
from ..estimate.activations import layer_activation_bytes
from ..model import GPT, GPTConfig, parameter_splits
from ..parallel.tensor import accounting, shard_state_dict
from ..plotting.tensor import plot_activation_bytes, plot_layer_collectives, plot_weight_shards
from ..training.trainer import Trainer
from .world import first_ranks

TITLE = "Tensor and sequence parallelism"

L, B, S, H, A = 2, 2, 16, 32, 4          # layers, micro-batch per rank, sequence, hidden, heads
CONFIG = {"model": {"n_layer": L, "n_embd": H, "n_head": A, "block_size": S},
          "data": {"dataset": "english", "seq_len": S}, "steps": 2, "eval_iters": 1,
          "train_micro_batch_size_per_gpu": B, "dtype": "float64"}
W = 8                                    # float64: the weights can be compared with one rank to 1e-12


def ownership(tp: int, n_embd: int = 8, vocab: int = 11) -> dict:
    """For one layer of a small GPT: which tp rank holds each element of each split weight
    (-1 replicated, -2 vocabulary padding), found by sharding an array of element indices."""
    cfg = GPTConfig(block_size=4, vocab_size=vocab, n_layer=1, n_head=tp, n_embd=n_embd)
    names = {"attn.c_attn [q | k | v]": "transformer.h.0.attn.c_attn.weight", "attn.c_proj": "transformer.h.0.attn.c_proj.weight",
             "mlp.c_fc": "transformer.h.0.mlp.c_fc.weight", "mlp.c_proj": "transformer.h.0.mlp.c_proj.weight",
             "wte (transposed)": "transformer.wte.weight"}
    model = GPT(cfg)
    shapes, splits = {k: v.shape for k, v in model.state_dict().items()}, parameter_splits(model)
    index = {n: np.arange(1, np.prod(s) + 1, dtype=np.float64).reshape(s) for n, s in shapes.items()}   # 1, 2, …
    owners = {}
    for label, name in names.items():
        own = np.full(shapes[name], -1)
        for r in range(tp):
            held = shard_state_dict(index, splits, tp, r)[name]            # padding rows are 0 (no index)
            own.flat[held[held > 0].astype(int) - 1] = r
        if splits[name].padded:
            pad = held.shape[0] * tp - vocab
            own = np.concatenate([own, np.full((pad, own.shape[1]), -2)])
        owners[label] = own.T if splits[name].padded else own             # the table, drawn as the head
    return owners


def _run(comm, tp: int, sp: bool, n_layer: int = L, micro: int = B):
    """Train CONFIG on ``comm`` (None: one rank); returns the trainer."""
    cfg = copy.deepcopy(CONFIG)
    cfg["model"]["n_layer"] = n_layer
    cfg["train_micro_batch_size_per_gpu"] = micro
    cfg["parallel"] = {"tensor": tp, "sequence_parallel": sp}
    if comm is not None:                 # a fresh simulated device per run: its own memory peak
        comm = comm.dup()
        comm.device = Device(comm.device.spec, rank=comm.rank)
    t = Trainer(cfg, comm)
    for step in range(cfg["steps"]):
        t.train_step(step)
    return t


def tp_ranks(world: int, tp: int) -> int:
    """The ranks a TP ``tp`` run uses: the most of ``world`` that form whole tp groups
    (4 ranks: DP 2 × TP 2; 3 ranks: TP 2 on the first 2, the third sits it out)."""
    return tp * (world // tp)


def run(comm, out_dir) -> dict:
    world = comm.size
    tps = [t for t in (2, 4) if t <= world and A % t == 0]
    # why: a communicator of the first ranks that fit each tp (None on the ranks left out)
    groups = {t: first_ranks(comm, tp_ranks(world, t), "tensor") for t in tps}
    modes = [(1, False)] + [(t, sp) for t in tps for sp in (False, True)]
    rows, layer_rows = [], {}
    V = None
    for tp, sp in modes:
        label = "none" if tp == 1 else f"TP {tp}" + (" + SP" if sp else "")
        dp = tp_ranks(world, tp) // tp if tp > 1 else 1
        if tp > 1 and groups[tp] is None:
            continue                                      # this rank is not one of the first tp_ranks
        trainer = _run(groups[tp], tp, sp) if tp > 1 else _run(None, 1, False)
        V = trainer.model_config.vocab_size
        Vp = trainer.model.layers.padded_vocab_size if tp > 1 else V
        measured = int(trainer.device.memory.curves()[1]["activations"].max())
        formula = sum(accounting.model_activation_items(L, B, S, H, A, Vp, tp, sp, w=W).values())
        paper = L * layer_activation_bytes(S, B, H, A, tp, sp)           # 16-bit, 1-byte masks, layers
        row = {"label": label, "measured": measured, "formula": formula, "paper": paper}
        if tp > 1:
            # the weights after 2 steps against one rank trained on the same global batch
            ref = _run(None, 1, False, micro=B * dp).model.state_dict()
            full = trainer.full_parameters()                     # the tp shards joined, padding dropped
            row["max_rel_diff"] = max(float(np.max(np.abs(full[k] - ref[k])) / np.max(np.abs(ref[k]))) for k in ref)
            two = accounting.tp_bytes_by_op(trainer)
            row["tp_bytes"] = sum(two.values())
            row["tp_bytes_formula"] = accounting.step_bytes(L, B, S, H, tp, sp, w=W)
            one = accounting.tp_bytes_by_op(_run(groups[tp], tp, sp, n_layer=1))
            layer_rows[label] = {op: two[op] - one.get(op, 0) for op in two}
        rows.append(row)
    if comm.rank == 0:
        print(f"tiny GPT: {L} layers, h={H}, a={A}, s={S}, b={B} per rank, float64; vocabulary {V}")
        print(f"{'mode':<12} {'activations/rank B':>19} {'formula B':>10} {'paper 16-bit B':>15} "
              f"{'TP sent/step B':>15} {'formula B':>10} {'max rel |Δw|':>13}")
        for r in rows:
            print(f"{r['label']:<12} {r['measured']:>19} {r['formula']:>10.0f} {r['paper']:>15.0f} "
                  f"{r.get('tp_bytes', 0):>15} {r.get('tp_bytes_formula', 0):>10} {r.get('max_rel_diff', 0):>13.1e}")
        for t in (2, 4):
            if t in tps and tp_ranks(world, t) < world:
                print(f"TP {t} runs on the first {tp_ranks(world, t)} of the tour's {world} ranks "
                      f"(DP {tp_ranks(world, t) // t} × TP {t}); the others sit it out")
            elif t not in tps:
                print(f"TP {t} is not run: it needs {t} ranks and the tour has {world}")
        if layer_rows:
            print("per layer per micro-batch, bytes sent by each rank: "
                  + "; ".join(f"{k}: " + ", ".join(f"{op} {v}" for op, v in sorted(d.items()))
                              for k, d in layer_rows.items()))
        t_fig = max(tps) if tps else 2
        plot_weight_shards(ownership(t_fig), t_fig, out_dir / "05_weight_shards.png")
        plot_activation_bytes(rows, out_dir / "05_activation_bytes.png")
        plot_layer_collectives(layer_rows, out_dir / "05_layer_collectives.png")
    return {"rows": rows, "layers": layer_rows}

