"""Execute notebooks/10_3d_parallelism.ipynb top to bottom (8 in-process ranks, DP 2 × TP 2 × PP 2)
and check what it prints: Megatron's rank map, the 3D run equal to one rank, every rank's model
states and bytes equal to the estimate, each group's bytes, the bubble, ZeRO-3 in 3D, the refusals."""
import re

import pytest
from _notebook import count_images, run_notebook

pytestmark = [pytest.mark.grid, pytest.mark.notebook, pytest.mark.timeout(300)]


def test_notebook_10_runs_and_shows_3d_equal_to_one_rank_and_the_estimate(tmp_path):
    text, outputs = run_notebook("10_3d_parallelism.ipynb", workdir=tmp_path)
    assert "pp 1: dp 0 [4 5]  dp 1 [6 7]" in text                     # GridShape.table()
    assert "1 + 2·(1 + 2·0) = 3" in text
    assert "[(0, 2), (1, 3), (4, 6), (5, 7)]" in text                    # the dp groups
    assert "rank 0 {'dp': 0, 'pp': 0, 'tp': 0}: 14624 parameters, c_attn.weight (32, 48)" in text
    assert "rank 4 {'dp': 0, 'pp': 1, 'tp': 0}: 14176 parameters" in text
    worst = float(re.search(r"largest relative difference from one rank (\S+)", text).group(1))
    assert worst <= 1e-9
    losses = re.findall(r"loss (\S+) in 3D, (\S+) on one rank", text)
    assert len(losses) == 2 and all(a == b for a, b in losses)
    rows = re.findall(r"^\s+(\d) +(\d) +(\d) +(\d) +(\d+) +(\d+) +(\d+) +(\d+) +(\d+) +(\d+)$", text, re.M)
    assert len(rows) == 8
    for row in rows:                      # model states and bytes sent: measured = estimate
        assert row[5] == row[6] and row[7] == row[8], row
    parts = re.findall(r"^\s+(\w+) +(\d+) / +(\d+)$", text, re.M)
    assert len(parts) == 8 and all(m == e for _, m, e in parts)
    assert ("pipeline", "16384", "16384") in parts
    bubble = re.search(r"bubble: measured (\S+)%, theory \(p−1\)/\(m\+p−1\) = 20.0%", text)
    assert 20.0 < float(bubble.group(1)) < 25.0
    busy = [float(x) for x in re.search(r"busy time per stage \(ms\): \[(\S+), (\S+)\]", text).groups()]
    assert busy[1] > busy[0]                  # the last stage also runs the LM head and the loss
    assert "measured [2.0, 1.0], theory [2.0, 1.0]" in text
    worst3 = float(re.search(r"ZeRO-3, every rank after 2 steps: largest relative difference from one rank (\S+)",
                             text).group(1))
    assert worst3 <= 1e-9
    zero3 = re.findall(r"^\s+(\d) +(\d+) +(\d+) +(\d+) +(\d+) +(\d+) +(\d+)$", text, re.M)
    assert len(zero3) == 8
    for _, states, states1, states_est, sent, sent1, sent_est in zero3:   # = the estimate; less held, more sent
        assert states == states_est and sent == sent_est and int(states) < int(states1) and int(sent) > int(sent1)
    assert "overlap_comm with ZeRO-2 with PP" in text and "overlap_comm with ZeRO-3 with PP" in text
    assert count_images(outputs) == 1
