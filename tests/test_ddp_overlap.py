"""Overlap on the simulated timeline: DDP buckets launched from gradient hooks end the step
earlier than all-reduces after backward; ZeRO-3 prefetch ends earlier than gathering on demand."""
import pytest
from _formulas import shard

from minidist import distributed as dist
from minidist.testing import train_steps

pytestmark = [pytest.mark.zero, pytest.mark.timeout(120)]

DEVICE = {"flops": 2e9}      # slow enough that backward compute and messages are comparable


def step_end(stage, **zero):
    cfg = {"model": {"n_layer": 4, "n_embd": 8, "n_head": 2, "block_size": 8},
           "data": {"dataset": "copy", "n_digits": 3, "seq_len": 7}, "train_micro_batch_size_per_gpu": 2,
           "steps": 1, "zero_optimization": {"stage": stage, **zero}}
    runs = dist.spawn(train_steps, 4, cfg, 1, device=DEVICE)
    return runs, max(r["history"][0]["sim_time"] for r in runs)


def test_ddp_overlap_ends_step_earlier():
    runs_on, on = step_end(0, overlap_comm=True, reduce_bucket_size=300)
    runs_off, off = step_end(0, overlap_comm=False, reduce_bucket_size=300)
    assert on < 0.95 * off
    # with overlap, an all-reduce starts before the last backward op of the step ends
    dev = runs_on[0]["trainer"].device
    comm = [e for e in dev.trace.events if e.get("tid") == "comm" and e["name"].startswith("all_reduce")]
    last_compute = max(e["ts"] + e["dur"] for e in dev.trace.events
                       if e.get("tid") == "compute" and e["name"] != "optimizer.step")
    assert min(e["ts"] for e in comm) < last_compute
    assert runs_on[0]["history"][0]["bytes_sent"] == runs_off[0]["history"][0]["bytes_sent"]


def test_zero3_prefetch_ends_step_earlier():
    _, pre = step_end(3)
    _, nopre = step_end(3, stage3_prefetch_bucket_size=0)
    assert pre < 0.95 * nopre


def test_zero2_overlap_ends_step_earlier():
    _, on = step_end(2, overlap_comm=True, reduce_bucket_size=300)
    _, off = step_end(2, overlap_comm=False, reduce_bucket_size=300)
    assert on < off


def test_offload_transfers_on_their_streams():
    runs, _ = step_end(2, offload_optimizer={"device": "cpu"})
    ev = runs[0]["trainer"].device.trace.events
    streams = {e["tid"] for e in ev}
    assert {"d2h", "host", "h2d"} <= streams
    d2h = [e for e in ev if e["tid"] == "d2h"]
    spec_bw = runs[0]["trainer"].device.spec.host_bandwidth
    shard_bytes = 4 * shard([runs[0]["n_params"]], 4)      # one bucket: ceil(Ψ/4) fp32 elements go down
    assert sum(e["dur"] for e in d2h) == pytest.approx(shard_bytes / spec_bw * 1e6)
