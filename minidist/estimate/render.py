"""How ``python -m minidist.estimate`` prints :func:`minidist.estimate.cli.compute`'s dict: the
tables of model states, traffic, activations, context parallelism, experts, pipeline ranks and bubbles."""
from __future__ import annotations

from ..defaults import INTERLEAVED_1F1B


def fmt_bytes(n: float | None) -> str:
    """Decimal units, one decimal place: 31406250000 -> '31.4 GB' (the ZeRO paper's rounding)."""
    if n is None:
        return "-"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render(r: dict) -> str:
    """The human-readable report of :func:`compute`'s dict."""
    if r["params"] is None:
        return "\n".join(_render_pipeline(r))
    a, b = r["inputs"], r["bytes_per_param"]
    cp_part = f" cp={a['cp']}" if a.get("cp", 1) > 1 else ""
    title = (f"minidist.estimate: {r['params'] / 1e9:.3g}B parameters on {r['n_gpus']} devices "
             f"(dp={a['dp']} tp={a['tp']} pp={a['pp']}{cp_part}), {a['precision']} + {a['optimizer']}: "
             f"{b['parameters']}+{b['gradients']}+K bytes/param with K={b['K']}")
    legend = ("Model states per device (Rajbhandari et al. 2020, ZeRO §5); DP comm = bytes each "
              "rank sends per step for gradients/parameters")
    if a["offload"]:
        legend += "; optimizer step on the host (ZeRO-Offload)"
    out = [title, "", legend]
    head = ["stage", "parameters", "gradients", "optimizer", "total/device"]
    head += ["host/rank"] if a["offload"] else []
    rows = [head + ["DP comm/rank/step"]]
    for ms, c in zip(r["model_states"], r["comm"]):
        row = [str(ms["stage"]), fmt_bytes(ms["parameters"]), fmt_bytes(ms["gradients"]),
               fmt_bytes(ms["optimizer_states"]), fmt_bytes(ms["total"])]
        row += [fmt_bytes(ms["host"])] if a["offload"] else []
        rows.append(row + [fmt_bytes(c["dp_bytes"])])
    out.append(_table(rows))
    if r["params_from_shape"]:
        count = r["params_from_shape"]["total"]
        if a.get("params") is not None:      # both given: --params sizes these rows, the shape the per-rank table
            out.append(f"(parameters from --params = {r['params']:,.0f}; the model shape's GPT-2 count "
                       f"12Lh^2 + 13Lh + (V+s)h + 2h = {count:,.0f} sizes the per-pipeline-rank table)")
        else:
            out.append(f"(parameters from the GPT-2 count 12Lh^2 + 13Lh + (V+s)h + 2h = {count:,.0f})")
    c = r["comm"][0]
    if c["tp_bytes"] is not None and (a["tp"] > 1 or a["pp"] > 1):
        out.append(f"tensor-parallel traffic/rank/step: {fmt_bytes(c['tp_bytes'])}; "
                   f"pipeline send/recv/rank/step: {fmt_bytes(c['pp_bytes'])}")
    if r.get("context"):
        out += ["", *_render_context(r)]
    if r["activations"]:
        acts = r["activations"]
        first = acts["none"]
        out += ["", f"Activations per device{' without context parallelism' if cp_part else ''} (Korthikanti et "
                f"al. 2022), s={a['seq']} b={a['micro_batch']} "
                f"h={a['hidden']} a={a['heads']}, {first['layers_per_stage']} layers/stage x "
                f"{first['in_flight_micro_batches']:g} micro-batches in flight"
                + (", sequence parallel" if a["sp"] else "")]
        rows = [["checkpointing", "per layer", "per device"]
                + [f"+ZeRO-{ms['stage']} states" for ms in r["model_states"]]]
        for mode, act in acts.items():
            mark = " <-" if mode == a["checkpointing"] else ""
            rows.append([mode + mark, fmt_bytes(act["per_layer"]), fmt_bytes(act["total"])]
                        + [fmt_bytes(act["total"] + ms["total"]) for ms in r["model_states"]])
        out.append(_table(rows))
    elif not (a["layers"] and a["hidden"] and a["seq"] and a["heads"]):
        out += ["", "(give --layers --hidden --heads --seq for activation memory)"]
    if r["flops_per_step"]:
        f = r["flops_per_step"]
        out += ["", (f"FLOPs per step ({f['tokens']:.3g} tokens): 6ND = {f['flops_6nd']:.3g}, "
                     f"with attention and {a['checkpointing']} recompute = {f['flops']:.3g}")]
    if r["flops_total"]:
        f, t = r["flops_total"], r["time"]
        out += ["", (f"Training on {f['tokens']:.3g} tokens: 6ND = {f['flops_6nd']:.3g} FLOPs, "
                     f"8ND = {f['flops_8nd']:.3g}, counted = {f['flops']:.3g}"),
                (f"time on {t['n_gpus']} x {t['gpu']} at MFU {t['mfu']:g}: {t['days']:.2f} days "
                 f"({t['hours']:.1f} h)")]
    if r.get("moe"):
        out += ["", *_render_moe(r)]
    if r["per_pipeline_rank"]:
        out += ["", *_render_ranks(r["per_pipeline_rank"])]
    if r["pipeline"]:
        out += ["", *_render_pipeline(r)]
    return "\n".join(out)


