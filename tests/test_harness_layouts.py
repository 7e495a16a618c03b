"""``minidist.testing.train_steps`` is universal: under tensor and pipeline parallelism every
rank's per-step ``params`` are the one-rank model's names (in its order), shapes and values,
gathered on the control channel (no logged message, no simulated time)."""
import pytest

from minidist import distributed as dist
from minidist.testing import max_abs_diff, train_steps

pytestmark = [pytest.mark.tensor, pytest.mark.pipeline, pytest.mark.timeout(60)]


def config(parallel, dp=1, extra=None):
    cfg = {"model": {"n_layer": 4, "n_embd": 8, "n_head": 2, "block_size": 8},
           "data": {"dataset": "english", "seq_len": 8}, "dtype": "float64", "steps": 2,
           "train_micro_batch_size_per_gpu": 4 // dp, "gradient_accumulation_steps": 4,
           "optimizer": {"type": "Adam", "params": {"lr": 1e-2}}, "parallel": parallel}
    cfg.update(extra or {})
    return cfg


def _gather_is_free(comm, cfg):
    """train_steps' result, and whether one more gather logged or timed anything."""
    run = train_steps(comm, cfg)
    tr = run["trainer"]
    before = (len(tr.comm.log), len(tr.comm.log.collectives), dict(tr.device.clock.streams))
    again = tr.full_parameters()
    after = (len(tr.comm.log), len(tr.comm.log.collectives), dict(tr.device.clock.streams))
    return run, before == after and max_abs_diff(again, run["params"][-1]) == 0.0


@pytest.mark.parametrize("n,parallel,dp,extra", [
    (2, {"tensor": 2}, 1, None),
    (4, {"tensor": 2, "sequence_parallel": True}, 2, {"zero_optimization": {"stage": 1}}),
    (2, {"pipeline": 2, "schedule": "1f1b"}, 1, None),
    (2, {"pipeline": 2, "schedule": "interleaved_1f1b", "virtual_stages": 2}, 1, {"model": {
        "n_layer": 8, "n_embd": 8, "n_head": 2, "block_size": 8}}),
    (2, {"pipeline": 2, "schedule": "zb_v"}, 1, None),
    (4, {"pipeline": 2}, 2, {"zero_optimization": {"stage": 1}}),
], ids=["tp2", "tp2+sp_x_dp2_zero1", "pp2_1f1b", "pp2_interleaved_v2", "pp2_zb_v", "pp2_x_dp2_zero1"])
def test_every_rank_gets_the_one_rank_model(n, parallel, dp, extra):
    cfg = config(parallel, dp, extra)
    ref = train_steps(None, config({}, extra=extra))
    for run, free in dist.spawn(_gather_is_free, n, cfg):
        assert free
        for step in range(2):
            got, want = run["params"][step], ref["params"][step]
            assert list(got) == list(want)                           # names, in the model's order
            assert all(got[k].shape == want[k].shape for k in want)  # the vocabulary padding removed
            assert max_abs_diff(got, want) <= 1e-12
