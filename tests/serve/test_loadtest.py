"""Issue 18 item 9: the serve load benchmark runs end to end on full-size films (`make
bench-serve`): the films are upscaled copies kept by `python -m pneumoscan.research.bench`, all
clients share the loopback address yet none is refused with 429, and the report says what the
films are."""

from __future__ import annotations

import re
from pathlib import Path

from pneumoscan.devtools import loadtest
from pneumoscan.research import bench

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_load_benchmark_on_full_size_films_writes_its_section(tmp_path, capsys):
    small, films = tmp_path / "small", tmp_path / "films"
    assert bench.main([str(EXAMPLES), str(small), "--films", "2", "--shorter-side", "0"]) == 0
    assert bench.main([str(EXAMPLES), str(films), "--films", "2"]) == 0
    out = tmp_path / "benchmarks.md"
    out.write_text("# kept\n")
    clients = 6  # more than the server's default of 4 admitted requests per client address
    arguments = ["--clients", str(clients), "--duration", "2"]
    arguments += ["--images", str(small), "--images", str(films)]
    note = "upscaled copies"
    code = loadtest.main([*arguments, "--films-note", note, "--out", str(out)])
    assert code == 0, capsys.readouterr().out  # no request refused or failed
    text = out.read_text()
    assert text.startswith("# kept\n") and "<!-- serve-load:begin -->" in text
    assert "x2000 px |" in text and "one after another; upscaled copies." in text
    assert (
        f"--max-per-client={clients}" in text
        and "| errors (non-200 or connection errors) | 0 | 0 |" in text
    )
    # what a request costs the server, the figure that holds on shared cores
    assert re.search(r"\| server CPU time per request \| [0-9.]+ ms \| [0-9.]+ ms \|", text)
    # the full-size folder against the first, with issue 27's goals
    assert re.search(r"\| at least 0.5x the first folder's rate \| [0-9.]+x \| (yes|no) \|", text)
    assert "| no errors | 0 | yes |" in text
