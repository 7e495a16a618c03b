"""Execute notebooks/02_collectives top to bottom; any cell error fails the test."""
from pathlib import Path

import pytest

pytestmark = [pytest.mark.notebook, pytest.mark.dist]
NB = Path(__file__).resolve().parents[1] / "notebooks" / "02_collectives.ipynb"


def test_notebook_02_runs():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NB, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NB.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "ring beats recursive doubling from" in text              # the crossover was found
    assert "CollectiveMismatchError" in text and "[2] called all_gather" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 5
