"""Execute notebooks/09_estimator.ipynb top to bottom and check what it prints."""
from pathlib import Path

import pytest

pytestmark = [pytest.mark.estimate, pytest.mark.notebook]

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "09_estimator.ipynb"


def test_notebook_09_runs_and_shows_the_zero_numbers(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.get("outputs", []))
    for figure in ("120.0G", "31.4G", "16.6G", "1.9G", "saves 70%"):
        assert figure in text, figure
    images = sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
                 for out in cell.get("outputs", []))
    assert images == 3
