"""Chapter: mixture of experts and expert parallelism (:mod:`minidist.moe`, :mod:`minidist.parallel.expert`).

Everything is measured on the tour's ranks:

1. **routing and capacity** — one group of tokens through a router: each expert's load, its
   C = ⌈capacity_factor · T · k / E⌉ slots, and the assignments dropped, over capacity
   factors (figure 12_routing);
2. **the all-to-all on the timeline** — one training step with the experts spread over all the
   ranks (``parallel.expert``): every dispatch and combine all-to-all on the simulated clock
   of rank 0, and the bytes each sends beside (ep − 1)/ep · E · C · h (figure 12_all_to_all_timeline);
3. **load balance** — the same tiny top-1 model trained with and without the load-balancing
   loss: without it the router collapses onto few experts and capacity drops most tokens
   (figure 12_load_balance);
4. **DualPipeV's overlap** — pipeline 2 × expert 2 under ``dualpipe_v``, with and without
   ``parallel.overlap_f_b``: the same numbers bit for bit, the step shorter, and the
   all-to-all time the F&B pairs hid (figure 12_dualpipe_overlap).
"""
from __future__ import annotations

import numpy as np

from .. import distributed as dist
from ..defaults import DEFAULT_DEVICE, DUALPIPE_V
from ..device import Device
from ..distributed.log import MessageLog
from ..moe import route
from ..parallel.expert import all_to_all_bytes
from ..plotting.moe import plot_all_to_all_timeline, plot_dualpipe_overlap, plot_load_balance, plot_routing
from ..training.trainer import Trainer
from .world import first_ranks

TITLE = "Mixture of experts and expert parallelism"

E, H = 4, 16                                     # experts, n_embd
GROUP = 32                                       # tokens of the routing example's group
FACTORS = (0.5, 1.0, 1.25, 2.0)                  # capacity factors of the routing table
AUX = (0.0, 0.1)                                 # aux_loss_coef of the load-balance runs
BALANCE_STEPS, LAST = 24, 8                      # steps trained; the last LAST are averaged in the table
MICRO_BATCHES = 8                                # DualPipeV's micro-batches (≥ 2 × pipeline ranks)
# a slow chip on A100 links (10 GFLOP/s, α 5 µs, 300 GB/s): the tiny model's expert all-to-all
# and its compute take comparable time, as DeepSeek-V3's cross-node all-to-all and its
# compute do (about 1:1, its report §3.2.1)
SLOW = {"preset": DEFAULT_DEVICE, "flops": 1e10, "name": "slow-chip"}
LINK = "10 GFLOP/s, α 5 µs, β 300 GB/s"


def config(moe: dict, steps: int = 1, **top) -> dict:
    cfg = {"model": {"n_layer": 2, "n_embd": H, "n_head": 2, "block_size": 16,
                     "moe": {"num_experts": E, "top_k": 2, "capacity_factor": 1.25, "aux_loss_coef": 0.01,
                             "z_loss_coef": 0.001, **moe}},
           "data": {"dataset": "english", "seq_len": 16}, "steps": steps, "eval_iters": 1,
           "train_micro_batch_size_per_gpu": 2, "optimizer": {"type": "AdamW", "params": {"lr": 3e-3}}}
    cfg.update(top)
    return cfg


def fresh(comm, spec=None):
    """A copy of ``comm`` with a new device (at t = 0) and an empty log: a clean measurement."""
    out = comm.dup()
    out.device, out.log = Device(spec or comm.device.spec, rank=comm.rank), MessageLog()
    return out


def routing(seed: int = 0) -> dict:
    """One group of GROUP tokens, E experts, top-2, a random router: load and drops per capacity factor."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(GROUP, E)) * 1.5 + np.array([0.8, 0.3, 0.0, -0.6])     # some experts favoured
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    rows = []
    for cf in FACTORS:
        r = route(probs, 2, cf)
        kept = np.bincount(r.expert[r.kept], minlength=E)
        rows.append({"capacity_factor": cf, "capacity": r.capacity, "load": r.load.tolist(), "kept": kept.tolist(),
                     "dropped": r.dropped})
    return {"tokens": GROUP, "k": 2, "rows": rows}


def all_to_all(comm) -> dict:
    """One step with the experts over every rank (ep = world): the all-to-alls on rank 0's clock
    and each one's bytes against the formula."""
    ep = comm.size
    cfg = config({}, parallel={"expert": ep})
    g = fresh(comm, SLOW)
    t = Trainer(cfg, g)
    t.train_step(0)
    coll = [c for c in g.log.collectives if c.op == "all_to_all"]
    layer = t.model.transformer.h[0].mlp
    C = layer.stats[0]["capacity"]
    formula = all_to_all_bytes(ep, E, C, H, 4)
    spans = [(e["ts"] * 1e-6, e["dur"] * 1e-6, e["tid"], e["name"]) for e in g.device.trace.events
             if e["cat"] in ("compute", "comm") and e["tid"] in ("compute", "comm") and e["dur"] > 0
             and not e["name"].startswith("send")]
    return {"ep": ep, "capacity": C, "bytes": sorted({c.bytes_sent for c in coll}), "formula": formula,
            "count": len(coll), "layers": len(t.model.transformer.h), "spans": spans,
            "a2a_time": sum(c.t_end - c.t_start for c in coll), "step": g.device.clock.time}


