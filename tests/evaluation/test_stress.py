"""The shift stress benchmark: a fixed, seeded perturbation panel and its report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pneumoscan.evaluation.perturb import AUGMENTATION_FAMILIES, panel, reference_quantiles


@pytest.fixture(scope="module")
def perturbations():
    rng = np.random.default_rng(0)
    group = [rng.random((40, 50)).astype(np.float32) ** 2 for _ in range(4)]
    return panel(reference_quantiles(group[:2]), reference_quantiles(group[2:]))


def test_panel_is_seeded_bounded_and_covers_the_issue_families(perturbations):
    image = np.clip(np.random.default_rng(1).normal(0.5, 0.2, (120, 100)), 0, 1).astype(np.float32)
    families = {p.family for p in perturbations}
    assert {
        "exposure",
        "contrast",
        "gamma",
        "windowing",
        "blur",
        "sharpen",
        "noise",
        "jpeg",
    } <= families
    assert {"resolution", "geometry", "border", "collimation", "text", "histogram"} <= families
    for perturbation in perturbations:
        first, second = perturbation(image, 7), perturbation(image, 7)
        np.testing.assert_array_equal(first, second)  # the same film always gets the same change
        assert first.dtype == np.float32 and first.min() >= 0.0 and first.max() <= 1.0
        if perturbation.name != "clean":
            assert not np.array_equal(first, image), perturbation.name
    noise = next(p for p in perturbations if p.name == "noise-0.02")
    assert not np.array_equal(noise(image, 1), noise(image, 2))  # but films differ from each other


def test_some_families_are_kept_out_of_training():
    trained = set(AUGMENTATION_FAMILIES["acquisition"])
    held_out = {"jpeg", "resolution", "windowing", "border", "collimation", "text", "histogram"}
    assert not trained & held_out
    assert set(AUGMENTATION_FAMILIES["basic"]) < trained


def test_histogram_matching_takes_the_reference_grey_levels(perturbations):
    image = np.random.default_rng(2).random((60, 60)).astype(np.float32)
    dark = next(p for p in perturbations if p.name == "histmatch-dark")
    bright = next(p for p in perturbations if p.name == "histmatch-bright")
    assert dark(image, 0).mean() < bright(image, 0).mean()


def test_stress_report_on_the_shipped_model(real_data, tmp_path):
    from pneumoscan.evaluation.stress import run_stress

    report = run_stress(
        "binary",
        real_data,
        tmp_path,
        limit=12,
        bootstrap=10,
        only=["blur-1.5", "jpeg-10"],
        reference_films=16,
    )
    names = [row["name"] for row in report["perturbations"]]
    assert names == ["clean", "blur-1.5", "jpeg-10"]
    assert 2 <= report["films"] <= 12 and report["patients"] <= report["films"]
    saved = json.loads((tmp_path / "stress.json").read_text())
    assert saved["worst"]["accuracy"]["value"] == min(r["accuracy"] for r in saved["perturbations"])
    for row in saved["perturbations"]:
        assert len(row["accuracy_ci"]) == 2
    jpeg = next(row for row in saved["perturbations"] if row["name"] == "jpeg-10")
    assert jpeg["trained"] is False  # JPEG re-compression is never a training augmentation
    text = (tmp_path / "stress.md").read_text()
    assert "not a diagnostic device" in text and "Worst case" in text
    assert (tmp_path / "stress.png").stat().st_size > 1000


def test_stress_cli_names_an_unknown_perturbation(real_data):
    from typer.testing import CliRunner

    from pneumoscan.cli import app

    result = CliRunner().invoke(app, ["stress", str(real_data), "--only", "sepia"])
    assert result.exit_code == 2
    assert "sepia: no such perturbation" in result.output and "blur-1.5" in result.output
    assert "Traceback" not in result.output
