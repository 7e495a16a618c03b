"""A save killed midway leaves ``latest`` on the previous checkpoint; a checkpoint that does
not fit is refused before anything is loaded; ``inspect`` and ``consolidate`` on the CLI.
(Truncated, corrupted and mismatched checkpoints are in the catalog of test_bad_input.py.)"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from minidist.checkpoint import CheckpointError, load_into, read_checkpoint, saver
from minidist.checkpoint.__main__ import main as ckpt_main
from minidist.train import main as train_main
from minidist.training.trainer import Trainer

pytestmark = [pytest.mark.checkpoint, pytest.mark.timeout(60)]

CONFIG = {"model": {"n_layer": 1, "n_embd": 16, "n_head": 2, "block_size": 8},
          "data": {"dataset": "copy", "n_digits": 3}, "steps": 6, "eval_iters": 1,
          "train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 2}}

# a run whose second save dies (SIGKILL, as the OOM killer or a preempted node would) while
# rank 1's shard is half written
KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    import minidist.checkpoint.save as save
    from minidist.train import main
    real = save.write_atomic
    def dying(path, data):
        if "step_00000004" in path and path.endswith("rank_00001.npz"):
            with open(path + ".partial", "wb") as f:
                f.write(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        real(path, data)
    save.write_atomic = dying
    sys.exit(main(sys.argv[1:]))
""")


def test_save_killed_midway_leaves_latest_on_the_previous_checkpoint(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(CONFIG))
    ck = tmp_path / "ck"
    r = subprocess.run([sys.executable, "-c", KILLED_SAVE, "--config", cfg, "--world-size", "2", "--quiet",
                        "--save", ck, "--save-interval", "2"], capture_output=True, text=True, timeout=60)
    assert r.returncode == -9
    assert (ck / "latest").read_text().strip() == "step_00000002"
    assert not (ck / "step_00000004" / "manifest.json").exists()
    # the half-written step is refused by name; the folder's latest still loads and finishes the run
    assert ckpt_main(["inspect", str(ck / "step_00000004")]) == 2
    assert train_main(["--config", str(cfg), "--world-size", "2", "--quiet", "--load", str(ck)]) == 0


def test_inspect_and_consolidate_cli(tmp_path, capsys):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(CONFIG))
    assert train_main(["--config", str(cfg), "--world-size", "2", "--quiet", "--save", str(tmp_path / "ck")]) == 0
    capsys.readouterr()
    assert ckpt_main(["inspect", str(tmp_path / "ck")]) == 0
    out = capsys.readouterr().out
    assert "after step 6" in out and "zero2" in out and "rank_00001.npz" in out and "exp_avg_sq (step 6)" in out
    assert ckpt_main(["consolidate", str(tmp_path / "ck"), str(tmp_path / "full.npz")]) == 0
    full = np.load(tmp_path / "full.npz")
    assert "transformer.wte.weight" in full.files and full["transformer.wte.weight"].dtype == np.float32
    r = subprocess.run([sys.executable, "-m", "minidist.checkpoint", "inspect", str(tmp_path / "nothing")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def _params(trainer):
    return {n: p.data.copy() for n, p in trainer.model.named_parameters()}


@pytest.mark.parametrize("damage", ["missing_parameter", "wrong_shape", "missing_moment"])
def test_nothing_is_half_loaded(tmp_path, damage):
    """A checkpoint that does not fit this model is refused before any array is touched."""
    cfg = {**CONFIG, "zero_optimization": {"stage": 0}}
    Trainer(cfg).fit(progress=False, on_step=saver(str(tmp_path / "ck")))
    ckpt = read_checkpoint(str(tmp_path / "ck"))
    u = ckpt.universal
    if damage == "missing_parameter":
        del u["transformer.ln_f.bias"]
    elif damage == "wrong_shape":
        u["transformer.h.0.ln_1.weight"]["param"] = np.zeros(17, np.float32)
    else:
        del u["transformer.wpe.weight"]["exp_avg_sq"]
    fresh = Trainer(cfg)
    before = _params(fresh)
    with pytest.raises(CheckpointError, match="ln_f.bias|ln_1.weight|exp_avg"):
        load_into(fresh, ckpt)
    after = _params(fresh)
    assert all(np.array_equal(before[n], after[n]) for n in before)
    assert fresh.optimizer.state == {} and fresh.start_step == 0 and fresh.history == []
    assert os.path.exists(ckpt.step_dir)
