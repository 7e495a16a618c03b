"""Where the ``mpirun`` of the ``mpich`` wheel is, and how tests launch it.

The MPI tests never skip: ``mpich`` is a dependency of minidist, so a missing ``mpirun`` is
a broken install and the test fails saying so. ``python -m pytest`` from a venv that was
not activated still finds it: pip puts the wheel's ``mpirun`` beside the interpreter.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# BLAS single-threaded in every rank: the ranks share the machine's cores
SINGLE_THREADED = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def mpirun_path() -> str:
    """``mpirun`` beside this Python first (the MPICH that mpi4py was built against), else on
    PATH; fails the calling test with the fix when there is none."""
    beside = Path(sys.executable).parent / "mpirun"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpirun")
    if found:
        return found
    pytest.fail(f"mpirun not found beside {sys.executable} nor on PATH: `pip install mpich` "
                f"(a dependency of minidist: `pip install -e .`) provides it", pytrace=False)


def run_mpi(n: int, args: list, timeout: float = 120, cwd=None) -> subprocess.CompletedProcess:
    """``mpirun -n N <this python> args…`` with single-threaded BLAS per rank. ``timeout``
    (s) guards against a hung job: subprocess.TimeoutExpired fails the test."""
    env = dict(os.environ, **SINGLE_THREADED)
    return subprocess.run([mpirun_path(), "-n", str(n), sys.executable, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
