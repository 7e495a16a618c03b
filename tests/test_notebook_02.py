"""Execute notebooks/02_collectives top to bottom; any cell error fails the test. Then check
the values it printed against what the α-β model and the textbook say."""
import re

import pytest
from _notebook import count_images, run_notebook
from _textbook import TEXTBOOK

from minidist.device import PRESETS

pytestmark = [pytest.mark.notebook, pytest.mark.dist, pytest.mark.timeout(300)]
SPEC = PRESETS["A100-80GB-NVLink"]


def crossover(p):
    """Message size where ring all-reduce starts beating recursive doubling in the α-β model:
    log p·(α + nβ⁻¹) = 2(p−1)·(α + n/(pβ)) → n = (2(p−1) − log p)·αβ / (log p − 2(p−1)/p)."""
    lg = p.bit_length() - 1
    return (2 * (p - 1) - lg) * SPEC.alpha * SPEC.beta / (lg - 2 * (p - 1) / p)


def test_notebook_02_runs_and_measures_the_textbook():
    text, outputs = run_notebook("02_collectives.ipynb")
    # one 32-byte message: α + 32/β on the receiver's clock (printed to 0.1 ns)
    t = float(re.search(r"rank 1 got \[0\. 1\. 2\. 3\.\] at t = ([\d.]+) us", text).group(1))
    assert t == round(SPEC.message_time(32) * 1e6, 4)
    # the five operators on 4 ranks, rank r holding r + 1: the sum is 1 + 2 + 3 + 4 = 10
    ops = {line[:20].strip(): line[20:] for line in text.splitlines() if line.startswith(
        ("broadcast (root 0)", "reduce (root 0)", "all_reduce ", "reduce_scatter ", "all_gather "))}
    assert ops["broadcast (root 0)"].count("[1. 1. 1. 1.]") == 4
    assert ops["reduce (root 0)"].count("[10. 10. 10. 10.]") == 1 and ops["reduce (root 0)"].count("None") == 3
    assert ops["all_reduce"].count("[10. 10. 10. 10.]") == 4
    # chunk r of Σ_q (q + 1 + [0, 1, 2, 3]) = 10 + 4r
    assert re.findall(r"rank \d: \[(\d+)\.\]", ops["reduce_scatter"]) == ["10", "14", "18", "22"]
    assert ops["all_gather"].count("[ 0. 10. 20. 30.]") == 4
    # the busiest rank's bytes for every algorithm in the table, p = 4 and 8, n = 256 KiB
    rows = re.findall(r"^ ?(\d) (\w+)\[(\w+)\] +([\d,]+) +([\d,]+) ", text, re.M)
    assert len(rows) >= 2 * 17
    for p, op, alg, measured, printed in rows:
        p, n = int(p), 4 * (1 << 16)
        want = max(TEXTBOOK[op, alg][1](n, p, r)[0] for r in range(p))
        assert int(measured.replace(",", "")) == int(printed.replace(",", "")) == want, (op, alg, p)
    # the crossover: the model's equals the closed form; the simulated one is the first size
    # of the sweep (powers of 4 from 1 KiB) past it, the simulation being the model for p = 8
    found = re.search(r"p = 8: ring beats recursive doubling from ([\d,]+) bytes \(simulated\), "
                      r"model crossover ([\d,]+) bytes", text)
    simulated, model = (int(g.replace(",", "")) for g in found.groups())
    assert model == round(crossover(8))
    assert simulated == min(1 << k for k in range(10, 27, 2) if 1 << k > crossover(8))
    assert f"closed form: {crossover(8):,.0f} bytes" in text
    demo = re.search(r"crossover \(simulated, model\): (\d+) (\d+)", text)
    assert int(demo.group(2)) == round(crossover(4))
    assert "CollectiveMismatchError" in text and "[2] called all_gather" in text
    assert count_images(outputs) >= 5
