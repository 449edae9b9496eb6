"""Export to ONNX and predict through the torch-free runtime."""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_radiograph
from dicom_fixtures import write_dicom
from PIL import Image
from typer.testing import CliRunner

from pneumoscan.cli import app
from pneumoscan.core.images import read_image
from pneumoscan.core.preprocess import prepare
from pneumoscan.runtime.model import OnnxModel
from pneumoscan.runtime.predict import predict_one
from pneumoscan.training.export import parity

runner = CliRunner()


def test_runtime_never_imports_torch():
    code = "import sys, pneumoscan.runtime.predict, pneumoscan.runtime.outputs; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_onnx_matches_torch_on_real_images(tiny_onnx, tiny_lite_model, real_data):
    model = OnnxModel(tiny_onnx)
    paths = (
        sorted((real_data / "val" / "NORMAL").iterdir())[:4]
        + sorted((real_data / "val" / "PNEUMONIA").iterdir())[:4]
    )
    batch = np.stack([prepare(read_image(path), model.spec) for path in paths])
    assert parity(tiny_lite_model, tiny_onnx, batch) < 1e-4


def test_onnx_metadata_and_class_map(tiny_onnx):
    model = OnnxModel(tiny_onnx)
    assert model.class_names == ("normal", "pneumonia")
    assert 0 < model.threshold <= 1 and model.temperature > 0 and model.has_cam
    batch = np.zeros((2, 3, model.spec.size, model.spec.size), dtype=np.float32)
    probabilities, cams = model.probabilities(batch)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert cams.shape[:2] == (2, 2)


def test_predict_jpeg_png_dicom_and_folder_with_heatmaps(tiny_onnx, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    pixels = synthetic_radiograph(7, size=(200, 180))
    Image.fromarray(pixels).save(images / "a.jpeg")
    Image.fromarray(pixels.astype(np.uint16) * 257).save(images / "b16.png")
    write_dicom(images / "c.dcm", pixels.astype(np.uint16) * 16, photometric="MONOCHROME2")
    (images / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "predict",
            str(images),
            "--model",
            str(tiny_onnx),
            "--heatmaps",
            str(out / "maps"),
            "--json",
            str(out / "p.json"),
            "--csv",
            str(out / "p.csv"),
            "--no-gate",
        ],
    )
    assert result.exit_code == 1  # one file failed
    assert (
        "3 predicted, 0 indeterminate, 0 not a chest X-ray, 1 failed" in result.output
        and "not a diagnostic device" in result.output
    )
    document = json.loads((out / "p.json").read_text())
    assert "not a diagnostic device" in document["notice"]
    by_name = {p["source"].rsplit("/", 1)[-1]: p for p in document["predictions"]}
    assert (
        by_name["broken.png"]["status"] == "error"
        and "not a JPEG, PNG or DICOM" in by_name["broken.png"]["message"]
    )
    for name in ("a.jpeg", "b16.png", "c.dcm"):
        assert by_name[name]["label"] in ("normal", "pneumonia")
        assert sum(by_name[name]["probabilities"].values()) == pytest.approx(1.0)
        heatmap = Image.open(by_name[name]["heatmap"])
        assert heatmap.mode == "RGB" and heatmap.size == (512, 512)
    # the same pixels as 16-bit PNG and as DICOM give the same answer; lossy JPEG nearly so
    jpeg, png, dicom = (
        by_name[n]["probabilities"]["pneumonia"] for n in ("a.jpeg", "b16.png", "c.dcm")
    )
    assert abs(png - dicom) < 0.005 and abs(jpeg - png) < 0.05
    csv_text = (out / "p.csv").read_text()
    assert (
        csv_text.count("\n") == 5
        and "SECRET-12345" not in csv_text
        and "Doe" not in json.dumps(document)
    )


