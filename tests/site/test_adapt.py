"""`pneumoscan adapt`: calibrate-only against fine-tune-then-calibrate by patient-grouped
cross-validation on a site's films. The choice rule on synthetic scores, the cross-fitting that
keeps every film's calibration off its own fold, the command end to end on a tiny network and
generated films (both arms written, resumed, atomic), one-line errors, and, on real films, the
adapted model's calls on known films."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, synthetic_radiograph
from PIL import Image
from typer.testing import CliRunner

from pneumoscan.cli import app
from pneumoscan.core.labels import NOT_DIAGNOSTIC_NOTICE
from pneumoscan.site import adapt as adapt_module
from pneumoscan.site.adapt import CALIBRATE_ONLY, FINE_TUNE, Choice, choose, crossfit_arm
from pneumoscan.site.calibrate import Request

runner = CliRunner()


# --- the choice, on synthetic scores ------------------------------------------------------


def _synthetic(separation: float, films: int = 200, seed: int = 0):
    """Targets, P(pneumonia) rows separated by `separation`, and one patient per two films."""
    rng = np.random.default_rng(seed)
    targets = np.arange(films) % 2
    scores = rng.normal(0, 1, films) + separation * targets
    p = 1 / (1 + np.exp(-scores))
    return targets, np.stack([1 - p, p], axis=1), [f"p{i // 2}" for i in range(films)]


def test_a_clearly_better_fine_tune_is_kept():
    targets, weak, patients = _synthetic(1.0)
    _, strong, _ = _synthetic(3.0)  # the same noise, better separated
    choice = choose(targets, weak, strong, patients, min_gain=0.005, repeats=300)
    assert choice.arm == FINE_TUNE
    assert choice.gain > 0.1 and choice.interval[0] > 0
    assert "interval lies above zero" in choice.reason


def test_ties_and_losses_go_to_calibrate_only():
    targets, scores, patients = _synthetic(1.5)
    tie = choose(targets, scores, scores.copy(), patients, min_gain=0.005, repeats=300)
    assert (
        tie.arm == CALIBRATE_ONLY and tie.gain == 0 and "a tie goes to calibrate-only" in tie.reason
    )
    _, worse, _ = _synthetic(0.5)
    assert choose(targets, scores, worse, patients, 0.005, repeats=300).arm == CALIBRATE_ONLY
    # A real but small gain, below the required one.
    _, slightly, _ = _synthetic(1.55)
    small = choose(targets, scores, slightly, patients, min_gain=0.05, repeats=300)
    assert (
        small.arm == CALIBRATE_ONLY
        and 0 < small.gain < 0.05
        and "below the required" in small.reason
    )


def test_a_gain_within_the_noise_goes_to_calibrate_only():
    """A gain above min_gain on a handful of patients: its interval reaches zero."""
    targets, scores, patients = _synthetic(1.0, films=20, seed=3)
    _, other, _ = _synthetic(1.0, films=20, seed=4)  # other noise, no better in truth
    choice = choose(targets, scores, other, patients, min_gain=-1.0, repeats=300)
    assert choice.interval[0] <= 0 and choice.arm == CALIBRATE_ONLY


def test_without_the_fine_tune_arm_calibrate_only_is_kept_and_says_why():
    targets, scores, patients = _synthetic(1.0)
    choice = choose(targets, scores, None, patients, 0.005, unavailable="not asked for")
    assert choice == Choice(CALIBRATE_ONLY, "not asked for")


def test_each_folds_calibration_never_sees_its_own_films():
    """Changing the labels of fold 0's films changes no probability of fold 0 (the calibration
    that scores them was fitted on the other folds), and does change the others'."""
    rng = np.random.default_rng(0)
    targets = np.arange(120) % 2
    logits = np.stack([np.zeros(120), rng.normal(0, 1, 120) + 2 * targets], axis=1)
    fold_of = np.arange(120) % 3
    flipped = targets.copy()
    flipped[fold_of == 0] = 1 - flipped[fold_of == 0]
    request, names = Request(), ("normal", "pneumonia")
    first = crossfit_arm(logits, targets, fold_of, request, names)
    second = crossfit_arm(logits, flipped, fold_of, request, names)
    np.testing.assert_allclose(
        first.probabilities[fold_of == 0], second.probabilities[fold_of == 0]
    )
    assert not np.allclose(first.probabilities[fold_of == 1], second.probabilities[fold_of == 1])


