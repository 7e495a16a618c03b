"""minidist.plotting.background: figures written by a worker process are the figures written
in place, a failure names its file, and a figure that cannot be pickled is written in place."""
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.ticker import FuncFormatter

from minidist import plotting

pytestmark = [pytest.mark.timeout(120)]


def _figure(formatter=None):
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot(np.linspace(0, 1, 50) ** 2, label="x²")
    ax.set(title="a figure", xlabel="step", ylabel="loss (nats)")
    ax.legend()
    if formatter is not None:
        ax.yaxis.set_major_formatter(formatter)
    return fig


def test_background_writes_the_same_file_and_waits_on_exit(tmp_path):
    plotting.save(_figure(), tmp_path / "here.png")
    assert plotting.wait_for_figures() is None                       # no worker: nothing to wait for
    with plotting.background():
        assert plotting.save(_figure(), tmp_path / "there.png") == tmp_path / "there.png"
        assert plotting.wait_for_figures() >= 0
        plotting.save(_figure(), tmp_path / "last.png")              # waited for on the way out
    assert (tmp_path / "there.png").read_bytes() == (tmp_path / "here.png").read_bytes()
    assert (tmp_path / "last.png").read_bytes() == (tmp_path / "here.png").read_bytes()


def test_a_failure_names_its_file(tmp_path):
    missing = tmp_path / "no" / "such" / "dir" / "f.png"
    with pytest.raises(RuntimeError, match="f.png could not be written"):
        with plotting.background():
            plotting.save(_figure(), missing)


def test_an_unpicklable_figure_is_written_in_place(tmp_path):
    with plotting.background():
        plotting.save(_figure(FuncFormatter(lambda v, _: f"{v:.1f}")), tmp_path / "lambda.png")
        assert (tmp_path / "lambda.png").read_bytes()[:4] == b"\x89PNG"     # before any wait
