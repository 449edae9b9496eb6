"""The README is the front door (at most 250 lines, links that resolve) and the rest of the
manual is the MkDocs site in docs/, which builds with --strict: every page in the nav, every
link between pages found, the README's results block included in docs/results.md."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MAX_README_LINES = 250
RESULTS_BEGIN, RESULTS_END = "<!-- --8<-- [start:results] -->", "<!-- --8<-- [end:results] -->"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_readme_is_short_and_keeps_the_set_up_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_README_LINES, "move the detail to a page under docs/"
    assert (
        "make setup && .venv/bin/pneumoscan predict examples/ --heatmaps heatmaps/\nmake test"
        in text
    )
    assert "not a diagnostic device" in " ".join(text.split())


def test_readme_links_resolve():
    targets = [t for t in LINK.findall(README.read_text()) if "://" not in t]
    assert targets
    missing = [t for t in targets if not (REPO / t.split("#")[0]).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_readme_results_block_is_on_the_site_and_has_no_relative_link():
    text = README.read_text()
    block = text[text.index(RESULTS_BEGIN) : text.index(RESULTS_END)]
    assert "| `binary` |" in block and "| `three-class` |" in block
    relative = [t for t in LINK.findall(block) if "://" not in t]
    assert not relative, f"docs/results.md includes this block, where {relative} would not resolve"
    assert '--8<-- "README.md:results"' in (REPO / "docs" / "results.md").read_text()


def test_site_builds_strict(tmp_path):
    pytest.importorskip(
        "mkdocs", reason='the docs site needs the [dev] extra: pip install ".[dev]"'
    )
    pytest.importorskip("material", reason="the docs site's theme is mkdocs-material ([dev] extra)")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = (tmp_path / "site" / "results" / "index.html").read_text()
    assert "shipped model" in results and "three-class" in results  # the README's table
