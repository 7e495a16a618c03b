"""The compression chapter (issue 26): every held-out number comes from 3 seeds of a GPT trained by
the Trainer; the bytes and FLOPs it prints equal the formulas; and the README's sentences about
its results hold (each assertion below is one of them)."""
import re

import numpy as np
import pytest
from _chapter import run_chapter

from minidist.compression import accuracy as A
from minidist.demo import compression
from minidist.demo.__main__ import CHAPTERS

pytestmark = [pytest.mark.compression, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def chapter(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    res, text = run_chapter(compression.run, out)
    return res, text, out


def _per_seed(res, *keys):
    vals = []
    for r in res["results"]:
        v = r
        for k in keys:
            v = v[k]
        vals.append(v)
    return np.array(vals)


def test_chapter_is_registered_and_writes_its_figures(chapter):
    res, text, out = chapter
    assert ("compression", "minidist.demo.compression") in CHAPTERS
    for name in ("11_quantization_accuracy.png", "11_quantization_errors.png", "11_pruning_accuracy.png",
                 "11_compression_savings.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["seed"] for r in res["results"]] == list(range(compression.SEEDS)) and compression.SEEDS >= 3
    assert f"over {compression.SEEDS} seeds" in text


def test_held_out_losses_come_from_the_trainers_held_out_split(chapter):
    """The fp32 loss is the trainer's own final evaluation (held-out split), seed by seed, and
    seeds differ (different initialisations and batches)."""
    res, _, _ = chapter
    base = _per_seed(res, "base")
    assert np.array_equal(base, _per_seed(res, "quantization", "fp32"))
    assert len(set(base.tolist())) == len(base)
    assert np.all(base < 2.9)                                  # learnt: the unigram entropy is 3.19 nats


def test_printed_costs_equal_the_formulas(chapter):
    res, text, _ = chapter
    rows = re.findall(r"^(\S+(?: \S+)*?)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)$", text, re.M)
    assert len(rows) == len(res["measured"]["costs"]) == 9
    for label, pbytes, fbytes, mm, fmm, _, _ in rows:
        assert pbytes == fbytes and mm == fmm, label
    costs = res["measured"]["costs"]
    dense, sparse = costs["dense fp32"], costs["unstructured 50%"]
    assert (sparse.parameter_bytes, sparse.flops, sparse.time) == (dense.parameter_bytes, dense.flops, dense.time)
    assert costs["structured 50%"].saved_from(dense)["matmul_flops"] > 0.45
    assert costs["W8A8 dynamic"].time < 0.75 * dense.time                     # int8 units at twice the rate
    csr = res["measured"]["csr"]
    assert csr[0.5][1] > csr[0.5][0] > csr[0.75][1]                            # CSR pays off only past 50 %


def test_readme_claims_about_quantization(chapter):
    res, _, _ = chapter
    fp32 = _per_seed(res, "quantization", "fp32")
    d = {label: {b: _per_seed(res, "quantization", label, b) - fp32 for b in A.BITS} for label in A.SCHEMES}
    # 8 bits (linear schemes) and every W8A8 variant: within 1e-3 nats of fp32 on every seed
    for label in ("per-tensor symmetric", "per-channel symmetric", "per-channel asymmetric", "group-32 symmetric"):
        assert np.all(np.abs(d[label][8]) < 1e-3), label
    for name in ("W8A8 static, min-max", "W8A8 static, percentile 99.9", "W8A8 dynamic"):
        assert np.all(np.abs(_per_seed(res, "quantization", name) - fp32) < 1e-3), name
    # 2 bits per tensor breaks the model; per channel (or group) survives
    assert np.all(d["per-tensor symmetric"][2] > 0.3)
    for label in ("per-channel symmetric", "per-channel asymmetric", "group-32 symmetric"):
        assert np.all(d[label][2] < 0.1) and np.all(d[label][2] < d["per-tensor symmetric"][2] / 5), label
    # NF4 at 4 bits: within 1e-3 nats of fp32 on every seed
    assert np.all(np.abs(_per_seed(res, "quantization", "NF4 (double quant)") - fp32) < 1e-3)
    # QAT at 2 bits beats the PTQ of the dense model trained as long, on every seed
    assert np.all(_per_seed(res, "qat", "QAT 2-bit") < _per_seed(res, "qat", "dense, then PTQ 2-bit") - 0.01)


def test_readme_claims_about_pruning(chapter):
    res, _, _ = chapter
    p = lambda label, s: _per_seed(res, "pruning", label, s)                      # noqa: E731
    for s in (0.75, 0.9):
        assert np.all(p("magnitude, global", s) < p("magnitude, layer", s))    # global beats per layer
        assert np.all(p("taylor, global", s) < p("magnitude, global", s))      # Taylor beats magnitude
    for f in A.UNIT_FRACTIONS:                                                  # whole heads/channels cost more
        assert np.all(p("structured: heads + channels by norm", f) > p("magnitude, global", f))
    l1 = _per_seed(res, "trained_pruning", "L1 then magnitude, global", 0.9)
    assert np.all(l1 < p("magnitude, global", 0.9))
    assert np.all(_per_seed(res, "trained_pruning", "l1_near_zero") > 0.2)
    it = _per_seed(res, "trained_pruning", "iterative magnitude + fine-tune", 0.9)
    assert np.all(it < p("magnitude, global", 0.9) - 0.03)
    assert np.allclose(_per_seed(res, "trained_pruning", "iterative_sparsity")[:, -1], 0.9, atol=1e-4)
