"""minidist.peft: parameter-efficient fine-tuning — train a small part, freeze the rest.

A pretrained GPT is fine-tuned by freezing every one of its parameters (``requires_grad``
False: no gradient, no optimizer state, no data-parallel traffic — counted as parameters
only) and adding a few trainable ones (marked ``adapter``), by one of four methods:

=========================  ===================================================================
where                      what a student finds there
=========================  ===================================================================
:mod:`.adapter`            Houlsby adapters: two bottleneck layers per block, after the
                           attention and after the MLP (Houlsby et al. 2019)
:mod:`.prefix`             prefix-tuning (Li & Liang 2021, with its reparameterisation MLP)
                           and P-tuning v2 (Liu et al. 2022): key/value prefixes in every layer
:mod:`.lora`               LoRA (Hu et al. 2021): ``W + (α/r)·A·B`` beside a frozen W, merge
:mod:`.qlora`              QLoRA (Dettmers et al. 2023): LoRA over a 4-bit NF4 base, paged
                           optimizer states in the host pool
:mod:`.costs`              every method's cost as a closed form: trainable parameters, bytes,
                           traffic, FLOPs
:mod:`.trainer`            :class:`PeftTrainer`: a run from pretrained weights with a ``peft``
                           section (``python -m minidist.train --load DIR --load-weights-only``)
=========================  ===================================================================

:func:`get_peft_model` is the one place a model is changed, from a checked ``peft`` section
(:mod:`minidist.training.config_peft`; Hugging Face PEFT's key names)::

    get_peft_model(model, {"peft_type": "LORA", "r": 8, "lora_alpha": 16, ...}, seed=0)
"""
from __future__ import annotations

import numpy as np

from ..defaults import ADAPTER, LORA, PEFT_DEFAULTS, PREFIX_TUNING
from ..memory import nbytes
from ..nn import Module
from ..training.config_peft import check_peft
from .adapter import Adapter, add_adapters
from .costs import lora_matrices
from .lora import LoRALinear, lora_layers, merge_and_unload
from .prefix import KVPrefix, PrefixEncoder, add_prefixes, drop_reparameterization
from .qlora import Linear4bit, paged

PEFT_STREAM = 27          # the draws of the new parameters: default_rng((seed, PEFT_STREAM))
LORA_DROPOUT_SITE = 1_000_000   # dropout sites of LoRA layers: above the model's own


def get_peft_model(model: Module, peft: dict, seed: int = 0) -> Module:
    """Freeze ``model`` and add the trainable parameters of ``peft`` (a ``peft`` section: any
    key left out takes its default), in place; returns ``model``. Every rank that calls it
    with the same ``seed`` draws the same new parameters. ``peft`` is checked as a config's
    section is (:func:`minidist.training.config_peft.check_peft`): a target that names no layer,
    r = 0 or an unknown key is refused by name."""
    if set(peft) != set(PEFT_DEFAULTS):      # a user's section (a run's config holds every key, checked)
        peft = check_peft({"zero_optimization": {"stage": 0}, "parallel": {"context": {"size": 1}},
                           "activation_checkpointing": {"granularity": "none"}}, peft)
    for p in model.parameters():
        p.requires_grad = False
    rng = np.random.default_rng((seed, PEFT_STREAM))
    cfg = model.config
    dtype = model.transformer.h[model.layer_ids[0]].ln_1.weight.dtype
    blocks = [model.transformer.h[i] for i in model.layer_ids]
    kind = peft["peft_type"].upper()
    if kind == LORA:
        targets = {name for name, _, _ in lora_matrices(cfg.n_embd, peft["target_modules"])}
        for i, block in zip(model.layer_ids, blocks):
            for j, name in enumerate(("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")):
                parent, attr = getattr(block, name.split(".")[0]), name.split(".")[1]
                base = getattr(parent, attr)
                if peft["load_in_4bit"]:               # QLoRA: every linear of the blocks in NF4
                    base = Linear4bit(base, peft["bnb_4bit_use_double_quant"])
                if name in targets:
                    dropout = model.layers.dropout(peft["lora_dropout"], LORA_DROPOUT_SITE + 10 * i + j)
                    base = LoRALinear(base, peft["r"], peft["lora_alpha"], dropout, rng)
                setattr(parent, attr, base)
    elif kind == ADAPTER:
        add_adapters(blocks, cfg.n_embd, peft["bottleneck_size"], rng, dtype)
    elif kind == PREFIX_TUNING:
        add_prefixes(model, peft["num_virtual_tokens"], peft["prefix_projection"], peft["encoder_hidden_size"],
                     rng, dtype)
    else:
        raise ValueError(f"peft_type {peft['peft_type']!r} is not built; choose LORA, ADAPTER or PREFIX_TUNING")
    for name, p in model._named_parameters_all(""):
        p.name = name
    return model


def count_parameters(model: Module) -> dict:
    """PEFT's ``print_trainable_parameters`` as numbers: trainable, frozen (a 4-bit weight
    counts its elements) and the trainable share of all."""
    trainable = sum(p.size for p in model.parameters() if p.requires_grad)
    frozen = sum(p.size for p in model.parameters() if not p.requires_grad)
    frozen += sum(int(np.prod(m.shape)) for m in model.modules() if isinstance(m, Linear4bit))
    return {"trainable": trainable, "frozen": frozen, "total": trainable + frozen,
            "share": trainable / (trainable + frozen)}


def frozen_bytes(model: Module) -> int:
    """Bytes of everything that does not train: frozen parameters and 4-bit weights."""
    return (sum(nbytes(p.data, p.dtype_tag) for p in model.parameters() if not p.requires_grad)
            + sum(m.nbytes() for m in model.modules() if isinstance(m, Linear4bit)))


__all__ = ["Adapter", "KVPrefix", "LoRALinear", "Linear4bit", "PrefixEncoder", "count_parameters",
           "drop_reparameterization", "frozen_bytes", "get_peft_model", "lora_layers", "merge_and_unload", "paged"]
