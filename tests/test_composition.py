"""Every cell of the composition table (minidist.training.composition) holds: a pair that
"works" trains like one rank on the same global batch (float64: relative ≤ 1e-9 after every
step; fp16/bf16: within the format's tolerance of the one-rank run in the same format, the
same loss-scale decisions), on every rank, with no traceback; a refused pair is refused on
every rank with the table's message, naming the key; the README's support matrix is the
table."""
import copy
import pathlib
import re

import numpy as np
import pytest

from minidist import distributed as dist
from minidist.testing import train_steps
from minidist.training import composition as C
from minidist.training.config import ConfigError, load_config

pytestmark = [pytest.mark.timeout(120)]

GLOBAL_MICRO = 4
BASE = {"model": {"n_layer": 2, "n_embd": 16, "n_head": 4, "block_size": 8, "dropout": 0.1},
        "data": {"dataset": "english", "seq_len": 8}, "dtype": "float64", "steps": 2, "eval_iters": 1,
        "gradient_accumulation_steps": 2, "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}}}
# the ranks' equivalents on one rank: everything that splits the work is turned off
SERIAL = {"parallel": {"tensor": 1, "pipeline": 1, "sequence_parallel": False, "tp_comm_overlap": False,
                       "data_parallel": "ddp", "context": {"size": 1}, "expert": 1},
          "zero_optimization": {"stage": 0, "overlap_comm": False, "offload_optimizer": {"device": "none"}}}


def merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def with_needs(names) -> list:
    """The pair and what each of its features needs beside it (SP needs TP…), in table order."""
    names = list(names)
    for n in list(names):
        if n in C.NEEDS and not any(o in names for o in C.NEEDS[n][0]):
            names.append(C.NEEDS[n][0][0])
    return [n for n in C.FEATURES if n in names]


def cell_config(names) -> tuple[dict, int]:
    """The config of a cell and its world: tp × cp × dp × pp of its features."""
    cfg, tp, pp, dp, cp = copy.deepcopy(BASE), 1, 1, 1, 1
    for n in with_needs(names):
        f = C.FEATURES[n]
        cfg = merge(cfg, f.fragment)
        tp, pp, dp, cp = max(tp, f.tp), max(pp, f.pp), max(dp, f.dp), max(cp, f.cp)
    cfg["train_micro_batch_size_per_gpu"] = GLOBAL_MICRO // dp
    return cfg, tp * pp * dp * cp


def serial_config(cfg: dict) -> dict:
    out = merge(cfg, SERIAL)
    out["train_micro_batch_size_per_gpu"] = GLOBAL_MICRO
    return out


PAIRS = [(a, b) for a, b in __import__("itertools").combinations(C.FEATURES, 2) if not C.exclusive(a, b)]
_REFERENCE = {}


def _errors(comm, cfg):
    try:
        load_config(copy.deepcopy(cfg), comm.size if comm is not None else 1)
    except ConfigError as e:
        return e.key, str(e)
    return None


def _distill(comm, cfg):
    from minidist.distill.runner import distill_rank
    run = distill_rank(comm, copy.deepcopy(cfg))
    s = run.student
    # the one-rank model's parameters (a collective: ZeRO-3 shards, tensor slices, pipeline stages)
    return (None if s is None else ([h["loss"] for h in s.history], s.full_parameters()))


def _train(cfg, world):
    if cfg.get("distillation"):
        out = [_distill(None, cfg)] if world == 1 else dist.spawn(_distill, world, cfg, timeout=60)
        return [o for o in out if o is not None]
    runs = [train_steps(cfg)] if world == 1 else dist.spawn(train_steps, world, cfg, timeout=60)
    return runs


def reference(cfg):
    key = repr(sorted(serial_config(cfg).items()))
    if key not in _REFERENCE:
        _REFERENCE[key] = _train(serial_config(cfg), 1)[0]
    return _REFERENCE[key]


def close(got: dict, want: dict, mixed: bool) -> float:
    """The difference the tolerance is about: per array relative (float64), or the whole
    model's ‖Δw‖/‖w‖ (16-bit formats round partial sums in other orders)."""
    if not mixed:
        return max(float(np.max(np.abs(got[k] - want[k])) / max(np.max(np.abs(want[k])), 1e-300)) for k in want)
    diff = np.sqrt(sum(np.sum((got[k] - want[k]) ** 2.0) for k in want))
    return float(diff / np.sqrt(sum(np.sum(want[k] ** 2.0) for k in want)))


# features whose report rows the walk leaves to their own tests: none (the MoE and EP cells' rows,
# the job-level formula under expert parallelism included, are checked here too)
OWN_REPORT_TESTS = ()


def formula_rows(runs: list) -> list:
    """Every row the report prints beside a measurement, per rank, where the two differ:
    the strategy's expected model states and bytes per step, the tensor-parallel group's
    bytes (its formula: "-" under LAMB and a pipeline), the context-parallel group's attention
    bytes (minidist.estimate.context, fp16/bf16 included), the job-level formula row (a
    worker's and the root's under the parameter server), the layout section's estimate per
    rank (minidist.estimate.grid3d). A row the report calls "not modelled" is not compared:
    the formula row under a pipeline, the layout's optimizer states under offload and the
    parameter server, its bytes under ZeRO-3 with full recomputation, full recomputation or
    LAMB under tensor parallelism (each named in a note)."""
    from minidist.report import build_report, format_data_parallel, rank_report
    for r in runs:                       # train_steps ran steps without fit(): no evaluation to report
        r["trainer"].final, r["trainer"].wall_time = {}, 0.0
    rep = build_report(runs[0]["trainer"], [rank_report(r["trainer"]) for r in runs])
    f, bad, printed = rep["data_parallel"]["formula"], [], format_data_parallel(rep)
    assert (f["model_states"] is None) == bool(f.get("not_modelled")) == (rep["config"]["parallel"]["pipeline"] > 1)
    assert ("formula: not modelled" in printed) == bool(f.get("not_modelled"))     # said, not a wrong number
    assert all(f"note: {n}" in printed for n in (rep.get("layout") or {}).get("notes", []))
    for run, r in zip(runs, rep["ranks"]):
        d, i = r["data_parallel"], r["rank"]
        m = d["model_states"] or {}
        bad += [("expected", i, k, m.get(k, 0), v) for k, v in d["model_states_expected"].items() if m.get(k, 0) != v]
        if d["bytes_sent_per_step"] != d["bytes_sent_per_step_expected"]:
            bad.append(("expected bytes/step", i, d["bytes_sent_per_step"], d["bytes_sent_per_step_expected"]))
        tp = r.get("tensor_parallel") or {}
        if tp.get("bytes_sent_per_step_expected") not in (None, tp.get("bytes_sent_per_step")):
            bad.append(("tp bytes/step", i, tp["bytes_sent_per_step"], tp["bytes_sent_per_step_expected"]))
        cp = r.get("context_parallel") or {}                 # attention's bytes on grid.cp (fp16/bf16 included)
        if cp and cp["bytes_sent_per_step"] != cp["bytes_sent_per_step_expected"]:
            bad.append(("cp bytes/step", i, cp["bytes_sent_per_step"], cp["bytes_sent_per_step_expected"]))
        row = f.get("root") if "root" in f and run["trainer"].strategy.rank == 0 else f
        if row["model_states"] is not None:
            bad += [("formula", i, k, m.get(k, 0), row["model_states"][k])
                    for k in ("parameters", "gradients", "optimizer_states", "host") if m.get(k, 0) != row["model_states"][k]]
            if d["bytes_sent_per_step"] != row["bytes_sent_per_step"]:
                bad.append(("formula bytes/step", i, d["bytes_sent_per_step"], row["bytes_sent_per_step"]))
    lay = rep.get("layout") or {}
    notes = " ".join(lay.get("notes", []))
    skip = {"optimizer_states"} if "offload not modelled" in notes or "not modelled: predicted as DDP" in notes else set()
    for r in lay.get("ranks", []):
        bad += [("layout", r["rank"], k, v, r["model_states_estimate"][k]) for k, v in r["model_states"].items()
                if k not in skip and v != r["model_states_estimate"][k]]
        if r["bytes_sent_per_step"] != r["bytes_sent_per_step_estimate"] and not re.search(
                "ZeRO-3 without a pipeline not|bytes not modelled", notes):
            bad.append(("layout bytes/step", r["rank"], r["bytes_sent_per_step"], r["bytes_sent_per_step_estimate"]))
    return bad


@pytest.mark.parametrize("a,b", PAIRS, ids=[f"{a}+{b}" for a, b in PAIRS])
def test_every_cell_works_like_one_rank_or_is_refused_with_the_tables_message(a, b):
    cfg, world = cell_config((a, b))
    expected = C.cell(a, b)
    on = with_needs((a, b))
    refused = [C.refusal(x, y) for i, x in enumerate(on) for y in on[i + 1:] if C.refusal(x, y)]
    refused += [(t[0], m) for t, m in C.REFUSED_TRIPLES.items() if all(x in on for x in t)]
    assert (expected == "works") == (not refused), (expected, refused)     # the table's cell says what runs
    errors = dist.spawn(_errors, world, cfg, timeout=30) if world > 1 else [_errors(None, cfg)]
    if refused:
        first, message = refused[0]
        assert len(set(errors)) == 1 and errors[0] is not None, errors      # every rank, the same refusal
        key, text = errors[0]
        assert key == C.FEATURES[first].key and message in text, text
        return
    assert errors == [None] * world, errors
    mixed = cfg.get("fp16", {}).get("enabled") or cfg.get("bf16", {}).get("enabled")
    ref, runs = reference(cfg), _train(cfg, world)
    if not cfg.get("distillation") and not any(n in OWN_REPORT_TESTS for n in on):
        assert formula_rows(runs) == []             # the report's formula rows, accumulation 2 (PP: 4) included
    if cfg.get("distillation"):                  # the students: losses and final weights
        for losses, state in runs:
            np.testing.assert_allclose(losses, ref[0], rtol=1e-3 if mixed else 1e-9)
            assert close(state, ref[1], mixed) <= (3e-2 if mixed else 1e-9)
        return
    want = [h["loss"] for h in ref["history"]]
    holders = runs          # under a pipeline each stage's history holds its part (the MoE losses of its chunks)
    par = cfg.get("parallel", {})
    dp = max(1, world // (par.get("tensor", 1) * par.get("pipeline", 1)))
    got = [sum(r["history"][k]["loss"] for r in holders if r["trainer"].grid is None
               or r["trainer"].grid.coords["tp"] == 0) / dp for k in range(len(want))]
    np.testing.assert_allclose(got, want, rtol=1e-3 if mixed else 1e-9)
    if mixed:
        assert all([h["loss_scale"] for h in r["history"]] == [h["loss_scale"] for h in ref["history"]]
                   for r in runs)
    for r in runs:
        for step, params in enumerate(r["params"]):
            assert close(params, ref["params"][step], mixed) <= (3e-2 if mixed else 1e-9), (step, r["trainer"].rank)
    assert abs(want[-1] - want[0]) > 1e-4                                   # it really trained


def test_the_readme_support_matrix_is_the_table():
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    start = readme.index("<!-- support-matrix -->") + len("<!-- support-matrix -->")
    end = readme.index("<!-- /support-matrix -->")
    assert readme[start:end].strip() == C.support_matrix().strip(), \
        "README's support matrix is stale: paste `python -m minidist.train --support-matrix` between the markers"


@pytest.mark.parametrize("argv,words", [
    (["--sp", "--tp", "1"], "--sp needs --tp > 1"),
    (["--sp", "--tp", "2", "--seq", "31"], "--seq 31 is not divisible by --tp 2"),
    (["--pp", "2", "--schedule", "zb_v", "--layers", "6"], "do not fill the 4 model chunks"),
], ids=["sp-without-tp", "sp-seq", "v-chunks"])
def test_the_estimator_refuses_what_the_trainer_refuses(capsys, argv, words):
    from minidist.estimate.cli import main as estimate_main
    shape = {"--layers": "4", "--hidden": "64", "--heads": "4", "--seq": "32", "--vocab": "65"}
    for i in range(0, len(argv) - 1):
        shape.pop(argv[i], None)
    args = argv + [x for kv in shape.items() for x in kv]
    with pytest.raises(SystemExit) as e:
        estimate_main(args)
    assert e.value.code == 2 and words in capsys.readouterr().err


def test_settings_a_layout_does_not_use_are_noted(tmp_path, capsys):
    import json

    from minidist.estimate.cli import main as estimate_main
    from minidist.train import main as train_main
    assert estimate_main(["--schedule", "zb_h1", "--layers", "2", "--hidden", "16", "--heads", "2", "--seq", "8",
                          "--vocab", "65"]) == 0
    assert "--schedule zb_h1 has no effect with --pp 1" in capsys.readouterr().err
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model": {"n_layer": 1, "n_embd": 16, "n_head": 2, "block_size": 8}, "steps": 1,
                               "eval_iters": 1, "data": {"seq_len": 8},
                               "parallel": {"schedule": "zb_h1", "make_vocab_size_divisible_by": 8}}))
    assert train_main(["--config", str(cfg), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "parallel.schedule has no effect" in err and "parallel.make_vocab_size_divisible_by has no effect" in err
    assert "data.seq_len" not in err                     # the text corpus takes its seq_len
    cfg.write_text(json.dumps({"model": {"n_layer": 1, "n_embd": 16, "n_head": 2, "block_size": 16}, "steps": 1,
                               "eval_iters": 1, "data": {"dataset": "copy", "n_digits": 2, "seq_len": 8}}))
    assert train_main(["--config", str(cfg), "--quiet"]) == 0      # a task's length follows from n_digits
    err = capsys.readouterr().err
    assert "data.seq_len 8 has no effect here: the 'copy' task's sequences are 5 tokens" in err
    assert "fp16.auto_cast" not in err
    cfg.write_text(json.dumps({"model": {"n_layer": 1, "n_embd": 16, "n_head": 2, "block_size": 8}, "steps": 1,
                               "eval_iters": 1, "data": {"seq_len": 8}, "fp16": {"enabled": True, "auto_cast": True}}))
    assert train_main(["--config", str(cfg), "--quiet"]) == 0
    assert "fp16.auto_cast has no effect here" in capsys.readouterr().err


def _progress(comm, cfg):
    import io
    from minidist.training.trainer import Trainer
    trainer = Trainer(copy.deepcopy(cfg), comm)
    stream = io.StringIO()
    trainer.fit(progress=True, stream=stream)
    return stream.getvalue(), [h["loss"] for h in trainer.history]


def test_the_progress_line_shows_the_loss_the_report_shows():
    """On a pipeline's first rank the loss is not known (it used to print 0.0000): tqdm's bar
    shows the global batch's loss of the step it names, as the report does."""
    cfg = merge(cell_config(["PP", "DDP"])[0], {"steps": 2})
    runs = dist.spawn(_progress, 4, cfg)
    shown = {int(m[1]): float(m[2]) for m in re.finditer(r"step (\d+)/2, loss ([-\d.]+)", runs[0][0])}
    assert 2 in shown and min(shown.values()) > 0                 # the bar ends on the last step
    assert shown == pytest.approx({n: round(runs[0][1][n - 1], 4) for n in shown}, abs=1e-4)
    assert all(text == "" for text, _ in runs[1:])                 # one bar, on rank 0


def _distill_progress(comm, cfg, stream):
    from minidist.distill.runner import distill_rank
    distill_rank(comm, cfg, progress=True, stream=stream)


def test_a_distillation_runs_teacher_and_student_bars_write_no_cursor_moves():
    """Teacher and student bars can overlap in time (ranks are threads of one process): each
    stays on its own line, without the escape codes tqdm stacks concurrent bars with."""
    import io
    cfg = merge(BASE, {"steps": 2, "distillation": {"teacher": {"steps": 2}, "teacher_ranks": 1}})
    stream = io.StringIO()
    dist.spawn(_distill_progress, 3, cfg, stream)
    text = stream.getvalue()
    assert "step 2/2, loss " in text and "\x1b[" not in text


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("accumulation", [1, 3])
def test_the_reports_formula_rows_hold_with_accumulation(stage, accumulation):
    """What the report prints beside the measurement (the strategy's expected bytes and model
    states) equals the measurement, with gradient accumulation too (ZeRO-3's 3·m reductions)."""
    cfg = merge(BASE, {"zero_optimization": {"stage": stage}, "gradient_accumulation_steps": accumulation,
                       "train_micro_batch_size_per_gpu": 2, "steps": 1})
    for r in dist.spawn(train_steps, 2, cfg):
        assert r["history"][0]["bytes_sent"] == r["expected_bytes_sent"] > 0
        assert {k: r["model_states"][k] for k in r["expected_model_states"]} == r["expected_model_states"]


def test_distillation_checkpoint_flags_are_not_ignored(tmp_path):
    """--save writes a distillation save point, --load continues from it (bit for bit:
    tests/test_distill_resume.py)."""
    import json

    from minidist.train import main as train_main
    cfg, ck = tmp_path / "c.json", tmp_path / "ck"
    for steps, flags in ((1, ["--save", ck]), (2, ["--load", ck])):
        cfg.write_text(json.dumps({**BASE, "steps": steps, "distillation": {"teacher": {"steps": 1}}}))
        assert train_main(["--config", str(cfg), "--quiet", "--report", str(tmp_path / f"{steps}.json"),
                           *map(str, flags)]) == 0
    assert (ck / "latest").read_text().strip() == "student_00000001.json"
    first, resumed = (json.loads((tmp_path / f"{n}.json").read_text())["steps"] for n in (1, 2))
    assert [h["step"] for h in resumed] == [0, 1] and resumed[0]["loss"] == first[0]["loss"]
