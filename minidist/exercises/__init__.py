"""Classroom exercises with a grader that says what is wrong.

``python -m minidist.exercises list | start NAME [DIR] | check NAME [DIR] | check --all DIR
[--json] | check NAME --reference | hint NAME``. One module per exercise, each with

* ``STUB`` — the file a student gets: the statement in its docstring, ``NotImplementedError``
  bodies; ``FUNCTIONS`` — the names the student's file must define;
* ``reference()`` — minidist's own implementation behind a thin adapter (``--reference``
  grades it, and it must pass);
* ``CHECKS`` — ``(name, check)`` pairs; a check calls the student's functions — on real
  ``dist.spawn`` ranks, a real GPT, the real optimizers — and raises :class:`Wrong` with a
  message in the student's terms: which rank, which step, which chunk, expected vs got,
  and, when the result matches a typical mistake, which mistake it is;
* ``HINTS`` — shown on request (``hint NAME``), never in the grade;
* ``CHECKS`` may take ``(sol, rng)``: ``rng`` draws the run's held-out inputs from the seed the
  grade prints (``check --seed N`` repeats them);
* optionally ``FORBIDDEN`` (and ``FORBIDDEN_IMPORTS``) — dotted names of what would do the work:
  functions, classes, modules (minidist's own answer, ``numpy.float16``). The file's imports
  are resolved with ``ast`` (:func:`.grading.used_names`), so calling or importing one fails the
  "rules of the exercise" check under any spelling, and a name the student defines never does.
  The statement lists them.

The grading core (:mod:`.grading`) loads the file by path and never lets a student's
traceback escape. The tests (``pytest -m exercises``) run the same checks.
"""
from __future__ import annotations

from . import (
    activation_checkpointing_bytes,
    adam_bias_correction,
    checkpoint_resume,
    dp_comm_volume,
    dynamic_loss_scaler,
    fp16_round_to_nearest_even,
    gradient_accumulation,
    grid_rank_map,
    int8_quantization,
    kd_loss,
    korthikanti_activations,
    kv_cache_decode_step,
    layer_norm_backward,
    lora_layer,
    moe_all_to_all,
    moe_topk_routing,
    online_softmax_merge,
    peft_parameter_counts,
    pipeline_1f1b,
    pkd_layer_map,
    pruning_masks,
    recursive_doubling_all_gather,
    reduce_scatter_padding,
    sequence_parallel_g,
    tensor_parallel_f_g,
    ring_all_reduce,
    zb_h1_split,
    zero2_gradient_partition,
    zero_memory,
)
from .grading import CheckResult, Report, Wrong, grade

_MODULES = (  # teaching order: notebooks 01, 02, 03, 04, 05, 06, 07, 08, 09, 10, 11
    layer_norm_backward, adam_bias_correction,
    ring_all_reduce, reduce_scatter_padding, recursive_doubling_all_gather,
    gradient_accumulation, checkpoint_resume, zero_memory, zero2_gradient_partition,
    fp16_round_to_nearest_even, dynamic_loss_scaler,
    tensor_parallel_f_g, sequence_parallel_g,
    pipeline_1f1b, zb_h1_split,
    activation_checkpointing_bytes,
    kd_loss, pkd_layer_map,
    korthikanti_activations, dp_comm_volume,
    grid_rank_map,
    kv_cache_decode_step, int8_quantization, pruning_masks, moe_topk_routing, moe_all_to_all,
    online_softmax_merge, lora_layer, peft_parameter_counts,
)

EXERCISES = {m.NAME: m for m in _MODULES}


def get(name: str):
    """The exercise module called ``name`` (ValueError listing the names otherwise)."""
    try:
        return EXERCISES[name]
    except KeyError:
        raise ValueError(f"unknown exercise {name!r}; `python -m minidist.exercises list` shows: "
                         f"{', '.join(EXERCISES)}") from None


def topics() -> list[str]:
    return list(dict.fromkeys(m.TOPIC for m in EXERCISES.values()))


__all__ = ["EXERCISES", "CheckResult", "Report", "Wrong", "get", "grade", "topics"]
