"""A right answer that adds the layers' shapes one by one."""

EXPECT = []


def _linear(d_in, d_out, bias=True):
    return d_in * d_out + (d_out if bias else 0)


def lora_count(n_layer, n_embd, r, target_modules):
    h = n_embd
    total = 0
    for name, (d_in, d_out) in {"attn.c_attn": (h, 3 * h), "attn.c_proj": (h, h), "mlp.c_fc": (h, 4 * h),
                                "mlp.c_proj": (4 * h, h)}.items():
        short = name.split(".")[1]
        if name in target_modules or short in target_modules:
            total += _linear(d_in, r, False) + _linear(r, d_out, False)
    return total * n_layer


def adapter_count(n_layer, n_embd, m):
    one = _linear(n_embd, m) + _linear(m, n_embd)
    return 2 * one * n_layer


def prefix_count(n_layer, n_embd, p, k=None):
    prefixes = n_layer * (p * n_embd + p * n_embd)                 # keys and values, every layer
    if k is None:
        return prefixes
    return p * k + _linear(k, k) + _linear(k, 2 * n_layer * n_embd)
