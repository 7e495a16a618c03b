"""minidist.parallel.context: context parallelism — the sequence split over the ``cp`` ranks.

Activations grow with the sequence length s, attention scores with s²; beyond some length
one device cannot hold one sequence. Context parallelism cuts every sequence into cp parts:
each rank embeds, normalises, projects and feeds its MLP with ``s/cp`` tokens, and only
attention — the one place positions meet — talks to the other ranks. Parameters are
replicated over cp, so gradients are averaged over dp × cp, as data parallelism would.

Read in this order:

=====================  ==========================================================
module                 what a student finds there
=====================  ==========================================================
:mod:`.layout`         zigzag and contiguous chunks, which (query, key) blocks the
                       causal mask keeps, the ring's schedule as data
:mod:`.ring`           ring attention: K/V blocks around the ring with send/recv,
                       the online-softmax merge, the blockwise backward
:mod:`.ulysses`        DeepSpeed-Ulysses: all-to-all from sequence split to head
                       split and back, the one-rank kernel in between
:mod:`.factory`        the layer factory that puts the one GPT on s/cp positions,
                       and the config check
=====================  ==========================================================

Papers: Liu, Zaharia & Abbeel 2023, "Ring Attention with Blockwise Transformers for
Near-Infinite Context"; Jacobs et al. 2023, "DeepSpeed Ulysses"; Dao et al. 2022,
"FlashAttention" (the online softmax, after Milakov & Gimelshein 2018).
"""
from .factory import ALGORITHMS, ContextParallelLayers, PositionsGenerator, config_problem, layers_for
from .layout import LAYOUTS, block_kind, chunks_of, positions, ring_schedule, split_problem, work
from .ring import block_attention, merge_blocks, ring_attention
from .ulysses import gather_heads, heads_problem, scatter_heads, ulysses_attention

__all__ = ["ALGORITHMS", "LAYOUTS", "ContextParallelLayers", "PositionsGenerator", "block_attention", "block_kind",
           "chunks_of", "config_problem", "gather_heads", "heads_problem", "layers_for", "merge_blocks",
           "positions", "ring_attention", "ring_schedule", "scatter_heads", "split_problem", "ulysses_attention",
           "work"]
