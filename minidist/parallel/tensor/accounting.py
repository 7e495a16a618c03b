"""What one tensor-parallel rank should hold and send, itemised: the formulas the tests,
the report and the demo check the measured run against.

**Activations** (Korthikanti et al. 2022, §4, Table 2). The paper counts, per layer, 16-bit
activations and 1-byte dropout masks: ``sbh(34 + 5as/h)`` with no parallelism,
``sbh(10 + 24/t + 5as/(ht))`` with tensor parallelism, ``sbh/t·(34 + 5as/h)`` with sequence
parallelism too. The engine saves the same tensors (:func:`layer_activation_items` names
each one after the paper's term), with three differences that map it onto the formula:

* widths: every saved activation is ``w`` bytes (the dtype: 4 for float32, 8 for float64;
  2 under fp16/bf16 autocast), except what the fp32 ops keep (LayerNorm, the loss): ``w32``;
* LayerNorm saves its normalised input ``x̂`` (the paper's "LayerNorm input", same size)
  plus ``1/σ`` per token — a per-token statistic the paper leaves out, itemised here;
* with ``dropout = 0`` (the equivalence runs) there are no masks and no dropout output, so
  the paper's ``34`` loses ``2`` (the two ``sbh`` masks) and ``5as/h`` loses ``3as/h``
  (the ``as²b`` mask and the ``2as²b`` dropout output): per layer ``w/2·sbh(32 + 2as/h)``,
  i.e. ``w·sbh(16 + as/h)``; under TP ``w·sbh(4 + 12/t + as/(ht))``; under TP + SP
  ``w·sbh/t·(16 + as/h)``.

Beyond the layers (Korthikanti §4.3): the token ids (int64) of both embedding lookups, the
final LayerNorm, the LM head's input and the softmax over this rank's ``V/t`` columns.

**Traffic** (Shoeybi et al. 2019 §3; Korthikanti §4.2.2): :func:`step_collectives` lists
every collective on the tensor-parallel group in one micro-batch, and
:func:`collective_bytes` what a ring sends per rank.
"""
from __future__ import annotations

import math

import numpy as np

from ..split import padded_vocab_size


def layer_activation_items(b: int, s: int, h: int, a: int, t: int = 1, sp: bool = False,
                           w: int = 4, w32: int | None = None) -> dict:
    """Bytes one Transformer layer saves for backward, per saved tensor (dropout 0).

    Keys name the engine's tensor and, after ``|``, the paper's term it stands for."""
    w32 = w if w32 is None else w32
    sbh, r = s * b * h, (t if sp else 1)          # r: what the LayerNorm/dropout regions are split by
    return {
        "ln_1, ln_2 normalised input | LayerNorm inputs 4sbh": w32 * 2 * sbh / r,
        "ln_1, ln_2 1/sigma per token | (not in the paper)": w32 * 2 * s * b / r,
        "c_attn input | QKV input 2sbh": w * sbh / r,
        "q, k, v | Q, K 4sbh and V 2sbh": w * 3 * sbh / t,
        "softmax output | 2as^2b": w * a * s * s * b / t,
        "attn c_proj input | projection input 2sbh": w * sbh / t,
        "c_fc input | MLP input 2sbh": w * sbh / r,
        "GELU input | 8sbh": w * 4 * sbh / t,
        "GELU output (mlp c_proj input) | 8sbh": w * 4 * sbh / t,
    }


def model_activation_items(n_layer: int, b: int, s: int, h: int, a: int, vocab_padded: int, t: int = 1,
                           sp: bool = False, w: int = 4, w32: int | None = None, loss_scalars: int = 1) -> dict:
    """Bytes the whole model saves for one micro-batch (the activation peak: end of forward)."""
    w32 = w if w32 is None else w32
    r = t if sp else 1
    items = {f"{n_layer} layers x {k}": n_layer * v
             for k, v in layer_activation_items(b, s, h, a, t, sp, w, w32).items()}
    items.update({
        "token ids of wte and wpe (int64)": 8 * (b * s + s),
        "ln_f normalised input + 1/sigma": w32 * (s * b * h + s * b) / r,
        "LM head input": w * s * b * h / r,
        "softmax over my V/t columns (loss)": w32 * b * s * vocab_padded / t,
        "loss scalars (x 1/accumulation, x loss scale)": w32 * loss_scalars,
    })
    return items


def ring_chunk(n: int, t: int) -> int:
    return math.ceil(n / t)


