"""Exercise: activation bytes per layer and per pipeline stage under a checkpointing policy
(Korthikanti et al. 2022, Table 2 and §5; Megatron-LM's ``recompute_granularity``,
``recompute_method`` and ``recompute_num_layers``).

Reference: ``minidist.estimate.activations`` (``layer_activation_bytes``, ``activation_memory``).
Graded also against the engine: a real GPT's blocks run on one rank and on 2 tensor-parallel
ranks, their measured activation bytes less the engine's named extras.
"""
from __future__ import annotations

import numpy as np

from .. import distributed as dist
from ..autocast import autocast
from ..device import Device
from ..estimate.activations import activation_memory, layer_activation_bytes
from ..model import GPT, GPTConfig, Recompute
from ..parallel.grid import ProcessGrid
from ..parallel.tensor import TensorParallelLayers
from .grading import Wrong

NAME = "activation_checkpointing_bytes"
TOPIC = "checkpointing"
TITLE = "Activation bytes per layer and per stage under a checkpointing policy"
NOTEBOOK = "07_checkpointing_offload_overlap"
FUNCTIONS = ("layer_bytes", "stage_bytes")
FORBIDDEN = ("minidist.estimate",)      # minidist's own calculators

STUB = '''"""Activation memory under a checkpointing policy: Korthikanti et al. 2022, "Reducing
Activation Recomputation in Large Transformer Models" (Table 2 and §5), and Megatron-LM's
recompute_granularity / recompute_method / recompute_num_layers.

s sequence length, b micro-batch, h hidden size, a attention heads, t tensor-parallel degree,
sp sequence parallelism on or off. Activations are 16-bit (2 bytes), dropout masks 1 byte.
Without recomputation one GPT layer keeps for backward

    sbh·34 + 5·as²b  bytes = sbh(34 + 5as/h)

(the 34: attention 11, MLP 19, the two LayerNorm inputs 4; the 5as²b: the softmax output
2as²b, its dropout mask as²b and the dropout output 2as²b). Tensor parallelism splits the
24·sbh and the 5·as²b inside attention and the MLP over t ranks but REPLICATES the 10·sbh of
the LayerNorm and dropout regions: sbh(10 + 24/t + 5as/(ht)). Sequence parallelism splits
those 10·sbh along the sequence too: sbh/t·(34 + 5as/h).

granularity:
* "none": the above;
* "selective": the attention core is recomputed in backward, so its 5·as²b (÷t) is not kept;
* "full": a checkpointed layer keeps only its input, 2·sbh — on every tensor-parallel rank
  (replicated), or its s/t shard, 2·sbh/t, under sequence parallelism.

1. ``layer_bytes(s, b, h, a, t=1, sp=False, granularity="none")``: the bytes ONE layer keeps
   (for "full": a layer that is its own checkpoint).

2. ``stage_bytes(s, b, h, a, layers, t=1, sp=False, granularity="none", method="uniform",
   num_layers=1)``: the bytes the ``layers`` blocks of one pipeline stage keep at the end of
   one micro-batch's forward. ``method`` and ``num_layers`` (k) matter only for "full":
   * "uniform": the blocks form units of k consecutive blocks (the last unit may be shorter);
     each unit is checkpointed as one and keeps only ITS input;
   * "block": the first k blocks are checkpointed one by one; the others are not recomputed at
     all and keep everything ("none"'s bytes). k may exceed ``layers``.

Return numbers of bytes. The grader compares with minidist's estimator and with what
minidist's engine measures when it runs the blocks of a real GPT (bf16, dropout on; on one
rank, under TP 2 and TP 2 + SP) on shapes of its own, drawn from the seed it prints: the
engine also keeps LayerNorm's normalised inputs in fp32 (+4sbh per layer kept whole) and 1/σ
per token (+8sb), both ÷t under SP; the grader takes those away, so count the paper's bytes.

Not allowed (the grader looks at what your code calls or imports): minidist.estimate.
Helpers of your own may have any name.
"""


def layer_bytes(s, b, h, a, t=1, sp=False, granularity="none"):
    raise NotImplementedError


def stage_bytes(s, b, h, a, layers, t=1, sp=False, granularity="none", method="uniform", num_layers=1):
    raise NotImplementedError
'''

