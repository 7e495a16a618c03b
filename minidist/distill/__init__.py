"""minidist.distill: knowledge distillation, from the loss to teacher ranks streaming logits.

=====================  ==========================================================
module                 what a student finds there
=====================  ==========================================================
:mod:`.losses`         ``kd_loss`` (Hinton et al. 2015), ``pkd_loss`` (Sun et al. 2019),
                       top-K soft targets; each a fused op, backward beside forward
:mod:`.teacher`        the frozen teacher: no gradients, no optimizer state,
                       parameters only in the memory accounting (16-bit in fp16/bf16 runs)
:mod:`.streaming`      teacher ranks → student ranks: who serves whom, what is sent,
                       how many bytes (full logits or top-K)
:mod:`.student`        the student: the ordinary Trainer with the KD loss, in every layout
                       (data parallel, ZeRO-1/2/3, tensor and sequence parallel, pipeline)
:mod:`.resume`         ``--save``/``--load``: save points of either phase, resumed bit for bit
:mod:`.runner`         one rank of a distillation job: train the teacher, freeze it,
                       distil the student (what ``python -m minidist.train`` calls)
=====================  ==========================================================
"""
from .losses import MAPPINGS, TopK, hidden_distance, kd_loss, pkd_loss, pkd_pairs, softmax_t, top_k
from .runner import DistillRank, distil_with, distill_rank, run
from .teacher import FrozenTeacher

__all__ = ["MAPPINGS", "DistillRank", "FrozenTeacher", "TopK", "distil_with", "distill_rank", "hidden_distance",
           "kd_loss", "pkd_loss", "pkd_pairs", "run", "softmax_t", "top_k"]
