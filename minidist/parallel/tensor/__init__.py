"""minidist.parallel.tensor: Megatron-LM's tensor parallelism and Korthikanti's sequence parallelism.

Read in this order:

=====================  ==========================================================
module                 what a student finds there
=====================  ==========================================================
:mod:`.mappings`       ``f``, ``g`` and the sequence-parallel gather / reduce-scatter,
                       each an autograd op with its backward beside its forward
:mod:`.layers`         ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding,
                       the sequence-parallel linear that saves only its input shard
:mod:`.cross_entropy`  the loss over vocabulary slices: max, target logit and sum-exp
                       all-reduced, the (b, s, V) logits never gathered
:mod:`.random`         dropout masks as slices of the one-rank mask
:mod:`.factory`        Megatron's layer factory: the one GPT (:mod:`minidist.model`)
                       built with these layers, from the one-rank weights
:mod:`.build`          what the trainer calls: config check, factory, precision
:mod:`.accounting`     activation bytes (Korthikanti et al. 2022 mapped onto the engine)
                       and the collectives of one step, as formulas
=====================  ==========================================================

Papers: Shoeybi et al. 2019, "Megatron-LM: Training Multi-Billion Parameter Language Models
Using Model Parallelism"; Korthikanti et al. 2022, "Reducing Activation Recomputation in
Large Transformer Models".
"""
from ..split import gather_state_dict, padded_vocab_size, shard_state_dict
from .build import TensorParallelPrecision, config_problem, heads_problem, layers_for
from .cross_entropy import vocab_parallel_cross_entropy
from .factory import TensorParallelLayers
from .layers import (ColumnParallelLinear, RowParallelLinear, SequenceParallelLayerNorm,
                     TensorParallelContext, VocabParallelEmbedding, linear_with_sequence_parallel)
from .mappings import (CheckpointPartition, copy_to_tensor_model_parallel_region, gather_from_sequence_parallel_region,
                       gather_from_tensor_model_parallel_region, reduce_from_tensor_model_parallel_region,
                       reduce_scatter_to_sequence_parallel_region, scatter_to_sequence_parallel_region)

__all__ = ["CheckpointPartition", "TensorParallelPrecision", "config_problem", "heads_problem", "layers_for",
           "ColumnParallelLinear",
           "RowParallelLinear", "SequenceParallelLayerNorm", "TensorParallelContext", "TensorParallelLayers",
           "VocabParallelEmbedding", "copy_to_tensor_model_parallel_region",
           "gather_from_sequence_parallel_region", "gather_from_tensor_model_parallel_region",
           "gather_state_dict", "linear_with_sequence_parallel", "padded_vocab_size",
           "reduce_from_tensor_model_parallel_region", "reduce_scatter_to_sequence_parallel_region",
           "scatter_to_sequence_parallel_region", "shard_state_dict", "vocab_parallel_cross_entropy"]
