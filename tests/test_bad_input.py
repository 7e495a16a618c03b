"""The catalog of bad inputs (issue 13 item 5): every one is answered with a clear
error — a non-zero exit or the documented exception, a message that names the key or the
argument and says what to give instead, no traceback from the CLIs, no hang.

One table, ``CATALOG``: ``(id, kind, input, expected substrings)``. Kinds:

* ``config`` — a training config (dict, or raw JSON text) given to ``python -m minidist.train``;
* ``train`` / ``estimate`` / ``checkpoint`` — arguments of those command lines;
* ``ckpt`` — a checkpoint damaged by a function, then ``--load``-ed;
* ``api`` — a call of :mod:`minidist.distributed` on in-process ranks, with the exception it raises.
"""
import json
import os
import shutil

import numpy as np
import pytest

from minidist import distributed as dist
from minidist.checkpoint.__main__ import main as checkpoint_main
from minidist.estimate.cli import main as estimate_main
from minidist.train import main as train_main

from _mpi import run_mpi

pytestmark = [pytest.mark.checkpoint, pytest.mark.cli, pytest.mark.timeout(60)]

BASE = {"model": {"n_layer": 1, "n_embd": 16, "n_head": 2, "block_size": 8},
        "data": {"dataset": "copy", "n_digits": 3}, "steps": 2, "eval_iters": 1,
        "train_micro_batch_size_per_gpu": 2}


def cfg(**over):
    out = json.loads(json.dumps(BASE))
    for dotted, value in over.items():
        *path, key = dotted.split("__")
        tree = out
        for part in path:
            tree = tree.setdefault(part, {})
        tree[key] = value
    return out


def spawn2(fn, n=2):
    return lambda: dist.spawn(fn, n, timeout=10)


def damaged(fn):
    """A ``ckpt`` case: ``fn(step_dir)`` damages a copy of a good checkpoint."""
    return fn


