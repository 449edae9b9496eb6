"""Batch prediction across machines: `predict --shard I/N` and `merge`, as a scheduler runs them."""

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pneumoscan.core.errors import InputError
from pneumoscan.runtime.shards import Shard, merge_csv, parse_shard

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _predict(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "pneumoscan", "predict", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


@pytest.mark.parametrize("count", [1, 2, 3, 7, 10, 13])
def test_shards_cover_every_file_once_in_order(count):
    files = [f"film{index:03d}.jpeg" for index in range(10)]
    blocks = [Shard(index, count).select(files) for index in range(1, count + 1)]
    assert [name for block in blocks for name in block] == files  # all, once, in order
    sizes = [len(block) for block in blocks]
    assert max(sizes) - min(sizes) <= 1


def test_shard_selection_is_deterministic():
    files = [Path(f"scans/{index}.dcm") for index in range(1000)]
    assert Shard(3, 8).select(files) == Shard(3, 8).select(list(files))
    assert Shard(3, 8).select(files)[0] == Path("scans/250.dcm")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x", "write it as I/N"),
        ("2", "write it as I/N"),
        ("1/0", "write it as I/N"),
        ("a/b", "write it as I/N"),
        ("0/4", "between 1 and 4"),
        ("5/4", "between 1 and 4"),
    ],
)
def test_bad_shard_is_a_clear_error(text, message):
    with pytest.raises(InputError, match=message):
        parse_shard(text)


def test_sharded_predictions_merge_into_the_unsharded_file(tmp_path):
    """Four films over three shards (1, 1 and 2 films), each shard its own process as on separate
    machines: the merged CSV is byte for byte the unsharded run's."""
    films = tmp_path / "films"
    films.mkdir()
    for copy in range(2):
        for source in sorted(EXAMPLES.glob("*.jpeg")):
            shutil.copy(source, films / f"{copy}-{source.name}")
    whole = _predict(str(films), "--csv", "whole.csv", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    parts = []
    for index in (1, 2, 3):
        part = f"part-{index}.csv"
        finished = _predict(str(films), "--shard", f"{index}/3", "--csv", part, cwd=tmp_path)
        assert finished.returncode == 0, finished.stderr
        parts.append(tmp_path / part)
    with (tmp_path / "part-1.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 1  # 4 films: shard sizes 1, 1, 2

    merged = merge_csv(parts, tmp_path / "merged.csv")
    assert (merged.rows, merged.parts) == (4, 3)
    assert (tmp_path / "merged.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()


def test_merge_command_and_its_refusals(tmp_path):
    from typer.testing import CliRunner

    from pneumoscan.cli import app

    header = "file,status,label,p_normal,p_pneumonia,model,model_version,notice\n"
    (tmp_path / "a.csv").write_text(header + "x.jpeg,ok,normal,0.9,0.1,binary,1.0,n\n")
    (tmp_path / "b.csv").write_text(header + "y.jpeg,ok,pneumonia,0.2,0.8,binary,1.0,n\n")
    (tmp_path / "c.csv").write_text(header + "z.jpeg,ok,normal,0.9,0.1,binary,2.0,n\n")
    (tmp_path / "d.csv").write_text(
        "file,status,label,p_normal,p_bacteria,p_virus,model,model_version,notice\n"
    )
    (tmp_path / "e.csv").write_text(header + "w.jpeg,ok,normal\n")
    runner = CliRunner()

    result = runner.invoke(
        app,
        [
            "merge",
            str(tmp_path / "a.csv"),
            str(tmp_path / "b.csv"),
            "-o",
            str(tmp_path / "all.csv"),
        ],
    )
    assert result.exit_code == 0 and "2 rows from 2 parts" in result.output
    with (tmp_path / "all.csv").open() as handle:
        assert [row["file"] for row in csv.DictReader(handle)] == ["x.jpeg", "y.jpeg"]

    for parts, message in (
        (["a.csv", "a.csv"], "also in"),
        (["a.csv", "c.csv"], "merge the parts of one model at a time"),
        (["a.csv", "d.csv"], "columns differ"),
        (["a.csv", "e.csv"], "line 2 has 3 cells"),
        (["a.csv", "missing.csv"], "file not found"),
    ):
        result = runner.invoke(
            app, ["merge", *[str(tmp_path / part) for part in parts], "-o", str(tmp_path / "x.csv")]
        )
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error: ") and message in result.output
        assert "Traceback" not in result.output and not (tmp_path / "x.csv").exists()
