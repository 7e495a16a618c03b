"""Under ``mpirun -n 3``: a teacher rank streams top-K soft targets and PKD hidden states to two
student ranks, and the job gives the same student losses and bytes as the in-process run;
a bad distillation config fails on every MPI rank without hanging; an interrupted run resumes
under mpirun bit for bit."""
import json
import shutil

import pytest
from _checkpoint import assert_same_state
from _mpi import run_mpi

from minidist.train import main as train_main

pytestmark = [pytest.mark.mpi, pytest.mark.distill]

CONFIG = {"data": {"dataset": "sort", "n_digits": 4}, "train_micro_batch_size_per_gpu": 2, "steps": 3,
          "model": {"block_size": 16, "n_layer": 2, "n_embd": 16, "n_head": 2}, "eval_iters": 1,
          "distillation": {"teacher": {"model": {"n_layer": 3}, "steps": 3}, "teacher_ranks": 1, "top_k": 4,
                           "patient": {"mapping": "last", "beta": 0.5}}}


@pytest.mark.timeout(120)
def test_mpirun_distillation_equals_the_in_process_run(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(CONFIG))
    p = run_mpi(3, ["-m", "minidist.train", "--config", cfg, "--report", tmp_path / "mpi.json", "--quiet"])
    assert p.returncode == 0, p.stderr
    assert train_main(["--config", str(cfg), "--world-size", "3", "--report", str(tmp_path / "inproc.json"),
                       "--quiet"]) == 0
    mpi, inproc = (json.loads((tmp_path / f"{n}.json").read_text())["distillation"] for n in ("mpi", "inproc"))
    for a, b in zip(mpi["losses"], inproc["losses"]):
        for k in ("loss", "kl", "ce", "pkd"):
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-7), (a["step"], k)
    assert mpi["stream"] == inproc["stream"]
    assert mpi["stream"]["bytes_received"] == 2 * 3 * (2 * 9 * 4 * (4 + 2) + 2 * 9 * 16 * 4)


@pytest.mark.timeout(120)
def test_bad_teacher_ranks_fail_on_every_mpi_rank(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({**CONFIG, "distillation": {"teacher_ranks": 3}}))
    p = run_mpi(3, ["-m", "minidist.train", "--config", cfg, "--quiet"], timeout=60)
    assert p.returncode != 0
    # every rank finds it before any message and exits; one of them says it
    assert p.stderr.count("distillation.teacher_ranks") == 1, p.stderr


@pytest.mark.timeout(120)
def test_mpirun_resumes_an_interrupted_distillation_bit_for_bit(tmp_path):
    """In-process run with a save point after every step; its copy rewound to the student's
    first step (what a run killed there leaves) is resumed under mpirun -n 3: the same losses
    as the uninterrupted run, and the same final student checkpoint, bit for bit."""
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({**CONFIG, "dtype": "float64"}))
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert train_main(["--config", str(cfg), "--world-size", "3", "--save", str(full), "--save-interval", "1",
                       "--report", str(tmp_path / "full.json"), "--quiet"]) == 0
    shutil.copytree(full, cut)
    (cut / "latest").write_text("student_00000001.json\n")
    p = run_mpi(3, ["-m", "minidist.train", "--config", cfg, "--load", cut, "--save", cut,
                    "--report", tmp_path / "resumed.json", "--quiet"])
    assert p.returncode == 0, p.stderr
    a, b = (json.loads((tmp_path / f"{n}.json").read_text())["distillation"]["losses"] for n in ("full", "resumed"))
    assert a == b
    assert_same_state(full / "student", cut / "student")