def _force_fine_tune(monkeypatch) -> None:
    """Keep the fine-tune whatever the comparison says, and let its gate pass the
    non-radiograph check (the tiny network's gate, fitted on a dozen films, would not)."""
    monkeypatch.setattr(
        adapt_module, "choose", lambda *args, **kwargs: Choice(FINE_TUNE, "forced by the test")
    )
    monkeypatch.setattr(
        adapt_module,
        "non_radiograph_refusals",
        lambda model, thresholds: {"inputs": 3, **{name: 3 for name in thresholds}},
    )


def test_a_fine_tune_whose_gate_lets_non_radiographs_through_is_not_kept(monkeypatch):
    from types import SimpleNamespace

    from pneumoscan.site.adapt import guard_gate
    from pneumoscan.site.validate import Operating

    counts = {"shipped": 179, FINE_TUNE: 176}
    monkeypatch.setattr(
        adapt_module,
        "non_radiograph_refusals",
        lambda model, thresholds: {"inputs": 179, **{k: counts[k] for k in thresholds}},
    )
    monkeypatch.setattr("pneumoscan.runtime.model.load_runtime_model", lambda path: None)
    kept = (Path("model.pt"), Path("model.onnx"), Operating(1.0, None, 0.5, 2.0, None))
    report = {"choice": {"arm": FINE_TUNE, "reason": "AUC up"}}
    guard_gate(report, SimpleNamespace(ood_threshold=1.0), kept)
    assert report["choice"]["arm"] == CALIBRATE_ONLY
    assert "refuses 176 of the 179" in report["choice"]["reason"]
    counts[FINE_TUNE] = 179  # as many as the shipped gate: the fine-tune stays
    report = {"choice": {"arm": FINE_TUNE, "reason": "AUC up"}}
    guard_gate(report, SimpleNamespace(ood_threshold=1.0), kept)
    assert report["choice"]["arm"] == FINE_TUNE and report["non_radiographs"][FINE_TUNE] == 179


# --- the command on a tiny network --------------------------------------------------------


def _generated_site(root: Path, per_class: int = 12) -> Path:
    """NORMAL/ and PNEUMONIA/ of generated films, pneumonia films a little brighter."""
    for label, offset in (("NORMAL", 0), ("PNEUMONIA", 1)):
        for index in range(per_class):
            image = synthetic_radiograph(2 * index + offset).astype(np.int16) + 40 * offset
            path = root / label / f"film-{label.lower()}-{index:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path)
    return root


@pytest.fixture(scope="module")
def tiny_model(tiny_lite_model, tmp_path_factory) -> Path:
    """The tiny 64 px network with its ONNX file beside it, as adapt needs."""
    from pneumoscan.training.export import export_onnx

    folder = tmp_path_factory.mktemp("tiny-model")
    shutil.copyfile(tiny_lite_model, folder / "model.pt")
    return export_onnx(folder / "model.pt", folder / "model.onnx")


def _tiny_overrides(cache: Path) -> list[str]:
    return [
        "train.batch_size=8",
        "train.threads=2",
        "train.loader_workers=0",
        f"data.cache_dir={cache}",
    ]


def _adapt(site, model, out, *extra, cache: Path):
    args = ["adapt", site, "--model", model, "--out", out, "--folds", "2", "--epochs", "1"]
    args += ["--bootstrap", "50", *extra, *_tiny_overrides(cache)]
    return runner.invoke(app, [str(a) for a in args])


