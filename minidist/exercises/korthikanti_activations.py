"""Exercise: activation memory per Transformer layer (Korthikanti et al. 2022, Table 2).

Reference: ``minidist.estimate.activations.layer_activation_bytes``.
"""
from __future__ import annotations

from ..estimate.activations import layer_activation_bytes
from .grading import Wrong

NAME = "korthikanti_activations"
TOPIC = "estimator"
TITLE = "Activation bytes per layer with TP, SP and recomputation (Korthikanti Table 2)"
NOTEBOOK = "09_estimator"
FUNCTIONS = ("activation_bytes_per_layer",)
FORBIDDEN = ("minidist.estimate",)      # minidist's own calculators

STUB = '''"""Activation memory of one GPT layer: Korthikanti et al. 2022, "Reducing Activation
Recomputation in Large Transformer Models", §4 and Table 2.

s sequence length, b micro-batch, h hidden size, a attention heads, t tensor-parallel
degree. Activations are 16-bit (2 bytes), dropout masks 1 byte. One layer keeps for
backward (no parallelism):

* attention block: 11·sbh + 5·as²b bytes — QKV input 2sbh, Q and K 4sbh, softmax output
  2as²b, its dropout mask as²b, dropout output 2as²b, V 2sbh, output-projection input
  2sbh, output dropout mask sbh;
* MLP block: 19·sbh — first linear input 2sbh, GeLU input 8sbh, GeLU output 8sbh, mask sbh;
* two LayerNorm inputs: 4·sbh.

Tensor parallelism (t ranks) splits what lies inside the attention core and the MLP
(24·sbh + 5·as²b) but REPLICATES the LayerNorm and dropout regions (10·sbh). Sequence
parallelism (sp=True) splits those 10·sbh along the sequence as well. Selective
recomputation drops the 5·as²b attention-core terms (recomputed in backward). Full
recomputation keeps only the layer's input, 2·sbh: replicated on every tensor-parallel rank
(as in Table 2), but only its s/t shard, 2·sbh/t, under sequence parallelism (as Megatron
keeps it).

Write ``activation_bytes_per_layer(s, b, h, a, t=1, sp=False, recompute="none")`` with
recompute in {"none", "selective", "full"}, returning bytes (a number). The grader also
tries sizes of its own (any s, b, h, a; t dividing a and h), drawn from the seed it prints.

Not allowed (the grader looks at what your code calls or imports): minidist.estimate.
Helpers of your own may have any name.
"""


def activation_bytes_per_layer(s, b, h, a, t=1, sp=False, recompute="none"):
    raise NotImplementedError
'''

HINTS = [
    "Write it as sbh·(something) + as²b·(something) and fill in the two coefficients per case.",
    "No parallelism: sbh·34 + 5·as²b. With t: sbh·(10 + 24/t) + 5as²b/t.",
    "With sp the 10 becomes 10/t too: sbh·34/t + 5as²b/t.",
    "Selective recomputation removes the 5as²b/t term; full recomputation is 2sbh (2sbh/t with sp).",
]


def reference():
    class Reference:
        @staticmethod
        def activation_bytes_per_layer(s, b, h, a, t=1, sp=False, recompute="none"):
            return layer_activation_bytes(s, b, h, a, tp=t, sp=sp, checkpointing=recompute)
    return Reference


def _coefficients(fn, s, b, h, a, **kw):
    """Fit f = α·sbh + β·as²b from two head counts (β from the difference)."""
    f1, f2 = float(fn(s, b, h, a, **kw)), float(fn(s, b, h, 2 * a, **kw))
    beta = (f2 - f1) / (a * s * s * b)
    alpha = (f1 - beta * a * s * s * b) / (s * b * h)
    return alpha, beta


def _fmt(alpha, beta):
    return f"{alpha:.4g}·sbh + {beta:.4g}·as²b"


