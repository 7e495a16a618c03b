"""The parameter-efficient fine-tuning chapter (issue 27): the side-by-side table comes from
held-out runs over 3 seeds; every cost it prints equals its formula; and the README's
sentences about its results hold (each assertion below is one of them)."""
import pathlib
import re

import numpy as np
import pytest
from _chapter import run_chapter

from minidist.demo import peft
from minidist.demo.__main__ import CHAPTERS
from minidist.peft import compare as P
from minidist.peft import costs as C

pytestmark = [pytest.mark.peft, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def chapter(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    res, text = run_chapter(peft.run, out)
    return res, text, out


def losses(res, label):
    return np.array([r["held_out_loss"] for r in res["results"] if r["method"] == label])


def test_chapter_is_registered_and_writes_its_figures(chapter):
    res, text, out = chapter
    assert ("peft", "minidist.demo.peft") in CHAPTERS
    for name in ("14_peft_comparison.png", "14_peft_costs.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted({r["seed"] for r in res["results"]}) == list(range(peft.SEEDS)) and peft.SEEDS >= 3
    assert [r["method"] for r in res["results"]][::peft.SEEDS] == list(P.METHODS)
    assert f"over {peft.SEEDS} seeds" in text


def test_the_table_is_the_held_out_evaluation_of_each_run(chapter):
    res, text, _ = chapter
    for label, s in res["summary"].items():
        v = losses(res, label)
        assert s["held_out_loss"]["mean"] == pytest.approx(v.mean()) and len(set(v.tolist())) == len(v), label
        assert f"{s['held_out_loss']['mean']:.3f} [{v.min():.3f}, {v.max():.3f}]" in text
    assert "held-out" in text


def test_every_printed_cost_equals_its_formula(chapter):
    res, text, _ = chapter
    pairs = re.findall(r"(\d+) = (\d+)", text)
    assert len(pairs) == 6 * len(P.METHODS) + 3 * len(peft.TRAFFIC)
    assert all(a == b for a, b in pairs), [p for p in pairs if p[0] != p[1]]
    for c in res["costs"].values():
        assert (c["trainable"], c["gradients"], c["optimizer"], c["parameters"], c["forward_flops"], c["dw_flops"]) \
            == (c["trainable_formula"], c["gradients_formula"], c["optimizer_formula"], c["parameters_formula"],
                c["forward_flops_formula"], c["dw_flops_formula"])
    assert res["costs"]["prefix-tuning (p = 4)"]["stored"] == 2 * 2 * 4 * 32       # 2·L·p·h once the MLP is dropped
    assert res["merged"] <= 1e-12


def test_readme_claims_about_traffic(chapter):
    """Under DDP and ZeRO-2 only trainable gradients travel; ZeRO-3 still gathers the frozen
    shards, so a PEFT step sends most of what full fine-tuning sends."""
    t = chapter[0]["traffic"]
    full = t["full fine-tuning"]
    for label in peft.TRAFFIC[1:]:
        assert t[label]["DDP"]["measured"] < 0.2 * full["DDP"]["measured"], label
        assert t[label]["ZeRO-2"]["measured"] < 0.2 * full["ZeRO-2"]["measured"], label
        assert t[label]["ZeRO-3"]["measured"] > 0.65 * full["ZeRO-3"]["measured"], label
        assert t[label]["ZeRO-3"]["frozen_gathered"] > 0.8 * t[label]["ZeRO-3"]["measured"] - \
            t[label]["DDP"]["measured"], label


def test_readme_claims_about_accuracy_and_memory(chapter):
    res = chapter[0]
    s = res["summary"]
    lora = [k for k in P.METHODS if "LoRA" in k]
    stalled = ("adapter (m = 8)", "prefix-tuning (p = 4)", "P-tuning v2 (p = 4)")
    # every LoRA/QLoRA run ends below every adapter and prefix run, on every seed
    assert max(losses(res, k).max() for k in lora) < min(losses(res, k).min() for k in stalled)
    assert np.all(losses(res, "full fine-tuning") < 0.25)
    assert all(np.all(losses(res, k) > 1.2) for k in stalled)
    # r = 4 is enough here: within 0.05 nats of full fine-tuning on average, with 13 % of the parameters trainable
    assert abs(s["LoRA r = 4"]["held_out_loss"]["mean"] - s["full fine-tuning"]["held_out_loss"]["mean"]) < 0.05
    assert s["LoRA r = 4"]["share"]["mean"] < 0.14
    # QLoRA: within 0.1 nats of LoRA r = 4 with the fewest device bytes, and the slowest step (paging)
    assert abs(s["QLoRA r = 4"]["held_out_loss"]["mean"] - s["LoRA r = 4"]["held_out_loss"]["mean"]) < 0.1
    device = {k: v["model_states"]["total"] for k, v in s.items()}
    assert min(device, key=device.get) == "QLoRA r = 4"
    assert max(s, key=lambda k: s[k]["step_time"]["mean"]) == "QLoRA r = 4"
    assert min(s, key=lambda k: s[k]["share"]["mean"]) == "P-tuning v2 (p = 4)"


def test_readme_claims_about_flops_and_scale(chapter):
    costs = chapter[0]["costs"]
    ratio = {k: c["backward_flops"] / c["forward_flops"] for k, c in costs.items()}
    assert abs(ratio.pop("full fine-tuning") - 2.0) < 0.05 and max(ratio.values()) < 1.4
    medium = {"n_layer": 24, "n_embd": 1024, "vocab_size": 50257, "block_size": 1024, "bias": True}
    lora = {"peft_type": "LORA", "r": 4, "target_modules": P.ALL_LINEAR}
    assert C.trainable_parameters(medium, lora) / C.trainable_parameters(medium, None) < 0.005


def test_the_readme_table_is_the_chapters(chapter):
    """The README's side-by-side table quotes this chapter's runs (losses to a printed digit or two)."""
    s = chapter[0]["summary"]
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    rows = re.findall(r"^\| (.+?) \| ([\d,]+) \| [\d.]+ % \| ([\d,]+) \| ([\d.]+) \| ([\d.]+) \[([\d.]+), ([\d.]+)\] \| "
                      r"([\d.]+) \|$", readme, re.M)
    assert [r[0] for r in rows] == list(P.METHODS)
    for label, trainable, states, step, mean, lo, hi, exact in rows:
        t = s[label]
        ms = t["model_states"]
        assert int(trainable.replace(",", "")) == t["trainable"]["mean"] and \
            int(states.replace(",", "")) == ms["total"] + ms["host"], label
        assert abs(float(step) - t["step_time"]["mean"] * 1e6) < 0.006, label
        for got, key in ((mean, "mean"), (lo, "min"), (hi, "max")):
            assert abs(float(got) - t["held_out_loss"][key]) < 2e-3, (label, key)
        assert abs(float(exact) - t["exact_match"]["mean"]) < 0.02, label
