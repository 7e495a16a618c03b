"""Exercise: model-state memory per device for ZeRO stages 0-3 (Rajbhandari et al. 2020, §5, Fig. 1).

Reference: ``minidist.estimate.memory.model_state_memory``.
"""
from __future__ import annotations


from ..estimate.memory import model_state_memory
from .grading import Wrong

NAME = "zero_memory"
TOPIC = "zero"
TITLE = "ZeRO's memory formula: what each stage shards"
NOTEBOOK = "03_data_parallel_and_zero"
FUNCTIONS = ("model_state_bytes",)
FORBIDDEN = ("minidist.estimate",)      # minidist's own calculators

STUB = '''"""Model-state memory per device under ZeRO (Rajbhandari et al. 2020, §5 and Figure 1).

Mixed-precision training with Adam holds, per parameter, 2 bytes of fp16 parameters,
2 bytes of fp16 gradients and K = 12 bytes of optimizer state (fp32 master copy, m, v).
With N_d data-parallel ranks:

* stage 0 (plain data parallel): every rank holds everything;
* stage 1 (P_os): the optimizer states are sharded over the N_d ranks;
* stage 2 (P_os+g): the gradients too;
* stage 3 (P_os+g+p): the parameters too.

Write ``model_state_bytes(psi, n_d, stage, k=12)``: the bytes ONE device holds for a model
of ``psi`` parameters, as a dict ``{"parameters": ..., "gradients": ..., "optimizer_states":
...}``. The paper's example: psi = 7.5e9, N_d = 64 gives 120 GB, 31.4 GB, 16.6 GB and
1.9 GB in all (GB = 1e9 bytes) for stages 0 to 3. psi, n_d and k may be any positive
numbers (psi need not be a multiple of n_d); the grader also tries values of its own, drawn
from the seed it prints.

Not allowed (the grader looks at what your code calls or imports): minidist.estimate.
Helpers of your own may have any name.
"""


def model_state_bytes(psi, n_d, stage, k=12):
    raise NotImplementedError
'''

HINTS = [
    "Write three terms: parameters 2·psi, gradients 2·psi, optimizer states k·psi; divide each by n_d from "
    "the stage that shards it on.",
    "Stage 1 divides only k·psi; stage 2 also 2·psi of gradients; stage 3 all three.",
]

PARTS = {"parameters": (2, 3), "gradients": (2, 2), "optimizer_states": (None, 1)}   # bytes/param, first stage sharding it


def reference():
    class Reference:
        @staticmethod
        def model_state_bytes(psi, n_d, stage, k=12):
            m = model_state_memory(psi, dp=n_d, stage=stage, precision="fp16", optimizer="adam")
            return {"parameters": m["parameters"], "gradients": m["gradients"],
                    "optimizer_states": m["optimizer_states"] * k / m["bytes_per_param"]["K"]}
    return Reference


def _shifted(psi, n, stage, k, part, shift):
    """Bytes of ``part`` when every part is sharded ``shift`` stages later than ZeRO does."""
    per_param, first = PARTS[part]
    per_param = k if per_param is None else per_param
    return per_param * psi / (n if stage >= first + shift else 1)


def _run(sol, psi, n, stage, k, label):
    want = reference().model_state_bytes(psi, n, stage, k)
    got = sol.model_state_bytes(psi, n, stage, k)
    if not isinstance(got, dict) or set(got) != set(want):
        raise Wrong(f"{label}: return a dict with the keys {sorted(want)}, got {got!r:.80}")
    for part, (per_param, first_stage) in PARTS.items():
        per_param = k if per_param is None else per_param
        try:
            value = float(got[part])
        except (TypeError, ValueError):
            raise Wrong(f"{label}: {part} must be a number of bytes, got {got[part]!r:.40}") from None
        if abs(value - want[part]) <= 1e-6 * want[part]:
            continue
        sharded = stage >= first_stage
        if abs(value - per_param * psi / n) <= 1e-6 * value and not sharded:
            why = f"stage {stage} keeps the {part} whole on every rank; ZeRO shards them from stage {first_stage} on"
        elif abs(value - per_param * psi) <= 1e-6 * value and sharded:
            why = f"stage {stage} shards the {part} over the N_d = {n} ranks (from stage {first_stage} on): ÷ N_d"
        else:
            why = f"{part} take {per_param} bytes per parameter" + (f", divided by N_d = {n}" if sharded else "")
        for shift, when in ((1, "one stage late"), (-1, "one stage early")):
            if all(abs(float(got[q]) - _shifted(psi, n, stage, k, q, shift)) <= 1e-6 * float(want[q]) for q in PARTS):
                why += (f". Your numbers shard every part {when}: stage 1 shards the optimizer states, stage 2 the "
                        f"gradients too, stage 3 the parameters too")
                break
        raise Wrong(f"{label}: Ψ = {psi:g}, N_d = {n}, stage {stage}, K = {k}: {part} should be "
                    f"{want[part]:,.0f} bytes ({want[part] / 1e9:.4g} GB), yours {value:,.0f} bytes — {why}.")


def _check(psi, n, stages, k, label):
    def check(sol):
        for stage in stages:
            _run(sol, psi, n, stage, k, label)
    return check


def held_out(sol, rng):
    """Model sizes, data-parallel degrees and K of the grader's, every stage."""
    for _ in range(3):
        psi = float(rng.integers(10 ** 6, 10 ** 11))
        n, k = int(rng.integers(2, 1025)), int(rng.choice([4, 8, 12, 16]))
        _check(psi, n, [0, 1, 2, 3], k, "held out")(sol)


CHECKS = [
    ("stage 0: (2 + 2 + K)Ψ on every rank", _check(7.5e9, 64, [0], 12, "stage 0")),
    ("stage 1 shards the optimizer states", _check(7.5e9, 64, [1], 12, "stage 1")),
    ("stage 2 shards gradients too", _check(7.5e9, 64, [2], 12, "stage 2")),
    ("stage 3 shards parameters too", _check(7.5e9, 64, [3], 12, "stage 3")),
    ("other sizes and K = 8 (fp32 Adam moments only)", _check(1.3e9, 8, [0, 1, 2, 3], 8, "K = 8")),
    ("held out: model sizes, N_d and K of the grader's", held_out),
]
