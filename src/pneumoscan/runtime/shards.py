"""Batch prediction spread over machines: `predict --shard i/N` and `merge`. Torch-free.

Any scheduler that hands out an index (a SLURM array, Kubernetes indexed Jobs, GNU parallel) can
run shard i of N on its own machine; every shard expands the same arguments into the same file
list and keeps its own contiguous block of it, so the N blocks cover every file once and the parts,
merged in shard order, give the rows of one unsharded run in the same order.

    pneumoscan predict /archive --csv parts/part-0001.csv --shard 1/4
    pneumoscan merge parts/part-*.csv --out predictions.csv

A part says which shard it is: its last column is named `shard I/N` (e.g. `shard 2/4`) and each
row holds `I/N`. The header carries it so that a shard with no files (more shards than files),
whose part is a header only, still says which it is. `merge` puts the parts in shard order, drops
that column, and refuses a missing shard, a shard given twice and parts of different N. Parts
without the column (written by pneumoscan 0.1.0 or without --shard) are refused: nothing in them
says whether every shard is there.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pneumoscan.core.csvcells import guard_row, unguard_row
from pneumoscan.core.errors import InputError
from pneumoscan.core.fileio import atomic_write_text

Item = TypeVar("Item")


@dataclass(frozen=True)
class Shard:
    index: int  # 1..count, as people (and SLURM arrays 1-N, GNU parallel's {#}) count
    count: int

    def select(self, items: Sequence[Item]) -> list[Item]:
        """This shard's contiguous block; sizes differ by at most one item across shards."""
        start = (self.index - 1) * len(items) // self.count
        stop = self.index * len(items) // self.count
        return list(items[start:stop])

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def column(self) -> str:
        """The name of the column a part of this shard ends with: its identity, in the header."""
        return f"{SHARD_COLUMN} {self}"


SHARD_COLUMN = "shard"
_SHARD_HEADER = re.compile(rf"{SHARD_COLUMN} ([0-9]+)/([0-9]+)")


def shard_of_header(header: Sequence[str]) -> Shard | None:
    """The shard a part's header names in its last column, or None (not a sharded part)."""
    match = _SHARD_HEADER.fullmatch(header[-1]) if header else None
    if match is None or not 1 <= int(match[1]) <= int(match[2]):
        return None  # no shard column, or one edited out of range
    return Shard(int(match[1]), int(match[2]))


def parse_shard(text: str) -> Shard:
    """'2/8' -> Shard(2, 8); anything else is an InputError that shows the form."""
    index, sep, count = text.partition("/")
    try:
        shard = Shard(int(index), int(count)) if sep else None
    except ValueError:
        shard = None
    if shard is None or shard.count < 1:
        raise InputError(f"--shard {text!r}: write it as I/N, e.g. --shard 1/4 (shard 1 of 4)")
    if not 1 <= shard.index <= shard.count:
        raise InputError(
            f"--shard {text}: the shard number must be between 1 and {shard.count} "
            "(shards count from 1; with a 0-based index such as $JOB_COMPLETION_INDEX, add 1)"
        )
    return shard


@dataclass(frozen=True)
class Merged:
    rows: int
    parts: int


@dataclass(frozen=True)
class _Part:
    path: Path
    shard: Shard
    header: list[str]  # without the shard column
    rows: list[list[str]]


def merge_csv(parts: Sequence[Path], out: Path) -> Merged:
    """Join CSV parts written by `predict --csv --shard I/N` into one file, rows in shard order.

    Refuses a missing shard, a shard given twice, parts of different N or without a shard
    column, parts with different columns (another model's classes), another model or version,
    or a file predicted twice (overlapping shards), naming the part.
    """
    if not parts:
        raise InputError("merge: give the CSV parts to join, e.g. pneumoscan merge out-*.csv")
    read = sorted(
        _check_shards([_sharded_part(Path(part)) for part in parts]),
        key=lambda part: part.shard.index,
    )
    header = read[0].header
    rows: list[list[str]] = []
    seen: dict[str, Path] = {}
    model: tuple[str, str] | None = None
    for part in read:
        if part.header != header:
            raise InputError(
                f"{part.path}: its columns differ from {read[0].path}'s; parts must come from the "
                "same model (`pneumoscan predict --model ... --csv`)."
            )
        columns = {name: position for position, name in enumerate(header)}
        for row in part.rows:
            file = row[columns["file"]]
            if file in seen:
                raise InputError(
                    f"{part.path}: {file} is also in {seen[file]}; each file must be in one part "
                    "only (were the shards cut from different file lists?)"
                )
            seen[file] = part.path
            this_model = (row[columns["model"]], row[columns["model_version"]])
            if model is None:
                model = this_model
            elif this_model != model:
                raise InputError(
                    f"{part.path}: predicted by {' '.join(this_model)}, the other parts by "
                    f"{' '.join(model)}; merge the parts of one model at a time."
                )
            rows.append(row)
    buffer = io.StringIO()
    # The dialect predict_io writes (csv's default), so merged parts match byte for byte.
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(guard_row(row) for row in rows)
    atomic_write_text(Path(out), buffer.getvalue())
    return Merged(rows=len(rows), parts=len(parts))


def _sharded_part(path: Path) -> _Part:
    """A part read, its shard taken from its header and the shard column dropped."""
    rows = _read_part(path)
    shard = shard_of_header(rows[0])
    if shard is None:
        raise InputError(
            f"{path}: says no shard (no 'shard I/N' column: written without --shard, or by "
            "pneumoscan 0.1.0), so merge cannot check that every shard is there; predict it "
            "again with --shard I/N."
        )
    return _Part(path, shard, rows[0][:-1], [row[:-1] for row in rows[1:]])


def _check_shards(parts: list[_Part]) -> list[_Part]:
    """Every shard 1..N of one N, each once; the error names what is wrong and what to do."""
    count = parts[0].shard.count
    by_index: dict[int, Path] = {}
    for part in parts:
        if part.shard.count != count:
            raise InputError(
                f"{part.path}: shard {part.shard}, but {parts[0].path} is shard "
                f"{parts[0].shard}; parts of one run share N, so merge one run's parts at a time."
            )
        if part.shard.index in by_index:
            raise InputError(
                f"{part.path}: shard {part.shard} again (also {by_index[part.shard.index]}); "
                "give each shard's part once."
            )
        by_index[part.shard.index] = part.path
    missing = [f"{index}/{count}" for index in range(1, count + 1) if index not in by_index]
    if missing:
        raise InputError(
            f"merge: missing shard{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"({len(by_index)} of {count} parts given); "
            f"run predict --shard {missing[0]} --csv ... for it (a failed or unfinished task?) "
            "and merge again with every part."
        )
    return parts


REQUIRED_COLUMNS = ("file", "status", "model", "model_version")


def _read_part(path: Path) -> list[list[str]]:
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            # the cells as predict had them, before it guarded them against spreadsheet formulas
            rows = [unguard_row(row) for row in csv.reader(handle)]
    except FileNotFoundError:
        raise InputError(
            f"{path}: file not found; give the CSV parts written by predict --csv."
        ) from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{path}: cannot be read as a CSV file ({error}).") from None
    missing = [name for name in REQUIRED_COLUMNS if not rows or name not in rows[0]]
    if missing:
        raise InputError(
            f"{path}: not a prediction CSV (no {', '.join(missing)} column); give the parts "
            "written by pneumoscan predict --csv."
        )
    width = len(rows[0])
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != width:
            raise InputError(
                f"{path}: line {number} has {len(row)} cells, the header {width}; the part is "
                "truncated or edited. Predict that shard again."
            )
    return rows
