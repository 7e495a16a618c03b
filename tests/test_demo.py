"""The tour runs in-process and under real mpirun, and writes its figures."""
import subprocess
import sys

import pytest
from _mpi import run_mpi

pytestmark = [pytest.mark.cli]


def test_demo_memory_chapter_in_process(tmp_path):
    out = subprocess.run([sys.executable, "-m", "minidist.demo", "--chapters", "memory", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "4 in-process ranks" in out.stdout and "Anatomy of training memory" in out.stdout
    for name in ("01_memory_timeline.png", "01_memory_moments.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.mpi
def test_demo_under_mpirun(tmp_path):
    proc = run_mpi(2, ["-m", "minidist.demo", "--chapters", "memory,collectives", "--out", tmp_path], timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("=== Anatomy of training memory ===") == 1     # rank 0 prints once
    assert (tmp_path / "01_memory_timeline.png").exists()


def test_demo_rejects_an_unknown_chapter():
    out = subprocess.run([sys.executable, "-m", "minidist.demo", "--chapters", "zer0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "unknown chapter(s) ['zer0']" in out.stderr


@pytest.mark.precision
def test_demo_precision_chapter_zero_table_matches_formulas(tmp_path):
    out = subprocess.run([sys.executable, "-m", "minidist.demo", "--chapters", "precision", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    table = out.stdout.split("fp16 + Adam under data parallelism")[1].splitlines()[2:7]
    rows = {line[:18].strip(): [int(v) for v in line[18:].split()] for line in table}
    assert list(rows) == ["DDP", "ZeRO-1", "ZeRO-2", "ZeRO-3", "ZeRO-3 + offload"]
    for name, (params, grads, optim, host, total, formula, sent, sent_formula) in rows.items():
        assert total == params + grads + optim == formula and sent == sent_formula, name
        assert (host > 0) == name.endswith("offload")
    assert rows["DDP"][2] == 6 * rows["DDP"][0]                     # 12Ψ of states beside 2Ψ of fp16 weights
    assert rows["ZeRO-1"][2] * 4 == rows["DDP"][2]                  # sharded over 4 ranks
    assert (tmp_path / "04_zero_mixed_memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
