"""A fine-tuning run: pretrained weights in, the ``peft`` section's method on, then train.

:class:`PeftTrainer` is the :class:`~minidist.training.trainer.Trainer` with two steps added
before the optimizer is built (its ``prepare_model`` and ``build_optimizer`` hooks):

1. the ``pretrained`` weights (name → array of the one-rank model, e.g. a checkpoint read
   with :func:`minidist.checkpoint.read_checkpoint`; DeepSpeed's ``load_module_only``) are
   loaded into the freshly built GPT — full fine-tuning stops here;
2. with a ``peft`` section, :func:`~minidist.peft.get_peft_model` freezes the model and adds
   the method's parameters; in fp16/bf16 the frozen weights are stored in that format
   (2 bytes each, no fp32 master: they never change); a 4-bit base is NF4 whatever the
   precision;
3. the optimizer is built on the trainable parameters only — paged
   (:func:`~minidist.peft.qlora.paged`) with ``paged_optimizer`` — and so is every
   data-parallel strategy's bucket list (:mod:`minidist.parallel.data`): a frozen weight never
   gets a gradient, an optimizer state or a byte of DDP/ZeRO-1/2 traffic. ZeRO-3 still
   partitions it and gathers its shards for each forward and backward (measured).

``python -m minidist.train --config C --load DIR --load-weights-only`` runs it with the
checkpoint's weights whenever ``C`` has a ``peft`` section.
"""
from __future__ import annotations

from .. import optim
from ..precision import precision_from_config
from ..training.trainer import Trainer
from . import count_parameters, frozen_bytes, get_peft_model
from .qlora import paged


class PeftTrainer(Trainer):
    """Fine-tunes from ``pretrained`` (name → array; None: the config's own initialisation)
    with the config's ``peft`` method (None: full fine-tuning)."""

    def __init__(self, config=None, comm=None, device=None, pretrained: dict | None = None):
        self.pretrained = pretrained
        super().__init__(config, comm, device)
        self.strategy.frozen_bytes = self.frozen_bytes   # what the formulas count as parameters (4-bit included)

    def prepare_model(self, model):
        if self.pretrained is not None:
            model.load_state_dict(self.pretrained)
        peft = self.cfg["peft"]
        if peft is not None:
            get_peft_model(model, peft, seed=self.cfg["seed"])
            precision = precision_from_config(self.cfg)
            if precision is not None:   # frozen weights in fp16/bf16: never updated, so no fp32 master
                precision.cast_model([p for p in model.parameters() if not p.requires_grad])
        # counted before a strategy partitions anything (ZeRO-3)
        self.counts, self.frozen_bytes = count_parameters(model), frozen_bytes(model)
        return model

    def build_optimizer(self, params):
        peft, opt = self.cfg["peft"], self.cfg["optimizer"]
        if peft is None or not peft["paged_optimizer"]:
            return super().build_optimizer(params)
        cls, hyper = optim.resolve(opt["type"], opt["params"], deepspeed=True)
        return paged(cls)(params, **hyper)


def pretrained_weights(checkpoint) -> dict:
    """name → array of a checkpoint read by :func:`minidist.checkpoint.read_checkpoint`: its fp32
    masters where it has some, as ``--load-weights-only`` takes them."""
    return {name: u.get("master", u["param"]) for name, u in checkpoint.universal.items()}
