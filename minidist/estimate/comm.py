"""Communication volume of one training step, per rank, in elements and bytes.

Textbook volumes of bandwidth-optimal collectives over n ranks on a message of M elements
(Thakur, Rabenseifner & Gropp 2005; Patarasuk & Yuan 2009): each rank sends (and receives)

* ring all-reduce:  2·(n−1)/n · M   (a reduce-scatter then an all-gather),
* reduce-scatter:     (n−1)/n · M,
* all-gather:         (n−1)/n · M.

**Data parallel** (Ψ parameters per model-parallel rank, gradient/parameter elements):

==================  ================================================  ===============
strategy            collectives per step                              sent per rank
==================  ================================================  ===============
parameter server    workers push Ψ gradients to the root, pull Ψ      Ψ (root (n−1)Ψ)
DDP / ZeRO-0        all-reduce of the gradients                       2(n−1)/n · Ψ
ZeRO-1, ZeRO-2      reduce-scatter gradients + all-gather parameters  2(n−1)/n · Ψ
ZeRO-3              all-gather params in forward and again in
                    backward + reduce-scatter gradients               3(n−1)/n · Ψ
==================  ================================================  ===============

ZeRO §7 (Rajbhandari et al. 2020): stages 1 and 2 move the same 2Ψ as DDP, stage 3 1.5×.
With gradient accumulation over k micro-batches, DDP and ZeRO-1 reduce once per step
(``no_sync`` micro-steps), ZeRO-2 reduce-scatters every micro-batch (it cannot keep a full
gradient to accumulate into), and ZeRO-3 also all-gathers the parameters in every
micro-batch's forward and backward.

**Tensor parallel** (Shoeybi et al. 2019, Megatron-LM §3): each layer all-reduces its
(b, s, h) activations twice in forward (after attention and after the MLP, operator g) and
twice in backward (operator f), so 4 all-reduces of b·s·h per layer per micro-batch. With
sequence parallelism (Korthikanti et al. 2022 §4.2.2) each all-reduce becomes an
all-gather plus a reduce-scatter: the same volume; but each column-parallel layer saves only
its ``s/t`` input shard and all-gathers it again in backward for its weight gradient (2 more
all-gathers per layer, one all-reduce's bytes: Megatron's and minidist's way). Full
recomputation repeats the forward and its 2 all-reduces.

**Pipeline parallel**: per micro-batch a stage sends its output activations (b, s, h) to the
next stage and the input gradient (b, s, h) back to the previous one. The figure is for a
middle stage (the first and last send only one of the two); interleaving with v chunks
multiplies it by v. (Megatron's scatter/gather optimisation that splits it over tp is
ignored.)
"""
from __future__ import annotations

from ..defaults import DDP, PARAMETER_SERVER, ZERO1, ZERO2, ZERO3, zero_strategy
from .memory import PRECISIONS

STRATEGIES = (PARAMETER_SERVER, DDP, ZERO1, ZERO2, ZERO3)       # data-parallel ones, minidist.defaults' names


def ring_factor(n: int) -> float:
    """(n−1)/n: the share of a message each rank sends in a ring reduce-scatter/all-gather."""
    return (n - 1) / n


def dp_comm_elements(params: float, dp: int, strategy: str, grad_accum: int = 1, pipeline: bool = False) -> dict:
    """Elements one data-parallel rank sends and receives per step (root = rank 0 for the parameter server).
    ``pipeline``: under pipeline parallelism the data-parallel reduction waits for the flush, so
    ZeRO-2 and ZeRO-3 reduce-scatter once per step, not once per micro-batch (ZeRO-3 still
    gathers for every micro-batch's forward and backward)."""
    n, psi, r = dp, params, ring_factor(dp)
    if strategy == PARAMETER_SERVER:
        # gather gradients to the root, broadcast the updated parameters back (flat/linear)
        return {"sent": psi if n > 1 else 0.0, "received": psi if n > 1 else 0.0,
                "root_sent": (n - 1) * psi, "root_received": (n - 1) * psi}
    if strategy in (DDP, ZERO1):
        vol = 2 * r * psi                           # once per step, after accumulation
    elif strategy == ZERO2:                         # reduce-scatter per micro-batch (per step under a
        vol = r * psi * (1 if pipeline else grad_accum) + r * psi     # pipeline) + one all-gather
    elif strategy == ZERO3:                         # 2 all-gathers per micro-batch + the reduce-scatters
        vol = r * psi * (2 * grad_accum + (1 if pipeline else grad_accum))
    else:
        raise ValueError(f"unknown data-parallel strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    return {"sent": vol, "received": vol}


def comm_volume(params: float, dp: int = 1, stage: int = 0, precision: str = "fp16",
                tp: int = 1, pp: int = 1, strategy: str | None = None,
                layers: int | None = None, hidden: int | None = None, seq: int | None = None,
                micro_batch: int = 1, micro_batches: int = 1, sp: bool = False,
                checkpointing: str = "none", v: int = 1) -> dict:
    """Bytes (and elements) one rank sends per optimizer step, split by parallelism.

    ``strategy`` overrides ``stage`` for data parallelism ("parameter_server", "ddp", "zero1".."zero3").
    ``micro_batches`` is the number of micro-batches per step on each rank (gradient
    accumulation steps, or the pipeline's m). The TP and PP parts need ``layers``,
    ``hidden`` and ``seq``; without them they are reported as ``None``.
    """
    precision = str(precision).lower()
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    width = 4 if precision == "fp32" else 2          # gradients, parameters and activations on the wire
    strategy = strategy or zero_strategy(stage)
    psi = params / (tp * pp)
    dp_el = dp_comm_elements(psi, dp, strategy, micro_batches, pipeline=pp > 1)
    out = {"strategy": strategy, "dp": dp, "tp": tp, "pp": pp, "sp": sp, "bytes_per_element": width,
           "dp_elements": dp_el["sent"], "dp_bytes": dp_el["sent"] * width}
    if strategy == PARAMETER_SERVER:
        out["ps_root_bytes"] = dp_el["root_sent"] * width
    shape_known = layers is not None and hidden is not None and seq is not None
    tp_el = pp_el = None
    if shape_known:
        bsh = micro_batch * seq * hidden                  # one (b, s, h) activation
        layers_here = layers // pp
        per_layer = 6 if checkpointing == "full" else 4   # all-reduces per layer per micro-batch
        per_layer += 1 if sp and tp > 1 else 0             # + the inputs all-gathered again for dW
        tp_el = per_layer * 2 * ring_factor(tp) * bsh * layers_here * micro_batches
        pp_el = (2 * bsh * micro_batches * v) if pp > 1 else 0.0
    out["tp_elements"] = tp_el
    out["tp_bytes"] = None if tp_el is None else tp_el * width
    out["pp_elements"] = pp_el
    out["pp_bytes"] = None if pp_el is None else pp_el * width
    out["total_bytes"] = sum(x for x in (out["dp_bytes"], out["tp_bytes"], out["pp_bytes"]) if x)
    return out
