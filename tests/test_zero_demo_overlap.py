"""The ZeRO chapter's ZeRO-2 (and notebook 03's try-it) really overlaps its reduce-scatters
with backward, and turning overlap_comm off shows on the gradient curve."""
import re

import nbformat
import pytest
from _notebook import NOTEBOOKS

from minidist import distributed as dist
from minidist.defaults import STRATEGY_LABELS, ZERO2
from minidist.demo import zero

pytestmark = [pytest.mark.zero, pytest.mark.timeout(120)]
ZERO2_SECTION = zero.STRATEGIES[STRATEGY_LABELS[ZERO2]]


def _overlapped(events) -> tuple[bool, bool]:
    """(a reduce-scatter starts before backward's last compute ends, any reduce-scatter at all)."""
    step = min(e["ts"] for e in events if e["name"] == "optimizer.step")
    backward_end = max(e["ts"] + e["dur"] for e in events if e["tid"] == "compute" and e["ts"] < step)
    starts = [e["ts"] for e in events if e["name"].startswith("reduce_scatter")]
    return any(t < backward_end - 1e-3 for t in starts), bool(starts)      # µs, past rounding


def _both(comm):
    out = {}
    for overlap in (True, False):
        r = zero.measure(comm, {**ZERO2_SECTION, "overlap_comm": overlap})
        out[overlap] = (zero.peak_of(r["device"], "gradients"), _overlapped(r["device"].trace.events),
                        r["measured"], r["bytes_sent"])
    return out


def test_chapter_zero2_overlaps_and_overlap_comm_false_holds_the_full_gradient():
    assert ZERO2_SECTION["overlap_comm"] is True
    res = dist.spawn(_both, 4)[0]
    (peak_on, (overlap_on, rs_on), states_on, sent_on) = res[True]
    (peak_off, (overlap_off, rs_off), states_off, sent_off) = res[False]
    assert rs_on and rs_off
    assert overlap_on and not overlap_off               # reduce-scatters under backward only with overlap_comm
    assert peak_on < 0.6 * peak_off                     # the gradient curve drops bucket after bucket
    assert (states_on, sent_on) == (states_off, sent_off)   # same model states at the step, same bytes


def test_notebook_03_try_it_names_the_chapters_bucket():
    nb = nbformat.read(NOTEBOOKS / "03_data_parallel_and_zero.ipynb", as_version=4)
    text = next(c.source for c in nb.cells if c.cell_type == "markdown" and "**Try:**" in c.source)
    assert "overlap_comm" in text
    size = int(re.search(r"`reduce_bucket_size` of ([\d,]+) elements", text).group(1).replace(",", ""))
    assert size == ZERO2_SECTION["reduce_bucket_size"]
