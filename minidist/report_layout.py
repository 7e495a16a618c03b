"""The train report's ``layout`` and ``moe`` estimates: every rank's measured model states and
bytes per step beside :func:`minidist.estimate.grid3d.estimate_for_config` for the same config
(its pipeline rank's figures), and the experts' figures per pipeline rank.

The ``layout`` section is built under tensor, pipeline or expert parallelism. Under expert
parallelism its grid names the ep degree and the two data-parallel groups the gradients are
averaged over — the experts' over ``grid.dp`` (dp ranks), the rest over ``grid.dp_ep`` (dp · ep
ranks) — and each row adds the all-to-all bytes of the rank's last step beside the estimate.

The ``moe`` section's ``estimate`` is :func:`minidist.estimate.moe.moe_for_config` (the model's
experts, capacity, ep) with the per-rank figures of rank 0's pipeline stage, and ``ranks`` the
figures of every pipeline rank (which MoE blocks the stage holds, its experts' states, its
all-to-alls): under a pipeline each stage holds only its own MoE blocks.
"""
from __future__ import annotations

import numpy as np

from .defaults import PARAMETER_SERVER
from .estimate.grid3d import estimate_for_config
from .estimate.moe import moe_for_config
from .estimate.pipeline import pipeline_bubble
from .parallel.expert.accounting import recomputed_moe_blocks

STATES = ("parameters", "gradients", "optimizer_states")
PER_RANK = ("moe_layers", "expert_parameters_per_rank", "model_states", "capacity", "all_to_all_bytes",
            "all_to_all_per_step", "all_to_all_bytes_per_step")


def moe_section_estimate(trainer, est: dict | None) -> dict:
    """``{"estimate", "ranks"}`` of the report's ``moe`` section (see the module docstring);
    ``est``: :func:`estimate_for_config` of the run, or None where it refused the layout (then
    the whole model's figures alone, ``ranks`` None)."""
    whole = moe_for_config(trainer.cfg, trainer.world_size, trainer.dataset.seq_len)
    if est is None:
        return {"estimate": whole, "ranks": None}
    per = [{k: r["experts"][k] for k in PER_RANK} for r in est["ranks"]]
    pp0 = trainer.grid.coords["pp"] if trainer.grid is not None else 0
    mine = {**whole, **per[pp0]}
    calls, extra = recomputed_all_to_all(mine, len(recomputed_moe_blocks(trainer)))
    mine["all_to_all_per_step"] += calls
    mine["all_to_all_bytes_per_step"] += extra
    return {"estimate": mine, "ranks": per}


def recomputed_all_to_all(experts: dict, recomputed: int) -> tuple[int, int]:
    """(calls, bytes) full recomputation adds per step to the estimate ``experts`` of a rank
    (:func:`minidist.estimate.moe_grid.all_to_all_of_rank`: 4 all-to-alls per MoE block, group and
    micro-batch) whose ``recomputed`` MoE blocks run their forward again: 2 more each, its
    dispatch and its combine (the estimator counts no recomputation)."""
    n, calls = experts.get("moe_layers") or 0, experts.get("all_to_all_per_step") or 0
    if not n or not recomputed or not calls:
        return 0, 0
    again = calls // (4 * n) * 2 * recomputed
    return again, again * experts["all_to_all_bytes"]