def collective_bytes(op: str, elements: int, t: int, bytes_per_element: int) -> int:
    """Bytes one rank sends in a ring collective over ``t`` ranks on ``elements`` (the whole
    reduced or gathered array): all-reduce ``2(t−1)·⌈n/t⌉``, all-gather and reduce-scatter
    ``(t−1)·⌈n/t⌉`` elements."""
    factor = {"all_reduce": 2, "all_gather": 1, "reduce_scatter": 1}[op]
    return factor * (t - 1) * ring_chunk(elements, t) * bytes_per_element


def step_collectives(n_layer: int, b: int, s: int, h: int, t: int, sp: bool = False, bias: bool = True) -> list:
    """Every collective on the tp group in one micro-batch (forward + backward), as
    ``(where, op, elements)``. Loss statistics are ``b·s`` elements, the rest ``b·s·h``."""
    bsh, bs = b * s * h, b * s
    out = []
    if not sp:
        for i in range(n_layer):
            out += [(f"h.{i} g after attention", "all_reduce", bsh), (f"h.{i} g after MLP", "all_reduce", bsh),
                    (f"h.{i} f before c_attn (backward)", "all_reduce", bsh),
                    (f"h.{i} f before c_fc (backward)", "all_reduce", bsh)]
        out += [("wte g", "all_reduce", bsh), ("LM head f (backward)", "all_reduce", bsh)]
    else:
        params = (3 if bias else 1) * 2                    # ln_1, ln_2 weight (+ bias) and 2 row biases
        for i in range(n_layer):
            out += [(f"h.{i} all-gather before c_attn, c_fc", "all_gather", bsh)] * 2
            out += [(f"h.{i} reduce-scatter after c_proj (g-bar)", "reduce_scatter", bsh)] * 2
            out += [(f"h.{i} backward of g-bar", "all_gather", bsh)] * 2
            out += [(f"h.{i} backward of the all-gather (dx)", "reduce_scatter", bsh)] * 2
            out += [(f"h.{i} input all-gathered again for dW (Korthikanti 4.2.2)", "all_gather", bsh)] * 2
            out += [(f"h.{i} replicated parameter gradient", "all_reduce", h)] * params
        out += [("wte g", "all_reduce", bsh), ("scatter to sequence (backward)", "all_gather", bsh),
                ("LM head all-gather", "all_gather", bsh), ("LM head dx reduce-scatter", "reduce_scatter", bsh),
                ("LM head input again for dW", "all_gather", bsh)]
        out += [("ln_f parameter gradient", "all_reduce", h)] * (2 if bias else 1)
    out += [("loss max", "all_reduce", bs), ("loss target logit", "all_reduce", bs), ("loss sum-exp", "all_reduce", bs)]
    return out


def step_bytes(n_layer: int, b: int, s: int, h: int, t: int, sp: bool = False, bias: bool = True,
               micro_batches: int = 1, w: int = 4, w32: int | None = None) -> int:
    """Bytes one tp rank sends per optimizer step: activations and parameter gradients at
    ``w`` bytes per element on the wire, the loss statistics at ``w32``."""
    w32 = w if w32 is None else w32
    total = sum(collective_bytes(op, n, t, w32 if where.startswith("loss") else w)
                for where, op, n in step_collectives(n_layer, b, s, h, t, sp, bias))
    return total * micro_batches


def decode_collectives(n_layer: int, b: int, h: int, vocab_padded: int, tokens: int = 1) -> list:
    """Every collective on the tp group in one generation step over ``tokens`` new positions
    of ``b`` sequences (forward only, without sequence parallelism; :mod:`minidist.inference`):
    the vocabulary-parallel embedding's ``g``, the two ``g`` of every layer (``f`` is the
    identity forward), and the all-gather of the last position's ``V/t`` logits. The KV cache,
    split by heads, never travels."""
    bth = b * tokens * h
    out = [("wte g", "all_reduce", bth)]
    for i in range(n_layer):
        out += [(f"h.{i} g after attention", "all_reduce", bth), (f"h.{i} g after MLP", "all_reduce", bth)]
    return out + [("last position's logits gathered", "all_gather", b * vocab_padded)]


def decode_step_bytes(n_layer: int, b: int, h: int, vocab_padded: int, t: int, w: int = 4, tokens: int = 1) -> int:
    """Bytes one tp rank sends in one generation step (:func:`decode_collectives`, ``w`` bytes per element)."""
    return sum(collective_bytes(op, n, t, w) for _, op, n in decode_collectives(n_layer, b, h, vocab_padded, tokens))


