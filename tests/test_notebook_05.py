"""Execute notebooks/05_tensor_and_sequence_parallel.ipynb and check what it measures."""
import re

import pytest
from _notebook import count_images, run_notebook

pytestmark = [pytest.mark.tensor, pytest.mark.notebook]


def test_notebook_05_runs_and_matches_one_rank_and_the_formulas(tmp_path):
    text, outputs = run_notebook("05_tensor_and_sequence_parallel.ipynb", workdir=tmp_path)
    assert "pp 0: dp 0 [0 1]  dp 1 [2 3]" in text and "pp 1: dp 0 [4 5]  dp 1 [6 7]" in text   # tp fastest
    mlp = [float(v) for v in re.findall(r"equal to one rank: max \|diff\| = ([\d.e+-]+)", text)]
    assert len(mlp) == 2 and max(mlp) < 1e-12
    # one g (forward) and one f (backward): 2 ring all-reduces of the (4, 8) float64 activation,
    # each 2 messages of half of it on 2 ranks
    ar = 2 * 1 * (4 * 8 // 2) * 8
    assert f"rank 0 sent: {{'all_reduce': {{'bytes_sent': {2 * ar}, 'bytes_received': {2 * ar}, 'messages': 4}}}}" in text
    worst = [float(v) for v in re.findall(r"worst relative weight difference over 3 steps = ([\d.e+-]+)", text)]
    assert len(worst) == 3 and max(worst) <= 1e-9
    traffic = re.findall(r"measured (\{.*?\})  bytes (\d+); formula (\{.*?\})  bytes (\d+)", text)
    assert len(traffic) == 3
    for got, sent, want, formula in traffic:
        assert eval(got) == eval(want) and sent == formula                       # counts and bytes exact
    acts = re.findall(r"^(none|TP \d(?: \+ SP)?)\s+(\d+)\s+(\d+)$", text, re.M)
    assert [a[0] for a in acts] == ["none", "TP 2", "TP 2 + SP", "TP 4 + SP"]
    assert all(m == f for _, m, f in acts)
    measured = [int(m) for _, m, _ in acts]
    assert measured == sorted(measured, reverse=True)                            # each split holds less
    assert text.count("Activations per device (Korthikanti et al. 2022)") == 2
    assert count_images(outputs) == 1
