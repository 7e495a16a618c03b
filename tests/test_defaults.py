"""One vocabulary (issue 15): every default and canonical name is defined once, in
minidist/defaults.py, and the estimator, the config and the trainer's dataset agree on it.
Also the state the in-process ranks (threads of one process) share: bounded, read-only, lazy."""
import ast
import functools
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from minidist import defaults
from minidist.estimate import estimate, pipeline_bubble
from minidist.training.config import ConfigError, data_config, load_config, sequence_length
from minidist.training.data import make_dataset

PACKAGE = pathlib.Path(defaults.__file__).parent

# torch.distributed.pipelining's schedule classes and the schedule each one runs (torch's
# ScheduleInterleavedZeroBubble, the paper's ZB-1p over v chunks, is refused: see
# tests/test_pipeline_schedules.py)
TORCH_SCHEDULES = {"ScheduleGPipe": "gpipe", "Schedule1F1B": "1f1b",
                   "ScheduleInterleaved1F1B": "interleaved_1f1b",
                   "ScheduleZBVZeroBubble": "zb_v", "ScheduleDualPipeV": "dualpipe_v"}


# ---------------------------------------------------------------- the estimator and the trainer agree
@pytest.mark.parametrize("config", [{}, {"data": {"dataset": "add", "n_digits": 4}, "model": {"block_size": 16}},
                                    {"parallel": {"tensor": 2, "sequence_parallel": True},
                                     "gradient_accumulation_steps": 3}])
def test_estimate_of_a_config_reads_the_trainers_values(config):
    world = config.get("parallel", {}).get("tensor", 1)
    cfg = load_config(config, world_size=world)
    r = estimate(config, world_size=world)["inputs"]
    m = cfg["model"]
    vocab = make_dataset(data_config(cfg)).vocab_size                 # what the trainer builds its GPT with
    assert (r["n_layer"], r["n_embd"], r["n_head"], r["block_size"]) == \
        (m["n_layer"], m["n_embd"], m["n_head"], m["block_size"])
    assert r["vocab_size"] == vocab
    assert r["micro_batch"] == cfg["train_micro_batch_size_per_gpu"]
    assert r["micro_batches"] == cfg["gradient_accumulation_steps"]
    assert r["seq_len"] == sequence_length(cfg)[0]
    assert r["device"] == cfg["device"] == defaults.DEFAULT_DEVICE
    assert r["zero_stage"] == cfg["zero_optimization"]["stage"]
    assert r["schedule"] == cfg["parallel"]["schedule"]
    assert r["sequence_parallel"] == cfg["parallel"]["sequence_parallel"]
    assert r["optimizer"] == cfg["optimizer"]["type"].lower()


def test_the_text_corpus_default_window_is_one_value():
    cfg = load_config({})
    assert data_config(cfg)["seq_len"] == defaults.TEXT_SEQ_LEN
    assert make_dataset({}).seq_len == defaults.TEXT_SEQ_LEN       # the data layer alone: same length
    assert estimate({})["inputs"]["seq_len"] == defaults.TEXT_SEQ_LEN


# ---------------------------------------------------------------- each literal written once
@functools.cache
def _all_constants() -> tuple:
    """(file:line, value) of every literal in minidist's source (docstrings are whole strings)."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant):
                out.append((f"{path.relative_to(PACKAGE.parent)}:{node.lineno}", node.value))
    return tuple(out)


def _constants(value) -> list[str]:
    """file:line of every literal equal to ``value`` (and of its type) in minidist's source."""
    return [where for where, v in _all_constants() if type(v) is type(value) and v == value]


@pytest.mark.parametrize("name", list(defaults.SCHEDULES) + list(defaults.STRATEGIES))
def test_each_schedule_and_strategy_name_is_written_once(name):
    hits = _constants(name)
    assert len(hits) == 1 and hits[0].startswith("minidist/defaults.py:"), \
        f"{name!r} is written at {hits}: write it once in minidist/defaults.py and import the constant"


def test_the_default_device_is_written_once_beside_the_preset_table():
    hits = _constants(defaults.DEFAULT_DEVICE)
    elsewhere = [h for h in hits if not h.startswith(("minidist/defaults.py:", "minidist/device.py:"))]
    assert elsewhere == [], "import DEFAULT_DEVICE from minidist.defaults"
    assert sum(h.startswith("minidist/defaults.py:") for h in hits) == 1
    # device.py may name it only as data of its PRESETS table (the key and the spec's name)
    table = {h for h in hits if h.startswith("minidist/device.py:")}
    assert len(table) <= 2 and len({h.split(":")[1] for h in table}) <= 1


@pytest.mark.parametrize("name", ["REDUCE_BUCKET_SIZE", "ALLGATHER_BUCKET_SIZE", "STAGE3_PREFETCH_BUCKET_SIZE",
                                  "STAGE3_MAX_LIVE_PARAMETERS", "DDP_BUCKET_SIZE"])