def test_predict_single_file_api(tiny_onnx, tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(synthetic_radiograph(3)).save(path)
    prediction = predict_one(OnnxModel(tiny_onnx, gate=False), path)
    assert prediction.status == "ok" and prediction.threshold is not None


def test_torch_model_file_is_refused_by_predict(tiny_lite_model):
    result = runner.invoke(app, ["predict", "x.png", "--model", str(tiny_lite_model)])
    assert result.exit_code == 2 and "pneumoscan export" in result.output


@pytest.mark.slow
def test_lean_install_predicts_offline_without_torch(tmp_path):
    """`pip install .` (no extras) in a fresh virtualenv: torch is absent, and predict works on the
    shipped model for a JPEG, a PNG, a DICOM and a folder, with heatmaps."""
    repo = Path(__file__).resolve().parents[2]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(repo)], check=True, cwd=tmp_path)
    no_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr

    images = tmp_path / "images"
    images.mkdir()
    example = repo / "examples" / "pneumonia_person1946_bacteria_4874.jpeg"
    (images / "film.jpeg").write_bytes(example.read_bytes())
    pixels = np.asarray(Image.open(example).convert("L"))
    Image.fromarray(pixels).save(images / "film.png")
    write_dicom(images / "film.dcm", pixels.astype(np.uint16) * 16)
    result = subprocess.run(
        [
            str(venv / "bin" / "pneumoscan"),
            "predict",
            str(images),
            "--heatmaps",
            str(tmp_path / "maps"),
            "--json",
            str(tmp_path / "p.json"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "p.json").read_text())
    assert document["model"]["name"] == "binary"
    assert [p["label"] for p in document["predictions"]] == ["pneumonia"] * 3
    assert len(list((tmp_path / "maps").glob("*.png"))) == 3


def test_shipped_gate_refuses_every_non_radiograph_and_accepts_films(tmp_path):
    """The shipped binary model answers `not a chest X-ray`, with a reason, for every
    non-radiograph of the gate's benchmark: photos, documents, screenshots, blank and noise
    images, gradients and patterns, new draws of them, and kinds its design never saw (charts,
    ultrasound, CT-like slices, ECG strips, 1/f clouds, forms); and predicts on real films."""
    from pneumoscan.core.refusal import GATE_REASONS
    from pneumoscan.evaluation.non_radiographs import non_radiograph_groups, to_unit_gray
    from pneumoscan.runtime.model import load_runtime_model
    from pneumoscan.runtime.predict import NOT_CHEST_XRAY, predict_pixels

    model = load_runtime_model("binary")
    assert model.ood_threshold is not None
    samples = [sample for _, group in non_radiograph_groups() for sample in group]
    assert len(samples) >= 170
    answers = [predict_pixels(model, to_unit_gray(image), name) for name, image in samples]
    passed = [a.source for a in answers if a.status != NOT_CHEST_XRAY]
    assert not passed, passed
    assert all(a.gate_reason in GATE_REASONS for a in answers)
    assert all(a.label is None and not a.probabilities for a in answers)
    assert all(a.gate_score > model.ood_threshold for a in answers)
    repo = Path(__file__).resolve().parents[2]
    for film in sorted((repo / "examples").glob("*.jpeg")):
        assert predict_pixels(model, read_image(film), film.name).status == "ok"


def test_shipped_gate_accepts_soft_noisy_and_cropped_films(real_data):
    """A slightly blurred, noisy or zoomed chest film is still a chest film."""
    from pneumoscan.evaluation.perturb import blur, crop, noise
    from pneumoscan.runtime.model import load_runtime_model

    model = load_runtime_model("binary")
    films = [read_image(f) for f in sorted((real_data / "val").rglob("*.jpeg"))]
    rng = np.random.default_rng(0)
    for change in (blur(1.5), noise(0.04), crop(0.12)):
        changed = [np.clip(change(film, rng), 0, 1) for film in films]
        scores = model.run(np.stack([prepare(film, model.spec) for film in changed]))["ood_score"]
        assert (scores <= model.ood_threshold).mean() >= 0.9


def test_shipped_gate_accepts_films_it_never_saw(real_data, tmp_path):
    """At most 0.5% of the shipped model's own validation films are refused: the patients its
    network and its gate were never fitted on (the split is redrawn from the model's record)."""
    from pneumoscan.core.dataset import read_split
    from pneumoscan.core.shipped import resolve_model
    from pneumoscan.runtime.model import load_runtime_model
    from pneumoscan.training.fit import restore_run

    run = restore_run(resolve_model("binary-fast"), tmp_path / "run")
    films, _ = read_split(run, "val")
    assert len(films) > 500
    model = load_runtime_model("binary-fast")
    scores = model.ood_scores([read_image(film.path) for film in films])
    assert (scores > model.ood_threshold).mean() <= 0.005


def test_batch_heatmaps_are_one_vectorised_pass_that_matches_pil(tmp_path):
    """Overlays for a batch come from one array computation; each equals the single-film
    rendering, and the upsampled map follows PIL's bicubic resize of the class map closely."""
    from pneumoscan.runtime.heatmap import (
        _upsampling_matrix,
        png_bytes,
        render_heatmap,
        render_heatmaps,
    )

    rng = np.random.default_rng(0)
    bases = rng.random((3, 64, 64)).astype(np.float32)
    maps = rng.normal(size=(3, 7, 7)).astype(np.float32)
    batch = render_heatmaps(bases, maps)
    assert batch.shape == (3, 64, 64, 3) and batch.dtype == np.uint8
    for index in range(3):
        single = np.asarray(render_heatmap(bases[index], maps[index], size=64))
        np.testing.assert_array_equal(single, batch[index])
        written = Image.open(io.BytesIO(png_bytes(batch[index])))  # our fast PNG writer
        assert written.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(written), batch[index])
    heat = np.maximum(maps[0], 0) / np.maximum(maps[0], 0).max()
    ours = _upsampling_matrix(7, 64) @ heat @ _upsampling_matrix(7, 64).T
    pil = np.asarray(Image.fromarray(heat).resize((64, 64), Image.Resampling.BICUBIC))
    # close everywhere; at the border PIL renormalises its kernel where we clamp the edge pixel
    assert np.abs(ours - pil).mean() < 0.01 and np.abs(ours - pil).max() < 0.08


