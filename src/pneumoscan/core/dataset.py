"""Scan a Kermany-style folder, split it by patient, and read and write a run's split.csv.
Torch-free (numpy; scikit-learn for the patient split).

Layouts read: Kaggle (`train/ val/ test/` x `NORMAL/ PNEUMONIA/`) and Mendeley (`train/ test/`);
and a site's own labelled films (`load_site`): class folders without splits, or a CSV.
The official test split is never part of a training pool: validation is carved from train (+ the
tiny official val folder) by patient, so one child's films never sit on both sides.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumoscan.core.errors import DatasetError
from pneumoscan.core.fileio import atomic_write_text
from pneumoscan.core.images import IMAGE_SUFFIXES
from pneumoscan.core.labels import LABEL_FOLDERS, Task, class_index, parse_filename

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
EXPECTED_LAYOUT = (
    "expected DATA_DIR/<split>/<NORMAL|PNEUMONIA>/<image> with split train, val or test "
    "(the Kaggle and Mendeley 'Chest X-Ray Images (Pneumonia)' layouts)"
)


@dataclass(frozen=True)
class Sample:
    path: Path
    split: str
    label: str  # NORMAL or PNEUMONIA, from the folder
    subtype: str | None  # normal, bacteria or virus; None when the file name does not say
    patient: str
    name_recognised: bool


def resolve_root(root: Path | str) -> Path:
    """Accept the data folder itself or a parent holding `chest_xray/`."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root}: data folder not found; {EXPECTED_LAYOUT}.")
    if not any((root / split).is_dir() for split in SPLITS) and (root / "chest_xray").is_dir():
        root = root / "chest_xray"
    return root


def available_splits(root: Path | str) -> list[str]:
    root = resolve_root(root)
    return [split for split in SPLITS if (root / split).is_dir()]


