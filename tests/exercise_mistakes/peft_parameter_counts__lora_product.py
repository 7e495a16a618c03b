"""Counts r·d_in·d_out per adapted matrix."""

EXPECT = ["lora_count", "r·(d_in + d_out)"]


def lora_count(n_layer, n_embd, r, target_modules):
    h = n_embd
    shapes = {"attn.c_attn": (h, 3 * h), "attn.c_proj": (h, h), "mlp.c_fc": (h, 4 * h), "mlp.c_proj": (4 * h, h)}
    picked = [n for n in shapes if any(n == t or n.endswith("." + t) for t in target_modules)]
    return n_layer * sum(r * shapes[n][0] * shapes[n][1] for n in picked)


def adapter_count(n_layer, n_embd, m):
    return n_layer * 2 * (2 * n_embd * m + n_embd + m)


def prefix_count(n_layer, n_embd, p, k=None):
    return 2 * n_layer * p * n_embd if k is None else p * k + k * k + k + (k + 1) * 2 * n_layer * n_embd
