"""Every notebook ends the same way: questions for the reader, then the chapter's exercises —
and every exercise a notebook names exists in ``python -m minidist.exercises list``."""
import re
from pathlib import Path

import nbformat
import pytest

from minidist.exercises import EXERCISES

pytestmark = pytest.mark.notebook
NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_ends_with_questions_and_existing_exercises(path):
    cells = [c for c in nbformat.read(str(path), 4).cells if c.cell_type == "markdown"]
    titles = [c.source.strip().splitlines()[0] for c in cells if c.source.strip()]
    headings = [line.strip() for c in cells for line in c.source.splitlines() if line.startswith("#")]
    assert "## Questions" in headings, f"{path.name}: no '## Questions' section for the reader"
    assert titles[-1] == "## Exercises", f"{path.name}: the last section should name the chapter's exercises"
    named = re.findall(r"\*\*`(\w+)`\*\*", cells[-1].source)
    assert named, f"{path.name}: the exercises cell names no exercise"
    unknown = [n for n in named if n not in EXERCISES]
    assert not unknown, f"{path.name}: names exercises that do not exist: {unknown}"


def test_every_exercise_is_named_by_a_notebook():
    named = set()
    for path in NOTEBOOKS:
        named |= set(re.findall(r"\*\*`(\w+)`\*\*", nbformat.read(str(path), 4).cells[-1].source))
    assert set(EXERCISES) <= named, f"exercises no notebook points to: {sorted(set(EXERCISES) - named)}"