def test_adapt_writes_the_kept_arm_as_a_usable_model(tiny_model, tmp_path):
    """Calibrate-only end to end (--no-fine-tune: seconds); the fine-tune arm is the slow test
    below."""
    site = _generated_site(tmp_path / "site")
    out = tmp_path / "adapted"
    result = _adapt(site, tiny_model, out, "--no-fine-tune", cache=tmp_path / "cache")
    assert result.exit_code == 0, result.output
    assert "kept calibrate-only" in result.output and NOT_DIAGNOSTIC_NOTICE in result.output
    report = json.loads((out / "adapt.json").read_text())
    assert set(report["arms"]) == {CALIBRATE_ONLY} and report["fine_tune"] is None
    assert report["compared_films"] == 24 and report["folds"] == 2
    assert report["written"]["arm"] == report["choice"]["arm"] == CALIBRATE_ONLY
    # the report names the files that are there: the tiny model has its .pt beside its ONNX
    assert report["written"]["files"] == sorted(p.name for p in out.glob("model.*"))
    assert report["written"]["files"] == ["model.onnx", "model.pt"]
    assert "--no-fine-tune" in report["choice"]["reason"]
    for metrics in (report["shipped"], report["arms"][CALIBRATE_ONLY]):
        assert metrics["roc_auc_ci"][0] <= metrics["roc_auc"] <= metrics["roc_auc_ci"][1]
        low, high = metrics["balanced_accuracy_ci"]
        assert low <= metrics["balanced_accuracy"] <= high
    text = (out / "report.md").read_text()
    assert "**kept: calibrate-only**" in text and NOT_DIAGNOSTIC_NOTICE in text
    assert "| roc_auc |" in text and "| balanced_accuracy |" in text
    # Nothing else is left beside it: no staging folder, no work folder.
    assert {p.name for p in tmp_path.iterdir()} == {"adapted", "site"}
    film = next((site / "PNEUMONIA").glob("*.png"))
    # The tiny network's gate refuses generated films; the label is what is checked here.
    args = ["predict", film, "--model", out / "model.onnx", "--no-gate", "--sets", "0.9"]
    predicted = runner.invoke(app, [str(a) for a in args])
    assert predicted.exit_code == 0 and "1 predicted" in predicted.output, predicted.output
    assert "run-adapted" in predicted.output  # the adapted model, by its name


@pytest.mark.slow
def test_a_kept_fine_tune_ships_fold_0_with_the_out_of_fold_calibration(
    tiny_model, tmp_path, monkeypatch
):
    """The fine-tune arm written (the choice forced): fold 0's weights, the temperature and
    threshold fitted on the pooled out-of-fold logits; a rerun resumes the finished folds."""
    import torch

    from pneumoscan.runtime.model import load_runtime_model

    _force_fine_tune(monkeypatch)
    site = _generated_site(tmp_path / "site")
    out = tmp_path / "adapted"
    result = _adapt(site, tiny_model, out, "--keep-work", cache=tmp_path / "cache")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "adapt.json").read_text())
    assert set(report["arms"]) == {CALIBRATE_ONLY, FINE_TUNE} and report["compared_films"] == 24
    for metrics in report["arms"].values():
        assert metrics["roc_auc_ci"][0] <= metrics["roc_auc"] <= metrics["roc_auc_ci"][1]
    assert report["fine_tune"]["folds"] == 2 and sum(report["fine_tune"]["training_films"]) == 24
    assert "| roc_auc |" in (out / "report.md").read_text()
    work = tmp_path / "adapted.work"
    written = torch.load(out / "model.pt", weights_only=True)
    fold_0 = torch.load(work / "fold-0" / "model.pt", weights_only=True)
    source = torch.load(tiny_model.with_suffix(".pt"), weights_only=True)
    state = "state_dict"
    assert all(torch.equal(written[state][k], fold_0[state][k]) for k in fold_0[state])
    assert any(not torch.equal(source[state][k], fold_0[state][k]) for k in source[state])
    model = load_runtime_model(out / "model.onnx")
    assert model.temperature == pytest.approx(report["written"]["temperature"])
    assert model.threshold == pytest.approx(report["written"]["threshold"])
    assert "out-of-fold logits of all 2 fold networks" in (out / "report.md").read_text()
    # Resumable: the same command again (another --out) trains nothing anew.
    stamp = (work / "fold-1" / "model.pt").stat().st_mtime_ns
    moved = tmp_path / "again"
    shutil.move(work, moved.with_name("again.work"))
    again = _adapt(site, tiny_model, moved, "--keep-work", cache=tmp_path / "cache")
    assert again.exit_code == 0, again.output
    assert (tmp_path / "again.work" / "fold-1" / "model.pt").stat().st_mtime_ns == stamp


