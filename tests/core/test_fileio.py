"""core.fileio.write_section: the one writer of the Markdown sections that several benchmark
commands (bench, bench-workers, the serve load test, the DICOM node bench) keep in one file."""

from __future__ import annotations

from pneumoscan.core.fileio import write_section


def test_a_section_is_replaced_in_place_and_the_rest_kept(tmp_path):
    out = tmp_path / "benchmarks.md"
    out.write_text(
        "# intro\n\n<!-- a:begin -->\nold a\n<!-- a:end -->\n\nbetween\n\n"
        "<!-- b:begin -->\nb\n<!-- b:end -->\n"
    )
    write_section(out, "a", "\nnew a\n\n")
    assert out.read_text() == (
        "# intro\n\n<!-- a:begin -->\nnew a\n<!-- a:end -->\n\nbetween\n\n"
        "<!-- b:begin -->\nb\n<!-- b:end -->\n"
    )


def test_an_absent_section_is_appended_and_a_missing_file_created(tmp_path):
    out = tmp_path / "docs" / "new.md"
    write_section(out, "a", "first")
    assert out.read_text() == "<!-- a:begin -->\nfirst\n<!-- a:end -->\n"
    write_section(out, "b", "second")
    assert out.read_text().endswith("<!-- a:end -->\n\n<!-- b:begin -->\nsecond\n<!-- b:end -->\n")
