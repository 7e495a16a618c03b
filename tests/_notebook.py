"""Execute a notebook of notebooks/ top to bottom, as a student would, and return its outputs.

The notebooks are committed *executed* (a reader on a code host sees the numbers and the
figures). Every run here re-executes a copy and checks that the numbers in the committed text
outputs are the fresh ones, so the committed outputs cannot drift from the code; refresh them
with ``python tests/execute_notebooks.py`` after a change.
"""
import copy
import os
import re
from pathlib import Path

import nbclient          # declared test dependencies (setup.cfg [test]): a missing one fails, never skips
import nbformat

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
REFRESH = "refresh the committed outputs with `python tests/execute_notebooks.py`"

# a number as printed: sign, digits, optional fraction and exponent (thousands separators joined),
# standing alone — not a digit inside a word or a path (a temporary folder's random name)
NUMBER = re.compile(r"(?<![\w./])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w/])")
# lines that measure the machine, not the model: wall-clock times and rates
WALL_CLOCK = re.compile(r"steps/s|wall|elapsed|took|\d\s*s\)|per second|it/s", re.IGNORECASE)


def execute(nb, workdir=None):
    """Run ``nb`` in place in a fresh kernel: BLAS single-threaded, matplotlib inline."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir or NOTEBOOKS)}}).execute()
    return nb


def cell_text(cell) -> str:
    """The text a code cell shows: its streams and the plain-text form of its results."""
    parts = []
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream":
            parts.append(o.get("text", ""))
        elif "data" in o and "text/plain" in o["data"] and "image/png" not in o["data"]:
            parts.append(o["data"]["text/plain"])
    return "".join(parts)


def numbers(text: str) -> list[str]:
    return [m.group(0) for line in text.splitlines() if not WALL_CLOCK.search(line) for m in NUMBER.finditer(line)]


def same_number(committed: str, fresh: str) -> bool:
    """Integers exactly; floats to a relative 1e-9 or, printed, to one unit of their last digit
    (a value on a rounding boundary may print either way); rounding-error magnitudes (< 1e-9,
    e.g. "relative difference 3e-13": they differ with the machine's BLAS) as small as each other."""
    a, b = committed.replace(",", ""), fresh.replace(",", "")
    if re.fullmatch(r"[-+]?\d+", a) and re.fullmatch(r"[-+]?\d+", b):
        return int(a) == int(b)
    x, y = float(a), float(b)
    if abs(x) < 1e-9 and abs(y) < 1e-9:
        return True
    digits = a.split("e")[0].split("E")[0]
    ulp = 10.0 ** -len(digits.split(".")[1]) if "." in digits else 1.0
    if "e" in a.lower():
        ulp *= 10.0 ** int(a.lower().split("e")[1])
    return abs(x - y) <= max(1e-9 * abs(x), ulp * 1.0000001)


def check_committed(name: str, committed, fresh) -> None:
    """The committed notebook holds outputs, and their numbers are the fresh run's."""
    code = [(c, f) for c, f in zip(committed.cells, fresh.cells) if c.cell_type == "code"]
    shown = [f for _, f in code if f.get("outputs")]
    assert not shown or any(c.get("outputs") for c, _ in code), f"{name} is committed without outputs; {REFRESH}"
    for i, (c, f) in enumerate(code):
        want, got = numbers(cell_text(c)), numbers(cell_text(f))
        assert len(want) == len(got), (f"{name}, code cell {i + 1}: the committed output shows {len(want)} numbers, "
                                       f"a fresh run {len(got)}; {REFRESH}")
        for w, g in zip(want, got):
            assert same_number(w, g), f"{name}, code cell {i + 1}: committed {w}, a fresh run gives {g}; {REFRESH}"


def run_notebook(name: str, workdir=None):
    """Execute ``notebooks/<name>``; fail on any cell error or on committed outputs that differ
    from the fresh ones. Returns (printed text, outputs)."""
    committed = nbformat.read(NOTEBOOKS / name, as_version=4)
    nb = execute(copy.deepcopy(committed), workdir)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, f"{name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    check_committed(name, committed, nb)
    return "".join(o.get("text", "") for o in outputs), outputs


def count_images(outputs) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs)