def test_a_crash_while_writing_leaves_no_output_folder(tiny_model, tmp_path, monkeypatch):
    def crash(report):
        raise OSError("disk full")

    monkeypatch.setattr("pneumoscan.site.report.render_adapt_report", crash)
    site = _generated_site(tmp_path / "site")
    out = tmp_path / "adapted"
    result = _adapt(site, tiny_model, out, "--no-fine-tune", cache=tmp_path / "cache")
    assert result.exit_code != 0
    assert not out.exists()


# --- one-line errors ----------------------------------------------------------------------


def _one_line_error(result, *expected: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    assert all(text in lines[0] for text in expected), lines[0]


def test_bad_site_input_is_one_line(tiny_model, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    missing = _adapt(tmp_path / "nowhere", tiny_model, tmp_path / "a", cache=cache)
    _one_line_error(missing, "nowhere", "not found")
    one_class = _generated_site(tmp_path / "site")
    shutil.rmtree(one_class / "PNEUMONIA")
    _one_line_error(_adapt(one_class, tiny_model, tmp_path / "b", cache=cache), "NORMAL")
    table = tmp_path / "labels.csv"
    table.write_text("path,label\nx.png,pneumonitis\n")
    _one_line_error(_adapt(table, tiny_model, tmp_path / "c", cache=cache), "pneumonitis")
    site = _generated_site(tmp_path / "site2")
    (tmp_path / "taken").mkdir()
    _one_line_error(_adapt(site, tiny_model, tmp_path / "taken", cache=cache), "already exists")
    monkeypatch.setattr(adapt_module, "training_missing", lambda: "torch")
    _one_line_error(
        _adapt(site, tiny_model, tmp_path / "d", cache=cache), "torch is missing", "[train]"
    )


def test_a_work_folder_of_other_settings_is_refused(tiny_model, tmp_path):
    site = _generated_site(tmp_path / "site")
    work = tmp_path / "adapted.work"
    work.mkdir()
    (work / "adapt-settings.json").write_text(json.dumps({"model": "another"}))
    result = _adapt(site, tiny_model, tmp_path / "adapted", cache=tmp_path / "cache")
    _one_line_error(result, "adapted.work", "other settings")


# --- on real films ------------------------------------------------------------------------

KNOWN_PNEUMONIA = SHARED_DATA / "val" / "PNEUMONIA" / "person1946_bacteria_4874.jpeg"
KNOWN_NORMAL = SHARED_DATA / "val" / "NORMAL" / "NORMAL2-IM-1431-0001.jpeg"


@pytest.mark.slow
def test_golden_the_adapted_binary_model_calls_known_films(real_data, tmp_path, monkeypatch):
    """adapt binary on 24 simulated site films (fine-tune kept, so the new network is the one
    checked), then predict with DIR/model.onnx on a known pneumonia and a known normal film."""
    from pneumoscan.site.simulate import simulate_site

    if not (KNOWN_PNEUMONIA.is_file() and KNOWN_NORMAL.is_file()):
        pytest.skip(f"the known films are not in {SHARED_DATA / 'val'}")
    _force_fine_tune(monkeypatch)
    site = tmp_path / "site"
    simulate_site(real_data, "binary", site, films=24, shift="zoomed")
    out = tmp_path / "adapted"
    result = _adapt(site, "binary", out, cache=tmp_path / "cache")
    assert result.exit_code == 0, result.output
    # `binary` ships as an int8 ensemble (ONNX only): its folds start from binary-fast
    start = json.loads((out / "adapt.json").read_text())["fine_tune"]
    assert start["start"].endswith("binary-fast.pt") and start["twin"] is True
    assert "the single network shipped beside" in (out / "report.md").read_text()
    table = tmp_path / "predictions.csv"
    # --no-gate: a gate refitted on a dozen zoomed films refuses unzoomed ones, as it should
    # (a real run keeps a fine-tune only if its gate passes the non-radiograph check).
    args = ["predict", KNOWN_PNEUMONIA, KNOWN_NORMAL, "--model", out / "model.onnx"]
    args += ["--no-gate", "--csv", table]
    predicted = runner.invoke(app, [str(a) for a in args])
    assert predicted.exit_code == 0, predicted.output
    with table.open() as handle:
        labels = {Path(row["file"]).name: row["label"] for row in csv.DictReader(handle)}
    assert labels == {KNOWN_PNEUMONIA.name: "pneumonia", KNOWN_NORMAL.name: "normal"}
