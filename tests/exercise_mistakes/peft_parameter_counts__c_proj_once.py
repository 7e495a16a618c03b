"""Matches "c_proj" to the attention's projection only."""

EXPECT = ["names both projections"]


def lora_count(n_layer, n_embd, r, target_modules):
    h = n_embd
    shapes = {"c_attn": (h, 3 * h), "c_proj": (h, h), "c_fc": (h, 4 * h), "mlp.c_proj": (4 * h, h),
              "attn.c_proj": (h, h)}
    return n_layer * sum(r * (shapes[t][0] + shapes[t][1]) for t in target_modules)


def adapter_count(n_layer, n_embd, m):
    return n_layer * 2 * (2 * n_embd * m + n_embd + m)


def prefix_count(n_layer, n_embd, p, k=None):
    return 2 * n_layer * p * n_embd if k is None else p * k + k * k + k + (k + 1) * 2 * n_layer * n_embd