def layout_report(trainer, ranks: list, pipeline: dict | None, est: dict | None = None) -> dict:
    """Measured beside estimated, per rank of a tensor/pipeline/expert-parallel run (:mod:`minidist.estimate`)."""
    est = est or estimate_for_config(trainer.cfg, trainer.world_size, trainer.model_config.vocab_size)
    ps = parameter_server_bytes(trainer)
    rows = []
    for r in ranks:
        e = est["ranks"][r["coords"]["pp"]]
        measured = r["data_parallel"]["model_states"] or {}
        row = {"rank": r["rank"], "coords": r["coords"],
               "model_states": {k: measured.get(k, 0) for k in STATES},
               "model_states_estimate": {k: e["model_states"][k] for k in STATES},
               "bytes_sent_per_step": r["bytes_sent_last_step"],
               "bytes_sent_per_step_estimate": e["bytes_sent"]["total"] + (ps(r["coords"], e) if ps else 0)}
        if e.get("experts") is not None:    # a stage without MoE blocks measures none (its moe section is None)
            moe = r.get("moe") or {}
            _, again = recomputed_all_to_all(e["experts"], len(moe.get("recomputed_blocks", [])))
            row["all_to_all_bytes_per_step"] = moe.get("all_to_all_bytes_per_step", 0)
            row["all_to_all_bytes_per_step_estimate"] = e["bytes_sent"].get("all_to_all", 0) + again
            row["bytes_sent_per_step_estimate"] += again
        rows.append(row)
    g = trainer.grid
    grid = {"dp": g.dp_size, "tp": g.tp_size, "pp": g.pp_size}
    out = {"grid": grid, "ranks": rows, "notes": list(est.get("notes", []))}
    if ps:
        out["notes"].append("parameter server: its bytes sent per step are the linear reduce and broadcast's (the "
                            "root (p-1)·Ψ, a worker Ψ; under expert parallelism a server for the experts "
                            "and one for the rest), with the clipping norm on the roots only")
    if g.ep.size > 1:                    # the ep ranks are data-parallel ranks too: two gradient groups
        grid["ep"] = g.ep.size
        out["data_parallel_groups"] = {"experts": g.dp.size, "others": g.dp_ep.size}
    if pipeline is not None:
        for key in ("bubble_fraction", "bubble_fraction_theory", "bubble_fraction_without_communication",
                    "step_split"):
            out[key] = pipeline.get(key)
    return out


def parameter_server_bytes(trainer):
    """None, or under the parameter server (``data_parallel`` of stage 0) a function
    ``(coords, estimate rank) → bytes`` to add to the estimate's bytes per step, which predicts
    the data-parallel traffic as DDP's (:func:`minidist.estimate.grid3d.estimate_for_config`):
    the server's linear reduce and broadcast instead (:class:`~minidist.parallel.data.ParameterServer`:
    over p ranks the root — the group's first rank — sends (p−1)·Ψ, a worker Ψ, Ψ the trainable
    elements of the pipeline rank at w bytes; equal to the ring all-reduce's 2(p−1)/p·Ψ only at
    p = 2), and a worker takes no clipping norm (only the root updates), so it makes no
    all-reduce over ``grid.mp`` (tp · pp ranks) for it. Without experts p = dp · cp (root:
    dp = cp = 0). Under expert parallelism two servers: the other parameters' over the dp · ep
    ranks (root: dp = ep = 0), whose overflow flag — agreed over that group before the reduce —
    the estimate leaves out without tensor/pipeline parallelism (there the flag spans the world,
    as it predicts), and the experts' over grid.dp (root: dp = 0), whose norm and flag are the
    joint ones (:class:`~minidist.parallel.expert.ExpertDataParallel`) the estimate counts."""
    cfg, g = trainer.cfg, trainer.grid
    ep = g.ep.size
    p = g.dp_size * g.cp_size * ep             # the other parameters' group (grid.dp_ep; grid.dp_cp without experts)
    if cfg["zero_optimization"]["stage"] or cfg["parallel"]["data_parallel"] != PARAMETER_SERVER or p == 1:
        return None
    w = 2 if trainer.precision is not None else np.dtype(cfg["dtype"]).itemsize
    mp = g.tp_size * g.pp_size
    ring = lambda n: 2 * (n - 1) * 8 if n > 1 else 0          # noqa: E731  one float64 ring all-reduce
    norm = ring(mp) if cfg["gradient_clipping"] > 0 else 0
    flag = ring(p) if trainer.precision is not None and mp == 1 else 0

    def server(n: int, psi: int, root: bool) -> int:
        return 0 if n == 1 else (n - 1) * psi * w if root else psi * w

    def change(coords: dict, e: dict) -> int:
        root = coords.get("dp", 0) == 0 and coords.get("cp", 0) == 0 and coords.get("ep", 0) == 0
        experts = (e.get("experts") or {}) if ep > 1 else {}
        psi_e = experts.get("expert_parameters_per_rank", 0) if "data_parallel_bytes" in experts else 0
        sent = server(p, e["params"] - psi_e, root) + server(g.dp_size, psi_e, coords.get("dp", 0) == 0)
        return sent + flag - e["bytes_sent"]["data_parallel"] - (0 if root else norm)
    return change


