"""minidist's GPT and optimizers against PyTorch, llm.c's way: a committed reference dump.

tests/data/torch_reference.npz was written by tests/make_torch_reference.py with PyTorch
(CPU, float64): a tiny GPT-2's weights, a batch (with ignored targets), the logits, the
loss, every gradient, and the weights and states after two steps of torch.optim's SGD
(momentum, Nesterov, weight decay), Adam (L2 decay) and AdamW. This test needs no torch and
never skips. Where torch is installed, the same checks also run on the script's output
computed live (an extra parametrisation, not a skip when it is absent).
"""
import pathlib

import numpy as np
import pytest

from minidist import optim
from minidist.model import GPT, GPTConfig

try:    # optional: only for the live comparison; the dump needs no torch
    import torch  # noqa: F401
    import make_torch_reference
except ImportError:
    make_torch_reference = None

pytestmark = pytest.mark.engine

DUMP = pathlib.Path(__file__).with_name("data") / "torch_reference.npz"
SOURCES = ["dump"] + (["live"] if make_torch_reference is not None else [])
MINIDIST = {"sgd": optim.SGD, "adam": optim.Adam, "adamw": optim.AdamW}
STATES = {"sgd": ["momentum_buffer"], "adam": ["exp_avg", "exp_avg_sq"], "adamw": ["exp_avg", "exp_avg_sq"]}


def load(source: str) -> dict:
    if source == "live":
        return make_torch_reference.reference()
    with np.load(DUMP) as f:                      # plain arrays only: no pickle
        return {k: f[k] for k in f.files}


def unflatten(ref: dict, flat: np.ndarray) -> dict:
    """name → array from a flat vector holding every parameter end to end."""
    out, start = {}, 0
    for name, (rows, cols) in zip(ref["names"], ref["shapes"]):
        shape = (int(rows), int(cols)) if cols else (int(rows),)
        n = int(np.prod(shape))
        out[str(name)] = flat[start:start + n].reshape(shape)
        start += n
    assert start == flat.size
    return out


def model_from(ref: dict) -> GPT:
    cfg = GPTConfig(**{k.split("/")[1]: int(v) for k, v in ref.items() if k.startswith("config/")})
    model = GPT(cfg, seed=0, dtype=np.float64)
    model.load_state_dict(unflatten(ref, ref["weight"]))         # strict: every name must match
    return model


@pytest.fixture(scope="module", params=SOURCES)
def ref(request):
    return load(request.param)


def test_dump_is_small_and_complete():
    assert DUMP.stat().st_size < 200 * 1024
    ref = load("dump")
    model = GPT(GPTConfig(**{k.split("/")[1]: int(v) for k, v in ref.items() if k.startswith("config/")}))
    assert [str(n) for n in ref["names"]] == [n for n, _ in model.named_parameters()]
    assert (ref["targets"] == -1).any()                          # ignore_index is exercised


def test_logits_loss_and_every_gradient(ref):
    model = model_from(ref)
    logits, loss = model(ref["idx"], ref["targets"])
    loss.backward()
    np.testing.assert_allclose(logits.data, ref["logits"], rtol=1e-11, atol=1e-13)
    assert abs(float(loss.data) - float(ref["loss"])) < 1e-12
    grads = unflatten(ref, ref["grad"])
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, grads[name], rtol=1e-9, atol=1e-13, err_msg=name)
        assert np.abs(grads[name]).max() > 0 or name.endswith("c_attn.bias")


@pytest.mark.parametrize("opt_name", list(MINIDIST))
def test_two_optimizer_steps(ref, opt_name):
    model = model_from(ref)
    hyper = {k.split("/")[2]: v.tolist() for k, v in ref.items() if k.startswith(f"{opt_name}/hyper/")}
    opt = optim.build(opt_name, model.parameters(), **hyper)
    for _ in range(2):
        opt.zero_grad()
        model(ref["idx"], ref["targets"])[1].backward()
        opt.step()
    want = unflatten(ref, ref[f"{opt_name}/weight"])
    start, grads = unflatten(ref, ref["weight"]), unflatten(ref, ref["grad"])
    for name, p in model.named_parameters():
        # The key third of c_attn.bias has a gradient of exactly 0 in exact arithmetic (a
        # constant added to every key shifts all of a query's scores: softmax ignores it), so
        # both frameworks hold rounding noise (< 1e-16; 8e-19 here) that Adam divides by
        # |noise| + ε: a step of up to lr·1e-16/ε each, which is the tolerance there.
        noise = np.abs(grads[name]) < 1e-16
        atol = np.where(noise, 2 * hyper["lr"] * 1e-16 / hyper.get("eps", 1.0), 1e-13)
        np.testing.assert_array_less(np.abs(p.data - want[name]), atol + 1e-10 * np.abs(want[name]),
                                     err_msg=f"{opt_name} {name}")
        for state in STATES[opt_name]:
            np.testing.assert_allclose(opt.state[id(p)][state], unflatten(ref, ref[f"{opt_name}/{state}"])[name],
                                       rtol=1e-9, atol=1e-15, err_msg=f"{opt_name} {state} {name}")
    moved = max(float(np.abs(want[n] - start[n]).max()) for n in want)
    assert moved > 1e-3                                          # two real steps, not idle weights
