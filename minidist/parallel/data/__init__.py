"""minidist.parallel.data: data parallelism and every ZeRO stage.

Read in this order — each file builds on the one before:

=========================  ==========================================================
module                     what a student finds there
=========================  ==========================================================
:mod:`.buckets`            buckets, flat buffers, padding to a multiple of the world size
:mod:`.base`               the step protocol; single-rank training (the reference)
:mod:`.parameter_server`   naive DP: reduce to a root, update there, broadcast back
:mod:`.ddp`                DDP: bucketed all-reduce launched from gradient hooks
:mod:`.zero1`              ZeRO-1: optimizer states sharded
:mod:`.zero2`              ZeRO-2: gradients sharded too, freed bucket by bucket
:mod:`.zero3`              ZeRO-3: parameters sharded too, gathered per layer, prefetch
:mod:`.offload`            ZeRO-Offload: the optimizer step and its states on the host
=========================  ==========================================================
"""