def tp_bytes_by_op(trainer) -> dict:
    """op → bytes this rank sent on its tensor-parallel group in the trainer's last step (measured)."""
    log = getattr(trainer, "step_log", None)
    by_op: dict = {}
    for x in (log.collectives if log is not None else []):
        if x.group == trainer.grid.tp.group:
            by_op[x.op] = by_op.get(x.op, 0) + x.bytes_sent
    return by_op


def recomputed_bytes(trainer, b: int, s: int, w: int) -> int:
    """Bytes full recomputation sends again per step: the forward collectives (:func:`step_collectives`'
    ``g``, or SP's all-gather and reduce-scatter) of every block it re-runs (:class:`minidist.model.Recompute`)."""
    c, t, model = trainer.model_config, trainer.grid.tp_size, trainer.model
    rc = getattr(model, "recompute", None)
    again = {f"h.{i}" for g, on in rc.units(list(range(c.n_layer))) if on for i in g} if rc is not None else ()
    forward = ("g after", "all-gather before", "reduce-scatter after")
    return trainer.accumulation * sum(collective_bytes(op, n, t, w) for where, op, n in step_collectives(
        c.n_layer, b, s, c.n_embd, t, model.layers.sequence_parallel, c.bias)
        if where.split(" ")[0] in again and where.split(" ", 1)[1].startswith(forward))


def scalar_bytes_on_tp(trainer) -> int | None:
    """The step's one-element all-reduces (float64, ring) that run on ``grid.tp``: those of the
    strategy's (``scalar_groups``: the clipping norm's over ``grid.mp``, the mixed-precision
    overflow flag's over the world, under expert parallelism the experts' norm over ``grid.mp``
    too) whose group is ``grid.tp`` (a parameter server's workers take no norm); None under
    LAMB (its per-tensor norms over tp: not modelled)."""
    cfg, grid = trainer.cfg, trainer.grid
    if cfg["optimizer"]["type"].lower() == "lamb":
        return None
    return sum(2 * (g.size - 1) * 8 for g in trainer.strategy.scalar_groups() if g.group == grid.tp.group)


def rank_summary(trainer) -> dict:
    """The report's ``tensor_parallel`` section of one rank: what it measured (activation
    peak, bytes sent on the tp group in the last step) beside the formulas above."""
    cfg, model, grid = trainer.cfg, trainer.model, trainer.grid
    c, t, layers = trainer.model_config, grid.tp_size, model.layers
    sp = layers.sequence_parallel
    whole = trainer.pipeline is None
    lowp = trainer.precision is not None
    w32 = np.dtype(cfg["dtype"]).itemsize
    w = 2 if lowp else w32
    cp = grid.cp_size                     # under context parallelism the tp messages carry s/cp tokens
    b, s = trainer.micro_batch, trainer.dataset.seq_len // cp
    by_op, scalars = tp_bytes_by_op(trainer), scalar_bytes_on_tp(trainer)
    # a pipeline stage between the first and the last builds no token table (its layers know no V)
    vocab_padded = padded_vocab_size(c.vocab_size, t, layers.divisible_by)
    items = model_activation_items(c.n_layer, b, s, c.n_embd, c.n_head, vocab_padded, t, sp, w, w32,
                                   loss_scalars=2 if lowp else 1)
    return {
        "tp": t, "sequence_parallel": sp, "vocab_size": c.vocab_size, "padded_vocab_size": vocab_padded,
        "make_vocab_size_divisible_by": layers.divisible_by,
        "bytes_sent_per_step": sum(by_op.values()), "bytes_sent_per_step_by_op": by_op,
        # the whole model's formulas; under the pipeline a rank holds only its blocks (the
        # report's ``layout`` section compares it with minidist.estimate.grid3d instead)
        # with the scalars on grid.tp and what full recomputation sends again
        "bytes_sent_per_step_expected": step_bytes(c.n_layer, b, s, c.n_embd, t, sp, c.bias, trainer.accumulation, w,
                                                   w32) + scalars + recomputed_bytes(trainer, b, s, w)
        if whole and scalars is not None else None,
        "activations_peak": int(trainer.device.memory.curves()[1]["activations"].max()),
        # the itemised formula holds for dropout 0 (the engine's masks are not the paper's 1 byte)
        "activations_expected": sum(items.values()) if c.dropout == 0 and whole and cp == 1 else None,
        "activation_items": items,
    }
