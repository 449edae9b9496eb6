"""The facts of a run folder, read and written in one place: the decode cache, a film's key,
the run's timing, its members' facts and a distillation teacher's record.

`fit` writes a run folder, `distill` reads runs as a teacher and `ship` turns one into shipped
files; each needs some facts about runs that the others also use. Kept here, below all three,
they import none of each other in a circle (the `training-runs` import contract).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pneumoscan.core.fileio import atomic_write_text, user_cache_dir
from pneumoscan.core.hardware import hardware
from pneumoscan.training.model_file import load_model_file

MODEL_FILE = "model.pt"
TIMING_FILE = "timing.json"


def default_cache_dir() -> Path:
    """Where decoded films and feature maps are cached between runs (`data.cache_dir` unset)."""
    return user_cache_dir()


def film_key(path: Path | str) -> str:
    """A film's key in a teacher's targets: its last three path parts (split/LABEL/name), so the
    CSV travels with the data set between machines."""
    return "/".join(Path(path).parts[-3:])


def run_timing(run_dir: Path) -> dict:
    """The run's timing.json (wall time, hardware, processes), or {} when it has none."""
    timing = Path(run_dir) / TIMING_FILE
    return json.loads(timing.read_text()) if timing.is_file() else {}


def write_timing(out_dir: Path, resume: bool, started: float, launch) -> None:
    """timing.json: wall time (added to the earlier sessions' on resume) and hardware."""
    # A resumed run adds to the time already spent, so the record is the run's whole cost.
    earlier = run_timing(out_dir) if resume else {}
    timing = {
        "wall_seconds": round(earlier.get("wall_seconds", 0.0) + time.time() - started, 1),
        "resumed": resume,
        "sessions": earlier.get("sessions", 1 if earlier else 0) + 1,
        "hardware": hardware(),
        "processes": launch.world_size,
        "processes_per_node": launch.processes_per_node,
    }
    atomic_write_text(Path(out_dir) / TIMING_FILE, json.dumps(timing, indent=2))


def member_facts(run_dir: Path, model_file: Path | None = None) -> dict:
    """What the card says of one ensemble or teacher member: its run, fold, seed, recipe and
    time (`model_file` defaults to the run's model.pt)."""
    _, info = load_model_file(model_file or Path(run_dir) / MODEL_FILE)
    config = info.config or {}
    data, train = config.get("data", {}), config.get("train", {})
    timing = run_timing(run_dir)
    return {
        "run": str(run_dir),
        "arch": info.arch,
        "size": info.preprocess.size,
        "fold": data.get("fold"),
        # the seed the validation patients were drawn with (data.split_seed, else train.seed)
        "seed": train.get("seed") if data.get("split_seed") is None else data["split_seed"],
        "augment_policy": train.get("augment_policy"),
        "epochs": train.get("epochs"),
        "training_minutes": round(timing["wall_seconds"] / 60, 1)
        if "wall_seconds" in timing
        else None,
    }


def teacher_record_path(table: Path | str) -> Path:
    """Where the teacher's provenance sits: beside its CSV, `teacher.csv` -> `teacher.json`."""
    return Path(table).with_suffix(".json")


def teacher_record(model_files: list[Path], films: int, task: str) -> dict:
    """Who the teacher is: each member's run, network, fold, seed and recipe (as an ensemble
    member's card row), and a digest of its weights file, so a student's card can name them."""
    import hashlib

    members = []
    for model_file in model_files:
        facts = member_facts(Path(model_file).parent, Path(model_file))
        facts["model_file"] = str(model_file)
        facts["sha256"] = hashlib.sha256(Path(model_file).read_bytes()).hexdigest()[:16]
        members.append(facts)
    return {
        "combine": "mean of the members' logits",
        "task": task,
        "films": films,
        "members": members,
    }


def read_teacher_record(table: Path | str | None) -> dict | None:
    """The record `write_teacher_targets` left beside a targets CSV, or None (none was written)."""
    if not table:
        return None
    path = teacher_record_path(table)
    return json.loads(path.read_text()) if path.is_file() else None
