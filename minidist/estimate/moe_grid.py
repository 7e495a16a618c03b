"""The experts of a mixture of experts per pipeline rank, for :mod:`.grid3d`: which of a rank's
blocks are MoE, what their parameters are, what their all-to-alls and tensor-parallel
collectives send — so that every rank's model states and bytes per step come out exact.

**Which blocks.** A pipeline rank runs the blocks of its chunks; block i is MoE iff
``i % every_n_layers == 0`` (Megatron-LM's ``moe_layer_freq``), so the first stage may hold
more MoE blocks than the last, and a stage may hold none.

**What a MoE block holds** in place of the dense MLP's c_fc and c_proj: the router (h × E, no
bias, on every rank, not an expert) and its ep rank's E/ep experts, each a GPT MLP split over
the tensor-parallel ranks as the dense MLP is (Shoeybi et al. 2019 §3): c_fc h × 4h/t by
columns with bias 4h/t, c_proj 4h/t × h by rows with its bias h replicated.

**Model states** (Rajbhandari et al. 2022, "DeepSpeed-MoE" §4; :mod:`minidist.parallel.expert.strategy`):
with ep > 1 a rank holding experts runs two strategies, each with its own flat buckets: the
non-expert parameters sharded over ``grid.dp_ep`` (the d = dp·ep ranks that read different
micro-batches), the experts over ``grid.dp`` (d/ep ranks); a stage holding no expert runs one
strategy over ``grid.dp_ep``. With ep = 1 the experts are parameters like any other.

**Bytes per step**, on top of the dense model's (per micro-batch, G = b·s/T groups of T tokens,
C = ⌈capacity_factor · T · k / E⌉ slots per expert and group; Lepikhin et al. 2020, "GShard" §2):

* all-to-all (ep > 1): four per MoE block and group (dispatch and combine, forward and
  backward), each (ep − 1)·(E/ep)·C·h·w bytes (:func:`minidist.parallel.expert.all_to_all_bytes`);
* tensor parallel: a MoE block's experts run on slot buffers, not on the b·s tokens — the
  dense MLP's two all-reduces of b·s·h elements (g after c_proj, f's backward before c_fc)
  become two per group and local expert of its ep·C slots, ep·C·h elements each; under
  sequence parallelism the block gathers the whole sequence first (all-gather forward, and
  the scatter's backward all-gathers), in place of the dense MLP's sequence-parallel
  collectives (:func:`tp_bytes_change`);
* data parallel: the experts' buckets over d/ep ranks beside the rest over d (:mod:`.grid3d`'s
  formulas, once per strategy);
* one-float64 all-reduces: the experts' overflow verdict over the world (fp16/bf16), their
  gradient norm over grid.mp, over grid.dp when sharded and over grid.ep (clipping).
"""
from __future__ import annotations

from ..defaults import MOE_DEFAULTS
from ..moe.router import capacity
from ..parallel.tensor.accounting import collective_bytes


def moe_config(moe: dict | None) -> dict | None:
    """``model.moe`` with its defaults filled in (None for a dense model)."""
    return None if moe is None else {**MOE_DEFAULTS, **moe}


def moe_block_ids(block_ids, moe: dict | None) -> list:
    """The MoE blocks among ``block_ids``."""
    if moe is None:
        return []
    return [i for i in block_ids if i % moe_config(moe)["every_n_layers"] == 0]


def moe_mlp_parameters(h: int, moe: dict, ep: int = 1, tp: int = 1, bias: bool = True) -> list:
    """(name, elements) of a MoE block's MLP on one rank, in registration order: the router,
    then each of the E/ep experts' c_fc and c_proj (names relative to the block)."""
    m = moe_config(moe)
    E = m["num_experts"]
    out = [("mlp.router.weight", h * E)]
    for e in range(E // ep):
        items = [(f"mlp.experts.{e}.c_fc.weight", h * 4 * h // tp), (f"mlp.experts.{e}.c_fc.bias", 4 * h // tp),
                 (f"mlp.experts.{e}.c_proj.weight", 4 * h * h // tp), (f"mlp.experts.{e}.c_proj.bias", h)]
        out += [(n, k) for n, k in items if bias or not n.endswith("bias")]
    return out


def is_expert_name(name: str) -> bool:
    return ".mlp.experts." in name


def groups_of(moe: dict, b: int, s: int) -> tuple[int, int, int]:
    """(T, groups per micro-batch, C) of one MoE layer on b sequences of s tokens."""
    m = moe_config(moe)
    T = m["group_size"] or b * s
    if (b * s) % T:
        raise ValueError(f"model.moe.group_size {T} does not divide the {b * s} tokens of a micro-batch ({b} × {s})")
    return T, b * s // T, capacity(T, m["top_k"], m["num_experts"], m["capacity_factor"])


def all_to_all_of_rank(n_moe: int, moe: dict, ep: int, b: int, s: int, h: int, micro_batches: int, w: int) -> dict:
    """The all-to-alls one rank makes in a step: count, bytes of one, bytes in all."""
    _, groups, C = groups_of(moe, b, s)
    E = moe_config(moe)["num_experts"]
    each = (ep - 1) * (E // ep) * C * h * w
    calls = 4 * n_moe * groups * micro_batches if ep > 1 else 0
    return {"capacity": C, "all_to_all_bytes": each, "all_to_all_per_step": calls,
            "all_to_all_bytes_per_step": each * calls}


def tp_bytes_change(n_moe: int, moe: dict, ep: int, b: int, s: int, h: int, tp: int, w: int, sp: bool = False,
                    bias: bool = True) -> int:
    """Bytes one tp rank sends per micro-batch in its MoE blocks minus what their dense MLPs
    would send: 2 all-reduces of ep·C·h per group and local expert in place of the dense MLP's
    collectives — without sequence parallelism its 2 all-reduces of b·s·h; with it its 3
    all-gathers and 2 reduce-scatters of b·s·h and its c_proj bias's gradient all-reduce, of
    which the MoE block keeps 2 all-gathers (the sequence gathered before the router, and the
    backward of the scatter after the combine)."""
    if tp == 1 or n_moe == 0:
        return 0
    _, groups, C = groups_of(moe, b, s)
    local = moe_config(moe)["num_experts"] // ep
    moe_part = 2 * groups * local * collective_bytes("all_reduce", ep * C * h, tp, w)
    if not sp:
        return n_moe * (moe_part - 2 * collective_bytes("all_reduce", b * s * h, tp, w))
    dense = 3 * collective_bytes("all_gather", b * s * h, tp, w) + 2 * collective_bytes("reduce_scatter", b * s * h, tp, w)
    dense += collective_bytes("all_reduce", h, tp, w) if bias else 0
    return n_moe * (moe_part + 2 * collective_bytes("all_gather", b * s * h, tp, w) - dense)
