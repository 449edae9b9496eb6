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


HEADER = "file,status,label,p_normal,p_pneumonia,model,model_version,notice"


def _part(path, shard, *rows, header=HEADER):
    """A part as predict --csv --shard writes it: the shard named in the last column."""
    lines = [f"{header},shard {shard}"] + [f"{row},{shard}" for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _merge(tmp_path, *parts):
    from typer.testing import CliRunner

    from pneumoscan.cli import app

    return CliRunner().invoke(
        app, ["merge", *[str(tmp_path / part) for part in parts], "-o", str(tmp_path / "x.csv")]
    )


def test_merge_command_and_its_refusals(tmp_path):
    _part(tmp_path / "a.csv", "1/2", "x.jpeg,ok,normal,0.9,0.1,binary,1.0,n")
    _part(tmp_path / "b.csv", "2/2", "y.jpeg,ok,pneumonia,0.2,0.8,binary,1.0,n")
    _part(tmp_path / "c.csv", "2/2", "z.jpeg,ok,normal,0.9,0.1,binary,2.0,n")
    _part(
        tmp_path / "d.csv",
        "2/2",
        header="file,status,label,p_normal,p_bacteria,p_virus,model,model_version,notice",
    )
    (tmp_path / "e.csv").write_text(f"{HEADER},shard 2/2\nw.jpeg,ok,normal\n")
    _part(tmp_path / "f.csv", "2/2", "x.jpeg,ok,normal,0.9,0.1,binary,1.0,n")

    result = _merge(tmp_path, "a.csv", "b.csv")
    assert result.exit_code == 0 and "2 rows from 2 parts" in result.output
    with (tmp_path / "x.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["file"] for row in rows] == ["x.jpeg", "y.jpeg"]
    assert list(rows[0]) == HEADER.split(",")  # the shard column is the parts' own
    (tmp_path / "x.csv").unlink()

    for parts, message in (
        (["a.csv", "f.csv"], "also in"),
        (["a.csv", "c.csv"], "merge the parts of one model at a time"),
        (["a.csv", "d.csv"], "columns differ"),
        (["a.csv", "e.csv"], "line 2 has 3 cells"),
        (["a.csv", "missing.csv"], "file not found"),
    ):
        result = _merge(tmp_path, *parts)
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error: ") and message in result.output
        assert "Traceback" not in result.output and not (tmp_path / "x.csv").exists()


def test_merge_puts_parts_in_shard_order(tmp_path):
    """part-10.csv sorts before part-2.csv in a shell glob; the rows still come in shard order."""
    for index in (1, 2, 10):
        _part(
            tmp_path / f"part-{index}.csv", f"{index}/10", f"{index}.jpeg,ok,normal,0.9,0.1,b,1,n"
        )
    for index in range(3, 10):  # shards with no files: a header only, which still names them
        _part(tmp_path / f"part-{index}.csv", f"{index}/10")
    result = _merge(tmp_path, *sorted(f"part-{index}.csv" for index in range(1, 11)))
    assert result.exit_code == 0, result.output
    with (tmp_path / "x.csv").open() as handle:
        assert [row["file"] for row in csv.DictReader(handle)] == ["1.jpeg", "2.jpeg", "10.jpeg"]


@pytest.mark.parametrize(
    ("shards", "message"),
    [
        (
            ["1/4", "2/4", "4/4"],
            "merge: missing shard 3/4 (3 of 4 parts given); run predict --shard 3/4 --csv",
        ),
        (["2/3"], "missing shards 1/3, 3/3 (1 of 3 parts given)"),
        (["1/2", "1/2", "2/2"], "p1.csv: shard 1/2 again (also "),
        (["1/2", "2/3"], "p1.csv: shard 2/3, but "),
    ],
)
def test_merge_refuses_a_missing_repeated_or_foreign_shard(tmp_path, shards, message):
    parts = [
        _part(tmp_path / f"p{n}.csv", shard, f"{n}.jpeg,ok,normal,0.9,0.1,b,1,n")
        for n, shard in enumerate(shards)
    ]
    result = _merge(tmp_path, *[part.name for part in parts])
    assert result.exit_code == 2 and result.output.startswith("error: ")
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "x.csv").exists()


def test_merge_refuses_parts_that_say_no_shard(tmp_path):
    """Parts written by pneumoscan 0.1.0 (or without --shard) cannot show that none is missing."""
    _part(tmp_path / "a.csv", "1/2", "x.jpeg,ok,normal,0.9,0.1,b,1,n")
    (tmp_path / "old.csv").write_text(f"{HEADER}\ny.jpeg,ok,normal,0.9,0.1,b,1,n\n")
    _part(tmp_path / "edited.csv", "3/2", "z.jpeg,ok,normal,0.9,0.1,b,1,n")
    for part in ("old.csv", "edited.csv"):
        result = _merge(tmp_path, "a.csv", part)
        assert result.exit_code == 2
        assert f"{part}: says no shard" in result.output and "--shard I/N" in result.output
