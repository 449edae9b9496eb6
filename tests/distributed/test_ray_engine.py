"""`predict --engine ray` on a real local Ray cluster: the local engine's rows, resume from the
journal, and every Ray connection on loopback. Slow (each cluster starts in about 10 s); CI runs
them (`.ci/run`)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from predict_process import SRC, run_predict

pytest.importorskip("ray", reason="the Ray engine needs the [ray] extra")
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
VAL = REPO.parent / "shared" / "data" / "chest_xray" / "val"


@pytest.fixture()
def films(tmp_path) -> Path:
    folder = tmp_path / "films"
    folder.mkdir()
    sources = sorted(VAL.glob("*/*.jpeg")) or sorted((REPO / "examples").glob("*.jpeg"))
    for path in sources:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.jpeg").write_bytes(b"not an image")  # an error row, not a lost batch
    return folder


def _rows(path: Path) -> dict[str, dict]:
    with open(path, newline="") as handle:
        return {row["file"]: row for row in csv.DictReader(handle)}


def _ray(folder: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pneumoscan", "predict", str(folder), "--engine", "ray"]
        + ["--csv", str(out / "ray.csv"), "--json", str(out / "ray.json"), "--actors", "2", *extra],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(SRC), "COLUMNS": "200"},
    )


def _assert_same(local: dict, ray: dict) -> None:
    assert list(local) == list(ray)
    for name, row in local.items():
        other = ray[name]
        assert (row["status"], row["label"]) == (other["status"], other["label"]), name
        for column in (c for c in row if c.startswith("p_") or c == "gate_score"):
            if row[column]:
                assert abs(float(row[column]) - float(other[column])) <= 1e-4, (name, column)


def test_ray_engine_gives_the_local_engines_rows(films, tmp_path):
    local = run_predict(films, tmp_path)
    assert local.returncode == 1  # the broken film
    ray = _ray(films, tmp_path)
    assert ray.returncode == 1, ray.stderr
    assert "broken.jpeg" in ray.stderr and "Traceback" not in ray.stderr
    rows = _rows(tmp_path / "ray.csv")
    _assert_same(_rows(tmp_path / "out.csv"), rows)
    assert rows[str(films / "broken.jpeg")]["status"] == "error"
    assert not (tmp_path / "ray.csv.ray-journal.jsonl").exists()  # removed once written


def test_resume_predicts_only_what_the_journal_lacks(films, tmp_path):
    assert run_predict(films, tmp_path).returncode == 1
    local = json.loads((tmp_path / "out.json").read_text())["predictions"]
    # An interrupted run's journal: three films done, one of them marked so that a film
    # predicted again (instead of skipped) would show.
    done = [dict(p) for p in local[:3]]
    done[0]["message"] = "from the journal"
    journal = tmp_path / "ray.csv.ray-journal.jsonl"
    journal.write_text("".join(json.dumps(d) + "\n" for d in done) + '{"source": "torn')
    refused = _ray(films, tmp_path)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = _ray(films, tmp_path, "--resume")
    assert resumed.returncode == 1, resumed.stderr
    rows = _rows(tmp_path / "ray.csv")
    assert rows[done[0]["source"]]["message"] == "from the journal"
    _assert_same(_rows(tmp_path / "out.csv"), rows)
    assert "3 of 17 films already predicted" in resumed.stderr


def test_every_ray_connection_stays_on_loopback(films):
    import ray

    from pneumoscan.distributed.ray_engine import RaySettings, predict_on_ray, start_cluster

    start_cluster(None, cpus=2)
    try:
        results = predict_on_ray(sorted(films.iterdir()), RaySettings(model="binary", actors=2))
        assert len(results) == 17 and sum(r.status == "error" for r in results) == 1
        sockets = subprocess.run(["ss", "-tnp"], capture_output=True, text=True).stdout
        ray_lines = [
            line
            for line in sockets.splitlines()
            if "raylet" in line or "gcs_server" in line or "ray::" in line
        ]
        assert ray_lines, "no Ray sockets found: is ss showing processes?"
        for line in ray_lines:
            peers = line.split()[3:5]
            assert all("127.0.0.1" in peer for peer in peers), line
    finally:
        ray.shutdown()
