"""Notebook 03 (data parallel and ZeRO) runs top to bottom without an error."""
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = [pytest.mark.notebook, pytest.mark.zero]

NB = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "03_data_parallel_and_zero.ipynb"


def test_notebook_03_executes(tmp_path):
    nb = nbformat.read(NB, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "stage 3: max |difference|" in outputs
    assert (tmp_path / "figures_03" / "03_zero3_trace.json").exists()
