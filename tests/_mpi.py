"""Where the ``mpirun`` of the ``mpich`` wheel is, and how tests launch it."""
import os
import shutil
import subprocess
import sys
from pathlib import Path


def mpirun_path() -> str:
    """``mpirun`` from PATH, else beside this Python (pip puts the wheel's scripts there)."""
    found = shutil.which("mpirun")
    if found:
        return found
    beside = Path(sys.executable).parent / "mpirun"
    if beside.exists():
        return str(beside)
    raise RuntimeError("mpirun not found: `pip install mpich` (a dependency of minidist) provides it")


def run_mpi(n: int, args: list, timeout: float = 120, cwd=None) -> subprocess.CompletedProcess:
    """``mpirun -n N <python> args…`` with single-threaded BLAS per rank."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([mpirun_path(), "-n", str(n), sys.executable, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