def load_balance(comm) -> dict:
    """Top-1 routing, capacity factor 1, trained BALANCE_STEPS steps with each aux_loss_coef of
    AUX (rank r trains AUX[r], spread over the ranks): per step, the busiest expert's load over
    the mean and the assignments dropped."""
    mine = []
    alone = fresh(comm).split(comm.rank, 0)              # collective: every rank makes its own world of one
    for i, coef in enumerate(AUX):
        if i % comm.size != comm.rank:
            continue
        cfg = config({"top_k": 1, "capacity_factor": 1.0, "aux_loss_coef": coef, "z_loss_coef": 0.0},
                     steps=BALANCE_STEPS)
        cfg["model"]["n_layer"] = 1
        cfg["optimizer"]["params"]["lr"] = 1e-3
        t = Trainer(cfg, alone)
        for s in range(BALANCE_STEPS):
            t.train_step(s)
        loads = [h["moe"][0]["load"] for h in t.history]
        mine.append({"coef": coef, "imbalance": [float(max(x) / np.mean(x)) for x in loads],
                      "dropped": [h["moe"][0]["dropped"] for h in t.history],
                      "loss": [h["loss"] for h in t.history], "tokens": int(sum(loads[0]))})
    # why: rank 0 prints and plots every run (a list: the objects travel as JSON, whose keys are strings)
    got = dist.gather_object(comm, mine)
    return {} if got is None else {r["coef"]: r for part in got for r in part}


def overlap(comm) -> dict:
    """DualPipeV on pipeline 2 × expert 2 (world 4), with and without ``overlap_f_b``, on SLOW."""
    out = {}
    for on in (False, True):
        cfg = config({}, gradient_accumulation_steps=MICRO_BATCHES, train_micro_batch_size_per_gpu=1,
                     parallel={"pipeline": 2, "expert": 2, "schedule": DUALPIPE_V, "overlap_f_b": on})
        cfg["model"]["n_layer"] = 4
        cfg["data"]["seq_len"] = 8
        g = fresh(comm, SLOW)
        t = Trainer(cfg, g)
        t.train_step(0)
        run = t.pipeline.steps[-1]
        out[on] = {"loss": t.history[-1]["loss"], "params": t.model.state_dict(), "t_begin": run["t_begin"],
                   "t_end": run["t_end"], "pairs": run["pairs"], "events": run["events"],
                   "trace": [(e["ts"] * 1e-6, e["dur"] * 1e-6, e["tid"], e["name"]) for e in g.device.trace.events
                             if e["tid"] in ("compute", "comm") and e["dur"] > 0 and e["cat"] in ("compute", "comm")
                             and not e["name"].startswith("send")],
                   "a2a": sum(c.t_end - c.t_start for c in g.log.collectives if c.op == "all_to_all")}
    same = out[False]["loss"] == out[True]["loss"] and all(
        np.array_equal(out[False]["params"][k], out[True]["params"][k]) for k in out[False]["params"])
    mine = {"same": same, "pp_rank": t.grid.coords["pp"], "dp": t.grid.coords["dp"],
            **{key: {"begin": out[on]["t_begin"], "end": out[on]["t_end"], "a2a": out[on]["a2a"],
                     "hidden": sum(p["hidden"] for p in out[on]["pairs"]), "pairs": len(out[on]["pairs"])}
               for key, on in (("off", False), ("on", True))}}
    if comm.rank == 0:                   # rank 0's first pair, overlapped and as F then B, for the figure
        pair = out[True]["pairs"][0]
        f, b = pair["forward"], pair["backward"]
        ev = {a: (t0, t1) for a, t0, t1 in out[False]["events"]}
        mine["figure"] = {"pair": f"{f}&{b}", "overlapped": pair["spans"], "t0": pair["t0"], "t1": pair["t1"],
                          "sequential": [(0 if ev[f][0] <= s < ev[f][1] else 1, kind, s, s + d)
                                         for s, d, kind, _ in out[False]["trace"]
                                         if ev[f][0] <= s < ev[b][1]],
                          "seq_t0": ev[f][0], "seq_t1": ev[b][1]}
    got = dist.gather_object(comm, mine)
    return {} if got is None else {"ranks": got}


