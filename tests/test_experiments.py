"""docs/results.md (and docs/toxicity_scorers.md) are what the studies in experiments/ render from their committed
results: rendering runs no model."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "results.md"
STUDIES = sorted(p.parent.name for p in (ROOT / "experiments").glob("*/run.py"))
OWN_PAGE = {"toxicity_scorers": ROOT / "docs" / "toxicity_scorers.md"}  # studies with a page of their own
SECTION = re.compile(r"(<!-- results:([\w-]+) -->\n).*?(\n<!-- /results:\2 -->)", flags=re.S)


def study(name: str):
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", ROOT / "experiments" / name / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_study_renders_docs_results_byte_for_byte(tmp_path):
    """Empty every rendered section, render every study into the copy: the page comes back byte for byte."""
    original = DOC.read_bytes()
    emptied = SECTION.sub(lambda m: m.group(1) + "(not rendered)" + m.group(3), original.decode("utf-8"))
    assert emptied.count("(not rendered)") >= 6
    doc = tmp_path / "results.md"
    doc.write_text(emptied, encoding="utf-8")
    for name in STUDIES:
        if name not in OWN_PAGE:
            study(name).render(doc)
    assert doc.read_bytes() == original


@pytest.mark.parametrize("name", [s for s in STUDIES if s not in OWN_PAGE])
def test_each_study_owns_a_section_of_docs_results(name, tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text("# Measured results\n", encoding="utf-8")
    study(name).render(doc)
    rendered = doc.read_text(encoding="utf-8")
    assert SECTION.search(rendered) and all(
        block in DOC.read_text(encoding="utf-8") for block in (m.group(0) for m in SECTION.finditer(rendered))
    )


@pytest.mark.parametrize("name", list(OWN_PAGE))
def test_a_study_with_its_own_page_renders_it_byte_for_byte(name, tmp_path):
    doc = tmp_path / OWN_PAGE[name].name
    study(name).render(doc)
    assert doc.read_bytes() == OWN_PAGE[name].read_bytes()


def test_every_figure_results_md_links_is_committed():
    linked = re.findall(r"\]\((results/[^)]+\.png)\)", DOC.read_text(encoding="utf-8"))
    assert linked and all((DOC.parent / path).is_file() for path in linked)
