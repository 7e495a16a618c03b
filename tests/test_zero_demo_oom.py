"""The ZeRO chapter's out-of-memory line keeps the error's first clause whole: the tensor's
full name and how much was in use (it used to be cut at 120 characters, mid-name)."""
import re

import pytest

from minidist import distributed as dist
from minidist.demo import zero
from minidist.memory import MemoryTracker, OutOfMemoryError

pytestmark = [pytest.mark.zero, pytest.mark.timeout(120)]


def test_oom_summary_is_the_first_clause_whole():
    name = "transformer.h.11.attn.c_attn.weight.exp_avg_sq" * 3          # a long name is not cut
    tracker = MemoryTracker(capacity=100, name="rank 0 (custom)")
    tracker.alloc(60, "parameters", "wte")
    with pytest.raises(OutOfMemoryError) as e:
        tracker.alloc(50, "optimizer_states", name)
    text = zero.oom_summary(e.value)
    assert text.startswith("simulated out of memory on rank 0 (custom): tried to allocate")
    assert f"for optimizer_states ({name}) with 60 B of 100 B in use" in text
    assert text.endswith("in use") and "Use a larger" not in text


def test_chapter_prints_the_whole_name_of_the_tensor_that_did_not_fit():
    out = dist.spawn(zero.out_of_memory, 2, 627_000)[0]
    found = re.search(r"for (\w+) \(([\w.]+)\) with ([\d.]+ KiB) of ([\d.]+ KiB) in use$", out["DDP"])
    assert found, out["DDP"]
    assert found.group(2).startswith("transformer.") and found.group(2).split(".")[-1] in ("exp_avg", "exp_avg_sq")
