"""Chapter: compression — quantization and pruning, each with its accuracy cost.

The tiny GPT is trained by the Trainer on the shipped English corpus, once per seed; every
quantization and pruning variant of :mod:`minidist.compression.accuracy` is then scored on
the held-out split, and the same seeds give the spread. Seed 0's model is also measured:
bytes on the simulated device and FLOPs of one forward for each compression, beside the
formulas of :mod:`minidist.compression.costs`, and the error histogram of each quantizer.

The seeds are spread over the ranks (each rank trains its share), so ``mpirun -n 4`` runs
them in parallel.
"""
from __future__ import annotations

from .. import distributed as dist
from ..compression import accuracy as A
from ..compression import costs as C
from .jobs import run_jobs
from ..plotting.compression import plot_pruning_accuracy, plot_quantization_accuracy, plot_quantization_errors, \
    plot_savings

TITLE = "Compression: quantization and pruning, and their cost in held-out loss"

SEEDS = 3


def _fmt(s: dict) -> str:
    return f"{s['mean']:.4f} [{s['min']:.4f}, {s['max']:.4f}]"


def _delta(r: dict) -> dict:
    """Each weight-only variant's held-out loss minus the fp32 model's, for one seed."""
    q, fp32 = r["quantization"], r["quantization"]["fp32"]
    out = {k: {b: v - fp32 for b, v in q[k].items()} for k in A.SCHEMES}
    for k in ("NF4 (double quant)", "W8A8 static, min-max", "W8A8 static, percentile 99.9", "W8A8 dynamic"):
        out[k] = q[k] - fp32
    out["qat"] = {k: v - r["qat"]["dense"] for k, v in r["qat"].items() if k != "dense"}
    return out


def _pruning_delta(r: dict) -> tuple[dict, dict]:
    """One seed's pruned losses minus its dense model's: (no retraining, with training)."""
    base, t = r["base"], r["trained_pruning"]
    one_shot = {k: {x: v - base for x, v in row.items()} for k, row in r["pruning"].items()}
    trained = {k: {x: v - base for x, v in t[k].items()}
               for k in ("L1 then magnitude, global", "iterative magnitude + fine-tune")}
    trained["dense"] = t["dense"] - base
    return one_shot, trained


def _numbers_as_keys(o):
    """Undo JSON's string keys (gather_object sends JSON): "8" → 8, "0.25" → 0.25."""
    if not isinstance(o, dict):
        return o
    out = {}
    for k, v in o.items():
        try:
            k = float(k) if "." in k else int(k)
        except (TypeError, ValueError):
            pass
        out[k] = _numbers_as_keys(v)
    return out


def summarize(results: list) -> dict:
    """The chapter's numbers over seeds: mean, min and max of each held-out loss."""
    deltas = [_pruning_delta(r) for r in results]
    return {"quantization": A.summarize([r["quantization"] for r in results]),
            "quantization_delta": A.summarize([_delta(r) for r in results]),
            "qat": A.summarize([r["qat"] for r in results]),
            "base": A.summarize([r["base"] for r in results]),
            "pruning": A.summarize([r["pruning"] for r in results]),
            "trained_pruning": A.summarize([r["trained_pruning"] for r in results]),
            "pruning_delta": A.summarize([d[0] for d in deltas]),
            "trained_delta": A.summarize([d[1] for d in deltas])}


def measured_costs(base) -> dict:
    """Bytes and FLOPs of seed 0's model and its compressed copies, beside the formulas."""
    model = base.model
    idx = base.val_dataset.eval_batches(base.micro_batch, 1)[0][0]
    costs = C.compression_costs(model, idx, A.UNIT_FRACTIONS)
    dense = costs["dense fp32"]
    fbytes = {"dense fp32": 4 * model.num_parameters(), "unstructured 50%": 4 * model.num_parameters(),
              "int8 weights": C.quantized_bytes_formula(model, 8), "int4 weights": C.quantized_bytes_formula(model, 4),
              "NF4 weights": C.nf4_bytes_formula(model), "W8A8 dynamic": C.quantized_bytes_formula(model, 8)}
    fmatmul = {k: dense.matmul_flops for k in ("dense fp32", "unstructured 50%", "int8 weights", "int4 weights",
                                               "NF4 weights", "W8A8 dynamic")}      # the same matmuls
    for f in A.UNIT_FRACTIONS:
        saved = C.structured_savings_formula(model.config, *idx.shape, f)
        fbytes[f"structured {f:.0%}"] = dense.parameter_bytes - saved["bytes"]
        fmatmul[f"structured {f:.0%}"] = dense.matmul_flops - saved["matmul_flops"]
    return {"costs": costs, "formula_bytes": fbytes, "formula_matmul": fmatmul, "csr": C.csr_table(model),
            "errors": C.error_samples(model), "batch": tuple(idx.shape)}


