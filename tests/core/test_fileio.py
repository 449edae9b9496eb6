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


def test_only_durable_writes_are_fsynced(tmp_path, monkeypatch):
    """Results and spool files are fsynced (file and folder); heatmap PNGs, which a rerun makes
    again, are renamed into place whole but not fsynced."""
    import os

    from pneumoscan.core.fileio import atomic_write_bytes
    from pneumoscan.runtime.heatmap import save_png

    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    atomic_write_bytes(tmp_path / "result.json", b"{}")
    assert len(calls) == 2  # the file, then its folder
    calls.clear()
    from PIL import Image

    save_png(Image.new("RGB", (8, 8), (10, 20, 30)), tmp_path / "map.png")
    assert calls == []
    with Image.open(tmp_path / "map.png") as image:
        assert image.getpixel((3, 3)) == (10, 20, 30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.png", "result.json"]
