"""Classroom exercises (minidist.exercises): the grader passes minidist's own implementations, calls
untouched stubs unfinished, names the mistake in typical wrong solutions, and passes right
ones written in other ways than minidist's own.

Each student file lives in tests/exercise_mistakes/NAME__WHAT.py with ``EXPECT``: the phrases
the grader's message must contain for a wrong solution, ``[]`` for a right one (which must
pass). Files are graded on the held-out inputs of a fixed seed, right ones on two.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minidist import exercises
from minidist.exercises import grading, ranks
from minidist.exercises.__main__ import main

pytestmark = [pytest.mark.exercises, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[1]
MISTAKES = ROOT / "tests" / "exercise_mistakes"
NAMES = list(exercises.EXERCISES)
# each exercise also carries its topic's marker, so that `pytest -m zero` runs the ZeRO exercises too
TOPIC_MARKER = {"autograd": "engine", "optimizers": "engine", "training": "engine", "collectives": "dist",
                "zero": "zero", "mixed precision": "precision", "tensor parallel": "tensor",
                "pipeline": "pipeline", "distillation": "distill", "estimator": "estimate",
                "3D parallelism": "grid", "inference": "inference", "compression": "compression",
                "checkpointing": "checkpointing", "checkpoint": "checkpoint", "context parallel": "context",
                "fine-tuning": "peft", "mixture of experts": "moe"}


def _topic_mark(name):
    return getattr(pytest.mark, TOPIC_MARKER[exercises.EXERCISES[name].TOPIC])


def _by_topic(names):
    return [pytest.param(n, marks=_topic_mark(n)) for n in names]


def _files():
    return sorted(p for p in MISTAKES.glob("*__*.py"))


def _files_by_topic():
    return [pytest.param(p, id=p.stem, marks=_topic_mark(p.stem.split("__")[0])) for p in _files()]


def _expect(path: Path) -> list:
    scope: dict = {}
    exec(compile(path.read_text(), str(path), "exec"), scope)    # the file's EXPECT list
    return scope["EXPECT"]


def test_list_has_enough_exercises_and_topics(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert len(NAMES) >= 12 and len(exercises.topics()) >= 8
    for name in NAMES:
        assert name in out
    assert f"{len(NAMES)} exercises over {len(exercises.topics())} topics" in out


@pytest.mark.parametrize("name", _by_topic(NAMES))
def test_reference_passes(name):
    report = exercises.grade(exercises.get(name), reference=True)
    assert report.status == "passed", report.text()
    assert report.total >= 3


@pytest.mark.parametrize("name", _by_topic(NAMES))
def test_untouched_stub_is_unfinished(name, tmp_path, capsys):
    assert main(["start", name, str(tmp_path)]) == 0
    stub = tmp_path / f"{name}.py"
    assert "NotImplementedError" in stub.read_text() and '"""' in stub.read_text()
    capsys.readouterr()
    assert main(["check", name, str(tmp_path)]) == 1
    out = capsys.readouterr().out
    report = exercises.grade(exercises.get(name), str(stub))
    assert report.status == "unfinished", report.text()
    assert "still raises NotImplementedError" in out and "Traceback" not in out
    assert report.passed == 0


def test_every_exercise_has_two_wrong_and_two_right_solutions():
    for name in NAMES:
        files = [p for p in _files() if p.name.startswith(name + "__")]
        right = [p for p in files if not _expect(p)]
        assert len(files) - len(right) >= 2, f"{name}: only {len(files) - len(right)} typical wrong solutions"
        assert len(right) >= 2, f"{name}: only {len(right)} right solutions written another way"


@pytest.mark.parametrize("path", _files_by_topic())
def test_solution_is_graded_with_a_message_naming_the_mistake(path):
    name = path.stem.split("__")[0]
    expect = _expect(path)
    for seed in (1, 2) if not expect else (1,):
        report = exercises.grade(exercises.get(name), str(path), seed=seed)
        if not expect:                               # a right answer written another way
            assert report.status == "passed", report.text()
            continue
        assert report.status == "failed", report.text()
        messages = "\n".join(c.message for c in report.checks if c.status == "failed")
        for phrase in expect:
            assert phrase in messages, f"{path.name}: {phrase!r} not in\n{report.text()}"
        assert "Traceback" not in messages