def scan_split(root: Path | str, split: str) -> list[Sample]:
    """All images of one split, sorted by path. Missing or empty folders are errors."""
    root = resolve_root(root)
    split_dir = root / split
    if not split_dir.is_dir():
        found = ", ".join(available_splits(root)) or "none"
        raise DatasetError(
            f"{split_dir}: split folder not found (splits found: {found}); {EXPECTED_LAYOUT}."
        )
    samples: list[Sample] = []
    for label in LABEL_FOLDERS:
        label_dir = split_dir / label
        if not label_dir.is_dir():
            raise DatasetError(f"{label_dir}: class folder not found; {EXPECTED_LAYOUT}.")
        files = sorted(
            p for p in label_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise DatasetError(
                f"{label_dir}: no images (.jpeg, .jpg, .png, .dcm) in this folder; {EXPECTED_LAYOUT}."
            )
        for path in files:
            info = parse_filename(path.name, label)
            samples.append(Sample(path, split, label, info.subtype, info.patient, info.recognised))
    return samples


def is_site(root: Path | str) -> bool:
    """A site's labelled films (a CSV, or class folders with no split folders) rather than a
    Kermany-style download."""
    root = Path(root).expanduser()
    if root.is_file():
        return root.suffix.lower() == ".csv"
    return root.is_dir() and (root / "NORMAL").is_dir() and not available_splits(root)


def training_pool(root: Path | str, allow_outside: bool = False) -> list[Sample]:
    """train plus the official val folder when present; never test. A site's films
    (`is_site`) are its training pool as a whole (a CSV's paths outside its folder only with
    `allow_outside`)."""
    if is_site(root):
        return load_site(Path(root), allow_outside)
    root = resolve_root(root)
    pool = scan_split(root, "train")
    if (root / "val").is_dir():
        pool += scan_split(root, "val")
    return pool


def targets_for(samples: list[Sample], task: Task) -> tuple[list[Sample], np.ndarray]:
    """Samples that have a label for `task`, with their class indices.

    For three-class, a file whose name does not say bacteria or virus has no subtype: it is left
    out with one warning naming the files, never given a guessed label.
    """
    kept, targets, unlabelled = [], [], []
    for sample in samples:
        index = class_index(task, sample.label, sample.subtype)
        if index is None:
            unlabelled.append(sample)
            continue
        kept.append(sample)
        targets.append(index)
    if unlabelled:
        shown = ", ".join(str(s.path) for s in unlabelled[:5])
        more = f" and {len(unlabelled) - 5} more" if len(unlabelled) > 5 else ""
        logger.warning(
            "%d PNEUMONIA file(s) have names without 'bacteria' or 'virus', so they have no "
            "three-class label and are left out: %s%s",
            len(unlabelled),
            shown,
            more,
        )
    return kept, np.asarray(targets, dtype=np.int64)


@dataclass(frozen=True)
class PatientSplit:
    train: np.ndarray  # indices into the sample list
    val: np.ndarray


def split_by_patient(
    targets: np.ndarray, patients: list[str], val_fraction: float, fold: int, seed: int
) -> PatientSplit:
    """Stratified, patient-grouped fold `fold` of round(1 / val_fraction).

    Split by patient: one child often has several films, and splitting by image leaks the patient
    into validation. Stratified so each fold keeps the class balance. Its own seeded generator, so
    changing augmentation or model never moves a patient.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    folds = round(1 / val_fraction)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for index, (train, val) in enumerate(splitter.split(np.zeros(len(targets)), targets, patients)):
        if index == fold:
            return PatientSplit(train=np.sort(train), val=np.sort(val))
    raise DatasetError(f"fold {fold} does not exist for {folds} folds")  # pragma: no cover


def subset_patients(
    targets: np.ndarray, patients: list[str], max_patients: int, seed: int
) -> np.ndarray:
    """Indices of all images of at most `max_patients` patients, drawn per class proportionally."""
    rng = np.random.default_rng(seed)
    first_target: dict[str, int] = {}
    for patient, target in zip(patients, targets):
        first_target.setdefault(patient, int(target))
    by_class: dict[int, list[str]] = {}
    for patient, target in sorted(first_target.items()):
        by_class.setdefault(target, []).append(patient)
    total = len(first_target)
    chosen: set[str] = set()
    for members in by_class.values():
        take = max(2, round(max_patients * len(members) / total))
        chosen.update(rng.choice(members, size=min(take, len(members)), replace=False).tolist())
    return np.asarray(
        [i for i, patient in enumerate(patients) if patient in chosen], dtype=np.int64
    )


# --- a run's split.csv ------------------------------------------------------------------------

SPLIT_FILE = "split.csv"
SPLIT_COLUMNS = ("path", "patient", "target", "subset")


def write_split(path: Path, samples: list[Sample], targets: np.ndarray, subsets: list[str]) -> None:
    """A run's split.csv: one row per film (path, patient, target index, subset train or val),
    written through the csv module so that a comma or a quote in a path survives."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SPLIT_COLUMNS)
    writer.writerows(
        (str(sample.path), sample.patient, int(target), subset)
        for sample, target, subset in zip(samples, targets, subsets)
    )
    atomic_write_text(Path(path), buffer.getvalue())


def read_split(run_dir: Path, subset: str = "val") -> tuple[list[Sample], np.ndarray]:
    """The films of one subset (`val` or `train`) of a run, from its split.csv, with their targets."""
    samples, targets = [], []
    with (Path(run_dir) / SPLIT_FILE).open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["subset"] != subset:
                continue
            path = Path(row["path"])
            samples.append(Sample(path, "train", path.parent.name, None, row["patient"], True))
            targets.append(int(row["target"]))
    return samples, np.asarray(targets, dtype=np.int64)


def class_counts(targets: np.ndarray, num_classes: int) -> np.ndarray:
    counts = Counter(int(t) for t in targets)
    return np.asarray([counts.get(index, 0) for index in range(num_classes)], dtype=np.int64)


# --- a site's own labelled films ------------------------------------------------------------

SITE_LAYOUT = (
    "give a folder with NORMAL/ and PNEUMONIA/ subfolders (or NORMAL/, BACTERIA/ and VIRUS/), or "
    "a CSV file with the columns path,label[,patient]"
)
# A label as a site may write it -> (binary folder label, three-class subtype or None).
SITE_LABELS = {
    "normal": ("NORMAL", "normal"),
    "pneumonia": ("PNEUMONIA", None),
    "bacteria": ("PNEUMONIA", "bacteria"),
    "bacterial": ("PNEUMONIA", "bacteria"),
    "virus": ("PNEUMONIA", "virus"),
    "viral": ("PNEUMONIA", "virus"),
}


def load_site(data: Path, allow_outside: bool = False) -> list[Sample]:
    """The site's labelled films, from a class-folder tree or a CSV (see the module docstring).
    A CSV's paths must stay in the CSV's folder unless `allow_outside`."""
    data = Path(data).expanduser()
    if data.is_file() and data.suffix.lower() == ".csv":
        samples = _from_csv(data, allow_outside)
    elif data.is_dir():
        samples = _from_folders(data)
    else:
        raise DatasetError(f"{data}: not found; {SITE_LAYOUT}.")
    if not samples:
        raise DatasetError(f"{data}: no images found; {SITE_LAYOUT}.")
    return samples


def _from_folders(root: Path) -> list[Sample]:
    folders = {child.name.upper(): child for child in root.iterdir() if child.is_dir()}
    known = {"NORMAL": None, "PNEUMONIA": None, "BACTERIA": "bacteria", "VIRUS": "virus"}
    if "NORMAL" not in folders or not ({"PNEUMONIA", "BACTERIA", "VIRUS"} & folders.keys()):
        found = ", ".join(sorted(folders)) or "no subfolders"
        raise DatasetError(f"{root}: found {found}; {SITE_LAYOUT}.")
    samples = []
    for name, subtype in known.items():
        if name not in folders:
            continue
        label = "NORMAL" if name == "NORMAL" else "PNEUMONIA"
        for path in sorted(folders[name].rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                samples.append(_sample(path, label, subtype, None, root))
    return samples


def _from_csv(path: Path, allow_outside: bool = False) -> list[Sample]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = {c.strip().lower(): c for c in reader.fieldnames or []}
        if "path" not in columns or "label" not in columns:
            raise DatasetError(
                f"{path}: columns {', '.join(reader.fieldnames or []) or 'none'}; the CSV needs "
                "path and label (and optionally patient)."
            )
        samples = []
        seen: dict[Path, tuple[int, str]] = {}
        folder = path.parent.resolve()
        for line, row in enumerate(reader, start=2):
            if row[columns["path"]] is None or row[columns["label"]] is None:
                raise DatasetError(
                    f"{path}, line {line}: fewer fields than the header "
                    f"({', '.join(reader.fieldnames or [])}); give path,label[,patient] on every row."
                )
            text = (row[columns["label"]] or "").strip().lower()
            if text not in SITE_LABELS:
                raise DatasetError(
                    f"{path}, line {line}: label {text!r}; use one of {', '.join(SITE_LABELS)}."
                )
            folder_label, subtype = SITE_LABELS[text]
            image = Path(row[columns["path"]].strip()).expanduser()
            image = image if image.is_absolute() else path.parent / image
            resolved = image.resolve()
            if not allow_outside and not resolved.is_relative_to(folder):
                raise DatasetError(
                    f"{path}, line {line}: {row[columns['path']].strip()} is outside the CSV's "
                    f"folder {folder}; move the film there, or pass --allow-outside (train: "
                    "data.allow_outside=true)."
                )
            if resolved in seen and seen[resolved][1] != text:
                first, first_label = seen[resolved]
                raise DatasetError(
                    f"{path}, lines {first} and {line}: the same film labelled {first_label} and "
                    f"{text}; keep one label."
                )
            seen.setdefault(resolved, (line, text))
            patient = (row.get(columns.get("patient", ""), "") or "").strip() or None
            samples.append(_sample(image, folder_label, subtype, patient, path.parent))
    return samples


def _sample(path: Path, label: str, subtype: str | None, patient: str | None, root: Path):
    named = parse_filename(path.name, label)
    if patient is None:
        # The Kermany patient when the name follows the pattern, else the file itself.
        patient = named.patient if named.recognised else _relative(path, root)
    return Sample(path, "site", label, subtype or named.subtype, patient, named.recognised)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root).with_suffix(""))
    except ValueError:
        return str(path.with_suffix(""))
