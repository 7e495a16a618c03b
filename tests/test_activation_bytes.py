"""The bytes a forward pass of the GPT keeps for backward, in absolute terms.

Korthikanti et al. 2022 (§4, "Reducing Activation Recomputation in Large Transformer
Models") list what one Transformer layer stores: s sequence, b micro-batch, h hidden, a
heads, 2-byte activations, 1-byte dropout masks. The inventory is written out below tensor
by tensor, with minidist's widths: the activation width w (4 bytes in float32, 2 under fp16
autocast), LayerNorm on torch.autocast's fp32 list (its saved x̂ is 4 bytes either way), and
the small per-token statistics the paper leaves out itemised (LayerNorm's 1/σ, fp32, one
per token). The measured bytes are the device's "activations" after forward: per layer as
the difference between 2 and 1 layers, and the whole forward with the embedding and head.
"""
import numpy as np
import pytest

from minidist.device import Device
from minidist.estimate.activations import layer_activation_bytes
from minidist.model import GPT, GPTConfig
from minidist.precision import Precision, autocast

pytestmark = pytest.mark.memory

S, B, H, A, V = 16, 3, 8, 2, 11
WIDTH = {None: 4, "fp16": 2}
INT64 = 8


def layer_inventory(w: int, ln_w: int, dropout: bool, attention_dropout: bool | None = None) -> dict:
    """Bytes one layer saves: Korthikanti's list with activation width ``w``, LayerNorm width
    ``ln_w``, 1-byte masks; plus the per-token statistics (fp32)."""
    sbh, as2b, sb = S * B * H, A * S * S * B, S * B
    attention_dropout = dropout if attention_dropout is None else attention_dropout
    inv = {
        "ln_1 input (x̂ saved: same size)": ln_w * sbh,
        "QKV projection input": w * sbh,
        "Q and K (for QKᵀ), V (for PV)": 3 * w * sbh,
        "softmax output": w * as2b,
        "attention output projection input": w * sbh,
        "ln_2 input (x̂)": ln_w * sbh,
        "MLP first linear input": w * sbh,
        "GeLU input": 4 * w * sbh,
        "GeLU output (second linear input)": 4 * w * sbh,
    }
    if dropout:
        inv["attention output dropout mask"] = sbh
        inv["MLP output dropout mask"] = sbh
    if attention_dropout:
        inv["softmax dropout mask"] = as2b
        inv["softmax dropout output (for PV)"] = w * as2b
    inv["per-token: ln_1 and ln_2 1/σ (fp32)"] = 2 * 4 * sb
    return inv


def outside_layers(w: int, dropout: bool) -> dict:
    """Embedding and head: ids, the final LayerNorm, the LM head's input, the loss's softmax."""
    sbh, sb = S * B * H, S * B
    inv = {"token ids": INT64 * sb, "position ids": INT64 * S,
           "ln_f input (x̂, fp32)": 4 * sbh, "per-token: ln_f 1/σ (fp32)": 4 * sb,
           "LM head input": w * sbh, "cross-entropy softmax (fp32, b·s·V)": 4 * sb * V}
    if dropout:
        inv["embedding dropout mask"] = sbh
    return inv


def saved_bytes(n_layer: int, fmt, dropout: float, attention_dropout: bool = True) -> int:
    dev = Device("A100-80GB-NVLink")
    with dev:
        model = GPT(GPTConfig(block_size=S, vocab_size=V, n_layer=n_layer, n_head=A, n_embd=H, dropout=dropout))
        if fmt is not None:
            Precision(fmt).cast_model(model.parameters())          # fp16 weights, as in training
        if not attention_dropout:
            for block in model.transformer.h:
                block.attn.attn_dropout.p = 0.0
        model.set_dropout_key(0, 0)
        idx = np.arange(S * B).reshape(B, S) % V
        with autocast(fmt):
            model(idx, idx)
    return dev.memory.current["activations"]


def test_the_inventory_is_korthikantis():
    """At the paper's widths (2-byte activations, LayerNorm too) the list above, without the
    per-token statistics, sums to sbh(34 + 5as/h), as minidist.estimate computes it."""
    inv = layer_inventory(2, 2, dropout=True)
    del inv["per-token: ln_1 and ln_2 1/σ (fp32)"]
    assert sum(inv.values()) == S * B * H * (34 + 5 * A * S / H) == layer_activation_bytes(S, B, H, A)


@pytest.mark.parametrize("fmt", [None, "fp16"])
def test_bytes_per_layer_without_dropout(fmt):
    per_layer = saved_bytes(2, fmt, 0.0) - saved_bytes(1, fmt, 0.0)
    assert per_layer == sum(layer_inventory(WIDTH[fmt], 4, dropout=False).values())


@pytest.mark.parametrize("fmt", [None, "fp16"])
def test_bytes_of_the_whole_forward(fmt):
    want = 2 * sum(layer_inventory(WIDTH[fmt], 4, dropout=False).values()) + \
        sum(outside_layers(WIDTH[fmt], dropout=False).values())
    assert saved_bytes(2, fmt, 0.0) == want


@pytest.mark.parametrize("fmt", [None, "fp16"])
def test_dropout_masks_are_one_byte_per_element(fmt):
    """The embedding, attention-output and MLP-output masks (attention-probability dropout
    switched off here: see the next test)."""
    sbh = S * B * H
    for n_layer in (1, 2):
        extra = saved_bytes(n_layer, fmt, 0.1, attention_dropout=False) - saved_bytes(n_layer, fmt, 0.0)
        assert extra == sbh + n_layer * 2 * sbh


@pytest.mark.parametrize("fmt", [None, "fp16"])
def test_bytes_per_layer_with_dropout(fmt):
    per_layer = saved_bytes(2, fmt, 0.1) - saved_bytes(1, fmt, 0.1)
    assert per_layer == sum(layer_inventory(WIDTH[fmt], 4, dropout=True).values())
