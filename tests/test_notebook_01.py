"""Execute notebooks/01 top to bottom; any cell error fails the test."""
import pytest
from _notebook import count_images, run_notebook

pytestmark = [pytest.mark.notebook, pytest.mark.engine]


def test_notebook_01_runs():
    text, outputs = run_notebook("01_autograd_and_memory.ipynb")
    assert count_images(outputs) == 2
    assert "max relative error" in text and "ratio" in text
    assert "gradients bit-identical: True" in text         # intra-op threads change no number