def format_layout(report: dict) -> str:
    """Per rank: model states and bytes per step, measured and estimated; the bubble."""
    lay = report["layout"]
    g, groups = lay["grid"], lay.get("data_parallel_groups")
    ep = f" × ep {g['ep']}" if "ep" in g else ""
    lines = [f"layout: dp {g['dp']}{ep} × tp {g['tp']} × pp {g['pp']} — measured / estimate "
             f"(minidist.estimate.grid3d)"]
    if groups:
        lines.append(f"gradients averaged over grid.dp_ep ({groups['others']} ranks: every parameter but the "
                     f"experts) and grid.dp ({groups['experts']} rank(s): the experts, E/{g['ep']} per ep rank)")
    a2a = any("all_to_all_bytes_per_step" in r for r in lay["ranks"])
    dims = "(dp,ep,pp,tp)" if ep else "(dp,pp,tp)"
    width = 13 if ep else 10
    lines.append(f"{'rank':>4} {dims:>{width}} {'model states B':>21} {'sent/step B':>19}"
                 + (f" {'all-to-all/step B':>19}" if a2a else ""))
    for r in lay["ranks"]:
        c = r["coords"]
        at = (c["dp"], c.get("ep", 0), c["pp"], c["tp"]) if ep else (c["dp"], c["pp"], c["tp"])
        ms, me = sum(r["model_states"].values()), sum(r["model_states_estimate"].values())
        line = (f"{r['rank']:>4} {'(' + ','.join(map(str, at)) + ')':>{width}} {ms:>10}/{me:<10} "
                f"{r['bytes_sent_per_step']:>9}/{r['bytes_sent_per_step_estimate']:<9}")
        if a2a:
            line += f" {r.get('all_to_all_bytes_per_step', 0):>9}/{r.get('all_to_all_bytes_per_step_estimate', 0):<9}"
        lines.append(line)
    if lay.get("bubble_fraction") is not None:
        theory, free, split = (lay.get(k) for k in ("bubble_fraction_theory", "bubble_fraction_without_communication",
                                                     "step_split"))
        lines.append(f"bubble: {lay['bubble_fraction']:.3f} measured (idle and waiting for messages), "
                     f"{'-' if free is None else f'{free:.3f}'} without communication (the executed step "
                     f"replayed with free messages), {'-' if theory is None else f'{theory:.3f}'} the schedule's theory")
        if split:
            lines.append(f"step: compute {split['compute']:.1%}, exposed communication "
                         f"{split['exposed_communication']:.1%}, idle {split['idle']:.1%} (of ranks × step time)")
    lines += [f"note: {n}" for n in lay["notes"]]
    return "\n".join(lines)


def pipeline_theory(section: dict) -> dict:
    """The run's schedule in :func:`minidist.estimate.pipeline_bubble` for the pass times it was
    built for (the config's ``parallel.pass_times``, equal by default; synchronous flush), beside
    the measured figures."""
    theory = pipeline_bubble(section["schedule"], section["ranks"], section["micro_batches"],
                             section["virtual_stages"], *section.get("pass_times", (1.0, 1.0, 1.0)))
    return {"bubble_fraction_theory": theory["bubble_fraction"],
            "peak_in_flight_theory": theory["peak_in_flight_per_rank"]}
