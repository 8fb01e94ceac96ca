"""The benchmark helpers that shape docs/benchmarks.md: section rewriting and per-round ratios (no timings asserted)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from common import Rounds, alternate, write_section


def test_write_section_replaces_only_its_own_markers(tmp_path):
    doc = tmp_path / "benchmarks.md"
    write_section("a", "first A", doc)
    write_section("b", "only B", doc)
    write_section("a", "second A", doc)
    text = doc.read_text()
    assert text.count("<!-- bench:a -->") == 1 and text.count("<!-- /bench:a -->") == 1
    assert "second A" in text and "first A" not in text
    assert text.index("<!-- bench:a -->") < text.index("<!-- bench:b -->")  # a keeps its place
    assert "<!-- bench:b -->\nonly B\n<!-- /bench:b -->" in text
    assert text.startswith("# Benchmarks")


def test_ratios_are_taken_round_by_round():
    rounds = Rounds({"a": [2.0, 4.0, 9.0], "b": [1.0, 4.0, 3.0]})
    assert rounds.ratios("a", "b") == (2.0, 1.0, 3.0)  # median of 2, 1, 3 -- not 4 / 3 from the medians
    assert rounds.summary("a") == (4.0, 2.0, 9.0)


def test_alternate_reverses_the_order_every_other_round():
    calls = []
    contenders = {name: (lambda name=name: calls.append(name)) for name in "xyz"}
    result = alternate(contenders, 3, log=lambda _: None)
    assert calls == list("xyz") + list("xyz") + list("zyx") + list("xyz")  # warm-up, then A B C, C B A, A B C
    assert all(len(v) == 3 for v in result.times.values())


def test_a_contender_may_report_its_own_seconds():
    result = alternate({"sub": lambda: 12.5}, 2, log=lambda _: None)
    assert result.times["sub"] == [12.5, 12.5]


def test_order_sections_moves_whole_sections_and_keeps_the_rest(tmp_path):
    from common import order_sections

    doc = tmp_path / "benchmarks.md"
    for name in ("x", "summary", "y"):
        write_section(name, f"body of {name}\nline two", doc)
    order_sections(["summary", "y"], doc)
    text = doc.read_text()
    assert text.index("bench:summary") < text.index("bench:y") < text.index("bench:x")
    assert "<!-- bench:x -->\nbody of x\nline two\n<!-- /bench:x -->" in text
    assert text.startswith("# Benchmarks") and text.count("# Benchmarks") == 1


def test_order_sections_leaves_unmarked_text_in_place(tmp_path):
    from common import order_sections

    doc = tmp_path / "benchmarks.md"
    doc.write_text(
        "# Benchmarks\n\nintro\n\n<!-- bench:b -->\nB\n<!-- /bench:b -->\n\nhand-written\n\n"
        "<!-- bench:a -->\nA\n<!-- /bench:a -->\n\ntail\n"
    )
    order_sections(["a", "b"], doc)
    assert doc.read_text() == (
        "# Benchmarks\n\nintro\n\n<!-- bench:a -->\nA\n<!-- /bench:a -->\n\nhand-written\n\n"
        "<!-- bench:b -->\nB\n<!-- /bench:b -->\n\ntail\n"
    )


def test_write_section_keeps_text_written_by_others(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("## Server\n\nnumbers from the load test\n")
    write_section("summary", "ours", doc)
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n")
    assert "## Server\n\nnumbers from the load test\n" in text and "<!-- bench:summary -->\nours\n" in text
