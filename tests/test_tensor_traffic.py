"""Tensor-parallel traffic counted from the message log, and activation bytes per rank
against Korthikanti et al. 2022 mapped onto the engine's inventory (formulas written here)."""
import copy

import numpy as np
import pytest

from minidist import distributed as dist
from minidist.estimate.activations import layer_activation_terms
from minidist.parallel.tensor import accounting
from minidist.testing import train_steps

pytestmark = [pytest.mark.tensor, pytest.mark.timeout(60)]

L, B, S, H, A = 2, 2, 8, 16, 4          # layers, micro-batch, sequence, hidden, heads
CFG = {"model": {"n_layer": L, "n_embd": H, "n_head": A, "block_size": S},
       "data": {"dataset": "english", "seq_len": S}, "steps": 1, "dtype": "float64",
       "train_micro_batch_size_per_gpu": B, "eval_iters": 1}
W = 8                                   # float64 activations and messages


def run(tp, sp, dp=1, **extra):
    cfg = copy.deepcopy(CFG)
    cfg["parallel"] = {"tensor": tp, "sequence_parallel": sp}
    cfg.update(extra)
    return dist.spawn(train_steps, tp * dp, cfg) if tp * dp > 1 else [train_steps(cfg)]


def tp_collectives(result):
    """(op, bytes sent) of every collective this rank ran on its tensor-parallel group."""
    tr = result["trainer"]
    return [(c.op, c.bytes_sent) for c in tr.comm.log.collectives if c.group == tr.grid.tp.group]


