"""Regenerate tests/data/torch_pipeline_orders.json: torch.distributed.pipelining's action
orders for the schedules minidist also has.

tests/test_pipeline_torch.py simulates these orders next to minidist's on the same clock, so
that each minidist schedule is checked against torch's without torch being installed:

    pip install torch           # a CPU build is enough; no process group is started
    python tests/make_pipeline_reference.py

For every (schedule, p, m) the file holds each rank's actions in execution order as
``F3s5`` (forward of micro-batch 3 on stage 5), ``B3s5`` (its backward: the whole backward,
or only the input-gradient half when a ``W3s5`` follows) and ``W3s5``. How each comes from
torch:

* ``Schedule1F1B``, ``ScheduleGPipe`` (one stage per rank): their ``_step_microbatches`` is
  run against a stage object that records the forward and backward calls (their
  ``_get_pipeline_order`` is only a drawing aid, and skips micro-batch 0 on the last rank
  of 1F1B in torch 2.13);
* ``ScheduleInterleaved1F1B`` (v = 2), ``ScheduleInterleavedZeroBubble`` (one stage per
  rank), ``ScheduleZBVZeroBubble``, ``ScheduleDualPipeV``: ``_calculate_single_rank_operations``
  of each rank, the list the runtime executes; idle slots (None) are dropped, and DualPipeV's
  overlapped forward-backward pairs are written as the forward then the backward.

It imports nothing from minidist. The schedule objects are made without pipeline stages
(``object.__new__``) and given the few attributes those methods read.
"""
from __future__ import annotations

import json
import pathlib

import torch
from torch.distributed.pipelining import schedules as S

OUT = pathlib.Path(__file__).with_name("data") / "torch_pipeline_orders.json"
RANKS = (2, 3, 4, 8)
OPS = {S.FORWARD: "F", S.BACKWARD_INPUT: "B", S.FULL_BACKWARD: "B", S.BACKWARD_WEIGHT: "W"}


def micro_batch_counts(name: str, p: int) -> list:
    """The (p, m) grid stored, within what torch's class accepts."""
    if name == "interleaved_1f1b":
        return [p, 2 * p, 3 * p]
    if name == "dualpipe_v":
        return [2 * p, 2 * p + 1, 3 * p, 4 * p]
    if name == "zb_v":
        return sorted({1, 2, p - 1 or 1, p, 2 * p - 1, 2 * p, 2 * p + 1, 3 * p, 4 * p})
    counts = sorted({1, 2, p, p + 1, 2 * p, 3 * p, 3 * p + 1})
    if name == "1f1b":                                   # Schedule1F1B needs m >= p
        return [m for m in counts if m >= p]
    if name == "zb_h1":                                  # m a multiple of max(1, m // p) rounds
        return [m for m in counts if m % max(1, m // p) == 0]
    return counts


class _RecordingStage:
    """Stands in for a pipeline stage: no tensors, no messages, a log of compute calls."""

    def __init__(self, index: int, n: int):
        self.stage_index, self.is_first, self.is_last, self.log = index, index == 0, index == n - 1, []

    def get_fwd_recv_ops(self, i):
        return []

    get_fwd_send_ops = get_bwd_recv_ops = get_bwd_send_ops = get_fwd_recv_ops

    def forward_one_chunk(self, i, *args, **kwargs):
        self.log.append(f"F{i}s{self.stage_index}")

    def backward_one_chunk(self, i, **kwargs):
        self.log.append(f"B{i}s{self.stage_index}")

    def perform_reduce_grad(self, *args):
        pass


def single_stage(cls, p: int, m: int) -> list:
    orders = []
    for r in range(p):
        o = object.__new__(cls)
        o._num_stages, o._n_microbatches, o.scale_grads = p, m, True
        o._stage = _RecordingStage(r, p)
        o._check_inputs = lambda args, kwargs, targets, losses: (args, kwargs)
        o._initialize_stage = o._maybe_compute_loss = o._maybe_get_loss = o._update_losses = lambda *a, **k: None
        o._step_microbatches([()] * m, [{}] * m, None, None)
        orders.append(o._stage.log)
    return orders


def multi_stage(cls, p: int, m: int, local: int) -> list:
    o = object.__new__(cls)
    o.pp_group_size, o._n_microbatches, o.n_local_stages = p, m, local
    o.num_stages = o._num_stages = p * local
    o.number_of_rounds = max(1, m // p)
    o.microbatches_per_round = m // o.number_of_rounds
    orders = []
    for r in range(p):
        acts = []
        for a in o._calculate_single_rank_operations(r):
            if a is None:
                continue
            for b in (a.sub_actions if a.computation_type == S.OVERLAP_F_B else (a,)):
                acts.append(f"{OPS[b.computation_type]}{b.microbatch_index}s{b.stage_index}")
        orders.append(acts)
    return orders


BUILD = {
    "gpipe": ("ScheduleGPipe", lambda p, m: single_stage(S.ScheduleGPipe, p, m)),
    "1f1b": ("Schedule1F1B", lambda p, m: single_stage(S.Schedule1F1B, p, m)),
    "interleaved_1f1b": ("ScheduleInterleaved1F1B", lambda p, m: multi_stage(S.ScheduleInterleaved1F1B, p, m, 2)),
    "zb_h1": ("ScheduleInterleavedZeroBubble", lambda p, m: multi_stage(S.ScheduleInterleavedZeroBubble, p, m, 1)),
    "zb_v": ("ScheduleZBVZeroBubble", lambda p, m: multi_stage(S.ScheduleZBVZeroBubble, p, m, 2)),
    "dualpipe_v": ("ScheduleDualPipeV", lambda p, m: multi_stage(S.ScheduleDualPipeV, p, m, 2)),
}


def main() -> None:
    out = {"torch": torch.__version__, "schedules": {}}
    for name, (cls, build) in BUILD.items():
        cases = {f"{p},{m}": [" ".join(acts) for acts in build(p, m)] for p in RANKS for m in micro_batch_counts(name, p)}
        out["schedules"][name] = {"torch_class": cls, "orders": cases}
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(out, indent=0) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KiB, torch {torch.__version__})")


if __name__ == "__main__":
    main()