HINTS = [
    "layer_bytes: write sbh·(x) + as²b·(y) and fill in x and y per case; full is 2sbh, ÷t only under sp.",
    "With t and no sp: x = 10 + 24/t. With sp: x = 34/t. The as²b term is 5/t, and 0 under selective.",
    "stage_bytes, uniform: ceil(layers / k) checkpoints of 2sbh (÷t under sp) — a shorter last unit still keeps "
    "its input.",
    "stage_bytes, block: min(k, layers) checkpoints plus (layers − min(k, layers)) layers of 'none'.",
]


def reference():
    class Reference:
        @staticmethod
        def layer_bytes(s, b, h, a, t=1, sp=False, granularity="none"):
            return layer_activation_bytes(s, b, h, a, t, sp, granularity)

        @staticmethod
        def stage_bytes(s, b, h, a, layers, t=1, sp=False, granularity="none", method="uniform", num_layers=1):
            return activation_memory(s, b, h, a, layers, t, sp, granularity, method=method,
                                     num_layers=num_layers)["total"]
    return Reference


# -- what a typical mistake gives --------------------------------------------------------------
def _units(layers, method, k, g):
    """(checkpoints, layers kept whole) of a stage."""
    if g != "full":
        return 0, layers
    if method == "uniform":
        return -(-layers // k), 0
    return min(k, layers), layers - min(k, layers)


def _count(case: dict, core_for=("none",), core_split=True, sp_split=True, tp_all=False, ckpt=None,
           units=_units) -> float:
    """``case`` counted the paper's way, with switches that reproduce the typical mistakes:
    which granularities keep the 5as²b core, whether it is split by t, whether SP splits the
    replicated regions, whether TP alone splits everything, what a checkpoint weighs, how the
    blocks are cut into units. A case without "layers" is one layer."""
    s, b, h, a, t, sp, g = (case[k] for k in ("s", "b", "h", "a", "t", "sp", "granularity"))
    sbh, as2b = s * b * h, a * s * s * b
    rep = t if (sp and sp_split) or tp_all else 1

    def layer(gran):
        if gran == "full":
            return 2 * sbh / rep if ckpt is None else ckpt
        return 10 * sbh / rep + 24 * sbh / t + (5 * as2b / (t if core_split else 1) if gran in core_for else 0)

    if "layers" not in case:
        return layer(g)
    kept, whole = units(case["layers"], case["method"], case["num_layers"], g)
    return kept * layer("full") + whole * layer("none" if g == "full" else g)


def _mistakes(case: dict) -> dict:
    """{the typical mistake, in the student's words: the bytes it gives} for ``case``."""
    t, sp, g = case["t"], case["sp"], case["granularity"]
    sbh = case["s"] * case["b"] * case["h"]
    stage, method = "layers" in case, case.get("method", "uniform")
    whole = g != "full" or (stage and method == "block")       # some layer keeps more than its input
    out = {}
    if whole and g != "selective":
        out["forgetting the 5as/h term (the attention core: softmax output, its dropout mask, dropout output)"] = \
            _count(case, core_for=())
        if t > 1:
            out["not splitting the 5as/h term by t (each rank holds the scores of a/t heads)"] = \
                _count(case, core_split=False)
    if g == "selective":
        out["keeping the 5as/h term under selective, which recomputes the attention core"] = \
            _count(case, core_for=("none", "selective"))
    if sp and t > 1:
        out["not dividing by t under SP (sequence parallelism splits the LayerNorm/dropout regions, and the "
            "block input a full checkpoint keeps, along s)"] = _count(case, sp_split=False)
    if not sp and t > 1:
        out["dividing everything by t without SP (tensor parallelism alone replicates the 10sbh of LayerNorm "
            "and dropout, and the block input)"] = _count(case, tp_all=True)
    if g == "full":
        rep = t if sp else 1
        out["counting full as 34sbh: a fully recomputed layer keeps only its input, 2sbh"] = \
            _count(case, ckpt=34 * sbh / rep)
        if t > 1 and not sp:
            out["counting full as selective's sbh(10 + 24/t): a fully recomputed layer keeps only its input, "
                "2sbh"] = _count(case, ckpt=sbh * (10 + 24 / t))
    if stage and g == "full":
        k, L = case["num_layers"], case["layers"]
        if method == "uniform":
            out["confusing uniform with block: uniform checkpoints EVERY unit of num_layers blocks, none is kept "
                "whole"] = _count(case, units=lambda L_, m, k_, g_: _units(L_, "block", k_, g_))
            out["one checkpoint per layer: a uniform unit of num_layers blocks keeps only its first block's input"] = \
                _count(case, units=lambda L_, m, k_, g_: (L_, 0))
            if L % k:
                out["rounding layers/num_layers down: the last, shorter unit keeps its input too"] = \
                    _count(case, units=lambda L_, m, k_, g_: (L_ // k_, 0))
        else:
            out["confusing block with uniform: block checkpoints only the first num_layers blocks, the others keep "
                "all their activations"] = _count(case, units=lambda L_, m, k_, g_: _units(L_, "uniform", k_, g_))
            out["leaving out the blocks that are not checkpointed (they keep 'none''s bytes)"] = \
                _count(case, units=lambda L_, m, k_, g_: (min(k_, L_), 0))
            if k > L:
                out["counting num_layers checkpoints when num_layers exceeds layers (only layers blocks exist)"] = \
                    _count(case, units=lambda L_, m, k_, g_: (k_, 0))
    return out


def _describe(case: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in case.items())


def _judge(got, want: float, case: dict, what: str) -> None:
    try:
        got = float(got)
    except (TypeError, ValueError):
        raise Wrong(f"{what} ({_describe(case)}): return a number of bytes, got {type(got).__name__}") from None
    if abs(got - want) <= 1e-9 * max(want, 1.0):
        return
    named = [name for name, v in _mistakes(case).items() if abs(got - v) <= 1e-9 * max(v, 1.0)]
    sbh = case["s"] * case["b"] * case["h"]
    raise Wrong(f"{what} ({_describe(case)}): expected {want:,.0f} bytes, got {got:,.0f} "
                f"(= {got / sbh:.4g}·sbh; expected {want / sbh:.4g}·sbh)"
                + (f" — that is {named[0]}" if named else "") + ".")


def _layer_case(sol, s, b, h, a, t=1, sp=False, granularity="none"):
    case = {"s": s, "b": b, "h": h, "a": a, "t": t, "sp": sp, "granularity": granularity}
    _judge(sol.layer_bytes(s, b, h, a, t=t, sp=sp, granularity=granularity),
           reference().layer_bytes(s, b, h, a, t, sp, granularity), case, "layer_bytes")


def _stage_case(sol, s, b, h, a, layers, t=1, sp=False, granularity="none", method="uniform", num_layers=1,
                want=None, what="stage_bytes"):
    case = {"s": s, "b": b, "h": h, "a": a, "layers": layers, "t": t, "sp": sp, "granularity": granularity,
            "method": method, "num_layers": num_layers}
    if want is None:
        want = reference().stage_bytes(s, b, h, a, layers, t, sp, granularity, method, num_layers)
    _judge(sol.stage_bytes(s, b, h, a, layers, t=t, sp=sp, granularity=granularity, method=method,
                           num_layers=num_layers), want, case, what)


GPT3 = (2048, 1, 12288, 96)          # s, b, h, a of GPT-3 175B (Korthikanti's Table 3 model)


def check_layer(sol):
    for t, sp in ((1, False), (8, False), (8, True)):
        for g in ("none", "selective", "full"):
            _layer_case(sol, *GPT3, t=t, sp=sp, granularity=g)


def check_uniform(sol):
    for t, sp in ((1, False), (8, True)):
        for k in (1, 3, 5):                      # 96 layers / 8 stages = 12 per stage; 5 does not divide 12
            _stage_case(sol, *GPT3, 12, t=t, sp=sp, granularity="full", num_layers=k)


def check_block(sol):
    for t, sp in ((1, False), (8, False), (8, True)):
        for k in (1, 4, 20):                     # 20 > 12 layers: every layer checkpointed
            _stage_case(sol, *GPT3, 12, t=t, sp=sp, granularity="full", method="block", num_layers=k)


def check_other_granularities(sol):
    for g in ("none", "selective"):
        for method, k in (("uniform", 3), ("block", 2)):
            _stage_case(sol, *GPT3, 12, t=8, sp=False, granularity=g, method=method, num_layers=k)


def _policy(rng) -> dict:
    g = str(rng.choice(["none", "selective", "full", "full", "full"]))
    return {"granularity": g, "method": str(rng.choice(["uniform", "block"])), "num_layers": int(rng.integers(1, 6))}


def held_out_estimator(sol, rng=None):
    """Shapes and policies of the grader's, beside the estimator."""
    rng = rng if rng is not None else np.random.default_rng()
    for _ in range(12):
        t = int(rng.choice([1, 2, 4, 8]))
        a = t * int(rng.integers(1, 9))
        s, b, h = int(rng.choice([256, 1000, 2048, 4096])), int(rng.integers(1, 9)), a * int(rng.choice([64, 80, 128]))
        sp = bool(t > 1 and rng.integers(0, 2))
        _stage_case(sol, s, b, h, a, int(rng.integers(1, 17)), t=t, sp=sp, what="stage_bytes (held out)", **_policy(rng))


def measured_blocks(comm, s, b, h, a, layers, sp, granularity, method, num_layers) -> int:
    """Activation bytes the blocks of a real GPT hold at the end of forward (bf16, dropout 0.1)."""
    dev = Device("laptop", rank=comm.rank if comm is not None else 0)
    if comm is not None:
        comm.device = dev
    with dev:
        layers_ = TensorParallelLayers(ProcessGrid(comm, tp=comm.size).tp, sequence_parallel=sp) if comm else None
        cfg = GPTConfig(block_size=s, vocab_size=11, n_layer=layers, n_head=a, n_embd=h, dropout=0.1)
        model = GPT(cfg, seed=0, layers=layers_).set_recompute(Recompute(granularity, method, num_layers))
        model.set_dropout_key(0, 0)
        with autocast("bf16"), model.layers.sequence(s):
            x = model.embed(np.random.default_rng(0).integers(0, 11, (b, s)))
            before = dev.memory.current["activations"]
            model.blocks(x)
            return dev.memory.current["activations"] - before


def held_out_engine(sol, rng=None):
    """Real blocks on one rank, TP 2 and TP 2 + SP: measured minus the engine's named extras."""
    rng = rng if rng is not None else np.random.default_rng()
    for t, sp in ((1, False), (1, False), (2, False), (2, True)):
        a = 2 * int(rng.integers(1, 3))
        s, b, h, L = int(rng.choice([4, 8])), int(rng.integers(1, 3)), a * int(rng.choice([4, 8])), int(rng.integers(2, 5))
        p = _policy(rng)
        args = (s, b, h, a, L, sp, p["granularity"], p["method"], p["num_layers"])
        got = dist.spawn(measured_blocks, 2, *args)[0] if t > 1 else measured_blocks(None, *args)
        whole = _units(L, p["method"], p["num_layers"], p["granularity"])[1]       # layers not recomputed
        extras = whole * (4 * s * b * h + 8 * s * b) / (t if sp else 1)
        _stage_case(sol, s, b, h, a, L, t=t, sp=sp, want=got - extras, what=f"stage_bytes beside the engine, which "
                    f"measured {got:,} bytes, {extras:,.0f} of them its extras", **p)


CHECKS = [
    ("layer_bytes: none, selective, full — alone, TP 8, TP 8 + SP", check_layer),
    ("stage_bytes, full, uniform: one input per unit of num_layers blocks", check_uniform),
    ("stage_bytes, full, block: the first num_layers blocks checkpointed, the others whole", check_block),
    ("stage_bytes, none and selective: every layer the same, method and num_layers ignored",
     check_other_granularities),
    ("held out: the estimator on shapes and policies of the grader's", held_out_estimator),
    ("held out: the engine's measured bytes (one rank, TP 2, TP 2 + SP) less its named extras", held_out_engine),
]
