"""Execute notebooks/09_estimator.ipynb top to bottom and check what it prints."""
import pytest
from _notebook import count_images, run_notebook

pytestmark = [pytest.mark.estimate, pytest.mark.notebook]


def test_notebook_09_runs_and_shows_the_zero_numbers():
    text, outputs = run_notebook("09_estimator.ipynb")
    for figure in ("120.0G", "31.4G", "16.6G", "1.9G", "saves 70%"):
        assert figure in text, figure
    assert count_images(outputs) == 3
