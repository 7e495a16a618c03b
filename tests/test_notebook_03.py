"""Notebook 03 (data parallel and ZeRO) runs top to bottom; the equivalence errors, the
memory and the bytes it prints are checked against the float64 bound and the ZeRO formulas
(tests/_formulas.py), the prefetch timings on the simulated clock."""
import ast
import re

import pytest
from _formulas import bytes_sent, gpt_units, model_states
from _notebook import run_notebook

from minidist.training.trainer import Trainer

pytestmark = [pytest.mark.notebook, pytest.mark.zero, pytest.mark.timeout(300)]

MODEL = {"n_layer": 2, "n_embd": 8, "n_head": 2, "block_size": 8}        # the notebook's config()
DATA = {"dataset": "copy", "n_digits": 3, "seq_len": 7}


def test_notebook_03_executes_and_prints_the_formulas(tmp_path):
    text, _ = run_notebook("03_data_parallel_and_zero.ipynb", workdir=tmp_path)
    # 1. every stage equals one rank on the global batch (float64: reordering only)
    diffs = dict(re.findall(r"stage (\d): max \|difference\| after 3 steps = ([\d.e+-]+)", text))
    assert sorted(diffs) == ["0", "1", "2", "3"] and all(float(d) < 1e-12 for d in diffs.values())
    # 2. model states and bytes per rank: float64 (w = 8), Adam (K = 16), p = 4, no padding
    vocab = Trainer({"model": MODEL, "data": DATA, "dtype": "float64"}).dataset.vocab_size
    units = gpt_units(MODEL, vocab)
    psi = sum(units)
    assert all(n % 4 == 0 for n in units)
    found = re.findall(r"stage (\d): model states (\{.*?\})\n.*?bytes/step (\d+)", text)
    assert [int(stage) for stage, _, _ in found] == [0, 1, 2, 3]
    for stage, states, sent in found:
        stage, states = int(stage), ast.literal_eval(states)
        want = model_states(stage, psi, psi // 4, w=8, k=16)
        assert {c: states[c] for c in want} == want
        assert states["total"] == states["parameters"] + states["gradients"] + states["optimizer_states"]
        assert int(sent) == bytes_sent(stage, 4, 8, psi // 4)        # 2(p−1)/p·Ψ·8; ZeRO-3 1.5×
    # 3. the demo chapter's table: fp32 Adam (w = 4, K = 8), measured = formula, offload on the host
    psi = int(re.search(r"GPT with Ψ = ([\d,]+) parameters \(fp32, Adam: K = 8\), 4 ranks", text)
              .group(1).replace(",", ""))
    assert psi % 4 == 0
    rows = {name.strip(): [int(v) for v in values.split()] for name, values in
            re.findall(r"^(DDP|ZeRO-1|ZeRO-2|ZeRO-3|ZeRO-3 \+ offload) +([\d ]+)$", text, re.M)}
    assert list(rows) == ["DDP", "ZeRO-1", "ZeRO-2", "ZeRO-3", "ZeRO-3 + offload"]
    for stage, name in enumerate(rows):
        offload = name.endswith("offload")
        want = model_states(min(stage, 3), psi, psi // 4, w=4, k=8, offload=offload, moments=8)
        params, grads, optim, host, total, formula, sent, sent_formula = rows[name]
        assert [params, grads, optim, host] == \
               [want[c] for c in ("parameters", "gradients", "optimizer_states", "host")]
        assert total == formula == params + grads + optim
        assert sent == sent_formula == bytes_sent(min(stage, 3), 4, 4, psi // 4)
    # 4. simulated clock: prefetching hides gathers; more budget, more parameters held, never slower
    with_pf, without = map(float, re.search(r"ZeRO-3 step: ([\d.]+) µs with prefetch, ([\d.]+) µs without",
                                            text).groups())
    assert with_pf < without
    budget = [tuple(map(float, m)) for m in re.findall(r"peak gathered \+ shard parameters +([\d.]+) KiB, "
                                                       r"step +([\d.]+) µs", text)]
    assert len(budget) == 3
    peaks, steps = zip(*budget)
    assert peaks[0] < peaks[1] < peaks[2] and steps[0] > steps[1] >= steps[2]
    assert "DDP: out of memory" in text and "ZeRO-3: fits" in text
    assert (tmp_path / "figures_03" / "03_zero3_trace.json").exists()