def test_student_exceptions_become_messages_with_a_line(tmp_path):
    (tmp_path / "ring_all_reduce.py").write_text(
        "import numpy as np\n\n\ndef ring_all_reduce(comm, x):\n    return x[10 ** 6]\n")
    report = exercises.grade(exercises.get("ring_all_reduce"), str(tmp_path / "ring_all_reduce.py"))
    msg = report.checks[0].message
    assert report.status == "failed" and "IndexError" in msg and "line 5" in msg


def test_hang_and_bad_files_are_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(ranks, "RANK_TIMEOUT", 0.3)      # a rank waiting for a message nobody sends
    (tmp_path / "ring_all_reduce.py").write_text(
        "def ring_all_reduce(comm, x):\n    return comm.recv((comm.rank + 1) % comm.size)\n")
    report = exercises.grade(exercises.get("ring_all_reduce"), str(tmp_path / "ring_all_reduce.py"))
    msg = report.checks[0].message
    assert "timed out" in msg and "line 2" in msg
    assert "debug=True" not in msg and "needs a comm.send(..., dest) on rank `source`" in msg   # advice for p2p
    (tmp_path / "zero_memory.py").write_text("def model_state_bytes(psi, n_d, stage, k=12)\n    return 0\n")
    report = exercises.grade(exercises.get("zero_memory"), str(tmp_path / "zero_memory.py"))
    assert report.status == "failed" and "syntax error at line 1" in report.problem
    (tmp_path / "kd_loss.py").write_text("def kd(z):\n    return 0\n")
    report = exercises.grade(exercises.get("kd_loss"), str(tmp_path / "kd_loss.py"))
    assert "does not define kd_loss" in report.problem


def test_endless_loop_is_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(grading, "CHECK_TIME_LIMIT", 0.5)
    (tmp_path / "zero_memory.py").write_text("def model_state_bytes(psi, n_d, stage, k=12):\n    while True:\n"
                                             "        pass\n")
    result = grading.run_check("loop", exercises.get("zero_memory").CHECKS[0][1],
                               grading.load_solution(str(tmp_path / "zero_memory.py"), ["model_state_bytes"]),
                               None, time_limit=0.5)
    assert result.status == "failed" and "did not finish within 0.5 s" in result.message


def test_forbidden_shortcut_is_refused(tmp_path):
    (tmp_path / "ring_all_reduce.py").write_text(
        "from minidist import distributed as dist\n\n\ndef ring_all_reduce(comm, x):\n"
        "    return dist.all_reduce(comm, x)\n")
    report = exercises.grade(exercises.get("ring_all_reduce"), str(tmp_path / "ring_all_reduce.py"))
    assert report.status == "failed" and "`minidist.distributed.all_reduce`" in report.checks[-1].message
    assert "line 5" in report.checks[-1].message


FP16_BODY = "\ndef round_to_fp16(x):\n    return x\n"


@pytest.mark.precision
@pytest.mark.parametrize("source, refused", [
    ("import numpy as np\nhalf = np.uint32(1 << 12)\n", False),          # a constant the student names
    ("import numpy as np\n\ndef to_bits(x):\n    return x.view(np.uint32)\n", False),
    ("import numpy as np\ny = np.zeros(3, dtype='float32').astype(np.float64)\n", False),
    ("import numpy as np\ny = np.zeros(3).astype(np.half)\n", True),
    ("import numpy\ny = numpy.float16(1.0)\n", True),
    ("from numpy import float16 as h\n", True),
    ("import numpy as np\nt = getattr(np, 'float16')\n", True),
    ("import numpy as np\ny = np.ones(2).astype('f2')\n", True),
    ("import numpy as np\ny = np.array([1.0], dtype='half')\n", True),
    ("from minidist.numerics import quantize\n", True),
])
def test_forbidden_is_what_the_file_calls_not_what_it_names(tmp_path, source, refused):
    """fp16's rules: NumPy's half type under any spelling is refused, a name the student defines
    (even `half`) never is."""
    (tmp_path / "fp16_round_to_nearest_even.py").write_text(source + FP16_BODY)
    broken = grading.broken_rules(exercises.get("fp16_round_to_nearest_even"),
                                  str(tmp_path / "fp16_round_to_nearest_even.py"))
    assert bool(broken) == refused, broken


