"""`pneumoscan monitor` on prediction logs of real films: patient-disjoint halves of one folder do
not alarm (and rarely over many random halves), a shifted copy of the films does, bad input exits 2."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from predict_process import SRC, run_predict

from pneumoscan.core.dataset import parse_filename
from pneumoscan.evaluation.monitor import compare, read_log

TRAIN = Path(__file__).resolve().parents[3] / "shared" / "data" / "chest_xray" / "train"
FILMS_PER_CLASS = 200
RANDOM_HALVES = 20


def _chosen() -> list[tuple[Path, str]]:
    if not TRAIN.is_dir():
        pytest.skip(f"{TRAIN} not found: the drift tests need the real films in ../shared/data")
    rng = np.random.default_rng(7)
    films = []
    for label in ("NORMAL", "PNEUMONIA"):
        paths = sorted((TRAIN / label).glob("*.jpeg"))
        films += [
            (paths[i], label)
            for i in sorted(rng.choice(len(paths), FILMS_PER_CLASS, replace=False))
        ]
    return films


def _shifted(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A different acquisition: zoomed in 12% a side, more contrast, sensor noise."""
    width, height = image.size
    cut_w, cut_h = round(width * 0.12), round(height * 0.12)
    image = image.crop((cut_w, cut_h, width - cut_w, height - cut_h)).resize((width, height))
    image = ImageEnhance.Contrast(image).enhance(1.5)
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, 10, (height, width))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("drift")
    plain, shifted = root / "plain", root / "shifted"
    plain.mkdir()
    shifted.mkdir()
    rng = np.random.default_rng(0)
    for path, label in _chosen():
        name = f"{label}-{path.name}"
        (plain / name).write_bytes(path.read_bytes())
        with Image.open(path) as image:
            _shifted(image.convert("L"), rng).save(shifted / name, quality=90)
    out = {}
    for name, folder in (("plain", plain), ("shifted", shifted)):
        work = root / f"{name}-out"
        work.mkdir()
        result = run_predict(folder, work)
        assert result.returncode == 0, result.stderr
        out[name] = work / "out.csv"
    return out


def _rows(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames), list(reader)


def _patient(row: dict) -> str:
    label, _, name = Path(row["file"]).name.partition("-")
    return label + parse_filename(name, label).patient


def _write(path: Path, columns: list[str], rows: list[dict]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _halves(log: Path, out: Path, seed: int) -> tuple[Path, Path]:
    columns, rows = _rows(log)
    patients = sorted({_patient(r) for r in rows})
    first = set(np.random.default_rng(seed).permutation(patients)[: len(patients) // 2])
    a = [r for r in rows if _patient(r) in first]
    b = [r for r in rows if _patient(r) not in first]
    return _write(out / f"a{seed}.csv", columns, a), _write(out / f"b{seed}.csv", columns, b)


def _monitor(current: Path, reference: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pneumoscan", "monitor", str(current), "--reference", str(reference)]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(SRC), "MPLBACKEND": "Agg"},
    )


def test_patient_disjoint_halves_do_not_alarm(logs, tmp_path):
    first, second = _halves(logs["plain"], tmp_path, seed=0)
    result = _monitor(second, first, tmp_path / "report")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "report" / "drift.json").read_text())
    assert report["drift"] is False and {c["name"] for c in report["checks"]} >= {
        "status mix",
        "predicted labels",
        "P(pneumonia)",
        "gate score",
    }
    text = (tmp_path / "report" / "report.md").read_text()
    assert "No drift detected" in text and "not a diagnostic device" in text
    assert "cannot" in text and (tmp_path / "report" / "distributions.png").stat().st_size > 0


def test_a_shifted_copy_alarms(logs, tmp_path):
    result = _monitor(logs["shifted"], logs["plain"], tmp_path / "report")
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads((tmp_path / "report" / "drift.json").read_text())
    assert report["drift"] is True
    alarmed = {c["name"] for c in report["checks"] if c["drift"]}
    assert alarmed & {"P(pneumonia)", "gate score"}, report["checks"]
    assert "DRIFT" in result.stdout
    print(result.stdout)


def test_false_alarms_over_random_patient_halves_are_rare(logs, tmp_path):
    alarms = 0
    for seed in range(RANDOM_HALVES):
        first, second = _halves(logs["plain"], tmp_path, seed)
        alarms += any(c.drift for c in compare(read_log(first), read_log(second)))
    print(f"false alarms: {alarms} of {RANDOM_HALVES} random patient halves")
    # Holm at 0.05 family-wise plus the minimum effects: nominally at most 1 in 20.
    assert alarms <= 2, f"{alarms} false alarms in {RANDOM_HALVES} random patient halves"


def test_bad_input_exits_2_with_one_line(logs, tmp_path):
    columns, rows = _rows(logs["plain"])
    small = _write(tmp_path / "small.csv", columns, rows[:20])
    result = _monitor(small, logs["plain"], tmp_path / "r1")
    assert result.returncode == 2 and "at least 100" in result.stderr
    assert "Traceback" not in result.stderr
    other = tmp_path / "other.csv"
    other.write_text("path,label\na.jpeg,normal\n")
    result = _monitor(other, logs["plain"], tmp_path / "r2")
    assert result.returncode == 2 and "not a `pneumoscan predict --csv` log" in result.stderr
    result = _monitor(tmp_path / "missing.csv", logs["plain"], tmp_path / "r3")
    assert result.returncode == 2 and "missing.csv" in result.stderr