def _print(s: dict, m: dict, n_seeds: int) -> None:
    q, qat = s["quantization"], s["qat"]
    print(f"GPT {A.MODEL['n_layer']} layers × {A.MODEL['n_embd']}, {A.CONFIG['steps']} steps on the English corpus; "
          f"held-out loss, mean [min, max] over {n_seeds} seeds; fp32: {_fmt(q['fp32'])}")
    print(f"{'weight-only scheme':<24}" + "".join(f"{f'{b}-bit':>26}" for b in A.BITS))
    for label in A.SCHEMES:
        print(f"{label:<24}" + "".join(f"{_fmt(q[label][b]):>26}" for b in A.BITS))
    for label in ("NF4 (double quant)", "W8A8 static, min-max", "W8A8 static, percentile 99.9", "W8A8 dynamic"):
        print(f"{label:<30} {_fmt(q[label])}")
    print(f"{A.EXTRA_STEPS} more steps: " + "; ".join(f"{k} {_fmt(v)}" for k, v in qat.items()))
    p, t = s["pruning"], s["trained_pruning"]
    print(f"{'pruning (no retraining)':<38}" + "".join(f"{f'{x:.0%}':>26}" for x in A.SPARSITIES))
    for label, row in p.items():
        print(f"{label:<38}" + "".join(f"{_fmt(row[x]) if x in row else '':>26}" for x in A.SPARSITIES))
    for label in ("L1 then magnitude, global", "iterative magnitude + fine-tune"):
        print(f"{label:<38}" + "".join(f"{_fmt(t[label][x]):>26}" for x in A.SPARSITIES))
    print(f"dense, {A.EXTRA_STEPS} more steps: {_fmt(t['dense'])}; L1 (λ = {A.L1:g}) leaves "
          f"{t['l1_near_zero']['mean']:.0%} of the linear weights below 1e-3 in magnitude")
    costs, dense = m["costs"], m["costs"]["dense fp32"]
    print(f"one forward of a ({m['batch'][0]}, {m['batch'][1]}) batch, seed 0's model:")
    print(f"{'variant':<20} {'param bytes':>12} {'formula':>9} {'matmul FLOPs':>13} {'formula':>10} "
          f"{'all FLOPs':>10} {'time':>6}")
    for label, c in costs.items():
        fb, fm = m["formula_bytes"].get(label, ""), m["formula_matmul"].get(label, "")
        print(f"{label:<20} {c.parameter_bytes:>12} {fb:>9} {c.matmul_flops:>13} {fm:>10} {c.flops:>10} "
              f"{c.time / dense.time:>6.2f}")
    print("unstructured sparsity → dense bytes / CSR bytes of the linear weights: "
          + ", ".join(f"{k:.0%}: {d} / {c}" for k, (d, c) in m["csr"].items()))


def _seed(seed: int) -> tuple:
    """One seed's held-out losses, and for seed 0 the costs of its model (one job of
    :func:`minidist.demo.jobs.run_jobs`: a worker process's in the in-process tour)."""
    if seed != 0:
        return A.seed_results(seed), None
    results, base = A.seed_results(0, keep_model=True)
    return results, measured_costs(base)


def run(comm, out_dir) -> dict:
    mine = run_jobs([(_seed, s) for s in range(SEEDS) if s % comm.size == comm.rank])
    measured = next((m for _, m in mine if m is not None), None)      # seed 0 is rank 0's
    # why: rank 0 prints the tables and draws the figures from every rank's seeds
    gathered = dist.gather_object(comm, [r for r, _ in mine])
    if comm.rank != 0:
        return {}
    results = sorted((_numbers_as_keys(r) for part in gathered for r in part), key=lambda r: r["seed"])
    s = summarize(results)
    _print(s, measured, len(results))
    plot_quantization_accuracy(s["quantization_delta"], s["quantization"]["fp32"], A.BITS, len(results),
                               out_dir / "11_quantization_accuracy.png")
    plot_quantization_errors(measured["errors"], C.ERROR_BITS, out_dir / "11_quantization_errors.png")
    plot_pruning_accuracy(s["pruning_delta"], s["trained_delta"], s["base"], A.SPARSITIES, len(results),
                          A.EXTRA_STEPS, out_dir / "11_pruning_accuracy.png")
    plot_savings(measured["costs"], measured["formula_bytes"], measured["formula_matmul"], measured["csr"],
                 out_dir / "11_compression_savings.png")
    return {"results": results, "summary": s, "measured": measured}
