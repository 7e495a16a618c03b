"""The grading core every exercise shares: load a student's file, run checks, say what is wrong.

An exercise module (see :mod:`minidist.exercises`) gives a list of *checks*: plain functions
``check(sol)`` that call the student's functions through ``sol`` (the loaded file, or the
reference adapter) and raise :class:`Wrong` with a message in the student's terms — which
rank, which step, which chunk, expected vs got — when something is off. This module runs
them one by one and turns whatever happens into a :class:`CheckResult`:

* the check returns            -> passed;
* it raises :class:`Wrong`     -> failed, with the check's message;
* the student's code raises ``NotImplementedError`` -> unfinished ("still a stub");
* the student's code raises anything else -> failed with "your function raised X at
  line N", the line found in the traceback — a student's traceback never escapes;
* it runs past the time limit  -> failed ("did not finish within N s: a loop that never ends,
  or ranks waiting for each other?").

Unlike a grader that only compares arrays (CMU's distributed-training assignment), every
check states the rule it tests, so a failing message names the mistake.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import importlib.util
import inspect
import io
import os
import threading
import traceback
import uuid
import warnings
import zlib

import numpy as np

from .rules import broken_rules, forbidden, imported_names, used_names  # noqa: F401 - the grading API

CHECK_TIME_LIMIT = 30.0       # seconds one check may run (in-process ranks time out after 5 s)


class Wrong(AssertionError):
    """A check's verdict: the student's result breaks a rule; the message says which and how."""


@dataclasses.dataclass
class CheckResult:
    name: str
    status: str            # "passed" | "failed" | "unfinished"
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclasses.dataclass
class Report:
    """Everything a teacher or a course platform needs about one graded file."""

    exercise: str
    topic: str
    source: str                      # the graded file, or "reference"
    checks: list = dataclasses.field(default_factory=list)
    problem: str = ""                # set when the file could not be graded at all
    seed: int = 0                    # the held-out inputs were drawn from it (check --seed repeats them)

    @property
    def passed(self) -> int:
        return sum(c.passed for c in self.checks)

    @property
    def total(self) -> int:
        return len(self.checks)

    @property
    def status(self) -> str:
        if self.problem.startswith("missing"):
            return "missing"
        if self.problem or any(c.status == "failed" for c in self.checks):
            return "failed"
        if any(c.status == "unfinished" for c in self.checks):
            return "unfinished"
        return "passed" if self.checks else "failed"

    @property
    def score(self) -> float:
        return round(self.passed / self.total, 3) if self.total else 0.0

    def to_dict(self) -> dict:
        return {"exercise": self.exercise, "topic": self.topic, "source": self.source,
                "status": self.status, "seed": self.seed, "score": self.score, "passed": self.passed, "total": self.total,
                "problem": self.problem, "checks": [dataclasses.asdict(c) for c in self.checks]}

    def text(self) -> str:
        mark = {"passed": "ok  ", "failed": "FAIL", "unfinished": "TODO"}
        lines = [f"{self.exercise} ({self.topic}) — {self.source} — seed {self.seed}"]
        if self.problem:
            lines.append(f"  {self.problem}")
        last = None
        for c in self.checks:
            lines.append(f"  [{mark[c.status]}] {c.name}")
            if c.message and not (c.status == "unfinished" and c.message == last):   # a stub says it once
                lines.extend("         " + line for line in c.message.splitlines())
            last = c.message
        lines.append(f"  {self.status.upper()}: {self.passed}/{self.total} checks passed")
        return "\n".join(lines)


# -- loading a student's file -----------------------------------------------------------------
class LoadError(Exception):
    """The file cannot be graded (missing, syntax error, raises on import, lacks a function)."""


def load_solution(path: str, functions) -> object:
    """Import the student's file by path (a fresh module each time) and check it defines
    ``functions``. Raises :class:`LoadError` with a message for the student."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise LoadError(f"missing file {path}")
    spec = importlib.util.spec_from_file_location(f"student_{uuid.uuid4().hex[:8]}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise LoadError(f"your file has a syntax error at line {exc.lineno}: {exc.msg}") from None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - whatever a student's module does on import
        raise LoadError(f"importing your file raised {describe_exception(exc, path)}") from None
    missing = [f for f in functions if not callable(getattr(module, f, None))]
    if missing:
        raise LoadError(f"your file does not define {', '.join(missing)}: keep the names of the stub "
                        f"(`python -m minidist.exercises start NAME` writes it again)")
    module.__grader_source__ = path
    return module


# -- exceptions in the student's terms ----------------------------------------------------------
def _causes(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_unfinished(exc: BaseException) -> bool:
    return any(isinstance(e, NotImplementedError) for e in _causes(exc))


def student_line(exc: BaseException, path: str | None) -> tuple[int, str] | None:
    """(line, function) of the innermost frame of the traceback that lies in ``path``."""
    if not path:
        return None
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if os.path.abspath(frame.filename) == path:
            found = (frame.lineno, frame.name)
    return found


def describe_exception(exc: BaseException, path: str | None) -> str:
    where = student_line(exc, path)
    text = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    if where is None:
        return text
    return f"{text} — at line {where[0]} of your file (in {where[1]})"


# -- running checks ------------------------------------------------------------------------------
class CheckTimedOut(BaseException):
    """Raised inside a student's check that ran past its time limit (see :func:`_stop`)."""


def _stop(thread: threading.Thread, grace: float = 1.0) -> None:
    """Stop a check thread that ran past its limit. Python cannot kill a thread, but it can
    raise an exception in it at its next bytecode (CPython's PyThreadState_SetAsyncExc): an
    endless ``while True`` loop of the student's would otherwise keep a core busy for as long
    as the grader (or the test suite) runs."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(CheckTimedOut))
    thread.join(grace)


def check_rng(seed: int, name: str) -> np.random.Generator:
    """The random generator of one check in a run graded with ``seed``: the same seed gives
    the same inputs, and each check its own stream (whatever the order the checks run in)."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _takes_rng(check) -> bool:
    try:
        params = inspect.signature(check).parameters.values()
    except (TypeError, ValueError):
        return False
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty for p in params) >= 2


def _hang_advice(text: str) -> str:
    """A timed-out plain send/recv told in the exercise's terms (minidist's own advice,
    debug=True, is about collectives that ranks call in different orders)."""
    if "in a plain send/recv" not in text:
        return text
    head, _, rest = text.partition(" A rank probably skipped")
    where = rest[rest.index(" — at line"):] if " — at line" in rest else ""
    return (f"{head.rstrip('.')}{where}. Every comm.recv(source) needs a comm.send(..., dest) on rank `source` "
            f"in the same step: check which rank each rank sends to and receives from, and that every rank runs "
            f"the same number of steps")


def run_check(name: str, check, sol, path: str | None, time_limit: float | None = None,
              seed: int = 0) -> CheckResult:
    """Run one check in a daemon thread (so that an endless loop cannot hang the grader).
    A check ``check(sol, rng)`` gets :func:`check_rng` of ``seed``: its held-out inputs."""
    time_limit = CHECK_TIME_LIMIT if time_limit is None else time_limit
    box: dict = {}

    def target():
        try:
            if _takes_rng(check):
                check(sol, check_rng(seed, name))
            else:
                check(sol)
        except BaseException as exc:  # noqa: BLE001 - every outcome becomes a CheckResult
            box["exc"] = exc

    thread = threading.Thread(target=target, name=f"check-{name}", daemon=True)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # a student's prints must not spoil --json
        warnings.simplefilter("ignore")        # overflow warnings of a student's exp(): the check names the mistake
        thread.start()
        thread.join(time_limit)
    if thread.is_alive():
        _stop(thread)
        return CheckResult(name, "failed", f"did not finish within {time_limit:g} s: a loop that never "
                                           f"ends, or ranks waiting for messages nobody sends?")
    exc = box.get("exc")
    if exc is None:
        return CheckResult(name, "passed")
    if isinstance(exc, Wrong):
        return CheckResult(name, "failed", str(exc))
    if is_unfinished(exc):
        where = student_line(exc, path)
        fn = f"`{where[1]}` " if where else ""
        return CheckResult(name, "unfinished", f"{fn}still raises NotImplementedError: write its body "
                                               f"(the statement is in the file's docstring)")
    if student_line(exc, path) is not None:
        return CheckResult(name, "failed", f"your function raised {_hang_advice(describe_exception(exc, path))}")
    return CheckResult(name, "failed", f"checking your result raised {type(exc).__name__}: {exc}")


def new_seed() -> int:
    """A seed for one grading run: printed with the grade, so that a run can be repeated."""
    return int.from_bytes(os.urandom(4), "little") % 100_000


def grade(exercise, path: str | None = None, reference: bool = False, seed: int | None = None,
          progress=None) -> Report:
    """Grade the file at ``path`` (or, with ``reference=True``, minidist's own implementation).
    The held-out inputs are drawn from ``seed`` (a fresh one when None; the report carries it).
    ``progress(text)`` is told which check runs (the CLI prints it while the student waits).
    Once a check runs past its time limit the others are not run: the same endless loop would
    cost each of them the limit again."""
    seed = new_seed() if seed is None else int(seed)
    report = Report(exercise.NAME, exercise.TOPIC, "reference" if reference else os.path.abspath(path), seed=seed)
    if reference:
        sol, source = exercise.reference(), None
    else:
        try:
            sol = load_solution(path, exercise.FUNCTIONS)
        except LoadError as exc:
            report.problem = str(exc)
            return report
        source = sol.__grader_source__
    timed_out = None
    for name, check in exercise.CHECKS:
        if timed_out is not None:
            report.checks.append(CheckResult(name, "failed", f"not run: `{timed_out}` did not finish in time"))
            continue
        if progress is not None:
            progress(f"{exercise.NAME}: checking {name} …")
        result = run_check(name, check, sol, source, seed=seed)
        if result.message.startswith("did not finish within"):
            timed_out = name
        report.checks.append(result)
    broken = broken_rules(exercise, source) if source else ""
    if broken:
        report.checks.append(CheckResult(
            "rules of the exercise", "failed",
            f"your file {broken}. That does the work this exercise asks you to write: the statement's "
            f"\"Not allowed\" line lists what may not be called or imported; build it from what the statement "
            f"gives you"))
    return report


# -- helpers for writing checks -------------------------------------------------------------------
def as_array(got, what: str) -> np.ndarray:
    """The student's return value as an array, or :class:`Wrong` saying what came back."""
    if got is None:
        raise Wrong(f"{what}: your function returned None; return the result (did you forget `return`?)")
    try:
        return np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        raise Wrong(f"{what}: your function returned {type(got).__name__}, not an array of numbers") from None


def expected_got(e: float, g: float) -> str:
    """"expected E, got G" with enough digits that the two differ on the page, and the relative
    error when both are finite numbers (a student cannot tell 1.23457 from 1.23457)."""
    e, g = float(e), float(g)
    for digits in range(6, 18):
        flag = "#" if digits > 6 else ""          # keep trailing zeros once the digits matter
        es, gs = f"{e:{flag}.{digits}g}", f"{g:{flag}.{digits}g}"
        if es != gs:
            break
    text = f"expected {es}, got {gs}"
    if np.isfinite(e) and np.isfinite(g) and e != 0 and e != g:
        text += f" (relative error {abs(g - e) / abs(e):.2g})"
    return text


def compare(got, expected, what: str, rtol: float = 1e-6, atol: float = 1e-9, hint: str = "") -> None:
    """Raise :class:`Wrong` naming the shape or the first wrong element of ``got``."""
    got, expected = as_array(got, what), np.asarray(expected, dtype=np.float64)
    if got.shape != expected.shape:
        raise Wrong(f"{what}: expected shape {expected.shape}, got {got.shape}" + (f". {hint}" if hint else ""))
    bad = ~np.isclose(got, expected, rtol=rtol, atol=atol, equal_nan=True)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        where = f"[{', '.join(map(str, idx))}]" if idx else ""
        nan = " — your result holds NaN or inf" if not np.isfinite(got).all() and np.isfinite(expected).all() else ""
        raise Wrong(f"{what}{where}: {expected_got(expected[idx], got[idx])}; {int(bad.sum())} of {bad.size} "
                    f"elements differ{nan}" + (f". {hint}" if hint else ""))


@contextlib.contextmanager
def on_case(sol, case: str, hint: str = ""):
    """Turn an exception of the student's code on a held-out ``case`` into :class:`Wrong` that
    names the case (the inputs), the line, and a hint for what usually causes it there."""
    try:
        yield
    except (Wrong, CheckTimedOut, NotImplementedError):
        raise
    except Exception as exc:  # noqa: BLE001 - the student's code on the grader's inputs
        if is_unfinished(exc):
            raise
        raise Wrong(f"{case}: your function raised {describe_exception(exc, getattr(sol, '__grader_source__', None))}"
                    + (f". {hint}" if hint else "")) from None


def plural(n: int, word: str, words: str | None = None) -> str:
    """"1 micro-batch", "3 micro-batches"."""
    return f"{n} {word if n == 1 else (words or word + 's')}"


def shapes(rng: np.random.Generator, n: int, low: int = 1, high: int = 4, size=(1, 7)) -> list[tuple]:
    """``n`` random shapes of ``low``..``high`` axes (every rank count from low to high shows up
    once before any repeats), each axis ``size[0]``..``size[1]`` long."""
    ndims = [low + i % (high - low + 1) for i in range(n)]
    return [tuple(int(v) for v in rng.integers(size[0], size[1] + 1, size=d)) for d in ndims]


def matches(got, expected, rtol: float = 1e-6, atol: float = 1e-9) -> bool:
    try:
        got = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    expected = np.asarray(expected, dtype=np.float64)
    return got.shape == expected.shape and bool(np.allclose(got, expected, rtol=rtol, atol=atol, equal_nan=True))


def diagnose(got, mistakes, *args, rtol: float = 1e-6, atol: float = 1e-9) -> str:
    """The message of the first known mistake whose result on ``args`` equals ``got``, or "".

    ``mistakes``: ``(function, message)`` pairs — each function is the reference with one
    typical mistake made on purpose. Recognising the result tells the student *which* mistake.
    """
    for fn, message in mistakes:
        try:
            if matches(got, fn(*args), rtol, atol):
                return message
        except Exception:  # noqa: BLE001 - a mistake model that does not apply to these inputs
            continue
    return ""
