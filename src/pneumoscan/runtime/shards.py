"""Batch prediction spread over machines: `predict --shard i/N` and `merge`. Torch-free.

Any scheduler that hands out an index (a SLURM array, Kubernetes indexed Jobs, GNU parallel) can
run shard i of N on its own machine; every shard expands the same arguments into the same file
list and keeps its own contiguous block of it, so the N blocks cover every file once and the parts,
merged in shard order, give the rows of one unsharded run in the same order.

    pneumoscan predict /archive --csv parts/part-0001.csv --shard 1/4
    pneumoscan merge parts/part-*.csv --out predictions.csv
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

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


def merge_csv(parts: Sequence[Path], out: Path) -> Merged:
    """Join CSV parts written by `predict --csv` into one file, rows in the order of `parts`.

    Refuses parts with different columns (another model's classes), another model or version,
    or a file predicted twice (a part given twice, or overlapping shards), naming the part.
    """
    if not parts:
        raise InputError("merge: give the CSV parts to join, e.g. pneumoscan merge out-*.csv")
    header: list[str] | None = None
    rows: list[list[str]] = []
    seen: dict[str, Path] = {}
    model: tuple[str, str] | None = None
    for part in parts:
        part_rows = _read_part(Path(part))
        if header is None:
            header = part_rows[0]
        elif part_rows[0] != header:
            raise InputError(
                f"{part}: its columns differ from {parts[0]}'s; parts must come from the same "
                "model (`pneumoscan predict --model ... --csv`)."
            )
        columns = {name: position for position, name in enumerate(header)}
        for row in part_rows[1:]:
            file = row[columns["file"]]
            if file in seen:
                raise InputError(
                    f"{part}: {file} is also in {seen[file]}; each file must be in one part only "
                    "(was a part given twice, or were the shards cut from different file lists?)"
                )
            seen[file] = Path(part)
            this_model = (row[columns["model"]], row[columns["model_version"]])
            if model is None:
                model = this_model
            elif this_model != model:
                raise InputError(
                    f"{part}: predicted by {' '.join(this_model)}, the other parts by "
                    f"{' '.join(model)}; merge the parts of one model at a time."
                )
            rows.append(row)
    buffer = io.StringIO()
    # The dialect predict_io writes (csv's default), so merged parts match byte for byte.
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(Path(out), buffer.getvalue())
    return Merged(rows=len(rows), parts=len(parts))


REQUIRED_COLUMNS = ("file", "status", "model", "model_version")


def _read_part(path: Path) -> list[list[str]]:
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.reader(handle))
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