def _summary(ov: dict) -> dict:
    ranks = ov["ranks"]
    step = {key: max(r[key]["end"] for r in ranks) - min(r[key]["begin"] for r in ranks) for key in ("off", "on")}
    replica = [r for r in ranks if r["dp"] == 0]                # one pipeline: its ranks' pairs
    return {"step_off": step["off"], "step_on": step["on"], "saved": step["off"] - step["on"],
            "hidden": sum(r["on"]["hidden"] for r in replica), "a2a": sum(r["on"]["a2a"] for r in replica),
            "pairs": sum(r["on"]["pairs"] for r in replica), "same": all(r["same"] for r in ranks)}


def run(comm, out_dir) -> dict:
    comm = first_ranks(comm, 4, "mixture-of-experts")   # E = 4 experts over 4 ranks; DualPipeV on 2 × 2
    if comm is None:
        return {}
    ro, a2a, lb, ov = routing(), all_to_all(comm), load_balance(comm), overlap(comm)
    if comm.rank != 0:
        return {}
    print(f"routing one group of T = {ro['tokens']} tokens over E = {E} experts, top-{ro['k']} "
          f"(T·k = {ro['tokens'] * ro['k']} assignments):")
    print(f"{'capacity factor':>16} {'C':>4} {'load per expert':>18} {'kept':>16} {'dropped':>8}")
    for r in ro["rows"]:
        print(f"{r['capacity_factor']:>16.2f} {r['capacity']:>4} {str(r['load']):>18} {str(r['kept']):>16} "
              f"{r['dropped']:>8}")
    sent = ", ".join(map(str, a2a["bytes"]))
    print(f"expert parallelism over {a2a['ep']} ranks, one step (2 MoE layers, 1 micro-batch, E = {E}, C = "
          f"{a2a['capacity']}, h = {H}, fp32): {a2a['count']} all-to-alls, each sending {sent} B per rank; "
          f"(ep − 1)/ep · E · C · h · 4 B = {a2a['formula']} B")
    print(f"load balance, top-1, capacity factor 1, {BALANCE_STEPS} steps, mean of the last {LAST}:")
    print(f"{'aux_loss_coef':>14} {'max load / mean':>16} {'dropped of ' + str(lb[AUX[0]]['tokens']):>14} "
          f"{'loss (LM + aux)':>16}")
    for coef in AUX:
        r = lb[coef]
        print(f"{coef:>14g} {np.mean(r['imbalance'][-LAST:]):>16.2f} {np.mean(r['dropped'][-LAST:]):>14.1f} "
              f"{np.mean(r['loss'][-LAST:]):>16.3f}")
    s = _summary(ov)
    print(f"DualPipeV, pipeline 2 × expert 2, {MICRO_BATCHES} micro-batches, device {LINK}: step without overlap_f_b "
          f"{s['step_off'] * 1e6:.1f} µs, with {s['step_on'] * 1e6:.1f} µs: {s['saved'] * 1e6:.1f} µs saved; "
          f"its {s['pairs']} F&B pairs hid {s['hidden'] * 1e6:.1f} µs of communication "
          f"(all-to-all {s['a2a'] * 1e6:.1f} µs); numbers bit-identical: {s['same']}")
    fig = next(r["figure"] for r in ov["ranks"] if "figure" in r)
    paths = [
        plot_routing(ro, out_dir / "12_routing.png",
                     f"Routing one group: T = {ro['tokens']} tokens, E = {E} experts, top-{ro['k']}"),
        plot_all_to_all_timeline(a2a, out_dir / "12_all_to_all_timeline.png",
                                 f"One training step, experts over {a2a['ep']} ranks: rank 0's clock ({LINK})"),
        plot_load_balance(lb, out_dir / "12_load_balance.png", LAST,
                          f"Top-1 routing, E = {E}, capacity factor 1: with and without the load-balancing loss"),
        plot_dualpipe_overlap(fig, s, out_dir / "12_dualpipe_overlap.png",
                              f"DualPipeV, pipeline 2 × expert 2 ({LINK}): rank 0's pair {fig['pair']}"),
    ]
    print("figures: " + ", ".join(p.name for p in paths))
    return {"routing": ro, "all_to_all": a2a, "load_balance": lb, "overlap": s, "figures": [str(p) for p in paths]}

