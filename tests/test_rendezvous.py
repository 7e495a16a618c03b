"""Point-to-point as real hardware does it: in rendezvous mode (``spawn(..., rendezvous=True)``)
a send completes only once its receive is posted, as MPI_Ssend and NCCL behave. A program that
relies on buffered sends — two ranks sending to each other before receiving — is stopped at
once with a DeadlockError naming both ranks and their pending operations; batch_isend_irecv
exchanges without waiting. Every pipeline schedule on 2, 4 and 8 ranks, every tensor-parallel
layout and every ZeRO stage completes in that mode and equals the buffered run bit for bit,
messages included."""
import time

import numpy as np
import pytest

from minidist import distributed as dist
from minidist.defaults import SCHEDULES
from minidist.testing import train_steps

pytestmark = [pytest.mark.dist, pytest.mark.timeout(120)]


def crossed(comm):
    other = 1 - comm.rank
    comm.send(np.full(3, float(comm.rank)), other, tag=5)     # both send first ...
    return comm.recv(other, tag=5)                              # ... then receive


def test_crossed_sends_complete_buffered_and_deadlock_in_rendezvous_naming_both_ranks():
    assert [float(x[0]) for x in dist.spawn(crossed, 2)] == [1.0, 0.0]
    start = time.monotonic()
    with pytest.raises(dist.DeadlockError) as info:
        dist.spawn(crossed, 2, rendezvous=True, timeout=30)
    assert time.monotonic() - start < 5                        # found at once, not after the timeout
    text = str(info.value)
    for rank, peer in ((0, 1), (1, 0)):
        assert f"rank {rank} waits in send to rank {peer} (a plain send/recv, tag 5), whose receive is not posted" \
               in text


def test_a_receive_nobody_sends_is_named_in_the_report():
    def main(comm):
        if comm.rank == 0:
            return dist.all_reduce(comm, np.ones(4))
        return comm.recv(0, tag=1)                              # rank 1 skipped the collective
    with pytest.raises(dist.DeadlockError, match=r"rank 1 waits in receive from rank 0 \(a plain send/recv, "
                                                 r"tag 1\)"):
        dist.spawn(main, 2, rendezvous=True, timeout=30)


def test_batch_isend_irecv_exchanges_in_rendezvous_mode():
    def ring(comm):
        right, left = (comm.rank + 1) % comm.size, (comm.rank - 1) % comm.size
        send, recv = comm.batch_isend_irecv([("isend", np.full(2, float(comm.rank)), right, 3),
                                             ("irecv", None, left, 3)])
        send.wait()                                             # its receive was posted in the batch
        return float(recv.wait()[0])
    assert dist.spawn(ring, 4, rendezvous=True) == [3.0, 0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="'isend' or 'irecv'"):
        dist.spawn(lambda c: c.batch_isend_irecv([("send", np.ones(1), 1 - c.rank, 0)]), 2)


def _same(runs_a, runs_b, where):
    for a, b in zip(runs_a, runs_b):
        for step_a, step_b in zip(a["params"], b["params"]):
            for key in step_a:
                assert np.array_equal(step_a[key], step_b[key]), f"{where}: {key}"
        assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]], where
        la, lb = a["trainer"].comm.log.entries, b["trainer"].comm.log.entries
        assert [(e.op, e.direction, e.peer, e.nbytes, e.t_start, e.t_end) for e in la] == \
               [(e.op, e.direction, e.peer, e.nbytes, e.t_start, e.t_end) for e in lb], where


def pipeline_config(p, name):
    m = 2 * p if name == "dualpipe_v" else p
    return {"model": {"n_layer": 2 * p, "n_embd": 8, "n_head": 2, "block_size": 8},
            "data": {"dataset": "copy", "n_digits": 3, "seq_len": 7}, "dtype": "float64",
            "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": m, "steps": 1,
            "optimizer": {"type": "Adam", "params": {"lr": 1e-2}},
            "parallel": {"pipeline": p, "schedule": name, "virtual_stages": 2 if name == "interleaved_1f1b" else 1}}


@pytest.mark.pipeline
@pytest.mark.parametrize("p", [2, 4, 8])
def test_every_schedule_runs_in_rendezvous_mode_like_buffered(p):
    for name in SCHEDULES:
        cfg = pipeline_config(p, name)
        _same(dist.spawn(train_steps, p, cfg, rendezvous=True), dist.spawn(train_steps, p, cfg, rendezvous=False),
              f"{name} on {p} ranks")


BASE = {"model": {"n_layer": 2, "n_embd": 16, "n_head": 4, "block_size": 8},
        "data": {"dataset": "english", "seq_len": 8}, "dtype": "float64", "steps": 1,
        "train_micro_batch_size_per_gpu": 2, "optimizer": {"type": "Adam", "params": {"lr": 1e-2}}}
LAYOUTS = {   # world size, config: every TP layout and every ZeRO stage
    "tp2": (2, {"parallel": {"tensor": 2}}), "tp4": (4, {"parallel": {"tensor": 4}}),
    "tp2+sp": (2, {"parallel": {"tensor": 2, "sequence_parallel": True}}),
    "tp2xdp2": (4, {"parallel": {"tensor": 2}}),
    "tp2xpp2": (4, {"parallel": {"tensor": 2, "pipeline": 2}, "gradient_accumulation_steps": 2}),
    "ddp": (2, {}), "parameter_server": (2, {"parallel": {"data_parallel": "parameter_server"}}),
    **{f"zero{k}": (4, {"zero_optimization": {"stage": k}}) for k in (1, 2, 3)},
    "zero2_overlap": (2, {"zero_optimization": {"stage": 2, "overlap_comm": True}}),
}


@pytest.mark.tensor
@pytest.mark.zero
def test_every_tensor_layout_and_zero_stage_runs_in_rendezvous_mode_like_buffered():
    for name, (world, extra) in LAYOUTS.items():
        cfg = {**BASE, **extra}
        _same(dist.spawn(train_steps, world, cfg, rendezvous=True), dist.spawn(train_steps, world, cfg), name)
