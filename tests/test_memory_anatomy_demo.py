"""The memory chapter's moments of a step are taken where their labels say."""
import pytest

from minidist.demo.memory_anatomy import measure_step
from minidist.model import GPTConfig
from minidist.training.data import TextDataset

pytestmark = [pytest.mark.memory, pytest.mark.timeout(120)]


def test_before_zero_grad_still_holds_the_gradients_and_the_optimizer_states():
    cfg = GPTConfig(block_size=16, vocab_size=TextDataset(seq_len=16).vocab_size, n_layer=1, n_head=2, n_embd=16)
    r = measure_step(cfg, batch=2, seq=16)
    dev, n = r["device"], r["n_params"]
    _, per = dev.memory.curves()
    idx = dict((label, i) for i, label in r["marks"])["zero_grad"]
    assert per["gradients"][idx] == 4 * n                  # fp32 gradients, not yet released
    assert per["optimizer_states"][idx] == 8 * n           # AdamW's m and v
    assert per["parameters"][idx] == 4 * n
    # the line sits where zero_grad starts: the next event is the first gradient release
    releases = [i for i, (_, cat, delta, _) in enumerate(dev.memory.timeline) if cat == "gradients" and delta < 0]
    assert releases and releases[0] == idx
    assert per["gradients"][-1] == 0                       # and zero_grad releases them all