@pytest.mark.parametrize("text", ['{"class_names": ["normal", ', "[1, 2]"])
def test_corrupt_onnx_metadata_is_a_model_file_error_naming_the_file(tiny_onnx, tmp_path, text):
    import onnx

    from pneumoscan.core.decision import METADATA_KEY
    from pneumoscan.core.errors import ModelFileError

    graph = onnx.load(str(tiny_onnx))
    for entry in graph.metadata_props:
        if entry.key == METADATA_KEY:
            entry.value = text
    broken = tmp_path / "broken-metadata.onnx"
    onnx.save(graph, str(broken))
    with pytest.raises(ModelFileError, match="broken-metadata.onnx: the pneumoscan metadata"):
        OnnxModel(broken)


def test_class_maps_are_computed_only_for_a_heatmap(monkeypatch):
    """Without heatmaps, ONNX Runtime is asked for the logits and the gate score only (it then
    skips the class maps); with one, the map comes back and is drawn. Same answer either way."""
    from pneumoscan.api import load_model

    model = load_model("binary")
    asked = []
    real_run = model.runtime.session.run

    def run(names, feeds):
        asked.append(list(names) if names is not None else None)
        return real_run(names, feeds)

    monkeypatch.setattr(model.runtime.session, "run", run)
    film = (
        Path(__file__).resolve().parents[2] / "examples" / "pneumonia_person1946_bacteria_4874.jpeg"
    )
    plain = model.predict(film)
    drawn = model.predict(film, heatmap=True)
    assert asked[0] is not None and "cam" not in asked[0] and "logits" in asked[0]
    assert "cam" in asked[-1]
    assert plain.label == drawn.label == "pneumonia"  # the example film's true label
    assert plain.probabilities["pneumonia"] == pytest.approx(drawn.probabilities["pneumonia"])
    assert plain.heatmap is None and drawn.heatmap is not None
