"""Regenerate tests/data/torch_reference.npz: a tiny GPT-2 and its optimizers run by PyTorch.

llm.c's way of checking a model against PyTorch without making PyTorch a dependency: this
script (which needs ``torch``, CPU is enough) writes the weights, a batch, the logits, the
loss, every gradient, and the weights and optimizer states after two steps of
``torch.optim.SGD`` (momentum, Nesterov, weight decay), ``Adam`` (L2 decay) and ``AdamW``,
all in float64. tests/test_torch_reference.py compares minidist with the file on every run,
and also with this script's output directly when torch happens to be installed.

    python tests/make_torch_reference.py        # rewrites tests/data/torch_reference.npz

It imports nothing from minidist: the forward pass below is GPT-2 written directly in torch
ops, from the weights by their nanoGPT names, linear weights stored (in, out) as minidist's.
(PyTorch has no LAMB; tests/test_optim_oracle.py checks it against You et al. 2020.)
"""
from __future__ import annotations

import math
import pathlib

import numpy as np
import torch
import torch.nn.functional as F

OUT = pathlib.Path(__file__).with_name("data") / "torch_reference.npz"
CONFIG = {"block_size": 8, "vocab_size": 11, "n_layer": 2, "n_head": 2, "n_embd": 8}
BATCH, SEED, STEPS = 2, 1234, 2
OPTIMIZERS = {
    "sgd": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    "adam": (torch.optim.Adam, {"lr": 1e-2, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.1}),
    "adamw": (torch.optim.AdamW, {"lr": 1e-2, "betas": (0.8, 0.999), "eps": 1e-8, "weight_decay": 0.1}),
}
STATE_NAMES = {"sgd": ["momentum_buffer"], "adam": ["exp_avg", "exp_avg_sq"], "adamw": ["exp_avg", "exp_avg_sq"]}


def init_weights(cfg: dict, rng: np.random.Generator) -> dict:
    """GPT-2's shapes with random values everywhere (biases and LayerNorm gains too, so that
    their gradients are exercised): name → float64 array, linear weights (in, out)."""
    C, L = cfg["n_embd"], cfg["n_layer"]
    w = {"transformer.wte.weight": rng.normal(0, 0.02 * 10, (cfg["vocab_size"], C)),
         "transformer.wpe.weight": rng.normal(0, 0.02 * 10, (cfg["block_size"], C))}
    shapes = {"ln_1": None, "attn.c_attn": (C, 3 * C), "attn.c_proj": (C, C), "ln_2": None,
              "mlp.c_fc": (C, 4 * C), "mlp.c_proj": (4 * C, C)}
    for i in range(L):
        for name, shape in shapes.items():
            p = f"transformer.h.{i}.{name}"
            if shape is None:                                  # LayerNorm gain and bias
                w[p + ".weight"] = 1.0 + rng.normal(0, 0.1, C)
                w[p + ".bias"] = rng.normal(0, 0.1, C)
            else:
                w[p + ".weight"] = rng.normal(0, 0.3 / math.sqrt(shape[0]), shape)
                w[p + ".bias"] = rng.normal(0, 0.05, shape[1])
    w["transformer.ln_f.weight"] = 1.0 + rng.normal(0, 0.1, C)
    w["transformer.ln_f.bias"] = rng.normal(0, 0.1, C)
    return w


def gpt_forward(W: dict, cfg: dict, idx: torch.Tensor, targets: torch.Tensor):
    """GPT-2 (pre-LayerNorm, tanh GELU, tied head) in torch ops: (logits, mean loss over
    targets != -1)."""
    B, T = idx.shape
    C, H = cfg["n_embd"], cfg["n_head"]
    x = W["transformer.wte.weight"][idx] + W["transformer.wpe.weight"][:T]
    for i in range(cfg["n_layer"]):
        p = f"transformer.h.{i}."
        h = F.layer_norm(x, (C,), W[p + "ln_1.weight"], W[p + "ln_1.bias"], 1e-5)
        q, k, v = (h @ W[p + "attn.c_attn.weight"] + W[p + "attn.c_attn.bias"]).split(C, dim=2)
        q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))     # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + y @ W[p + "attn.c_proj.weight"] + W[p + "attn.c_proj.bias"]
        h = F.layer_norm(x, (C,), W[p + "ln_2.weight"], W[p + "ln_2.bias"], 1e-5)
        h = F.gelu(h @ W[p + "mlp.c_fc.weight"] + W[p + "mlp.c_fc.bias"], approximate="tanh")
        x = x + h @ W[p + "mlp.c_proj.weight"] + W[p + "mlp.c_proj.bias"]
    x = F.layer_norm(x, (C,), W["transformer.ln_f.weight"], W["transformer.ln_f.bias"], 1e-5)
    logits = x @ W["transformer.wte.weight"].T                                     # (B, T, V)
    loss = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(-1), ignore_index=-1)
    return logits, loss


def reference() -> dict:
    """Everything the test compares, as key → NumPy array. Per-parameter quantities are
    stored flat, all parameters end to end in the order of ``names`` (shapes in ``shapes``,
    ``(rows, cols)``, cols = 0 for a vector): one archive entry each keeps the file small."""
    rng = np.random.default_rng(SEED)
    cfg = CONFIG
    weights = init_weights(cfg, rng)
    idx = rng.integers(0, cfg["vocab_size"], (BATCH, cfg["block_size"]))
    targets = rng.integers(0, cfg["vocab_size"], (BATCH, cfg["block_size"]))
    targets[:, :2] = -1                                      # ignored positions, as a task's prompt
    flat = lambda arrays: np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])  # noqa: E731
    out = {"config/" + k: np.array(v) for k, v in cfg.items()}
    out["names"] = np.array(list(weights))
    out["shapes"] = np.array([w.shape if w.ndim == 2 else (w.shape[0], 0) for w in weights.values()])
    out.update({"idx": idx, "targets": targets, "weight": flat(weights.values())})
    W = {n: torch.tensor(w, requires_grad=True) for n, w in weights.items()}
    logits, loss = gpt_forward(W, cfg, torch.tensor(idx), torch.tensor(targets))
    loss.backward()
    out["logits"], out["loss"] = logits.detach().numpy(), loss.detach().numpy()
    out["grad"] = flat(t.grad for t in W.values())
    for opt_name, (cls, hyper) in OPTIMIZERS.items():
        out.update({f"{opt_name}/hyper/{k}": np.array(v) for k, v in hyper.items()})   # torch's names
        W = {n: torch.tensor(w, requires_grad=True) for n, w in weights.items()}
        opt = cls(list(W.values()), **hyper)
        for _ in range(STEPS):                               # forward, backward, step; twice
            opt.zero_grad()
            gpt_forward(W, cfg, torch.tensor(idx), torch.tensor(targets))[1].backward()
            opt.step()
        out[f"{opt_name}/weight"] = flat(t.detach() for t in W.values())
        for state in STATE_NAMES[opt_name]:
            out[f"{opt_name}/{state}"] = flat(opt.state[t][state] for t in W.values())
    return out


if __name__ == "__main__":
    OUT.parent.mkdir(exist_ok=True)
    np.savez_compressed(OUT, **reference())
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KB) with torch {torch.__version__}")
