"""Real, short training runs on a small patient-grouped subset of the real data."""

import csv
import json

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from pneumoscan.core.config import load_config
from pneumoscan.core.errors import ConfigError
from pneumoscan.evaluation.report import SplitEvaluation
from pneumoscan.training.evaluate import evaluate_model
from pneumoscan.training.fit import fit
from pneumoscan.training.model_file import load_model_file


def _config(real_data, tmp_path, *overrides):
    return load_config(
        None,
        [
            f"data.root={real_data}",
            "data.max_patients=40",
            f"data.cache_dir={tmp_path / 'cache'}",
            "model.image_size=64",
            "train.batch_size=16",
            "train.epochs=2",
            "train.threads=2",
            "model.pretrained=true",
            *overrides,
        ],
    )


class CrashAfterFirstEpoch(Callback):
    """A crash early in the second epoch, after the first epoch's checkpoint was written."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_index):
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


class Trap:
    """An object whose unpickling runs code: what a checkpoint from elsewhere could hold."""

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_resume_never_unpickles_code_from_the_run_folder(real_data, tmp_path):
    run = tmp_path / "run"
    config = _config(real_data, tmp_path)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(config, run, callbacks=[CrashAfterFirstEpoch()], progress=False)
    last = run / "phase-1" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    trap = Trap()
    trap.marker = str(tmp_path / "ran")
    checkpoint["extra"] = trap
    torch.save(checkpoint, last)
    with pytest.raises(ConfigError, match="does not unpickle"):
        fit(config, run, resume=True, progress=False)
    assert not (tmp_path / "ran").exists()


def test_a_checkpoints_weights_are_read_without_unpickling_code(tmp_path):
    from pneumoscan.training.fit import _load_checkpoint

    trap = Trap()
    trap.marker = str(tmp_path / "ran")
    path = tmp_path / "best.ckpt"
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 0, "extra": trap}, path)
    with pytest.raises(ConfigError, match="does not unpickle"):
        _load_checkpoint(path, "phase-1")
    assert not (tmp_path / "ran").exists()


def _epochs(run_dir, phase="phase-1"):
    with (run_dir / phase / "logs" / "metrics.csv").open() as handle:
        return sorted(
            {
                int(row["epoch"])
                for row in csv.DictReader(handle)
                if row.get("val/auroc") or row.get("val/macro_f1")
            }
        )


def test_short_training_writes_a_self_describing_model_and_report(real_data, tmp_path):
    run = tmp_path / "run"
    model_path = fit(_config(real_data, tmp_path), run, progress=False)
    model, info = load_model_file(model_path)
    assert info.class_names == ("normal", "pneumonia")
    assert 0.0 < info.threshold < 1.0 and info.temperature > 0
    assert info.config["data"]["max_patients"] == 40 and info.versions["torch"] == torch.__version__
    assert info.val_metrics["n"] > 0 and "roc_auc_ci" in info.val_metrics

    with (run / "split.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    train_patients = {r["patient"] for r in rows if r["subset"] == "train"}
    val_patients = {r["patient"] for r in rows if r["subset"] == "val"}
    assert train_patients and val_patients and not train_patients & val_patients
    assert (run / "config.yaml").is_file()

    report = tmp_path / "report"
    metrics = evaluate_model(model_path, SplitEvaluation(real_data, "val", report, bootstrap=50))
    saved = json.loads((report / "metrics.json").read_text())
    assert saved["n"] == 16 and saved["task"] == "binary"
    # the headline figures agree with the confusion matrix they summarise
    (tn, fp), (fn, tp) = saved["confusion_matrix"]
    assert saved["accuracy"] == pytest.approx((tn + tp) / 16)
    assert saved["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert saved["specificity"] == pytest.approx(tn / (tn + fp))
    for key in ("accuracy_ci", "macro_f1_ci", "roc_auc_ci"):
        assert len(saved[key]) == 2 and saved[key][0] <= saved[key][1]
    assert set(saved["per_class"]) == {"normal", "pneumonia"}
    assert metrics["threshold"] == info.threshold
    for plot in ("confusion_matrix.png", "roc.png", "pr.png", "reliability.png", "report.md"):
        assert (report / plot).stat().st_size > 0
    assert "not a diagnostic device" in (report / "report.md").read_text()


def test_interrupted_run_resumes_and_finishes(real_data, tmp_path):
    run = tmp_path / "run"
    config = _config(real_data, tmp_path)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(config, run, callbacks=[CrashAfterFirstEpoch()], progress=False)
    assert (run / "phase-1" / "last.ckpt").is_file()
    assert not (run / "model.pt").exists()
    assert _epochs(run) == [0]
    with pytest.raises(ConfigError, match="--resume"):
        fit(config, run, progress=False)
    model_path = fit(config, run, resume=True, progress=False)
    assert model_path.is_file()
    assert _epochs(run) == [0, 1]


def test_frozen_backbone_trains_head_on_cached_features(real_data, tmp_path):
    config = _config(
        real_data, tmp_path, "model.strategy=frozen", "data.task=three_class", "train.epochs=3"
    )
    model_path = fit(config, tmp_path / "run", progress=False)
    assert list((tmp_path / "cache").glob("features-*.pt"))
    _, info = load_model_file(model_path)
    assert info.class_names == ("normal", "bacteria", "virus") and info.threshold is None
    assert _epochs(tmp_path / "run") == [0, 1, 2]


def test_low_resolution_then_full_resolution(real_data, tmp_path):
    config = _config(
        real_data, tmp_path, "train.train_size=48", "train.epochs=1", "train.finish_epochs=1"
    )
    model_path = fit(config, tmp_path / "run", progress=False)
    _, info = load_model_file(model_path)
    assert info.preprocess.size == 64
    assert _epochs(tmp_path / "run", "phase-1") == [0] and _epochs(tmp_path / "run", "phase-2") == [
        0
    ]
