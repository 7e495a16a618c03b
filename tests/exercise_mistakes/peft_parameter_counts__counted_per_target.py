"""Loops over the targets, so a layer two targets match ("c_proj" and "attn.c_proj") is counted twice;
PEFT adapts it once."""
EXPECT = ["once, however many targets match it"]

LAYERS = [("attn.c_attn", 1, 3), ("attn.c_proj", 1, 1), ("mlp.c_fc", 1, 4), ("mlp.c_proj", 4, 1)]


def lora_count(n_layer, n_embd, r, target_modules):
    total = 0
    for t in target_modules:
        for name, a, b in LAYERS:
            if name == t or name.endswith("." + t):
                total += r * (a + b) * n_embd
    return n_layer * total


def adapter_count(n_layer, n_embd, m):
    return n_layer * 2 * (2 * n_embd * m + n_embd + m)


def prefix_count(n_layer, n_embd, p, k=None):
    if k is None:
        return 2 * n_layer * p * n_embd
    out = 2 * n_layer * n_embd
    return p * k + k * k + k + k * out + out
