"""Checkpoints under real ``mpirun``: every process writes its own shard; resuming continues
bit for bit, and the MPI job saves exactly what the in-process job saves."""
import json

import numpy as np
import pytest

from minidist import distributed as dist
from minidist.checkpoint import read_checkpoint
from minidist.train import run

from _mpi import run_mpi

pytestmark = [pytest.mark.checkpoint, pytest.mark.mpi, pytest.mark.timeout(180)]

CONFIG = {"model": {"n_layer": 2, "n_embd": 16, "n_head": 2, "block_size": 8},
          "data": {"dataset": "copy", "n_digits": 3}, "steps": 6, "eval_iters": 1,
          "train_micro_batch_size_per_gpu": 2,
          "fp16": {"enabled": True, "initial_scale_power": 24},
          "zero_optimization": {"stage": 3}}


def train_mpi(tmp_path, *flags):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(CONFIG))
    report = tmp_path / f"report{len(flags)}.json"
    r = run_mpi(2, ["-m", "minidist.train", "--config", cfg, "--quiet", "--report", report, *flags], timeout=150)
    assert r.returncode == 0, r.stderr[-3000:]
    return [s["loss"] for s in json.loads(report.read_text())["steps"]]


def test_mpi_resume_bit_identical_and_same_as_in_process(tmp_path):
    straight = train_mpi(tmp_path, "--save", tmp_path / "a", "--save-interval", "3")
    resumed = train_mpi(tmp_path, "--save", tmp_path / "b", "--load", tmp_path / "a")   # latest: step 6 …
    assert resumed == straight                                   # … nothing left to train: same history
    resumed = train_mpi(tmp_path, "--save", tmp_path / "c", "--load", tmp_path / "a" / "step_00000003")
    assert resumed == straight
    ua, uc = read_checkpoint(tmp_path / "a").universal, read_checkpoint(tmp_path / "c").universal
    for name in ua:
        for kind in ua[name]:
            assert np.array_equal(ua[name][kind], uc[name][kind]), (name, kind)
    # the in-process backend saves the very same bits
    dist.spawn(lambda comm: run(CONFIG, comm, False, str(tmp_path / "inproc")), 2)
    ui = read_checkpoint(tmp_path / "inproc").universal
    for name in ua:
        for kind in ua[name]:
            assert np.array_equal(ua[name][kind], ui[name][kind]), (name, kind)
