"""Single-rank training: it learns, the report has minidist.report's fields, bad configs are named."""
import json
import subprocess
import sys

import numpy as np
import pytest

from minidist.training.config import ConfigError, load_config
from minidist.training.trainer import Trainer

pytestmark = [pytest.mark.engine, pytest.mark.cli]
SMALL = {"steps": 120, "model": {"n_layer": 2, "n_embd": 48, "n_head": 4, "block_size": 32},
         "data": {"seq_len": 32}, "optimizer": {"type": "AdamW", "params": {"lr": 2e-3}}}


def test_tiny_gpt_learns_well_below_the_unigram_entropy():
    tr = Trainer(SMALL)
    final = tr.fit(progress=False)
    assert final["val_loss"] < final["unigram_entropy"] - 0.4, final
    assert tr.history[-1]["loss"] < tr.history[0]["loss"] - 1.0


def test_same_config_same_numbers():
    a = Trainer({**SMALL, "steps": 3})
    b = Trainer({**SMALL, "steps": 3})
    a.fit(progress=False)
    b.fit(progress=False)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        np.testing.assert_array_equal(pa.data, pb.data)


def test_synthetic_task_reaches_exact_match():
    cfg = {"steps": 250, "data": {"dataset": "reverse", "n_digits": 3, "seq_len": 16}, "train_micro_batch_size_per_gpu": 32,
           "model": {"n_layer": 2, "n_embd": 32, "n_head": 4, "block_size": 16},
           "optimizer": {"type": "AdamW", "params": {"lr": 3e-3}}}
    final = Trainer(cfg).fit(progress=False)
    assert final["exact_match"] > 0.9, final


@pytest.mark.parametrize("cfg,key", [
    ({"zero_optimization": {"stag": 1}}, "zero_optimization.stag"),
    ({"optimiser": {}}, "optimiser"),
    ({"steps": 0}, "steps"),
    ({"train_micro_batch_size_per_gpu": 2.5}, "train_micro_batch_size_per_gpu"),
    ({"zero_optimization": {"stage": 4}}, "zero_optimization.stage"),
    ({"model": {"n_embd": 30, "n_head": 4}}, "model.n_head"),
    ({"data": {"seq_len": 128}}, "data.seq_len"),
    ({"fp16": {"enabled": "yes"}}, "fp16.enabled"),
    ({"data": {"dataset": "add", "n_digits": 4}, "model": {"block_size": 12}}, "model.block_size"),
    ({"data": {"dataset": "copy", "n_digits": 0}}, "data.n_digits"),
])
def test_bad_config_names_the_key(cfg, key):
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert err.value.key == key and f"'{key}'" in str(err.value)


def test_a_task_sets_its_own_sequence_length():
    """A synthetic task needs no data.seq_len: its length follows from n_digits (copy with 3
    digits: "123|123." → 7 inputs), so a block of 7 is enough."""
    cfg = {"data": {"dataset": "copy", "n_digits": 3}, "model": {"block_size": 7, "n_layer": 1, "n_embd": 16,
                                                                 "n_head": 2}, "steps": 1}
    trainer = Trainer(cfg)
    x, _ = trainer.batch(0, 0)
    assert x.shape[1] == 7 == trainer.dataset.seq_len


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match="did you mean 'zero_optimization.stage'"):
        load_config({"zero_optimization": {"stag": 1}})


def test_cli_writes_the_report(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({**SMALL, "steps": 5}))
    rep = tmp_path / "r.json"
    out = subprocess.run([sys.executable, "-m", "minidist.train", "--config", str(cfg), "--report", str(rep)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "step 5/5" in out.stderr                       # progress shown while it runs
    r = json.loads(rep.read_text())
    assert r["world_size"] == 1 and len(r["steps"]) == 5
    assert set(r["steps"][0]) >= {"step", "loss", "loss_scale", "sim_time"}
    rank = r["ranks"][0]
    assert set(rank["memory"]) >= {"peak_bytes", "peak_by_category", "resident_by_category"}
    cats = {"parameters", "gradients", "optimizer_states", "activations", "kv_cache", "buffers", "other"}
    assert set(rank["memory"]["resident_by_category"]) == cats
    n = r["model"]["n_params"]
    assert rank["memory"]["resident_by_category"]["parameters"] == 4 * n
    assert rank["memory"]["resident_by_category"]["optimizer_states"] == 8 * n
    assert set(rank["comm"]) >= {"bytes_sent", "bytes_received", "by_op"}
    assert r["estimate"] is not None


def test_cli_rejects_a_bad_key_with_its_name(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"modle": {}}))
    out = subprocess.run([sys.executable, "-m", "minidist.train", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "'modle'" in out.stderr and "did you mean 'model'" in out.stderr
