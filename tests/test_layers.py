"""The layers hold: import-linter's contract (setup.cfg) passes, and ``import minidist`` stays light.

Layers, lowest first: simulated hardware → number formats → engine → distributed → precision →
parallel → training → report / estimate / plotting / demo / CLIs. A back-edge fails here, in CI.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.engine


def _lint_imports() -> str:
    """The ``lint-imports`` script installed beside this interpreter (import-linter, a test extra)."""
    beside = Path(sys.executable).parent / "lint-imports"
    if not beside.exists():
        raise RuntimeError(f"lint-imports not found beside {sys.executable}: pip install -e '.[test]'")
    return str(beside)


def test_import_linter_contracts_are_kept():
    out = subprocess.run([_lint_imports(), "--no-cache", "--config", str(ROOT / "setup.cfg")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"an import breaks minidist's layers:\n{out.stdout[-4000:]}\n{out.stderr[-2000:]}"
    assert "0 broken" in out.stdout and "layers" in out.stdout


def test_import_minidist_loads_only_the_engine():
    """``import minidist`` gives the engine; no plotting, strategy, trainer, MPI or mixed-precision module."""
    code = "import sys, minidist; print('\\n'.join(sorted(sys.modules)))"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            check=True, timeout=60).stdout.split()
    assert "minidist.tensor" in loaded and "minidist.ops.methods" in loaded
    for heavy in ("matplotlib", "mpi4py", "minidist.parallel", "minidist.training", "minidist.precision",
                  "minidist.distributed", "minidist.plotting", "minidist.report", "minidist.estimate"):
        assert not any(m == heavy or m.startswith(heavy + ".") for m in loaded), f"import minidist loaded {heavy}"


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "minidist").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"split these modules (one concept per file): {long}"
