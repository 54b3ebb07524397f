"""What the README and the benchmark notes point at exists: a reader can open every file they link or
name, and every test they cite as the proof of a guarantee is a test of this suite."""

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "benchmarks").glob("*.md")), *sorted((ROOT / "docs").glob("*.md"))]
REPOSITORY_LINK = re.compile(r"https://github\.com/shmsave/shmsave/blob/main/([^\s)`]+)")
RELATIVE_LINK = re.compile(r"\]\(((?!https?:|#)[^)\s]+)\)")
NAMED_FILE = re.compile(r"`((?:shmsave|benchmarks|tests|docs)/[\w./-]+\.\w+)`")
CITED_TEST = re.compile(r"\b(test_\w+)\b(?!\.py)")


def _missing_files(doc: Path) -> list[str]:
    text = doc.read_text()
    named = [ROOT / path for path in REPOSITORY_LINK.findall(text) + NAMED_FILE.findall(text)]
    named += [doc.parent / path for path in RELATIVE_LINK.findall(text)]
    return sorted({os.path.relpath(path, ROOT) for path in named if not path.exists()})


IN_A_CHECKOUT = pytest.mark.skipif(
    not (ROOT / ".git").exists(),
    reason="the documents link files of the git repository; an unpacked sdist ships the package, its tests "
    "and the benchmark code, not the benchmark results",
)


@IN_A_CHECKOUT
@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: str(doc.relative_to(ROOT)))
def test_every_file_a_document_links_or_names_exists(doc):
    assert _missing_files(doc) == []


def test_a_missing_file_is_caught(tmp_path):
    doc = tmp_path / "note.md"
    doc.write_text("see [x](results/gone.md) and `shmsave/gone.py`")
    assert len(_missing_files(doc)) == 2


def test_every_test_the_readme_cites_is_in_the_suite():
    tests = ROOT / "tests"
    defined = {name for path in tests.glob("*.py") for name in re.findall(r"def (test_\w+)", path.read_text())}
    modules = {path.stem for path in tests.glob("test_*.py")}
    cited = set(CITED_TEST.findall((ROOT / "README.md").read_text()))
    assert len(cited) > 50  # the guarantees table cites its tests by name
    assert sorted(cited - defined - modules) == []
