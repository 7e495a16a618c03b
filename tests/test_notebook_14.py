"""Execute notebooks/14_parameter_efficient_fine_tuning.ipynb top to bottom and check what it
prints: the LoRA layer's gradients and merge, every method's trainable count, gradient and
optimizer bytes, FLOPs and data-parallel traffic equal to the formulas, the prefix's activation
bytes, QLoRA's NF4 bytes and paged states, and the side-by-side table and figure."""
import re

import pytest
from _notebook import count_images, run_notebook

pytestmark = [pytest.mark.peft, pytest.mark.notebook, pytest.mark.timeout(300)]


def test_notebook_14_runs_and_every_measurement_equals_its_formula(tmp_path):
    text, outputs = run_notebook("14_parameter_efficient_fine_tuning.ipynb", workdir=tmp_path)
    for line in ("at init, y == x·W + b: True", "dB = s·(xA)ᵀ·dy: True", "dA = s·xᵀ·(dy·Bᵀ): True",
                 "dx = dy·(W + s·A·B)ᵀ: True", "the frozen W has a gradient: False",
                 "LoRA layers left after merge_and_unload: 0"):
        assert line in text, line
    merged = float(re.search(r"merged vs unmerged logits: max \|difference\| = (\S+)", text)[1])
    assert merged <= 1e-12
    counts = re.findall(r"^(.+?) +(\d+) +(\d+) +[\d.]+%$", text, re.M)
    assert len(counts) == 8 and all(a == b for _, a, b in counts)
    pairs = re.findall(r"(\d+) = (\d+)", text)
    assert len(pairs) == 4 * 8 + 3 * 3 and all(a == b for a, b in pairs)
    assert re.search(r"difference (\d+) B, formula \1 B", text)
    assert "NF4 bytes of the 8 linear weights: 12736 (fp32: 98304)" in text
    assert "QLoRA r = 4  device: params 36544 B, grads 16384 B, optimizer 0 B; host: 32768 B" in text
    assert "32 paging copies, 65536 B over PCIe in one step" in text
    assert count_images(outputs) == 1
