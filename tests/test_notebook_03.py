"""Notebook 03 (data parallel and ZeRO) runs top to bottom without an error."""
import pytest
from _notebook import run_notebook

pytestmark = [pytest.mark.notebook, pytest.mark.zero]


def test_notebook_03_executes(tmp_path):
    outputs, _ = run_notebook("03_data_parallel_and_zero.ipynb", workdir=tmp_path)
    assert "stage 3: max |difference|" in outputs
    assert (tmp_path / "figures_03" / "03_zero3_trace.json").exists()