def test_every_statement_lists_what_it_forbids():
    """What an exercise refuses is written in the statement the student reads."""
    for name, ex in exercises.EXERCISES.items():
        for entry in grading.forbidden(ex):
            short = entry.replace("minidist.distributed.", "dist.").replace("numpy.", "np.")
            assert entry in ex.STUB or short in ex.STUB, f"{name}: the statement does not name {entry}"


def test_same_seed_same_grade_and_json_carries_it(tmp_path, capsys):
    """Held-out inputs come from the printed seed: the same seed grades the same way."""
    wrong = str(MISTAKES / "kd_loss__no_max_subtraction.py")
    texts = []
    for _ in range(2):
        assert main(["check", "kd_loss", wrong, "--seed", "123", "--json"]) == 1
        sheet = json.loads(capsys.readouterr().out)
        assert sheet["seed"] == 123 and sheet["exercises"][0]["seed"] == 123
        texts.append(sheet["exercises"][0]["checks"])
    assert texts[0] == texts[1]
    assert main(["check", "kd_loss", wrong]) == 1
    out = capsys.readouterr().out
    assert "— seed " in out and "--seed" in out


def test_expected_and_got_are_printed_with_digits_that_differ():
    text = grading.expected_got(1.2345678901, 1.2345679901)
    expected, got = text.split(", got ")
    assert expected.split()[-1] != got.split()[0] and "relative error 8.1e-08" in text


@pytest.mark.grid
@pytest.mark.parametrize("source, refused", [
    ("from minidist.parallel.grid import GridShape as G\n", True),
    ("import minidist.parallel.grid\n", True),
    ("import minidist\n\ndef f():\n    return minidist.parallel.grid.GridShape\n", True),
    ("from minidist import parallel\n\ndef f():\n    return parallel.grid.ProcessGrid\n", True),
    ("def f():\n    from minidist.parallel import grid\n    return grid\n", True),
    ("import importlib\n\ng = importlib.import_module('minidist.parallel.grid')\n", True),
    ("from minidist.parallel import data\n\ngrid = GridShape = ProcessGrid = rank_of = None\n", False),
    ('"""Do not import minidist.parallel.grid: the statement may say so."""\n', False),
])
def test_forbidden_import_is_a_module_not_a_name(tmp_path, source, refused):
    """grid_rank_map forbids importing minidist.parallel.grid however it is reached, and never the
    names a student may define (grid, GridShape, rank_of, ...)."""
    right = (MISTAKES / "grid_rank_map__correct.py").read_text()
    (tmp_path / "grid_rank_map.py").write_text(source + "\n" + right)
    report = exercises.grade(exercises.get("grid_rank_map"), str(tmp_path / "grid_rank_map.py"))
    assert (report.status == "failed") == refused, report.text()
    if refused:
        assert report.checks[-1].name == "rules of the exercise" and report.passed == report.total - 1
        assert "imports `minidist.parallel.grid`" in report.checks[-1].message


