"""Tasks, class names and what a Kermany file name tells us (label subtype and patient).

Standard library only: the lean runtime, the trainer and the web app all read class names from here
or from a model file's metadata, never from their own copies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

NOT_DIAGNOSTIC_NOTICE = (
    "pneumoscan is a research tool, not a diagnostic device: "
    "its output must not be used to diagnose, treat or triage patients."
)

LABEL_FOLDERS = ("NORMAL", "PNEUMONIA")


class Task(str, Enum):
    BINARY = "binary"
    THREE_CLASS = "three_class"

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES[self]

    @property
    def num_classes(self) -> int:
        return len(CLASS_NAMES[self])


CLASS_NAMES: dict[Task, tuple[str, ...]] = {
    Task.BINARY: ("normal", "pneumonia"),
    Task.THREE_CLASS: ("normal", "bacteria", "virus"),
}

# person12_bacteria_47.jpeg, person1_virus_6.jpeg
_PNEUMONIA_NAME = re.compile(r"^(person\d+)_(bacteria|virus)_\d+", re.IGNORECASE)
# IM-0115-0001.jpeg, NORMAL2-IM-1427-0001.jpeg
_NORMAL_NAME = re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+", re.IGNORECASE)


@dataclass(frozen=True)
class NameInfo:
    """What a file name says: the subtype (None when the name breaks the pattern) and a patient key."""

    subtype: str | None
    patient: str
    recognised: bool


def parse_filename(filename: str, folder_label: str) -> NameInfo:
    """Read subtype and patient from a Kermany file name.

    The binary label always comes from the folder. The subtype (bacteria / virus) exists only in
    the file name, so a name that breaks the pattern has no three-class label; its patient key
    falls back to the file stem, which keeps it in a group of its own.
    """
    stem = filename.rsplit("/", 1)[-1]
    folder_label = folder_label.upper()
    if folder_label == "NORMAL":
        match = _NORMAL_NAME.match(stem)
        patient = match.group(1) if match else _stem(stem)
        return NameInfo(subtype="normal", patient=patient, recognised=match is not None)
    match = _PNEUMONIA_NAME.match(stem)
    if match:
        return NameInfo(
            subtype=match.group(2).lower(), patient=match.group(1).lower(), recognised=True
        )
    lowered = stem.lower()
    subtype = "bacteria" if "bacteria" in lowered else "virus" if "virus" in lowered else None
    return NameInfo(subtype=subtype, patient=_stem(stem), recognised=False)


def _stem(filename: str) -> str:
    return filename.rsplit(".", 1)[0]


def class_index(task: Task, folder_label: str, subtype: str | None) -> int | None:
    """The class index of an image for `task`, or None when it has no label for that task."""
    if task is Task.BINARY:
        return LABEL_FOLDERS.index(folder_label.upper())
    if subtype is None:
        return None
    return CLASS_NAMES[Task.THREE_CLASS].index(subtype)
