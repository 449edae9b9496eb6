"""The evaluation report `evaluate`, `validate` and `calibrate` write: metrics.json (with 95%
intervals from a patient bootstrap), predictions.csv, confusion matrix, ROC, precision-recall and
reliability PNGs, and report.md. Torch-free (numpy, scikit-learn, matplotlib).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumoscan.core import dataset as ds
from pneumoscan.core.csvcells import guard_row
from pneumoscan.core.decision import decide
from pneumoscan.core.errors import DatasetError
from pneumoscan.core.fileio import atomic_write, atomic_write_json, atomic_write_text, shown_path
from pneumoscan.core.labels import NOT_DIAGNOSTIC_NOTICE, Task
from pneumoscan.evaluation.metrics import compute_metrics

# `dataset.training_pool`: every model trains and validates on train + the official val folder.
TRAINING_POOL_SPLITS = ("train", "val")


def training_pool_caveat(split: str) -> str | None:
    """What to tell the reader when the evaluated films were in the training pool, else None.

    The official val folder (16 films) is pooled with train and split by patient, so any model
    trained here saw these films (or their patients) in training or in choosing its threshold and
    temperature: figures on them are not out-of-sample.
    """
    if split not in TRAINING_POOL_SPLITS:
        return None
    return (
        f"the {split} films are part of the training pool (train + the official val folder), so "
        "the model saw them or their patients during training or calibration: these figures are "
        "not out-of-sample. Use --split test for an independent estimate."
    )


@dataclass(frozen=True)
class SplitEvaluation:
    """What `evaluate` is asked, whichever runtime scores the films: one split of a data folder,
    the report folder, whether an unreadable film stops the run, and the bootstrap draws. The
    evaluator of an exported model (.onnx, `evaluation.evaluate`, no torch) and of a model file
    (.pt, `training.evaluate`) both take it, so the two read the same request the same way."""

    data_dir: Path
    split: str
    out: Path
    strict: bool = False
    bootstrap: int = 1000

    def labelled(self, task: Task) -> tuple[list[ds.Sample], np.ndarray]:
        """The split's films that carry a label of `task`, with their class indices."""
        samples, targets = ds.targets_for(ds.scan_split(self.data_dir, self.split), task)
        if not samples:
            raise DatasetError(f"{self.data_dir}/{self.split}: no image has a {task.value} label.")
        return samples, targets

    def report(
        self,
        probabilities: np.ndarray,
        samples: list[ds.Sample],
        targets: np.ndarray,
        class_names: tuple[str, ...],
        threshold: float | None,
        *,
        model: str,
        model_name: str,
        temperature: float,
        skipped_files: list[str],
    ) -> dict:
        """Metrics of calibrated probabilities on the split, and the report on them: what
        `evaluate` writes for a model file (.pt) and for an exported model (.onnx) alike."""
        metrics = compute_metrics(
            probabilities,
            targets,
            class_names,
            threshold,
            groups=[sample.patient for sample in samples],
            bootstrap=self.bootstrap,
        )
        caveat = training_pool_caveat(self.split)
        metrics.update(
            split=self.split,
            in_training_pool=caveat is not None,
            caveat=caveat,
            model=shown_path(model),
            model_name=model_name,
            temperature=temperature,
            skipped_files=skipped_files,
        )
        write_report(
            self.out,
            metrics,
            samples,
            targets,
            probabilities,
            class_names,
            threshold,
            str(self.data_dir),
        )
        return metrics


