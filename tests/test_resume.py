"""Resume says what it does: --load at the last step says there is nothing to train;
a config that would change the trajectory is refused naming the key, unless
--load-weights-only starts a new run from the checkpoint's weights (DeepSpeed's
load_module_only); a manifest edited by hand is refused by its own checksum; under mpirun a
config error is printed once; a closed pipe ends the CLI quietly."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from _mpi import SINGLE_THREADED, run_mpi

from minidist.checkpoint import consolidate, read_checkpoint
from minidist.train import main as train_main

pytestmark = [pytest.mark.checkpoint, pytest.mark.cli, pytest.mark.timeout(120)]

BASE = {"model": {"n_layer": 1, "n_embd": 16, "n_head": 2, "block_size": 8}, "data": {"seq_len": 8},
        "steps": 3, "eval_iters": 1, "train_micro_batch_size_per_gpu": 2, "dtype": "float64"}


def write(tmp_path, name, **change):
    cfg = json.loads(json.dumps(BASE))
    for key, value in change.items():
        section, _, leaf = key.partition("__")
        if leaf:
            cfg.setdefault(section, {})[leaf] = value
        else:
            cfg[section] = value
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return str(path)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    assert train_main(["--config", write(d, "base"), "--save", str(d / "run"), "--quiet"]) == 0
    return d


@pytest.mark.parametrize("change,key", [({"seed": 7}, "'seed'"), ({"data__seq_len": 6}, "'data.seq_len'"),
                                        ({"train_micro_batch_size_per_gpu": 4}, "global batch"),
                                        ({"optimizer": {"type": "AdamW", "params": {"betas": [0.8, 0.99]}}},
                                         "optimizer.params"),
                                        ({"model__dropout": 0.1}, "'model.dropout'")],
                         ids=["seed", "seq_len", "batch", "betas", "dropout"])
def test_a_change_of_trajectory_is_refused_naming_the_key_and_the_switch(saved, capsys, change, key):
    cfg = write(saved, "changed", steps=5, **change)
    assert train_main(["--config", cfg, "--load", str(saved / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert key in err and "--load-weights-only" in err, err


def test_the_learning_rate_and_steps_may_change(saved):
    cfg = write(saved, "lr", steps=5, optimizer={"type": "AdamW", "params": {"lr": 1e-4}})
    assert train_main(["--config", cfg, "--load", str(saved / "run"), "--quiet"]) == 0


def test_load_at_the_last_step_says_there_is_nothing_to_train(saved, capsys):
    assert train_main(["--config", write(saved, "same"), "--load", str(saved / "run"), "--quiet",
                       "--report", str(saved / "r.json")]) == 0
    assert "nothing to train" in capsys.readouterr().err
    assert len(json.loads((saved / "r.json").read_text())["steps"]) == 3      # the saved history, no new step


def test_load_weights_only_starts_a_new_run_from_the_weights(saved, tmp_path):
    """Another seed, data length and optimizer: accepted; step 0; the run's first weights are
    the checkpoint's (checked by saving after one step of lr 0: nothing moved)."""
    cfg = write(tmp_path, "new", seed=5, steps=1, data={"seq_len": 6},
                optimizer={"type": "SGD", "params": {"lr": 0.0}})
    assert train_main(["--config", cfg, "--load", str(saved / "run"), "--load-weights-only", "--quiet",
                       "--save", str(tmp_path / "new")]) == 0
    new = read_checkpoint(tmp_path / "new")
    assert new.step == 1 and len(new.manifest["losses"]) == 1
    want = consolidate(str(saved / "run"), str(tmp_path / "a.npz"))
    got = consolidate(str(tmp_path / "new"), str(tmp_path / "b.npz"))
    for name in want:
        assert np.array_equal(got[name], want[name]), name
    other = write(tmp_path, "other", model={**BASE["model"], "n_embd": 32})
    assert train_main(["--config", other, "--load", str(saved / "run"), "--load-weights-only", "--quiet"]) == 2


def test_a_hand_edited_manifest_is_refused(saved, tmp_path, capsys):
    import shutil
    shutil.copytree(saved / "run", tmp_path / "run")
    step_dir = read_checkpoint(tmp_path / "run").step_dir
    path = os.path.join(step_dir, "manifest.json")
    m = json.load(open(path))
    m["step"] = 2                                            # steps would repeat
    json.dump(m, open(path, "w"))
    assert train_main(["--config", write(tmp_path, "c", steps=5), "--load", str(tmp_path / "run"), "--quiet"]) == 2
    assert "SHA-256" in capsys.readouterr().err


def test_under_mpirun_a_config_error_is_printed_once(tmp_path):
    cfg = write(tmp_path, "bad", parallel={"tensor": 3})
    p = run_mpi(2, ["-m", "minidist.train", "--config", cfg, "--quiet"], timeout=60)
    assert p.returncode != 0
    assert p.stderr.count("error: config key 'parallel.tensor'") == 1, p.stderr


def test_a_closed_pipe_ends_the_cli_quietly(tmp_path):
    cfg = write(tmp_path, "pipe", steps=1)
    cmd = f"{sys.executable} -m minidist.train --config {cfg} --quiet | head -1"
    p = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, **SINGLE_THREADED))
    assert p.returncode == 0 and p.stdout.startswith("done:") and "Traceback" not in p.stderr, p.stderr