def _explain(ga, gb, wa, wb, t, sp, recompute):
    if recompute == "full":
        return ("full recomputation keeps only each layer's input: 2·sbh bytes, replicated over the tensor-parallel "
                "ranks, or its s/t shard, 2·sbh/t, under sequence parallelism")
    if abs(gb - wb) > 1e-9:
        if recompute == "selective" and gb > 0:
            return "selective recomputation recomputes the attention core, so no as²b term remains"
        if abs(gb - 5) < 1e-9 and t > 1:
            return f"the attention core (5·as²b) is split by t: each rank holds a/t heads, so 5·as²b/{t}"
        return "the attention core is softmax output 2as²b + dropout mask as²b + dropout output 2as²b = 5·as²b (÷t)"
    if t > 1 and not sp and abs(ga - 34 / t) < 1e-9:
        return ("without sequence parallelism the LayerNorm and dropout regions (10·sbh) are replicated on "
                "every tensor-parallel rank: only the 24·sbh inside attention and MLP is split, 10 + 24/t")
    if t > 1 and sp and abs(ga - (10 + 24 / t)) < 1e-9:
        return "sequence parallelism splits the 10·sbh of LayerNorm and dropout along s too: 34/t in all"
    if t == 1 and abs(ga - 34) > 1e-9:
        return ("count the sbh terms again: attention 11 (2 + 4 + 2 + 2 + 1), MLP 19 (2 + 8 + 8 + 1), LayerNorms 4 "
                "— 34 in all; masks are 1 byte, activations 2")
    return f"the sbh coefficient should be {wa:.4g}"


def _run(sol, case, what, sizes=(2048, 1, 4096, 32)):
    s, b, h, a = sizes
    got = sol.activation_bytes_per_layer(s, b, h, a, **case)
    want = reference().activation_bytes_per_layer(s, b, h, a, **case)
    try:
        got = float(got)
    except (TypeError, ValueError):
        raise Wrong(f"{what}: return a number of bytes, got {type(got).__name__}") from None
    if abs(got - want) <= 1e-9 * want:
        return
    ga, gb = _coefficients(sol.activation_bytes_per_layer, s, b, h, a, **case)
    wa, wb = _coefficients(reference().activation_bytes_per_layer, s, b, h, a, **case)
    args = ", ".join(f"{k}={v!r}" for k, v in case.items())
    raise Wrong(f"{what} (s={s}, b={b}, h={h}, a={a}, {args}): expected {want:,.0f} bytes, got {got:,.0f}.\n"
                f"Yours reads as {_fmt(ga, gb)}; Table 2 gives {_fmt(wa, wb)}: {_explain(ga, gb, wa, wb, **case)}"
                + (f"; and the sbh coefficient should be {wa:.4g}, not {ga:.4g}" if abs(gb - wb) > 1e-9 and
                   abs(ga - wa) > 1e-9 and case["recompute"] != "full" else "") + ".")


def _check(case, what):
    return lambda sol: _run(sol, {"t": 1, "sp": False, "recompute": "none", **case}, what)


def held_out(sol, rng):
    """Sizes of the grader's (b > 1, heads and hidden divisible by t), every mode."""
    for case in ({}, {"t": 2}, {"t": 4, "sp": True}, {"t": 8, "recompute": "selective"},
                 {"t": 2, "sp": True, "recompute": "selective"}, {"t": 4, "recompute": "full"}):
        t = case.get("t", 1)
        a = t * int(rng.integers(1, 5))
        sizes = (int(rng.choice([128, 512, 1000, 4096])), int(rng.integers(1, 9)), a * 64 * int(rng.integers(1, 4)), a)
        _run(sol, {"t": 1, "sp": False, "recompute": "none", **case}, "held out", sizes)


CHECKS = [
    ("no parallelism: sbh(34 + 5as/h)", _check({}, "no parallelism")),
    ("tensor parallel t = 4: sbh(10 + 24/t + 5as/(ht))", _check({"t": 4}, "tensor parallel")),
    ("tensor + sequence parallel: sbh/t (34 + 5as/h)", _check({"t": 4, "sp": True}, "tensor + sequence parallel")),
    ("TP + selective recomputation: sbh(10 + 24/t)", _check({"t": 8, "recompute": "selective"}, "TP + selective")),
    ("TP + SP + selective recomputation: sbh·34/t", _check({"t": 8, "sp": True, "recompute": "selective"},
                                                           "TP + SP + selective")),
    ("full recomputation: 2sbh, 2sbh/t under SP", _check({"t": 8, "sp": True, "recompute": "full"}, "full recomputation")),
    ("held out: sizes of the grader's in every mode", held_out),
]
