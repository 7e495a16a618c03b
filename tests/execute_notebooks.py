"""Execute notebooks/*.ipynb (or the ones named) in place, so that they are committed with
their outputs: ``python tests/execute_notebooks.py [NAME ...]``. The notebook tests then check
that the committed numbers are what a fresh run prints (tests/_notebook.py)."""
import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).parent))
from _notebook import NOTEBOOKS, execute  # noqa: E402


def main(names) -> None:
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        if names and path.name not in names:
            continue
        nb = execute(nbformat.read(path, as_version=4))
        for cell in nb.cells:                          # the execution counts only add noise to diffs
            if cell.cell_type == "code":
                cell.execution_count = None
                for o in cell.get("outputs", []):
                    if "execution_count" in o:
                        o["execution_count"] = None
        nb.metadata.pop("widgets", None)
        nbformat.write(nb, path)
        print(f"executed {path.name}")


if __name__ == "__main__":
    main(sys.argv[1:])