def test_bucket_defaults_are_written_only_in_defaults(name):
    value = getattr(defaults, name)
    assert {h.split(":")[0] for h in _constants(value)} == {"minidist/defaults.py"}, name
    assert load_config({})["zero_optimization"].get(name.lower(), value) == value


# ---------------------------------------------------------------- schedule names
@pytest.mark.parametrize("cls,schedule", sorted(TORCH_SCHEDULES.items()))
def test_torch_pipelining_class_names_normalise_to_their_schedule(cls, schedule):
    assert defaults.normalize_schedule(cls) == schedule
    assert defaults.normalize_schedule(cls.upper()) == schedule                  # case-insensitive
    assert load_config({"parallel": {"schedule": cls}})["parallel"]["schedule"] == schedule


def test_canonical_schedule_names_and_other_spellings():
    for name in defaults.SCHEDULES:
        assert defaults.normalize_schedule(name) == name
        assert defaults.normalize_schedule(name.upper().replace("_", "-")) == name       # "ZB-H1" -> "zb_h1"
    assert set(TORCH_SCHEDULES.values()) <= set(defaults.SCHEDULES)
    with pytest.raises(ValueError) as e:
        defaults.normalize_schedule("ScheduleLoopedBFS")          # a torch schedule minidist does not have
    assert all(name in str(e.value) for name in defaults.SCHEDULES)
    with pytest.raises(ConfigError, match="parallel.schedule.*choose one of"):
        load_config({"parallel": {"schedule": "2f2b"}})


def test_the_estimator_takes_every_spelling_and_names_what_it_cannot_estimate():
    one = pipeline_bubble("1f1b", 4, 8)
    assert pipeline_bubble("Schedule1F1B", 4, 8) == one
    assert pipeline_bubble("ScheduleInterleaved1F1B", 4, 8, v=2)["schedule"] == "interleaved_1f1b"
    assert pipeline_bubble("ScheduleDualPipeV", 4, 8)["schedule"] == "dualpipe_v"
    with pytest.raises(ValueError, match="dualpipe_v.*at least 2 × pipeline ranks = 8"):
        pipeline_bubble("ScheduleDualPipeV", 4, 6)                # too few micro-batches for the V


# ---------------------------------------------------------------- config keys
def test_micro_batches_key_points_at_gradient_accumulation_steps():
    with pytest.raises(ConfigError, match="gradient_accumulation_steps") as e:
        load_config({"parallel": {"micro_batches": 4}})
    assert e.value.key == "parallel.micro_batches"


def test_sequence_parallel_is_a_known_boolean_key():
    assert load_config({})["parallel"]["sequence_parallel"] is False
    on = {"parallel": {"tensor": 2, "sequence_parallel": True}}      # it splits over tensor-parallel ranks
    assert load_config(on, world_size=2)["parallel"]["sequence_parallel"] is True
    with pytest.raises(ConfigError, match="true or false"):
        load_config({"parallel": {"sequence_parallel": "yes"}})


def test_activation_checkpointing_is_a_section_that_does_something():
    """Once accepted only to be refused, the section now drives minidist.recompute: its keys
    are Megatron's and DeepSpeed's, and a misspelt one is still refused by name."""
    assert defaults.DEFAULTS["activation_checkpointing"]["granularity"] == "none"
    assert load_config({"activation_checkpointing": {"granularity": "full"}})["activation_checkpointing"] == {
        "granularity": "full", "method": "uniform", "num_layers": 1, "cpu_checkpointing": False,
        "partition_activations": False}
    with pytest.raises(ConfigError, match="unknown key"):
        load_config({"activation_checkpointing": {"granularty": "full"}})


# ---------------------------------------------------------------- state shared by in-process ranks
def test_causal_masks_are_read_only_and_the_cache_is_bounded():
    from minidist.ops.attention import _causal_mask, causal_mask
    m = causal_mask(5, np.float32)
    assert not m.flags.writeable and causal_mask(5, "float32") is m
    assert np.isneginf(m[0, 1]) and m[1, 0] == 0
    assert np.array_equal(causal_mask(5, np.float32, transposed=True), m.T)
    for T in range(1, 40):
        causal_mask(T, np.float64)
    assert _causal_mask.cache_info().currsize <= _causal_mask.cache_info().maxsize


def _fresh_python(code: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=60, check=True).stdout.strip()


def test_import_minidist_leaves_malloc_alone_and_demo_reads_no_corpus_at_import():
    # a CDLL that records what is loaded: tune_malloc would load libc
    code = ("import ctypes; loaded = []; real = ctypes.CDLL\n"
            "ctypes.CDLL = lambda name, *a, **k: loaded.append(name) or real(name, *a, **k)\n"
            "import minidist, minidist.demo.mixed_precision as mp, minidist.training.data as d\n"
            "print(loaded, d.load_corpus.cache_info().currsize, mp.data.cache_info().currsize)")
    assert _fresh_python(code) == "[] 0 0"
