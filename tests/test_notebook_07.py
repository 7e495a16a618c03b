"""Execute notebooks/07_checkpointing_offload_overlap.ipynb top to bottom and check what it prints."""
import pytest
from _notebook import count_images, run_notebook

pytestmark = [pytest.mark.checkpointing, pytest.mark.notebook]


def test_notebook_07_runs_and_the_stairs_are_korthikantis():
    text, outputs = run_notebook("07_checkpointing_offload_overlap.ipynb")
    for line in ("none       bytes each block adds: [49408, 49408, 49408, 49408]",
                 "full       bytes each block adds: [2048, 2048, 2048, 2048]",
                 "every stair = Korthikanti + the named extras: True",
                 "recomputed matmul FLOPs: measured 3,407,872, estimator 3,407,872",
                 "per layer: 0 B on the device, 2048 B in the host pool",
                 "partition_activations under TP 2: 1024 B per layer per rank",
                 "bytes sent per micro-batch: [0, 0, 0, 635520] (the step's one reduction: 635520)"):
        assert line in text, line
    assert text.count("losses and weights identical: True") == 4
    assert count_images(outputs) == 3
