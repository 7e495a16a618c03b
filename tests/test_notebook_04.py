"""Execute notebooks/04_mixed_precision.ipynb top to bottom and check what it measures."""
import re

import pytest
from _notebook import count_images, run_notebook

pytestmark = [pytest.mark.precision, pytest.mark.notebook]


def test_notebook_04_runs_and_shows_underflow_skips_and_the_memory_split():
    text, outputs = run_notebook("04_mixed_precision.ipynb")
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
    # ZeRO in fp16: K = 12 bytes per element of the shard; the CLI-style run skips and backs off
    assert "ZeRO-1 optimizer states = 12 bytes per element" in text
    steps = re.findall(r"step +\d+  loss [\d.]+  scale 2\^(\d+)(  skipped)?", text)
    assert len(steps) == 12 and steps[0] == ("20", "  skipped") and not steps[-1][1]
    assert count_images(outputs) == 5