def _render_context(r: dict) -> list[str]:
    """Context parallelism: its bytes per step and the activations each rank keeps (:mod:`.context`)."""
    c, a = r["context"], r["inputs"]
    b = c["bytes"]
    lines = [f"Context parallel ({c['algorithm']}, cp={c['cp']}): each rank holds s/cp = {a['seq'] // c['cp']} "
             f"positions; attention traffic per rank per layer: forward {fmt_bytes(b['per_layer_forward'])}, "
             f"backward {fmt_bytes(b['per_layer_backward'])}; per step {fmt_bytes(b['bytes_per_step'])}"]
    rows = [["checkpointing", "activations per rank", "one rank (cp = 1)"]]
    for mode, act in c["activations"].items():
        mark = " <-" if mode == a["checkpointing"] else ""
        rows.append([mode + mark, fmt_bytes(act["total"]),
                     fmt_bytes(r["activations"][mode]["total"]) if r.get("activations") else "-"])
    return lines + [_table(rows), "(the tables of data, tensor and pipeline traffic count data parallelism over "
                                  "dp × cp ranks and messages of s/cp tokens; the attention traffic above comes on top)"]


def _render_moe(r: dict) -> list[str]:
    """The experts per rank and the all-to-all bytes (:mod:`.moe`), per ZeRO stage."""
    a, first = r["inputs"], r["moe"][0]
    lines = [f"Mixture of experts: {first['moe_layers']} MoE layer(s) × {a['experts']} experts, top-{a['top_k']}, "
             f"capacity factor {a['capacity_factor']:g}; ep = {a['ep']} ({a['experts'] // a['ep']} experts per rank), "
             f"expert data parallel {first['expert_data_parallel']}; {first['expert_parameters_per_rank']:,} expert "
             f"parameters per rank, router {first['router_parameters']:,} on every rank"]
    staged = a["pp"] > 1 and first.get("per_pipeline_rank")       # each pipeline rank holds its own MoE blocks
    if first["capacity"] is not None:
        lines.append(f"capacity C = {first['capacity']} slots per expert per group of {a['micro_batch'] * a['seq']} "
                     f"tokens; each all-to-all sends {fmt_bytes(first['all_to_all_bytes'])} per rank, "
                     f"{first['all_to_all_per_step']} per step: {fmt_bytes(first['all_to_all_bytes_per_step'])}"
                     + (" over the whole model (each pipeline rank's below)" if staged else ""))
    rows = [["stage"] + (["pp rank", "MoE blocks"] if staged else [])
            + ["expert params", "expert grads", "expert optimizer", "experts total/rank"]
            + (["all-to-all/step"] if staged else [])]
    for est in r["moe"]:
        for p, fig in enumerate(est["per_pipeline_rank"] if staged else [est]):
            ms = fig["model_states"]
            rows.append([str(est.get("stage", "-"))] + ([str(p), str(fig["moe_layers"])] if staged else [])
                        + [fmt_bytes(ms["parameters"]), fmt_bytes(ms["gradients"]), fmt_bytes(ms["optimizer_states"]),
                           fmt_bytes(ms["total"])] + ([fmt_bytes(fig["all_to_all_bytes_per_step"])] if staged else []))
    return lines + [_table(rows), "(the experts' model states per rank, over the expert-data-parallel group; the "
                                  "tables above count the dense model, whose MLPs the experts replace)"]


def _render_ranks(per_stage: list) -> list[str]:
    """Model states and bytes sent per step of every pipeline rank (:mod:`.grid3d`)."""
    out = ["Per pipeline rank, minidist's layout (L/n blocks per chunk, wte+wpe on the first chunk, ln_f + "
           "tied head on the last, no recomputation); every tp and dp rank of a pipeline rank alike. Bytes sent "
           "per step (the "
           "total adds the one-float64 all-reduces: overflow flag, gradient norm):"]
    moe = per_stage[0]["inputs"].get("moe") is not None      # with experts: the all-to-alls (minidist.estimate.moe_grid)
    parts = ("tensor_parallel", "pipeline", "tied_embedding", "data_parallel") + (("all_to_all",) if moe else ())
    rows = [["stage", "pp rank", "chunks", "params", "model states", "TP", "PP p2p", "tied wte", "DP"]
            + (["all-to-all"] if moe else []) + ["total sent"]]
    for est in per_stage:
        for rank in est["ranks"]:
            sent = rank["bytes_sent"]
            rows.append([str(est["inputs"]["zero_stage"]), str(rank["pp_rank"]),
                         ",".join(map(str, rank["chunks"])), f"{rank['params']:,}",
                         fmt_bytes(rank["model_states"]["total"])]
                        + [fmt_bytes(sent[k]) for k in parts + ("total",)])
    if moe:
        i = per_stage[0]["inputs"]
        out[0] += (f" with experts over ep = {i['ep']} of the dp = {i['dp']} ranks: the experts' states over "
                   f"dp/ep = {i['dp'] // i['ep']} ranks, the rest over dp")
    return out + [_table(rows)]


def _render_pipeline(r: dict) -> list[str]:
    """The bubble table of every schedule that can run, the chosen one marked, and its notes."""
    a = r["inputs"]
    out = [f"Pipeline bubble, p={a['pp']} m={a['micro_batches']} (T_F=T_B=T_W; synchronous flush before the "
           f"optimizer step); peak in flight in micro-batches of L/p layers, rank 0 … {a['pp'] - 1}:"]
    rows = [["schedule", "bubble/step", "bubble/ideal", "peak in flight per rank"]]
    for pb in r["pipeline"]:
        mark = " <-" if pb["schedule"] == a["schedule"] else ""
        name = pb["schedule"] + (f" (v={pb['v']})" if pb["schedule"] == INTERLEAVED_1F1B else "")
        rows.append([name + mark, f"{pb['bubble_fraction']:.1%}", f"{pb['bubble_relative']:.3f}",
                     " ".join(f"{x:.3g}" for x in pb["peak_in_flight_per_rank"])])
    out.append(_table(rows))
    out += [f"note: {note}" for note in dict.fromkeys(pb["note"] for pb in r["pipeline"] if pb["note"])]
    return out
