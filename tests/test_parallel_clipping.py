"""Gradient clipping under tensor and pipeline parallelism clips by the norm of the whole model
(Megatron-LM's ``clip_grad_norm_fp32``): each rank sums the squares of the gradients it owns
uniquely (tp shards fully, replicated parameters on tp rank 0 only, the tied embedding once),
the sums are all-reduced over ``grid.mp`` (and, under ZeRO, over the data-parallel shards).

In float64 every layout equals one rank within 1e-12 with the clip active, and the extra
traffic is exactly one all-reduce of one float64 element per group, read from the log."""
from collections import Counter

import pytest

from minidist import distributed as dist
from minidist.testing import max_abs_diff, train_steps

pytestmark = [pytest.mark.tensor, pytest.mark.pipeline, pytest.mark.timeout(60)]

CLIP = 0.05
GLOBAL_MICRO = 4          # sequences per micro-batch over the whole data-parallel group


def config(parallel=None, dp=1, clip=CLIP, m=2, extra=None):
    cfg = {"model": {"n_layer": 4, "n_embd": 8, "n_head": 2, "block_size": 8},
           "data": {"dataset": "english", "seq_len": 8}, "dtype": "float64", "steps": 3,
           "train_micro_batch_size_per_gpu": GLOBAL_MICRO // dp, "gradient_accumulation_steps": m,
           "optimizer": {"type": "SGD", "params": {"lr": 0.5}}, "gradient_clipping": clip,
           "parallel": dict(parallel or {})}
    cfg.update(extra or {})
    return cfg


_REFERENCE = {}


def reference(clip):
    if clip not in _REFERENCE:
        _REFERENCE[clip] = train_steps(None, config(clip=clip))
    return _REFERENCE[clip]


ZERO1 = {"zero_optimization": {"stage": 1}}
LAYOUTS = {   # id: (ranks, parallel section, dp, extra config)
    "pp2": (2, {"pipeline": 2}, 1, None),
    "pp4_zb_h1": (4, {"pipeline": 4, "schedule": "zb_h1"}, 1, {"gradient_accumulation_steps": 4}),
    "tp2": (2, {"tensor": 2}, 1, None),
    "tp2+sp": (2, {"tensor": 2, "sequence_parallel": True}, 1, None),
    "tp2xdp2_zero1": (4, {"tensor": 2}, 2, ZERO1),
    "pp2xdp2_zero1": (4, {"pipeline": 2}, 2, ZERO1),
}


def collectives(run) -> Counter:
    """(op, group, bytes sent) of every collective of the last step on this rank."""
    return Counter((c.op, c.group, c.bytes_sent) for c in run["trainer"].step_log.collectives)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_clipping_equals_one_rank_and_costs_one_scalar_per_group(layout):
    n, par, dp, extra = LAYOUTS[layout]
    m = (extra or {}).get("gradient_accumulation_steps", 2)
    ref = train_steps(None, config(clip=CLIP, m=m)) if m != 2 else reference(CLIP)
    unclipped = train_steps(None, config(clip=0.0, m=m)) if m != 2 else reference(0.0)
    clipped = dist.spawn(train_steps, n, config(par, dp, extra=extra))
    free = dist.spawn(train_steps, n, config(par, dp, clip=0.0, extra=extra))
    for step in range(3):
        for run in clipped:                               # every rank: the whole model, gathered
            assert max_abs_diff(run["params"][step], ref["params"][step]) <= 1e-12, (layout, step)
    # the clip is active: without it the one-rank model ends elsewhere
    assert max_abs_diff(ref["params"][-1], unclipped["params"][-1]) > 1e-4
    for run, base in zip(clipped, free):
        tr = run["trainer"]
        extra_calls = collectives(run) - collectives(base)
        want = Counter({("all_reduce", tr.grid.mp.group, 2 * (tr.grid.mp.size - 1) * 8): 1})
        if extra and tr.dp_size > 1:                      # ZeRO: the shards' sums over grid.dp too
            want[("all_reduce", tr.grid.dp.group, 2 * (tr.dp_size - 1) * 8)] += 1
        assert extra_calls == want, (layout, extra_calls)
        assert collectives(base) - collectives(run) == Counter()


def test_duplicates_are_counted_once():
    """What each rank leaves out of the norm: replicated parameters on tp rank 1, the last
    stage's copy of the tied embedding."""
    tp = dist.spawn(lambda comm: train_steps(comm, config({"tensor": 2}), steps=1)["trainer"], 2)
    skipped = [{n for n, p in t.model.named_parameters() if id(p) in t.strategy.norm_skip} for t in tp]
    assert skipped[0] == set()
    assert skipped[1] and all(n.endswith(("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias", "ln_f.weight",
                                          "ln_f.bias", "c_proj.bias", "wpe.weight")) for n in skipped[1])
    assert "transformer.wpe.weight" in skipped[1] and "transformer.h.0.attn.c_proj.bias" in skipped[1]
    pp = dist.spawn(lambda comm: train_steps(comm, config({"pipeline": 2}), steps=1)["trainer"], 2)
    assert [{n for n, p in t.model.named_parameters() if id(p) in t.strategy.norm_skip} for t in pp] == \
        [set(), {"transformer.wte.weight"}]


@pytest.mark.parametrize("fmt,parallel,extra", [
    ("fp16", {"tensor": 2}, None),
    ("bf16", {"pipeline": 2}, {"zero_optimization": {"stage": 2}}),
], ids=["fp16_tp2", "bf16_pp2xdp2_zero2"])
def test_mixed_precision_clips_the_unscaled_norm_of_the_whole_model(fmt, parallel, extra):
    """fp16/bf16: the norm of the unscaled gradients over every rank; the run follows one
    rank's clipped fp16/bf16 run (to the format's rounding), not the unclipped one."""
    mp = {"dtype": "float32", fmt: {"enabled": True, **({"initial_scale_power": 8} if fmt == "fp16" else {})}}
    dp = 2 if extra else 1
    n = 2 * dp
    one = train_steps(None, config(extra=mp))
    free = train_steps(None, config(clip=0.0, extra=mp))
    runs = dist.spawn(train_steps, n, config(parallel, dp, extra={**mp, **(extra or {})}))
    near, far = max_abs_diff(runs[0]["params"][-1], one["params"][-1]), \
        max_abs_diff(runs[0]["params"][-1], free["params"][-1])
    assert near < 0.1 * far, (near, far)
