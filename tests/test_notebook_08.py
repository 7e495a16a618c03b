"""Execute notebooks/08_distillation.ipynb top to bottom and check what it measures."""
import re

import pytest
from _notebook import run_notebook

pytestmark = [pytest.mark.distill, pytest.mark.notebook]


@pytest.mark.timeout(120)
def test_notebook_08_distils_a_better_student_and_streams_the_formula_bytes():
    text, _ = run_notebook("08_distillation.ipynb")
    # T flattens the teacher's distribution: the top probability falls as T grows
    tops = [float(m) for m in re.findall(r"T = \d: teacher distribution \[([\d.]+)", text)]
    assert len(tops) == 3 and tops[0] > tops[1] > tops[2]
    assert re.search(r"alpha = 0 is plain cross-entropy: 1\.609\d* = ln 5 = 1\.609", text)
    assert "PKD-Skip, 12-block teacher -> 6-block student: [(1, 2), (2, 4), (3, 6), (4, 8), (5, 10)]" in text
    assert "error: PKD-Skip maps" in text
    m = re.search(r"frozen teacher: (\d+) parameters, memory: parameters (\d+) B \(4 B each\), gradients 0 B, "
                  r"optimizer states 0 B", text)
    assert m and int(m.group(2)) == 4 * int(m.group(1))
    hard, kd, margin = map(float, re.search(r"held-out loss: hard labels ([\d.]+), distilled ([\d.]+), margin "
                                            r"(-?[\d.]+)", text).groups())
    assert kd < hard and margin == pytest.approx(hard - kd, abs=2e-4) and margin > 0.01
    for k, got, formula in re.findall(r"top_k=(\w+): a student receives (\d+) B per step; .* = (\d+) B", text):
        assert int(got) == int(formula) == (2 * 9 * 14 * 4 if k == "None" else 2 * 9 * 4 * 6)
    three = re.search(r"full logits, 3 ranks: +\[(.*)\]", text).group(1)
    one = re.search(r"full logits, 1 process: \[(.*)\]", text).group(1)
    assert [float(v) for v in three.split(",")] == pytest.approx([float(v) for v in one.split(",")], abs=2e-5)
