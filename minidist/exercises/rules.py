"""The rules of an exercise: what a student's file may not call or import, found with ``ast``.

An exercise's ``FORBIDDEN`` (and ``FORBIDDEN_IMPORTS``) lists dotted names — functions, classes,
modules — that would do the work it asks for: minidist's own answer, or NumPy's where NumPy
would do it (``numpy.float16`` for the fp16 exercise). :func:`used_names` resolves what the
file reaches through its imports, under any spelling (an alias, an attribute chain, ``getattr``,
an importlib string, a dtype string, a struct format); :func:`broken_rules` matches it against
the list. Only imports are resolved, so a name the student defines — a helper called
``all_reduce``, a constant called ``half`` — is never refused.
"""
from __future__ import annotations

import ast
import sys
import types

import numpy as np


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