def _truncate(d):
    p = os.path.join(d, "rank_00001.npz")
    data = open(p, "rb").read()
    open(p, "wb").write(data[: len(data) // 2])


def _flip_byte(d):
    p = os.path.join(d, "rank_00000.npz")
    data = bytearray(open(p, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(p, "wb").write(bytes(data))


def _edit_manifest(**changes):
    def edit(d):
        p = os.path.join(d, "manifest.json")
        m = json.load(open(p))
        m.update(changes)
        json.dump(m, open(p, "w"))
    return edit


CATALOG = [
    # ---------------------------------------------------------------- config keys and values
    ("n_head_0", "config", cfg(model__n_head=0), ["model.n_head", "at least 1"]),
    ("n_layer_0", "config", cfg(model__n_layer=0), ["model.n_layer", "at least 1"]),
    ("block_size_0", "config", cfg(model__block_size=0), ["model.block_size", "at least 1"]),
    ("n_embd_float", "config", cfg(model__n_embd=16.5), ["model.n_embd", "whole number"]),
    ("n_embd_not_divisible", "config", cfg(model__n_embd=15), ["model.n_head", "divisible"]),
    ("steps_infinity", "config", '{"steps": Infinity}', ["'steps'", "finite number"]),
    ("steps_nan", "config", '{"steps": NaN}', ["'steps'", "finite number"]),
    ("steps_negative", "config", cfg(steps=-3), ["'steps'", "positive integer"]),
    ("steps_string", "config", cfg(steps="10"), ["'steps'", "expected a number"]),
    ("seed_fraction", "config", cfg(seed=1.5), ["'seed'", "whole number"]),
    ("seed_negative", "config", cfg(seed=-1), ["'seed'", "not be negative"]),
    ("eval_interval_fraction", "config", cfg(eval_interval=1.5), ["eval_interval", "whole number"]),
    ("micro_batch_0", "config", cfg(train_micro_batch_size_per_gpu=0), ["train_micro_batch_size_per_gpu", "positive"]),
    ("distill_teacher_missing_checkpoint", "config", cfg(distillation={"teacher": {"load": "/nonexistent/ckpt"}}),
     ["distillation.teacher.load", "--save"]),
    ("distill_teacher_model_and_load", "config",
     cfg(distillation={"teacher": {"load": "/nonexistent/ckpt", "model": {"n_layer": 1}}}), ["distillation.teacher"]),
    ("accumulation_fraction", "config", cfg(gradient_accumulation_steps=1.5),
     ["gradient_accumulation_steps", "positive integer"]),
    ("train_batch_size_mismatch", "config", cfg(train_batch_size=7), ["train_batch_size", "gradient_accumulation_steps"]),
    ("clipping_negative", "config", cfg(gradient_clipping=-1), ["gradient_clipping", "not be negative"]),
    ("clipping_nan", "config", '{"gradient_clipping": NaN}', ["gradient_clipping", "finite number"]),
    ("unknown_key", "config", cfg(stepz=3), ["'stepz'", "did you mean 'steps'"]),
    # other frameworks' names: the key to write here, not a close spelling of another setting
    ("megatron_micro_batch_size", "config", cfg(micro_batch_size=2), ["'micro_batch_size'", "train_micro_batch_size_per_gpu"]),
    ("megatron_tp_size", "config", cfg(parallel__tensor_model_parallel_size=2),
     ["parallel.tensor_model_parallel_size", "is parallel.tensor here"]),
    ("megatron_ep_size", "config", cfg(parallel__expert_model_parallel_size=2),
     ["parallel.expert_model_parallel_size", "is parallel.expert here"]),
    ("megatron_top_level_pp", "config", cfg(pipeline_model_parallel_size=2), ["is parallel.pipeline here"]),
    ("deepspeed_offload_param", "config", cfg(zero_optimization__offload_param={"device": "cpu"}),
     ["zero_optimization.offload_param", "not built", "offload_optimizer"]),
    ("deepspeed_data_types", "config", cfg(data_types={"grad_accum_dtype": "fp32"}), ["'data_types'", "not built"]),
    ("unknown_nested_key", "config", cfg(zero_optimization__stag=1), ["zero_optimization.stag", "did you mean"]),
    ("section_not_object", "config", cfg(fp16=True), ["'fp16'", "expected an object"]),
    ("root_not_object", "config", "[1, 2]", ["<root>", "JSON object"]),
    ("root_null", "config", "null", ["<root>", "JSON object, got NoneType"]),          # was taken as no config
    ("root_string", "config", '"base.json"', ["<root>", "JSON object, got str"]),      # was taken as a path
    ("val_split_too_short", "config", {**cfg(), "data": {"dataset": "english", "seq_len": 8, "val_fraction": 1e-6}},
     ["data.seq_len", "val split", "data.val_fraction"]),                               # was a traceback
    ("not_json", "config", "{steps: 3}", ["--config", "not valid JSON", "line 1"]),
    ("zero_stage_4", "config", cfg(zero_optimization__stage=4), ["zero_optimization.stage", "choose one of"]),
    ("dtype_float16", "config", cfg(dtype="float16"), ["'dtype'", "choose one of"]),
    ("fp16_and_bf16", "config", cfg(fp16__enabled=True, bf16__enabled=True), ["fp16.enabled", "pick one"]),
    ("fp16_window_0", "config", cfg(fp16__loss_scale_window=0), ["fp16.loss_scale_window", "positive integer"]),
    ("fp16_scale_power_200", "config", cfg(fp16__enabled=True, fp16__initial_scale_power=200), ["fp16", "[0, 127]"]),
    ("offload_without_zero", "config", cfg(zero_optimization__offload_optimizer={"device": "cpu"}),
     ["offload_optimizer.device", "stage"]),
    ("offload_device_gpu", "config", cfg(zero_optimization__offload_optimizer={"device": "nvme"}),
     ["offload_optimizer.device", "choose one of"]),
    ("bucket_size_0", "config", cfg(zero_optimization__reduce_bucket_size=0), ["reduce_bucket_size", "positive integer"]),
    ("data_parallel_unknown", "config", cfg(parallel__data_parallel="ps"), ["parallel.data_parallel", "choose one of"]),
    ("schedule_unknown", "config", cfg(parallel__schedule="fastest"), ["parallel.schedule", "choose one of"]),
    ("bias_string", "config", cfg(model__bias="yes"), ["model.bias", "true or false"]),
    ("dropout_1_5", "config", cfg(model__dropout=1.5), ["model.dropout", "[0, 1)"]),
    ("val_fraction_2", "config", cfg(data__dataset="english", data__seq_len=8, data__val_fraction=2),
     ["data.val_fraction", "(0, 1)"]),
    ("dataset_unknown", "config", cfg(data__dataset="klingon"), ["data.dataset", "choose one of"]),
    ("n_digits_0", "config", cfg(data__n_digits=0), ["data.n_digits", "at least 1"]),
    ("seq_len_too_long", "config", cfg(data__dataset="english", data__seq_len=100), ["data.seq_len", "block_size"]),
    ("vocab_too_small", "config", cfg(model__vocab_size=3), ["model.vocab_size", "remove the key"]),
    ("device_unknown", "config", cfg(device="TPU-v9"), ["'device'", "choose one of"]),
    ("device_number", "config", cfg(device=5), ["'device'", "preset name"]),
    ("device_negative_memory", "config", cfg(device={"memory": -1}), ["device", "positive number"]),
    ("optimizer_unknown", "config", cfg(optimizer__type="Adagrad"), ["optimizer.type", "choose"]),
    ("optimizer_params_list", "config", cfg(optimizer__params=[1]), ["optimizer.params", "expected an object"]),
    ("optimizer_param_unknown", "config", cfg(optimizer__params={"lx": 1}), ["optimizer.params.lx", "known"]),
    ("optimizer_param_typo", "config", cfg(optimizer__params={"betass": [0.9, 0.99]}),
     ["optimizer.params.betass", "did you mean 'betas'"]),
    ("lr_string", "config", cfg(optimizer__params={"lr": "0.1"}), ["optimizer.params.lr", "expected a number"]),
    ("lr_negative", "config", cfg(optimizer__params={"lr": -1}), ["optimizer.params.lr", ">= 0"]),
    ("lr_nan", "config", '{"optimizer": {"type": "AdamW", "params": {"lr": NaN}}}', ["optimizer.params.lr", "finite number"]),
    ("betas_scalar", "config", cfg(optimizer__params={"betas": 0.9}), ["optimizer.params.betas", "two numbers"]),
    ("betas_out_of_range", "config", cfg(optimizer__params={"betas": [0.9, 1.5]}), ["optimizer.params.betas", "[0, 1)"]),
    ("eps_zero", "config", cfg(optimizer__params={"eps": 0}), ["optimizer.params.eps", "> 0"]),
    ("weight_decay_negative", "config", cfg(optimizer__params={"weight_decay": -0.1}), ["optimizer.params.weight_decay", ">= 0"]),
    ("sgd_momentum_negative", "config", cfg(optimizer__type="SGD", optimizer__params={"momentum": -1}),
     ["optimizer.params.momentum", "[0, 1]"]),
    ("sgd_nesterov_without_momentum", "config", cfg(optimizer__type="SGD", optimizer__params={"nesterov": True}),
     ["optimizer.params.nesterov", "momentum > 0"]),
    ("lamb_with_zero", "config", cfg(optimizer__type="LAMB", zero_optimization__stage=1), ["optimizer.type", "LAMB"]),
    ("huge_micro_batch", "config", cfg(train_micro_batch_size_per_gpu=10**8), ["train_micro_batch_size_per_gpu", "GiB"]),
    ("lr_1e30_diverges", "config", cfg(optimizer__type="SGD", optimizer__params={"lr": 1e30}),
     ["step 1", "diverged", "lower optimizer.params.lr"]),
    # ---------------------------------------------------------------- train command line and world sizes
    ("world_size_0", "train", ["--world-size", "0"], ["--world-size", ">= 1"]),
    ("world_size_word", "train", ["--world-size", "four"], ["--world-size", "invalid int value"]),
    ("world_size_1000", "train", ["--world-size", "1000", "--config", "{default}"], ["--world-size", "fewer ranks"]),
    ("world_size_not_multiple_of_tp", "train",
     ["--world-size", "3", "--config", json.dumps(cfg(parallel__tensor=2))], ["world size 3", "multiple of 2"]),
    ("report_missing_folder", "train", ["--report", "{tmp}/no/such/dir/r.json"], ["--report", "does not exist"]),
    ("report_is_folder", "train", ["--report", "{tmp}"], ["--report", "is a folder"]),
    ("trace_missing_folder", "train", ["--trace", "{tmp}/none/t.json"], ["--trace", "does not exist"]),
    ("config_missing_file", "train", ["--config", "{tmp}/nope.json"], ["--config", "cannot read", "nope.json"]),
    ("config_is_folder", "train", ["--config", "{tmp}"], ["--config", "give an existing JSON file"]),
    ("save_is_file", "train", ["--save", "{file}"], ["--save", "is a file"]),
    ("save_interval_negative", "train", ["--save", "{tmp}/ck", "--save-interval", "-1"], ["--save-interval", ">= 0"]),
    ("save_interval_without_save", "train", ["--save-interval", "2"], ["--save-interval", "--save DIR"]),
    ("load_missing", "train", ["--load", "{tmp}/never"], ["never", "does not exist"]),
    ("load_empty_folder", "train", ["--load", "{tmp}"], ["latest", "no complete checkpoint"]),
    ("load_a_file", "train", ["--load", "{file}"], ["is a file", "--save"]),
    ("unknown_flag", "train", ["--worldsize", "2"], ["unrecognized arguments", "--worldsize"]),
    # ---------------------------------------------------------------- estimate and checkpoint command lines
    ("params_1e400", "estimate", ["--params", "1e400"], ["--params", "too large"]),
    ("params_fraction", "estimate", ["--params", "1.5"], ["--params", "whole number"]),
    ("params_word", "estimate", ["--params", "lots"], ["--params", "write a number"]),
    ("params_zero", "estimate", ["--params", "0"], ["--params", "positive"]),
    ("dp_zero", "estimate", ["--params", "1B", "--dp", "0"], ["--dp", "positive integer"]),
    ("precision_fp64", "estimate", ["--params", "1B", "--precision", "fp64"], ["--precision", "choose"]),
    ("inspect_missing", "checkpoint", ["inspect", "{tmp}/nothing"], ["nothing", "does not exist"]),
    ("consolidate_into_missing_folder", "checkpoint", ["consolidate", "{good}", "{tmp}/no/dir/out.npz"],
     ["out.npz", "cannot be written"]),
    ("checkpoint_no_command", "checkpoint", [], ["required", "consolidate"]),
    # ---------------------------------------------------------------- checkpoints
    ("ckpt_truncated_shard", "ckpt", damaged(_truncate), ["rank_00001.npz", "truncated"]),
    ("ckpt_corrupted_shard", "ckpt", damaged(_flip_byte), ["rank_00000.npz", "SHA-256", "corrupted"]),
    ("ckpt_missing_shard", "ckpt", damaged(lambda d: os.remove(os.path.join(d, "rank_00001.npz"))),
     ["rank_00001.npz", "missing"]),
    ("ckpt_missing_manifest", "ckpt", damaged(lambda d: os.remove(os.path.join(d, "manifest.json"))),
     ["manifest.json", "did not complete"]),
    ("ckpt_manifest_not_json", "ckpt", damaged(lambda d: open(os.path.join(d, "manifest.json"), "w").write("{")),
     ["manifest.json", "not valid JSON"]),
    ("ckpt_format_version", "ckpt", damaged(_edit_manifest(format_version=99)), ["format version 99", "reads version 1"]),
    ("ckpt_not_minidist", "ckpt", damaged(_edit_manifest(format="deepspeed")), ["manifest.json", "not a minidist"]),
    ("ckpt_latest_dangling", "ckpt", damaged(lambda d: open(os.path.join(d, "..", "latest"), "w").write("step_9")),
     ["latest", "not a checkpoint folder"]),
    ("ckpt_model_mismatch", "ckpt", cfg(model__n_head=4), ["model.n_head", "use the saved value"]),
    ("ckpt_optimizer_mismatch", "ckpt", cfg(optimizer__type="SGD"), ["optimizer.type", "use the saved value"]),
    ("ckpt_precision_mismatch", "ckpt", cfg(bf16__enabled=True), ["bf16.enabled", "use the saved value"]),
    ("ckpt_dtype_mismatch", "ckpt", cfg(dtype="float64"), ["'dtype'", "use the saved value"]),
    ("ckpt_past_steps", "ckpt", cfg(steps=1), ["past this run's steps", "raise 'steps'"]),
    # ---------------------------------------------------------------- collectives API misuse
    ("broadcast_root_out_of_range", "api", spawn2(lambda c: dist.broadcast(c, np.ones(3), root=5)),
     (ValueError, ["root=5", "give a root in [0, 1]"])),
    ("reduce_negative_root", "api", spawn2(lambda c: dist.reduce(c, np.ones(3), root=-1)),
     (ValueError, ["root=-1", "give a root"])),
    ("scatter_root_out_of_range", "api", spawn2(lambda c: dist.scatter(c, np.ones((2, 3)), root=2)),
     (ValueError, ["root=2", "give a root"])),
    ("gather_root_out_of_range_debug", "api", lambda: dist.spawn(lambda c: dist.gather(c, np.ones(3), root=7), 2,
                                                                 timeout=10, debug=True),
     (ValueError, ["root=7", "give a root"])),
    ("all_reduce_dtype_mismatch", "api",
     spawn2(lambda c: dist.all_reduce(c, np.ones(4, np.float32 if c.rank else np.float64))),
     (dist.CollectiveMismatchError, ["float32", "same shape and dtype"])),
    ("all_reduce_size_mismatch", "api", spawn2(lambda c: dist.all_reduce(c, np.ones(8 if c.rank else 7)), 4),
     (dist.CollectiveMismatchError, ["7 element(s)", "same shape and dtype"])),
    ("gather_shape_mismatch", "api", spawn2(lambda c: dist.gather(c, np.ones((2, 3) if c.rank else (3, 2)))),
     (dist.CollectiveMismatchError, ["another shape", "same shape"])),
    ("all_reduce_int64_overflow", "api", spawn2(lambda c: dist.all_reduce(c, np.array([2**62, 1], np.int64))),
     (OverflowError, ["int64", "float64"])),
    ("reduce_int32_prod_overflow", "api",
     spawn2(lambda c: dist.reduce(c, np.array([2**20], np.int32), op="prod", algorithm="linear")),
     (OverflowError, ["int32", "wrap"])),
    ("unknown_op", "api", spawn2(lambda c: dist.all_reduce(c, np.ones(2), op="avg")),
     (ValueError, ["'avg'", "choose one of"])),
    ("unknown_algorithm", "api", spawn2(lambda c: dist.all_reduce(c, np.ones(2), algorithm="fast")),
     (ValueError, ["'fast'", "choose one of"])),
    ("spawn_world_0", "api", lambda: dist.spawn(lambda c: None, 0), (ValueError, ["world_size", ">= 1"])),
    ("send_to_self", "api", spawn2(lambda c: c.send(np.ones(1), c.rank)), (ValueError, ["itself"])),
    ("send_to_missing_rank", "api", spawn2(lambda c: c.send(np.ones(1), 9)), (ValueError, ["peer rank 9", "size 2"])),
    ("tag_out_of_range", "api", spawn2(lambda c: c.send(np.ones(1), 1 - c.rank, tag=-1)), (ValueError, ["tag", "[0,"])),
]


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    """A complete checkpoint of a 2-rank ZeRO-2 run of BASE (2 steps)."""
    root = tmp_path_factory.mktemp("good")
    (root / "config.json").write_text(json.dumps({**BASE, "zero_optimization": {"stage": 2}}))
    assert train_main(["--config", str(root / "config.json"), "--world-size", "2", "--quiet",
                       "--save", str(root / "ck")]) == 0
    return root / "ck"


def _call(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:          # argparse's usage errors
        return e.code


@pytest.mark.parametrize("case", CATALOG, ids=[c[0] for c in CATALOG])
def test_bad_input_is_answered(case, tmp_path, capsys, good_checkpoint):
    name, kind, given, expected = case
    if kind == "api":
        exc_type, words = expected
        with pytest.raises(exc_type) as info:
            given()
        message = str(info.value)
    else:
        words = expected
        fill = {"tmp": str(tmp_path), "file": str(tmp_path / "a_file"), "good": str(good_checkpoint),
                "default": str(tmp_path / "default.json")}
        (tmp_path / "a_file").write_text("not a folder")
        (tmp_path / "default.json").write_text("{}")
        if kind == "config":
            path = tmp_path / "config.json"
            path.write_text(given if isinstance(given, str) else json.dumps(given))
            rc = _call(train_main, ["--config", str(path), "--quiet"])
        elif kind == "ckpt":
            ck = tmp_path / "ck"
            shutil.copytree(good_checkpoint, ck)
            config = {**BASE, "zero_optimization": {"stage": 2}}
            if callable(given):
                given(str(ck / "step_00000002"))
            else:
                config = given
            path = tmp_path / "config.json"
            path.write_text(json.dumps(config))
            rc = _call(train_main, ["--config", str(path), "--world-size", "2", "--quiet", "--load", str(ck)])
        else:
            (tmp_path / "inline.json").write_text(next((a for a in given if a.startswith('{"')), "{}"))
            fill["inline"] = str(tmp_path / "inline.json")         # an inline JSON config goes to a file
            argv = ["{inline}".format(**fill) if a.startswith('{"') else a.format(**fill) for a in given]
            main = {"train": train_main, "estimate": estimate_main, "checkpoint": checkpoint_main}[kind]
            rc = _call(main, argv + (["--quiet"] if kind == "train" else []))
        out = capsys.readouterr()
        message = out.err
        assert rc not in (0, None), f"{name}: exit status {rc}; stderr: {out.err[-500:]}"
        assert "Traceback" not in out.err + out.out
    for word in words:
        assert word in message, f"{name}: {word!r} not in {message!r}"


def test_catalog_is_large_and_covers_every_class():
    kinds = {k for _, k, _, _ in CATALOG}
    assert len(CATALOG) >= 60 and kinds == {"config", "train", "estimate", "checkpoint", "ckpt", "api"}
    assert len({c[0] for c in CATALOG}) == len(CATALOG)


@pytest.mark.mpi
def test_mpirun_world_size_flag_disagreeing_with_mpi_is_refused(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps(BASE))
    r = run_mpi(2, ["-m", "minidist.train", "--config", tmp_path / "c.json", "--world-size", "4", "--quiet"],
                timeout=50)
    assert r.returncode != 0
    assert "--world-size 4 but mpirun started 2 processes" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("mpirun started 2 processes") == 1         # said once, by rank 0