@pytest.mark.grid
def test_grid_statement_example_is_minidist_grid():
    """The picture in grid_rank_map's statement (8 = dp 2 × tp 2 × pp 2) is what GridShape says."""
    from minidist.parallel.grid import GridShape

    ex, shape = exercises.get("grid_rank_map"), GridShape(8, tp=2, pp=2)
    for kind, dims in ex.FREE.items():
        line = next(line for line in ex.STUB.splitlines() if line.strip().startswith(f"{kind} groups"))
        assert line.split(":", 1)[1].split("(")[0].split() == " ".join(map(str, map(list, shape.groups(dims)))).split()
    assert "[   0     1 ]   dp 1 [   2     3 ]" in ex.STUB and "[   4     5 ]   dp 1 [   6     7 ]" in ex.STUB
    assert all((8, 2, 2) != layout for layout in ex.LAYOUTS)        # the graded layouts are held out


def test_check_all_json_score_sheet_and_exit_status(tmp_path):
    """A class folder: two right answers, one wrong, one stub, the rest missing."""
    for name, src in (("ring_all_reduce", "ring_all_reduce__correct.py"), ("zero_memory", "zero_memory__correct.py"),
                      ("kd_loss", "kd_loss__missing_t_squared.py")):
        (tmp_path / f"{name}.py").write_text((MISTAKES / src).read_text())
    assert main(["start", "fp16_round_to_nearest_even", str(tmp_path)]) == 0
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-m", "minidist.exercises", "check", "--all", str(tmp_path), "--json"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 1, run.stderr
    sheet = json.loads(run.stdout)
    rows = {r["exercise"]: r for r in sheet["exercises"]}
    assert set(rows) == set(NAMES) and sheet["max_score"] == len(NAMES) and not sheet["passed"]
    assert rows["ring_all_reduce"]["status"] == "passed" and rows["ring_all_reduce"]["score"] == 1.0
    assert rows["zero_memory"]["score"] == 1.0
    assert rows["kd_loss"]["status"] == "failed" and 0 < rows["kd_loss"]["score"] < 1
    assert rows["fp16_round_to_nearest_even"]["status"] == "unfinished"
    assert rows["layer_norm_backward"]["status"] == "missing" and rows["layer_norm_backward"]["score"] == 0
    assert sheet["score"] == pytest.approx(sum(r["score"] for r in sheet["exercises"]), abs=1e-3)
    for row in sheet["exercises"]:
        assert {"exercise", "topic", "status", "score", "passed", "total", "checks"} <= set(row)


def test_check_exit_status_zero_only_when_all_pass(tmp_path, capsys):
    assert main(["check", "zero_memory", "--reference"]) == 0
    assert main(["check", "zero_memory", str(MISTAKES / "zero_memory__correct.py")]) == 0
    assert main(["check", "zero_memory", str(MISTAKES / "zero_memory__stage1_all.py")]) == 1
    assert main(["check", "no_such_exercise"]) == 2
    capsys.readouterr()
    assert main(["hint", "ring_all_reduce"]) == 0
    assert "1. " in capsys.readouterr().out


def test_start_into_a_place_it_cannot_write_says_so_without_a_traceback(tmp_path, capsys):
    from minidist.exercises.__main__ import main
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    assert main(["start", "ring_all_reduce", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert "cannot write or read" in err and "Traceback" not in err


def test_an_endless_loop_is_stopped_once_and_the_grader_says_what_it_runs(tmp_path, monkeypatch, capsys):
    """A student's `while True` costs one check's time limit, not one per check, and the
    grader says which check it is running while the student waits."""
    import time

    from minidist.exercises import grading
    from minidist.exercises.__main__ import main
    monkeypatch.setattr(grading, "CHECK_TIME_LIMIT", 1.0)
    assert main(["start", "kd_loss", str(tmp_path)]) == 0
    path = tmp_path / "kd_loss.py"
    path.write_text(path.read_text().replace("raise NotImplementedError", "while True:\n        pass", 1))
    t0 = time.perf_counter()
    assert main(["check", "kd_loss", str(tmp_path), "--seed", "1"]) == 1
    assert time.perf_counter() - t0 < 10
    captured = capsys.readouterr()
    assert "did not finish within 1 s" in captured.out and "not run:" in captured.out
    assert "kd_loss: checking" in captured.err
