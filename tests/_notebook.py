"""Execute a notebook of notebooks/ top to bottom, as a student would, and return its outputs."""
import os
from pathlib import Path

import nbclient          # declared test dependencies (setup.cfg [test]): a missing one fails, never skips
import nbformat

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run_notebook(name: str, workdir=None):
    """Execute ``notebooks/<name>``; fail on any cell error. Returns (printed text, outputs).

    BLAS is kept single-threaded and matplotlib inline in the kernel; ``workdir`` is the
    kernel's working directory (default: notebooks/).
    """
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir or NOTEBOOKS)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, f"{name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    return "".join(o.get("text", "") for o in outputs), outputs


def count_images(outputs) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs)
