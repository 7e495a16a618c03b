"""Exercise: gradient accumulation — k micro-batches, one optimizer step, same result as one big batch.

Reference: the micro-step loop of ``minidist.training.trainer.Trainer.train_step``
(``loss * (1 / gradient_accumulation_steps)`` backward per micro-batch, one step).
"""
from __future__ import annotations

import numpy as np

from .. import optim
from ..model import GPT, GPTConfig
from ..testing import max_abs_diff
from .grading import Wrong, on_case, plural

NAME = "gradient_accumulation"
TOPIC = "training"
TITLE = "Gradient accumulation equals one big batch"
NOTEBOOK = "03_data_parallel_and_zero"
FUNCTIONS = ("train_step",)
FORBIDDEN = ("minidist.training",)       # the trainer's own micro-step loop

STUB = '''"""Gradient accumulation (DeepSpeed's ``gradient_accumulation_steps``).

A batch too big for memory is cut into k micro-batches; their gradients are ADDED in
``param.grad`` by successive ``backward()`` calls, and the optimizer steps once. Done
right, the step equals one step on the whole batch — the contract minidist's tests check
for every strategy ("the serial model is the reference").

Write ``train_step(model, optimizer, x, y, k)``:

* ``model`` is a minidist GPT: ``logits, loss = model(x_micro, y_micro)`` gives the MEAN
  cross-entropy over that micro-batch's tokens; ``loss.backward()`` adds into p.grad;
* ``optimizer`` is a minidist optimizer (``optimizer.step()``, ``optimizer.zero_grad()``);
* ``x``, ``y`` are integer arrays of shape (B, T); cut them along the batch axis into k
  micro-batches of B // k rows (k divides B);
* return the mean loss of the batch as a float.

The batch loss is the mean over all B·T tokens, so each micro-batch's loss must be
scaled by 1 / k before its backward. Gradients must start from zero and the optimizer
must step exactly once per call. Backward works on a scaled loss: ``(loss * (1.0 / k)).backward()``.
The grader also tries batch sizes, k and optimizers of its own, drawn from the seed it prints.

Not allowed (the grader looks at what your code calls or imports): minidist.training (the
trainer's own loop). Helpers of your own may have any name.
"""


def train_step(model, optimizer, x, y, k):
    raise NotImplementedError
'''

HINTS = [
    "for i in range(k): xm, ym = x[i * b:(i + 1) * b], y[i * b:(i + 1) * b] with b = B // k.",
    "Call optimizer.zero_grad() once — after the step (or before the loop), never inside it.",
    "The batch loss is the mean over micro-batches: total += float(loss.data) / k.",
]


def reference():
    class Reference:
        @staticmethod
        def train_step(model, optimizer, x, y, k):
            return _variant(model, optimizer, x, y, k)
    return Reference


def _variant(model, optimizer, x, y, k, scale=True, zero_inside=False, step_inside=False, drop_last=False):
    """The micro-step loop of Trainer.train_step, with one typical mistake switched on."""
    b = x.shape[0] // k
    total = 0.0
    for i in range(k - 1 if drop_last else k):
        if zero_inside:
            optimizer.zero_grad()
        _, loss = model(x[i * b:(i + 1) * b], y[i * b:(i + 1) * b])         # (b, T) micro-batch
        (loss * (1.0 / k) if scale else loss).backward()
        total += float(loss.data) / k
        if step_inside:
            optimizer.step()
            optimizer.zero_grad()
    if not step_inside:
        optimizer.step()
        optimizer.zero_grad()
    return total


MISTAKES = [
    ({"scale": False}, "you did not scale each micro-batch's loss by 1/k: the gradients add up to k times the "
                       "batch gradient, so the step is k times too large"),
    ({"zero_inside": True}, "you zero the gradients inside the loop: only the last micro-batch's gradient survives "
                            "to the step"),
    ({"step_inside": True}, "you step the optimizer after every micro-batch: that is k small steps, not one step "
                            "on the batch"),
    ({"drop_last": True}, "you run k - 1 micro-batches: the last micro-batch's gradient is missing (range(k), "
                          "micro-batch i is rows i*b .. (i+1)*b - 1)"),
    ({"scale": False, "drop_last": True}, "you run k - 1 micro-batches and do not scale by 1/k"),
]

TOL = 1e-7     # float64 sums in another order: ~1e-9 after two steps; the mistakes are ~1e-2
CFG = GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=8)


def _data(seed, batch):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, CFG.vocab_size, (batch, CFG.block_size))
    return x, np.roll(x, -1, axis=1)


def _train(fn, k, steps, batch, opt_name, **kw):
    model = GPT(CFG, seed=0, dtype=np.float64)
    opt = optim.build(opt_name, model.parameters(), lr=0.3 if opt_name == "sgd" else 1e-2)
    losses = []
    for step in range(steps):
        x, y = _data(step, batch)
        losses.append(fn(model, opt, x, y, k, **kw))
    return {n: p.data.copy() for n, p in model.named_parameters()}, losses


def _run(sol, k, steps, batch, opt_name):
    what = f"{opt_name.upper()}, batch {batch} in k = {plural(k, 'micro-batch', 'micro-batches')} of {batch // k}"
    with on_case(sol, what):
        got, losses = _train(sol.train_step, k, steps, batch, opt_name)
    want, ref_losses = _train(_variant, 1, steps, batch, opt_name)      # one rank, the whole batch at once
    diff = max_abs_diff(got, want)
    if diff > TOL:
        name = max(got, key=lambda n: np.max(np.abs(got[n] - want[n])))
        why = ""
        for kw, text in MISTAKES:
            if max_abs_diff(got, _train(_variant, k, steps, batch, opt_name, **kw)[0]) <= TOL:
                why = f"\nY{text[1:]}."
                break
        raise Wrong(f"{what}, {plural(steps, 'step')}: the parameters differ from one step on the whole batch by up "
                    f"to {diff:.3g} (largest in {name}).{why}")
    for step, (g, w) in enumerate(zip(losses, ref_losses)):
        try:
            g = float(g)
        except (TypeError, ValueError):
            raise Wrong(f"train_step must return the batch loss as a float, got {type(g).__name__}") from None
        if abs(g - w) > 1e-9 * abs(w):
            why = "divide the sum of the micro-batches' losses by k" if abs(g - k * w) < 1e-6 * k * abs(w) \
                else "return the mean of the micro-batches' losses"
            raise Wrong(f"{what}, step {step + 1}: the batch loss is {w:.10g}, you returned {g:.10g} — {why}")


def _check(k, steps, batch, opt_name):
    return lambda sol: _run(sol, k, steps, batch, opt_name)


def held_out(sol, rng):
    """k from 2 to 5, micro-batches of 1 or 2 rows, SGD or Adam, two steps."""
    k = int(rng.integers(2, 6))
    _run(sol, k, 2, k * int(rng.integers(1, 3)), str(rng.choice(["sgd", "adam"])))


CHECKS = [
    ("k = 1 is one ordinary step", _check(1, 1, 4, "sgd")),
    ("SGD: 4 micro-batches of 2 equal one batch of 8", _check(4, 1, 8, "sgd")),
    ("SGD, two steps: gradients start from zero each step", _check(2, 2, 4, "sgd")),
    ("Adam: 3 micro-batches, two steps", _check(3, 2, 6, "adam")),
    ("held out: k, batch size and optimizer of the grader's", held_out),
]