def write_report(
    out: Path,
    metrics: dict,
    samples: list[ds.Sample],
    targets: np.ndarray,
    probabilities: np.ndarray,
    class_names: tuple[str, ...],
    threshold: float | None,
    data_label: str,
    sections: list[str] = (),
    title: str | None = None,
) -> None:
    """metrics.json, predictions.csv, the plots and report.md (with any extra Markdown
    `sections` appended): the one report `evaluate`, `validate` and `calibrate` write."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "metrics.json", metrics)
    _write_predictions(
        out / "predictions.csv", samples, targets, probabilities, class_names, threshold
    )
    plots = write_plots(out, probabilities, targets, class_names, threshold)
    report = render_report(metrics, plots, data_label, title)
    atomic_write_text(out / "report.md", "\n".join([report, *sections]))


def _write_predictions(path: Path, samples, targets, probabilities, class_names, threshold) -> None:
    predictions = decide(probabilities, threshold)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "patient", "true", "predicted", *[f"p_{n}" for n in class_names]])
    for sample, target, prediction, row in zip(samples, targets, predictions, probabilities):
        writer.writerow(
            guard_row(
                [str(sample.path), sample.patient, class_names[target], class_names[prediction]]
                + [f"{p:.6f}" for p in row]
            )
        )
    atomic_write_text(path, buffer.getvalue())


def write_plots(
    out: Path,
    probabilities: np.ndarray,
    targets: np.ndarray,
    class_names: tuple[str, ...],
    threshold: float | None,
) -> dict[str, str]:
    """Confusion matrix, ROC, PR and reliability diagram as PNG; returns title -> file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay

    predictions = decide(probabilities, threshold)
    binary = len(class_names) == 2
    curves = [(1, class_names[1])] if binary else list(enumerate(class_names))
    files = {}

    def save(figure, name: str, title: str) -> None:
        figure.tight_layout()
        atomic_write(out / name, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
        plt.close(figure)
        files[title] = name

    figure, axis = plt.subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay.from_predictions(
        targets,
        predictions,
        labels=list(range(len(class_names))),
        display_labels=class_names,
        ax=axis,
        colorbar=False,
        cmap="Blues",
    )
    axis.set_title("Confusion matrix")
    save(figure, "confusion_matrix.png", "Confusion matrix")

    for display, name, title in (
        (RocCurveDisplay, "roc.png", "ROC curve"),
        (PrecisionRecallDisplay, "pr.png", "Precision-recall curve"),
    ):
        figure, axis = plt.subplots(figsize=(4.5, 4))
        for index, label in curves:
            positives = (targets == index).astype(int)
            if 0 < positives.sum() < len(positives):
                display.from_predictions(positives, probabilities[:, index], name=label, ax=axis)
        axis.set_title(title + ("" if binary else " (one vs rest)"))
        save(figure, name, title)

    figure, axis = plt.subplots(figsize=(4.5, 4))
    axis.plot([0, 1], [0, 1], "k:", label="perfectly calibrated")
    for index, label in curves:
        positives = (targets == index).astype(int)
        observed, predicted = calibration_curve(
            positives, probabilities[:, index], n_bins=10, strategy="quantile"
        )
        axis.plot(predicted, observed, "o-", label=label)
    axis.set_xlabel("predicted probability")
    axis.set_ylabel("observed frequency")
    axis.set_title("Reliability diagram")
    axis.legend(loc="upper left")
    save(figure, "reliability.png", "Reliability diagram")
    return files


def interval_cell(metrics: dict, key: str) -> str:
    """A table cell "value [low, high]" for metrics[key] and its 95% interval metrics[key_ci]:
    the bare value when no interval was computed (a record written before it was, no bootstrap),
    n/a when the value is missing or undefined. Every report and card formats intervals here."""
    value = metrics.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    interval = metrics.get(f"{key}_ci")
    return f"{value:.4f}" + (f" [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else "")


def template(folder: Path, name: str, filters: dict | None = None):
    """A Jinja2 template for Markdown (cards, reports): text as written, no HTML escaping, a
    missing fact an error rather than a blank; filters `fmt` (format) and `ci` (interval_cell)
    plus any `filters` of the caller's."""
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    environment.filters.update(fmt=format, ci=interval_cell, **(filters or {}))
    return environment.get_template(name)


def render_report(
    metrics: dict, plots: dict[str, str], data_dir: Path | str, title: str | None = None
) -> str:
    lines = [
        "# " + (title or f"Evaluation: {metrics['model_name']} on the {metrics['split']} split"),
        "",
        f"> {NOT_DIAGNOSTIC_NOTICE}",
        "",
        *([f"> **Not out-of-sample:** {metrics['caveat']}", ""] if metrics.get("caveat") else []),
        f"- model file: `{metrics['model']}`",
        f"- data: `{data_dir}` ({metrics['n']} images; {len(metrics['skipped_files'])} unreadable skipped)",
        f"- temperature: {metrics['temperature']:.3f}"
        + (
            f"; threshold on P(pneumonia): {metrics['threshold']:.4f} (chosen on validation)"
            if "threshold" in metrics
            else ""
        ),
        "",
        "| metric | value [95% CI, patient bootstrap] |",
        "|---|---|",
        f"| accuracy | {interval_cell(metrics, 'accuracy')} |",
        f"| macro-F1 | {interval_cell(metrics, 'macro_f1')} |",
        f"| ROC AUC | {interval_cell(metrics, 'roc_auc')} |",
    ]
    if "sensitivity" in metrics:
        lines += [
            f"| sensitivity | {metrics['sensitivity']:.4f} |",
            f"| specificity | {metrics['specificity']:.4f} |",
        ]
    lines += [
        f"| ECE (15 bins) | {metrics['ece']:.4f} |",
        "",
        "| class | precision | recall | F1 | n |",
        "|---|---|---|---|---|",
    ]
    for name, row in metrics["per_class"].items():
        lines.append(
            f"| {name} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | {row['support']} |"
        )
    lines.append("")
    lines += [f"![{title}]({name})" for title, name in plots.items()]
    return "\n".join(lines) + "\n"
