"""Execute notebooks/12_mixture_of_experts.ipynb top to bottom and check what it prints: capacities
and drops as C = ⌈factor·T·k/E⌉ says, choice-major slots, the MoE layers' statistics, dispatch and
combine on 4 ranks with the formula's bytes, the aux loss balancing the experts, DualPipeV's pairs
as data and its overlap bit-identical and shorter."""
import math
import re

import pytest
from _notebook import count_images, run_notebook

pytestmark = [pytest.mark.moe, pytest.mark.notebook, pytest.mark.timeout(300)]


def test_notebook_12_runs_and_shows_routing_all_to_all_and_the_overlap(tmp_path):
    text, outputs = run_notebook("12_mixture_of_experts.ipynb", workdir=tmp_path)
    load = [int(n) for n in re.search(r"load per expert \(before capacity\): \[([\d, ]+)\]", text)[1].split(",")]
    rows = re.findall(r"^capacity factor ([\d.]+): C = (\d+), dropped (\d+) of 12$", text, re.M)
    assert len(rows) == 4
    for cf, C, dropped in rows:
        assert int(C) == math.ceil(float(cf) * 6 * 2 / 4)
        assert int(dropped) == sum(max(n - int(C), 0) for n in load)
    slots = re.findall(r"expert (\d) slot (\d)( DROPPED)?", text)
    assert len(slots) == 12 and all((int(s) >= 3) == bool(d) for _, s, d in slots)   # C = 3
    per_expert = {}
    for e, s, _ in slots:                                # each expert's slots are 0, 1, 2, … in order
        per_expert.setdefault(e, []).append(int(s))
    assert all(sorted(v) == list(range(len(v))) for v in per_expert.values())
    assert len(re.findall(r"combine\(dispatch\) == buf: True; sent 1152 B \(formula 2 × 576 B\)", text)) == 4
    lb = dict(re.findall(r"^aux_loss_coef (\S+): busiest expert / mean over the last 8 steps ([\d.]+)", text, re.M))
    assert float(lb["0.1"]) < float(lb["0"])
    assert "pairs: 6" in text
    m = re.search(r"without overlap_f_b ([\d.]+) µs, with ([\d.]+) µs: ([\d.]+) µs saved; the pairs hid ([\d.]+) µs; "
                  r"bit-identical: True", text)
    assert m and float(m[2]) < float(m[1]) and 0 < float(m[3]) <= float(m[4])
    assert count_images(outputs) == 2
