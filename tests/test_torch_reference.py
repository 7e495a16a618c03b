"""Logits, loss and every gradient of the GPT against a PyTorch CPU reference (skipped without torch)."""
import numpy as np
import pytest

from minidist.model import GPT, GPTConfig

torch = pytest.importorskip("torch")
F = torch.nn.functional
pytestmark = pytest.mark.engine


def torch_gpt_loss(sd, cfg, idx, tgt):
    """GPT-2 forward written directly in torch ops from minidist's state dict (weights (in, out))."""
    W = {k: torch.tensor(v, requires_grad=True) for k, v in sd.items()}
    B, T = idx.shape
    C, H = cfg.n_embd, cfg.n_head
    x = W["transformer.wte.weight"][torch.tensor(idx)] + W["transformer.wpe.weight"][:T]
    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}."
        h = F.layer_norm(x, (C,), W[p + "ln_1.weight"], W[p + "ln_1.bias"], 1e-5)
        q, k, v = (h @ W[p + "attn.c_attn.weight"] + W[p + "attn.c_attn.bias"]).split(C, dim=2)
        q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + y @ W[p + "attn.c_proj.weight"] + W[p + "attn.c_proj.bias"]
        h = F.layer_norm(x, (C,), W[p + "ln_2.weight"], W[p + "ln_2.bias"], 1e-5)
        h = F.gelu(h @ W[p + "mlp.c_fc.weight"] + W[p + "mlp.c_fc.bias"], approximate="tanh")
        x = x + h @ W[p + "mlp.c_proj.weight"] + W[p + "mlp.c_proj.bias"]
    x = F.layer_norm(x, (C,), W["transformer.ln_f.weight"], W["transformer.ln_f.bias"], 1e-5)
    logits = x @ W["transformer.wte.weight"].T
    loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), torch.tensor(tgt).view(-1))
    return W, logits, loss


def test_gpt_matches_pytorch_in_float64():
    cfg = GPTConfig(block_size=16, vocab_size=13, n_layer=2, n_head=4, n_embd=16)
    model = GPT(cfg, seed=5, dtype=np.float64)
    rng = np.random.default_rng(0)
    idx, tgt = rng.integers(0, 13, (3, 16)), rng.integers(0, 13, (3, 16))
    logits, loss = model(idx, tgt)
    loss.backward()
    W, t_logits, t_loss = torch_gpt_loss(model.state_dict(), cfg, idx, tgt)
    t_loss.backward()
    np.testing.assert_allclose(logits.data, t_logits.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert abs(loss.item() - t_loss.item()) < 1e-12
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, W[name].grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)
