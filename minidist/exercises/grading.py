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

import ast
import contextlib
import ctypes
import dataclasses
import importlib.util
import inspect
import io
import os
import sys
import threading
import traceback
import types
import uuid
import warnings
import zlib

import numpy as np

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


def _dotted(node) -> str | None:
    """``a.b.c`` for a chain of attributes on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.insert(0, node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *parts])
    return None


def _loaded(dotted: str):
    """The object ``dotted`` names, looked up only among modules already imported (by the
    student's file when it was loaded, or by the grader): None when it names nothing."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        obj = sys.modules.get(".".join(parts[:i]))
        if obj is None:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name, None)
            if obj is None:
                return None
        return obj
    return None


def used_names(path: str) -> list[tuple[str, int, str]]:
    """What the file's code imports or reaches through an import, resolved with ``ast`` into
    full dotted names, wherever it stands: ``(dotted name, line, as written)``.

    ``import a.b`` -> a.b; ``from a.b import c as d`` -> a.b.c, and ``d.e`` -> a.b.c.e;
    ``getattr(d, "e")`` -> a.b.c.e; a string "a.b" (for importlib) -> a.b; a dtype string
    (``x.astype("float16")``, ``dtype="e"``) -> numpy.float16, a struct format with a half
    ("<e") -> numpy.float16. Names the file defines itself are never resolved: a student's
    helper called ``all_reduce`` or ``log_softmax`` is theirs."""
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return []
    found, alias = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                found.append((a.name, node.lineno, a.name))
                alias[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                found.append((f"{node.module}.{a.name}", node.lineno, a.name))
                alias[a.asname or a.name] = f"{node.module}.{a.name}"

    def resolve(text: str) -> str | None:
        head, _, rest = text.partition(".")
        return alias[head] + (f".{rest}" if rest else "") if head in alias else None

    for node in ast.walk(tree):
        if isinstance(node, (ast.Attribute, ast.Name)) and isinstance(getattr(node, "ctx", None), ast.Load):
            text = _dotted(node)
            full = resolve(text) if text else None
            if full:
                found.append((full, node.lineno, text))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                all(part.isidentifier() for part in node.value.split(".")) and "." in node.value:
            found.append((node.value, node.lineno, repr(node.value)))     # importlib.import_module("a.b")
        if isinstance(node, ast.Call):
            func = _dotted(node.func) or ""
            full = resolve(func) or func
            args = [a for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if full == "getattr" and len(node.args) == 2 and args and _dotted(node.args[0]):
                base = resolve(_dotted(node.args[0]))
                if base:
                    found.append((f"{base}.{args[0].value}", node.lineno, f"getattr(..., {args[0].value!r})"))
            dtype_args = [k.value for k in node.keywords if k.arg == "dtype"]
            method = node.func.attr if isinstance(node.func, ast.Attribute) else func
            if method in _DTYPE_CALLS:
                dtype_args += node.args
            for a in dtype_args:
                if isinstance(a, ast.Constant) and isinstance(a.value, str):
                    try:
                        found.append((f"numpy.{np.dtype(a.value).type.__name__}", node.lineno, repr(a.value)))
                    except (TypeError, ValueError):
                        pass
            if full.startswith("struct.") and args and "e" in args[0].value:
                found.append(("numpy.float16", node.lineno, f"struct format {args[0].value!r}"))
    return found


_DTYPE_CALLS = {"astype", "view", "dtype", "finfo", "array", "asarray", "zeros", "ones", "empty", "full",
                "frombuffer", "fromiter", "arange", "zeros_like", "ones_like", "empty_like", "full_like", "cast"}


def imported_names(path: str) -> set[str]:
    """The dotted names the file's code imports or reaches through an import (see
    :func:`used_names`)."""
    return {name for name, _, _ in used_names(path)}


def _module_of(obj) -> str | None:
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    name = getattr(obj, "__module__", None)
    return name if isinstance(name, str) else None


def _within(name: str | None, prefix: str) -> bool:
    return bool(name) and (name == prefix or name.startswith(prefix + "."))


def forbidden(exercise) -> tuple[str, ...]:
    """The dotted names an exercise forbids: ``FORBIDDEN`` (functions, classes, modules: what
    would do the work) and ``FORBIDDEN_IMPORTS`` (modules)."""
    return tuple(getattr(exercise, "FORBIDDEN", ())) + tuple(getattr(exercise, "FORBIDDEN_IMPORTS", ()))


def broken_rules(exercise, path: str) -> str:
    """What the file calls or imports that the exercise forbids, as the end of a sentence
    ("imports `a.b` (line 3) and uses `np.float16` (line 9)"); "" when nothing.

    A forbidden entry is a dotted name. It is used when the file reaches it under any
    spelling (``np.half`` is ``numpy.float16``; ``from minidist import distributed as d``
    then ``d.all_reduce``), or, for a module, anything defined inside it, re-exported or not.
    Only what the file imports is looked at, so a name the student defines never counts."""
    banned = forbidden(exercise)
    if not banned:
        return ""
    targets = []
    for entry in banned:
        obj = _loaded(entry)        # nothing is imported for this: what the file reached is loaded already
        targets.append((entry, obj, obj is None or isinstance(obj, types.ModuleType)))
    parts = []
    for entry, obj, is_module in targets:
        for name, line, text in used_names(path):
            got = _loaded(name)
            if _within(name, entry) or (obj is not None and got is obj) or \
                    (is_module and got is not None and _within(_module_of(got), entry)):
                verb = "imports" if is_module else "uses"
                shown = name if text.isidentifier() else text        # a bare alias: say what it is
                spelled = f" (as {shown})" if shown not in (entry, entry.rsplit(".", 1)[-1]) else ""
                parts.append(f"{verb} `{entry}`{spelled} at line {line}")
                break
    return "; ".join(parts)


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


def run_check(name: str, check, sol, path: str | None, time_limit: float = CHECK_TIME_LIMIT,
              seed: int = 0) -> CheckResult:
    """Run one check in a daemon thread (so that an endless loop cannot hang the grader).
    A check ``check(sol, rng)`` gets :func:`check_rng` of ``seed``: its held-out inputs."""
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


def grade(exercise, path: str | None = None, reference: bool = False, seed: int | None = None) -> Report:
    """Grade the file at ``path`` (or, with ``reference=True``, minidist's own implementation).
    The held-out inputs are drawn from ``seed`` (a fresh one when None; the report carries it)."""
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
    for name, check in exercise.CHECKS:
        report.checks.append(run_check(name, check, sol, source, seed=seed))
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
