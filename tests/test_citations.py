"""Everything a reader is pointed to can be opened: no docstring, comment, notebook or README
sentence cites the product specification or the style guide the maintainers work from (they
are not in the repository), and every repository path or Markdown file named exists."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob("minidist/**/*.py"), *ROOT.glob("tests/**/*.py"), *ROOT.glob("notebooks/*.ipynb"),
                  ROOT / "README.md", ROOT / "setup.cfg"])
PRIVATE = re.compile(r"\bSPEC\s*§|\bSPEC's|\bthe SPEC\b|\bSPEC\.md\b|\bSTYLE\.md\b")
PATH = re.compile(r"(?<![\w/.])((?:minidist|tests|notebooks|figures|docs)/[\w/.-]*\w\.(?:py|ipynb|md|json|npz|png|cfg))")
MARKDOWN = re.compile(r"(?<![\w/.-])(\w+\.md)\b")
TEMPLATE = re.compile(r"[A-Z]{3,}")          # a placeholder such as tests/exercise_mistakes/NAME__WHAT.py


def _lines(pattern):
    for path in SOURCES:
        if path.name == "test_citations.py":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in pattern.finditer(line):
                yield f"{path.relative_to(ROOT)}:{n}", m.group(0 if pattern is PRIVATE else 1)


def test_no_citation_of_the_specification_or_the_style_guide():
    hits = [where for where, _ in _lines(PRIVATE)]
    assert not hits, f"cite the paper, the README section or the module instead: {hits}"


def test_every_named_repository_file_exists():
    missing = [(where, name) for pattern in (PATH, MARKDOWN) for where, name in _lines(pattern)
               if not TEMPLATE.search(name.split("/")[-1].split(".")[0]) and not (ROOT / name).exists()]
    assert not missing, f"these files are not in the repository: {missing}"


def test_the_checks_catch_what_they_are_for():
    assert PRIVATE.search("the report (SPEC §10)") and PRIVATE.search("habits of STYLE.md")
    assert PRIVATE.search("as in the SPEC's bubble fraction") and not PRIVATE.search("SPEC = PRESETS['A100']")
    assert not PRIVATE.search("Device(SPEC, rank=0)") and not PRIVATE.search("SPEC.message_time(48)")
    assert PATH.search("see tests/data/torch_pipeline_orders.json").group(1) == "tests/data/torch_pipeline_orders.json"
    assert MARKDOWN.search("read STYLE.md first").group(1) == "STYLE.md"
