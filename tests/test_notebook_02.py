"""Execute notebooks/02_collectives top to bottom; any cell error fails the test."""
import pytest
from _notebook import count_images, run_notebook

pytestmark = [pytest.mark.notebook, pytest.mark.dist]


def test_notebook_02_runs():
    text, outputs = run_notebook("02_collectives.ipynb")
    assert "ring beats recursive doubling from" in text              # the crossover was found
    assert "CollectiveMismatchError" in text and "[2] called all_gather" in text
    assert count_images(outputs) >= 5
