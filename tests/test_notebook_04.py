"""Execute notebooks/04_mixed_precision.ipynb top to bottom and check what it measures."""
import re
from pathlib import Path

import pytest

pytestmark = [pytest.mark.precision, pytest.mark.notebook]

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "04_mixed_precision.ipynb"


def test_notebook_04_runs_and_shows_underflow_skips_and_the_memory_split(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]
    text = "".join(out.get("text", "") for out in outputs)
    # the 1 + 1e-4 example: kept in fp32, lost in fp16 and bf16
    assert text.count("1 + 0.0001 == 1: the increment is lost") == 2
    # fp16 without scaling flushes a real share of the gradients; with scaling almost none
    unscaled = float(re.search(r"fp16, no loss scaling\s+flushed to zero:\s+([\d.]+)%", text).group(1))
    scaled = float(re.search(r"fp16, loss scale 2\^12\s+flushed to zero:\s+([\d.]+)%", text).group(1))
    assert unscaled > 5 and scaled < 0.2
    # the too-large first scale overflows: some steps were skipped
    skipped = re.search(r"skipped steps: \[([\d, ]*)\]", text).group(1)
    assert len(skipped.split(",")) >= 2
    for line in ("parameters         2.00 bytes", "gradients          2.00 bytes",
                 "optimizer_states   12.00 bytes", "total 16 bytes per parameter"):
        assert line in text, line
    images = sum("image/png" in out.get("data", {}) for out in outputs)
    assert images == 4
