"""Gradient accumulation: k micro-batches of b sequences train exactly like one batch of k·b.

The oracle does not use the Trainer's accumulation path: it runs one forward/backward of a
fresh GPT on the k micro-batches concatenated (the same sequences the Trainer draws, by the
documented rule: micro-step m of step s is ``get_batch(b·p, s·k + m, seed)``) and applies
plain SGD, θ ← θ − lr·∇L, written here. The loss of a batch is the mean over its tokens, so
the accumulated micro-batch losses must be averaged (each micro-batch here has the same
number of target tokens), and with p ranks the gradients averaged over ranks too.
"""
import numpy as np
import pytest

from minidist import distributed as dist
from minidist.model import GPT
from minidist.testing import max_abs_diff, train_steps

pytestmark = pytest.mark.engine

LR, STEPS, SEED = 0.5, 3, 0


def config(micro, accumulation, extra=None):
    cfg = {"model": {"n_layer": 2, "n_embd": 8, "n_head": 2, "block_size": 8},
           "data": {"dataset": "copy", "n_digits": 3, "seq_len": 7}, "dtype": "float64", "seed": SEED,
           "train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": accumulation,
           "steps": STEPS, "optimizer": {"type": "SGD", "params": {"lr": LR}}}
    cfg.update(extra or {})
    return cfg


def one_big_batch(trainer, global_micro, accumulation):
    """Parameters and loss after each step of plain SGD on the k micro-batches as one batch."""
    model = GPT(trainer.model_config, seed=SEED, dtype=np.float64)
    params, losses = [], []
    for step in range(STEPS):
        pairs = [trainer.dataset.get_batch(global_micro, step * accumulation + m, SEED) for m in range(accumulation)]
        x = np.concatenate([p[0] for p in pairs])                   # (k·b·p, T)
        y = np.concatenate([p[1] for p in pairs])
        assert len({int((yy >= 0).sum()) for _, yy in pairs}) == 1  # same token count per micro-batch
        _, loss = model(x, y)
        loss.backward()
        for p in model.parameters():
            p.data -= LR * p.grad
            p.grad = None
        params.append({n: p.data.copy() for n, p in model.named_parameters()})
        losses.append(float(loss.data))
    return params, losses


@pytest.mark.parametrize("accumulation", [2, 3])
def test_accumulated_micro_batches_equal_one_large_batch(accumulation):
    run = train_steps(None, config(2, accumulation))
    params, losses = one_big_batch(run["trainer"], 2, accumulation)
    for step in range(STEPS):
        err = max_abs_diff(run["params"][step], params[step])
        assert err < 1e-12, f"accumulation={accumulation}: step {step} differs from one big batch by {err:.3g}"
        assert abs(run["history"][step]["loss"] - losses[step]) < 1e-12
    assert max_abs_diff(params[-1], params[0]) > 1e-3                # training really moved the weights


@pytest.mark.timeout(60)
@pytest.mark.parametrize("strategy", ["ddp", "zero2"])
def test_accumulation_over_ranks_equals_one_large_batch(strategy):
    """2 ranks × 1 sequence × 3 micro-steps = one batch of 6: averaged over micro-steps and ranks."""
    extra = {"zero_optimization": {"stage": 2 if strategy == "zero2" else 0, "reduce_bucket_size": 300}}
    runs = dist.spawn(train_steps, 2, config(1, 3, extra))
    params, losses = one_big_batch(runs[0]["trainer"], 2, 3)
    for rank, run in enumerate(runs):
        for step in range(STEPS):
            err = max_abs_diff(run["params"][step], params[step])
            assert err < 1e-12, f"{strategy}: rank {rank}, step {step} differs from one big batch by {err:.3g}"
    for step in range(STEPS):      # each rank logs the loss of its slice; the job's is their mean
        assert abs(np.mean([run["history"][step]["loss"] for run in runs]) - losses[step]) < 1e-12
