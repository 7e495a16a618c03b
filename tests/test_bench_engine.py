"""benchmarks/bench_engine.py runs and prints what it promises (never timed here): per run the
ratio to PyTorch and the accounting's cost, at more than one thread the step with the ops'
elementwise work on one thread, and the profile table. PyTorch is hidden (CI has none)."""
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_engine.py"
TINY = ["--layers", "1", "--width", "32", "--heads", "2", "--seq", "16", "--batch", "2", "--steps", "1",
        "--repeats", "2"]
WITHOUT_TORCH = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
                 "runpy.run_path(sys.argv[0], run_name='__main__')")

pytestmark = pytest.mark.timeout(120)


def bench(*args) -> str:
    proc = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, str(BENCH), *TINY, *args],
                          capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_two_threads_print_what_the_ops_own_threads_save():
    out = bench("--threads", "2")
    assert "PyTorch not installed" in out
    assert out.count("the ops' elementwise work on one thread:") == 2           # once per run
    assert "intra-op threads (minidist.set_num_threads(2)): the step is median" in out
    assert "profile of one step" in out and "inside BLAS" in out


def test_one_thread_has_no_intra_op_line():
    out = bench("--threads", "1", "--no-profile")
    assert "run 2:" in out and "accounting overhead" in out
    assert "intra-op" not in out and "profile of one step" not in out
