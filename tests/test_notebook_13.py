"""Execute notebooks/13_long_context.ipynb top to bottom and check what it prints: the online softmax
equals the softmax, ring and Ulysses on 4 ranks equal one rank with every rank's bytes equal to the
formula (the ring's messages all to the next rank), Ulysses refuses heads that do not divide, the
sweep's bytes equal the formulas, zigzag ends before contiguous, CP 2 × DP 2 training equals one rank
with the attention bytes of the formula, and the estimator's cp table."""
import re

import pytest
from _notebook import count_images, run_notebook

pytestmark = [pytest.mark.context, pytest.mark.notebook, pytest.mark.timeout(300)]


def test_notebook_13_runs_and_shows_ring_and_ulysses_against_one_rank(tmp_path):
    text, outputs = run_notebook("13_long_context.ipynb", workdir=tmp_path)
    assert "online softmax equals the softmax over all keys: True" in text
    assert "merge of two blocks == attention over all 9 keys: True True" in text
    assert "  step 1: keys of rank 0: [(0, 0, 'full'), (1, 0, 'full')]" in text
    for algorithm in ("ring", "ulysses"):
        err = re.search(rf"^{algorithm}: largest \|difference\| from one rank (\S+)$", text, re.M)
        assert err and float(err[1]) < 1e-12
    ring = re.findall(r"^  rank (\d): 9 messages to ranks \[(\d)\], (\d+) B; formula (\d+) B$", text, re.M)
    assert [(int(r), int(p)) for r, p, _, _ in ring] == [(r, (r + 1) % 4) for r in range(4)]
    assert all(a == b for *_, a, b in ring) and len(re.findall(r"24 messages to ranks", text)) == 4
    assert "3 heads are not divisible by cp = 2" in text
    assert "bytes equal the formulas: True" in text
    done = dict(re.findall(r"^ *(contiguous|zigzag): work per rank .* done at ([\d.]+) ms$", text, re.M))
    assert float(done["zigzag"]) < float(done["contiguous"])
    rows = re.findall(r"largest relative difference from one rank (\S+); attention bytes per step (\d+) "
                      r"\(formula (\d+)\)", text)
    assert len(rows) == 4 and all(float(d) <= 1e-9 and a == b for d, a, b in rows)
    assert "Context parallel (ring, cp=8): each rank holds s/cp = 16384 positions" in text
    assert count_images(outputs) == 3
