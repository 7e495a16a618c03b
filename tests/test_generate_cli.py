"""``python -m minidist.generate``: text from the --save checkpoints of DDP, ZeRO-3, TP and PP runs
(the same text as from one rank trained on the same global batch), and clear refusals of a missing or
damaged checkpoint, an empty prompt, characters outside the vocabulary and a prompt longer than the
block size."""
import copy
import os
import subprocess
import sys

import pytest
from _checkpoint import train

from minidist.generate import main

pytestmark = [pytest.mark.inference, pytest.mark.cli, pytest.mark.timeout(180)]

CONFIG = {"model": {"n_layer": 2, "n_embd": 16, "n_head": 4, "block_size": 16},
          "data": {"dataset": "english", "seq_len": 16}, "dtype": "float64", "steps": 2, "eval_iters": 1,
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}}}
# (ranks, micro-batch per rank, config): every layout trains on the same global batch of 2 sequences
LAYOUTS = {"one rank": (1, 2, {}), "DDP": (2, 1, {}), "ZeRO-3": (2, 1, {"zero_optimization": {"stage": 3}}),
           "TP": (2, 2, {"parallel": {"tensor": 2}}), "PP": (2, 2, {"parallel": {"pipeline": 2}})}
PROMPT = "Four score"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = {}
    for name, (world, micro, extra) in LAYOUTS.items():
        cfg = {**copy.deepcopy(CONFIG), **extra, "train_micro_batch_size_per_gpu": micro}
        out[name] = str(tmp_path_factory.mktemp(name.replace(" ", "_")))
        train(cfg, world, save=out[name])
    return out


def _generate(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_every_layout_generates_the_one_rank_text(saved, capsys):
    texts = {}
    for name, path in saved.items():
        for sampling in (["--temperature", "0"], ["--temperature", "0.8", "--top-k", "5", "--seed", "3"]):
            code, out, err = _generate(capsys, "--load", path, "--prompt", PROMPT, "--max-new-tokens", "6", *sampling)
            assert code == 0, err
            assert out.startswith(PROMPT) and len(out) == len(PROMPT) + 6 + 1       # the text and a newline
            assert "1 prefill(s), 5 decode step(s)" in err and "(512 B per token = 2·n_layer·n_embd·8)" in err
            texts[name, sampling[1]] = out
    for name in LAYOUTS:                                   # weights within 1e-12 of one rank's: the same text
        assert texts[name, "0"] == texts["one rank", "0"] and texts[name, "0.8"] == texts["one rank", "0.8"], name
    code, out, err = _generate(capsys, "--load", saved["TP"], "--prompt", PROMPT, "--max-new-tokens", "6",
                               "--temperature", "0", "--no-cache")
    assert code == 0 and out == texts["one rank", "0"] and "1 prefill(s)" in err and "5 decode step(s)" in err


def test_bad_prompts_are_refused(saved, capsys):
    for prompt, message in (("", "--prompt is empty: give at least one character"),
                            ("Four scöre €", "--prompt has 2 character(s) outside the model's vocabulary: 'ö', '€' "
                                             "(the first at position 7)"),
                            ("x" * 17, "--prompt is 17 characters, longer than the model's block_size 16 "
                                       "(the positions it has embeddings for); give at most 16")):
        code, out, err = _generate(capsys, "--load", saved["DDP"], "--prompt", prompt)
        assert code == 2 and out == "" and err.startswith("error: ") and message in err, err
    for flag, value, message in (("--temperature", "-1", "temperature must be >= 0"),
                                 ("--top-k", "0", "top_k must be a positive integer"),
                                 ("--max-new-tokens", "-3", "max_new_tokens must be an integer >= 0")):
        code, _, err = _generate(capsys, "--load", saved["DDP"], "--prompt", "Four", flag, value)
        assert code == 2 and message in err, err


def test_missing_and_damaged_checkpoints_are_refused(saved, tmp_path, capsys):
    code, _, err = _generate(capsys, "--load", str(tmp_path / "nowhere"), "--prompt", PROMPT)
    assert code == 2 and err.startswith(f"error: checkpoint {tmp_path / 'nowhere'}: does not exist")
    damaged = tmp_path / "damaged"
    subprocess.run(["cp", "-r", saved["ZeRO-3"], str(damaged)], check=True)
    step = damaged / open(damaged / "latest").read().strip()
    shard = step / "rank_00001.npz"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF                                          # one flipped byte
    shard.write_bytes(bytes(data))
    proc = subprocess.run([sys.executable, "-m", "minidist.generate", "--load", str(damaged), "--prompt", PROMPT],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert "rank_00001.npz" in proc.stderr and "SHA-256 checksum" in proc.stderr, proc.stderr
