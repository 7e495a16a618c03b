"""Matches a target as any end of a layer's name ("proj" would take both projections); PEFT needs the
whole name or a '.'-suffix."""
EXPECT = ["ends with '.' + target"]

LAYERS = [("attn.c_attn", 1, 3), ("attn.c_proj", 1, 1), ("mlp.c_fc", 1, 4), ("mlp.c_proj", 4, 1)]


def lora_count(n_layer, n_embd, r, target_modules):
    return n_layer * sum(r * (a + b) * n_embd for name, a, b in LAYERS if any(name.endswith(t) for t in target_modules))


def adapter_count(n_layer, n_embd, m):
    return n_layer * 2 * (2 * n_embd * m + n_embd + m)


def prefix_count(n_layer, n_embd, p, k=None):
    if k is None:
        return 2 * n_layer * p * n_embd
    out = 2 * n_layer * n_embd
    return p * k + k * k + k + k * out + out
