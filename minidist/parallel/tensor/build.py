"""What the trainer needs from tensor parallelism: the config check, the layer factory, the precision.

* :func:`config_problem` — every bad combination of a config, found before any rank trains
  (heads not divisible by t, tp larger than the world, a sequence that does not split over
  t under sequence parallelism, …), as the ``(key, message)`` of a ConfigError;
* :func:`layers_for` — this rank's :class:`~.factory.TensorParallelLayers` on ``grid.tp``,
  the factory the one GPT is built with;
* :class:`TensorParallelPrecision` — fp16/bf16 whose overflow verdict is agreed over the
  whole grid: each tp rank sees only its shards' gradients, and all must skip together
  (Megatron all-reduces ``found_inf`` over the model-parallel group).
"""
from __future__ import annotations

from ...layers import Layers
from ...precision import Precision
from .factory import TensorParallelLayers


def heads_problem(n_head: int, tp: int) -> str | None:
    """Why ``n_head`` heads cannot be split over ``tp`` ranks (naming the config key and the fix), or None."""
    if n_head % tp == 0:
        return None
    return (f"model.n_head {n_head} is not divisible by parallel.tensor {tp}: each rank holds n_head/t heads; "
            f"choose parallel.tensor among {[d for d in range(1, n_head + 1) if n_head % d == 0]}")


def config_problem(cfg: dict, world_size: int, seq_len: int) -> tuple[str, str] | None:
    """The first thing wrong with the tensor-parallel part of a (merged) config, or None (what
    tensor parallelism composes with is decided by :mod:`minidist.training.composition`)."""
    par, m = cfg["parallel"], cfg["model"]
    t, sp = par["tensor"], par.get("sequence_parallel", False)
    if t > world_size:
        return "parallel.tensor", (f"{t} is greater than the world size {world_size}: tensor parallelism "
                                   f"splits each layer over t ranks; launch at least {t} ranks or lower it")
    if par.get("sequence_parallel_naive") and not sp:
        return "parallel.sequence_parallel_naive", ("chooses how sequence parallelism gathers: set "
                                                    "parallel.sequence_parallel true, or drop it")
    if t == 1:
        return None
    heads = heads_problem(m["n_head"], t)
    if heads:
        return "parallel.tensor", heads
    if m["n_embd"] % t:
        return "parallel.tensor", (f"model.n_embd {m['n_embd']} is not divisible by parallel.tensor {t}: each "
                                   f"rank holds n_embd/t columns of every split weight")
    if sp and seq_len % t:
        return "parallel.sequence_parallel", (f"the sequence length {seq_len} is not divisible by parallel.tensor "
                                              f"{t}: each rank holds seq_len/t positions; choose a multiple of {t} "
                                              f"or set parallel.sequence_parallel false")
    return None


def layers_for(cfg: dict, grid):
    """The layer factory of this rank: the plain one, or Megatron's on ``grid.tp``."""
    par = cfg["parallel"]
    if par["tensor"] == 1:
        return Layers()
    return TensorParallelLayers(grid.tp, sequence_parallel=par.get("sequence_parallel", False),
                                make_vocab_size_divisible_by=par["make_vocab_size_divisible_by"],
                                overlap_comm=par["tp_comm_overlap"],
                                naive_sequence_parallel=par["sequence_parallel_naive"])


class TensorParallelPrecision(Precision):
    """A :class:`~minidist.precision.Precision` (same format, scaler and history) whose
    overflow check is agreed over every rank of the grid, not only the data-parallel group."""

    def __init__(self, precision: Precision, world):
        self.__dict__.update(precision.__dict__)
        self.world = world

    def found_overflow(self, arrays, comm=None) -> bool:
        # why: a tp rank sees only its shards' gradients; every rank of the grid must skip the same steps
        return super().found_overflow(arrays, self.world)