@pytest.mark.parametrize("tp,dp", [(2, 1), (4, 1), (2, 2)])
def test_tp_traffic_two_all_reduces_forward_two_backward_per_layer(tp, dp):
    runs = run(tp, False, dp)
    bsh, bs = B * S * H, B * S
    ar = lambda n: 2 * (tp - 1) * -(-n // tp) * W                  # ring all-reduce, bytes sent per rank
    for r in runs:
        got = sorted(tp_collectives(r))
        # per layer g after attention and after the MLP (forward), f before c_attn and c_fc
        # (backward); the embedding's g and the LM head's f; max, target logit, sum-exp of the loss
        want = sorted([("all_reduce", ar(bsh))] * (4 * L + 2) + [("all_reduce", ar(bs))] * 3)
        assert got == want
        assert sum(b for _, b in got) == accounting.step_bytes(L, B, S, H, tp, w=W)
        assert r["history"][0]["bytes_sent"] >= sum(b for _, b in got)   # plus the DP gradients when dp > 1


@pytest.mark.parametrize("tp", [2, 4])
def test_sp_replaces_each_all_reduce_by_all_gather_plus_reduce_scatter(tp):
    sp_run, tp_run = run(tp, True), run(tp, False)
    bsh, bs, c = B * S * H, B * S, B * S * H // tp
    ag = rs = (tp - 1) * c * W                                       # ring all-gather / reduce-scatter of bsh
    ar = lambda n: 2 * (tp - 1) * -(-n // tp) * W
    got = sorted(tp_collectives(sp_run[0]))
    n_params = 6 * L + 2                                             # LayerNorm w, b and row biases (SP grads)
    want = sorted([("all_gather", ag)] * (6 * L + 3) + [("reduce_scatter", rs)] * (4 * L + 1)
                  + [("all_reduce", ar(bsh))] + [("all_reduce", ar(H))] * n_params + [("all_reduce", ar(bs))] * 3)
    assert got == want
    assert sum(b for _, b in got) == accounting.step_bytes(L, B, S, H, tp, sp=True, w=W)
    # per layer, the 4 all-reduces of TP = 4 all-gathers + 4 reduce-scatters of SP, byte for byte;
    # SP adds 2 all-gathers (the column-parallel inputs, gathered again for dW: Korthikanti §4.2.2)
    assert 4 * ar(bsh) == 4 * ag + 4 * rs
    tp_layer_bytes = sum(b for op, b in tp_collectives(tp_run[0]) if b == ar(bsh)) - 2 * ar(bsh)
    assert tp_layer_bytes == L * 4 * ar(bsh)
    # the full (b, s, V) logits never travel: no tp collective sends more than a ring all-reduce
    # of b·s·h elements, less than all-gathering the logits would, (t−1)/t·b·s·V elements
    V = sp_run[0]["trainer"].model_config.vocab_size
    assert max(b for _, b in got) <= ar(bsh) < (tp - 1) * B * S * V // tp * W


def korthikanti(tp, sp):
    """Per-layer bytes of the paper (16-bit, 1-byte dropout masks)."""
    sbh, asb = S * B * H, A * S / H
    if not sp:
        return sbh * (34 + 5 * asb) if tp == 1 else sbh * (10 + 24 / tp + 5 * asb / tp)
    return sbh / tp * (34 + 5 * asb)


@pytest.mark.parametrize("tp,sp", [(1, False), (2, False), (4, False), (2, True), (4, True)])
def test_activation_peak_follows_korthikanti_mapped_onto_the_engine(tp, sp):
    r = run(tp, sp)[0]
    measured = int(r["trainer"].device.memory.curves()[1]["activations"].max())
    sbh, t = S * B * H, tp
    # the engine (float64, no dropout): drop the paper's masks (sbh, sbh replicated by TP; as²b)
    # and the attention dropout output (2as²b); 2 bytes → W bytes
    masks = 2 * sbh / (t if sp else 1) + A * S * S * B / t
    dropout_out = 2 * A * S * S * B / t
    per_layer = W / 2 * (korthikanti(tp, sp) - masks - dropout_out)
    closed = {(False): W * sbh * (4 + 12 / t + A * S / (H * t)), (True): W * sbh / t * (16 + A * S / H)}
    if tp == 1:
        assert per_layer == W * sbh * (16 + A * S / H)
    else:
        assert per_layer == closed[sp]
    stats = 2 * W * S * B / (t if sp else 1)                      # LayerNorm 1/σ per token, itemised
    # the estimator's term-by-term version agrees (its softmax dropout output removed)
    est = layer_activation_terms(S, B, H, A, t, sp, precision_bytes=W, mask_bytes=0)
    assert sum(est.values()) - est["softmax dropout output"] == per_layer
    Vp = r["trainer"].model.layers.padded_vocab_size if tp > 1 else r["trainer"].model_config.vocab_size
    outside = (8 * (B * S + S)                                     # int64 ids of wte and wpe
               + W * (sbh + S * B) / (t if sp else 1)             # ln_f x̂ and 1/σ
               + W * sbh / (t if sp else 1)                        # LM head input
               + W * B * S * Vp / t                                # softmax of my V/t columns
               + W)                                                # the loss × 1/k scalar
    assert measured == L * (per_layer + stats) + outside
    assert measured == sum(accounting.model_activation_items(L, B, S, H, A, Vp, t, sp, w=W).values())


@pytest.mark.parametrize("fmt,sp", [("fp16", False), ("bf16", True)])
def test_mixed_precision_under_tp_x_dp(fmt, sp):
    cfg = {fmt: {"enabled": True}, "dtype": "float32", "steps": 3, "zero_optimization": {"stage": 1}}
    ref_cfg = {**copy.deepcopy(CFG), **cfg, "train_micro_batch_size_per_gpu": 2 * B}
    ref = train_steps(ref_cfg)
    runs = run(2, sp, dp=2, **cfg)
    for step in range(3):
        loss = np.mean([runs[d * 2]["history"][step]["loss"] for d in range(2)])
        assert abs(loss - ref["history"][step]["loss"]) < 0.05
        assert len({r["history"][step]["skipped"] for r in runs}) == 1      # every rank skips alike
    # activations travel in the 16-bit format (2 bytes), the loss statistics in fp32
    got = sum(b for _, b in tp_collectives(runs[0]))
    assert got == 3 * accounting.step_bytes(L, B, S, H, 2, sp=sp, w=2, w32=4)
