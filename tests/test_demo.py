"""The tour runs in-process and under real mpirun, and writes its figures."""
import os
import re
import subprocess
import sys

import pytest
from _formulas import bytes_sent, model_states
from _mpi import run_mpi

pytestmark = [pytest.mark.cli, pytest.mark.timeout(300)]


def test_demo_memory_chapter_in_process(tmp_path):
    out = subprocess.run([sys.executable, "-m", "minidist.demo", "--chapters", "memory", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "4 in-process ranks" in out.stdout and "Anatomy of training memory" in out.stdout
    budget = out.stdout.split("=== Time budget ===")[1].splitlines()        # printed at the end
    assert [row.split()[0] for row in budget[2:5]] == ["start-up", "memory", "figures"]   # figures: the wait
    assert budget[5].startswith("total") and "(budget 60 s on 2 cores)" in budget[5]      # for the last ones
    for name in ("01_memory_timeline.png", "01_memory_moments.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.mpi
def test_demo_under_mpirun(tmp_path):
    proc = run_mpi(2, ["-m", "minidist.demo", "--chapters", "memory,collectives", "--out", tmp_path], timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("=== Anatomy of training memory ===") == 1     # rank 0 prints once
    assert (tmp_path / "01_memory_timeline.png").exists()


@pytest.mark.mpi
def test_demo_under_mpirun_refuses_a_world_size_mpi_did_not_start_once(tmp_path):
    proc = run_mpi(2, ["-m", "minidist.demo", "--world-size", "4", "--chapters", "memory", "--out", tmp_path],
                   timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("--world-size 4 but mpirun started 2 processes") == 1


def test_demo_rejects_an_unknown_chapter():
    out = subprocess.run([sys.executable, "-m", "minidist.demo", "--chapters", "zer0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "unknown chapter(s) ['zer0']" in out.stderr


@pytest.mark.precision
def test_demo_precision_chapter_zero_table_matches_formulas(tmp_path):
    out = subprocess.run([sys.executable, "-m", "minidist.demo", "--chapters", "precision", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    header, *lines = out.stdout.split("fp16 + Adam under data parallelism")[1].splitlines()[:7]
    psi = int(re.search(r"4 ranks, Ψ = ([\d,]+)", header).group(1).replace(",", ""))
    assert psi % 4 == 0
    rows = {line[:18].strip(): [int(v) for v in line[18:].split()] for line in lines[1:]}
    assert list(rows) == ["DDP", "ZeRO-1", "ZeRO-2", "ZeRO-3", "ZeRO-3 + offload"]
    for stage, (name, (params, grads, optim, host, total, formula, sent, sent_formula)) in enumerate(rows.items()):
        want = model_states(min(stage, 3), psi, psi // 4, w=2, k=12, offload=name.endswith("offload"), moments=8)
        assert [params, grads, optim, host] == \
               [want[c] for c in ("parameters", "gradients", "optimizer_states", "host")]
        assert total == params + grads + optim == formula, name
        # fp16 traffic; the sharded strategies also all-reduce the one-element overflow flag
        assert sent == sent_formula == bytes_sent(min(stage, 3), 4, 2, psi // 4, scalars=int(stage > 0)), name
    assert (tmp_path / "04_zero_mixed_memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_budget_table_gives_each_chapter_its_share():
    from minidist.demo.__main__ import budget_table
    rows = [line.split() for line in budget_table({"start-up": 2.0, "zero": 6.0, "peft": 12.0}, 60).splitlines()]
    assert rows[0] == ["chapter", "seconds", "share"]
    assert rows[1:4] == [["start-up", "2.0", "10%"], ["zero", "6.0", "30%"], ["peft", "12.0", "60%"]]
    assert rows[4][:2] == ["total", "20.0"] and "60" in rows[4]


def test_the_tour_runs_blas_single_threaded_unless_the_environment_says_otherwise():
    """The ranks share the cores: the tour sets NumPy's BLAS to one thread, as OMP_NUM_THREADS=1
    would have, and leaves a count the user set alone."""
    code = ("import os\nfrom minidist.demo.threads import tour_blas_threads\n"
            "from minidist.ops.blas_threads import blas_threads\nprint(blas_threads())\n"
            "with tour_blas_threads(): print(blas_threads())\nprint(blas_threads())\n"
            "os.environ['OMP_NUM_THREADS'] = '2'\nwith tour_blas_threads(): print(blas_threads())\n"
            "from minidist.demo.threads import single_threaded_blas\nprint(single_threaded_blas(), blas_threads())\n"
            "del os.environ['OMP_NUM_THREADS']\nprint(single_threaded_blas(), blas_threads())\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                            "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    before, inside, after, chosen, kept, count_kept, set_, count_set = out.stdout.split()
    assert kept == "False" and set_ == "True"     # the train CLI's: for the rest of the process
    if before != "None":                          # NumPy's OpenBLAS found
        assert inside == "1" and after == chosen == count_kept == before and count_set == "1"
