"""`pneumoscan stress DATA --model M --out DIR`: how a model holds up under acquisition shift.

Validation on this data saturates while the official test films, taken differently, do not. This
benchmark applies the fixed, seeded panel of `perturb.panel` to the model's own patient-grouped
validation films (never seen in training, never the test split) and reports every metric per
perturbation with patient-bootstrap intervals, the worst case, and the out-of-distribution gate's
refusal rate: a blurred or noisy chest film is still a chest film and should not be refused.

Metrics are computed on every film, refused or not, so perturbations compare like with like.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumoscan.core import dataset as ds
from pneumoscan.core.errors import DatasetError
from pneumoscan.core.fileio import atomic_write, atomic_write_json, atomic_write_text, shown_path
from pneumoscan.core.images import read_image
from pneumoscan.core.labels import CLASS_NAMES, NOT_DIAGNOSTIC_NOTICE, Task
from pneumoscan.evaluation.metrics import compute_metrics
from pneumoscan.evaluation.perturb import (
    AUGMENTATION_FAMILIES,
    Perturbation,
    panel,
    reference_quantiles,
)

logger = logging.getLogger(__name__)

# Higher is better for all but ECE; the worst case is the minimum (maximum for ECE).
HEADLINE = ("accuracy", "macro_f1", "roc_auc", "ece")
BINARY_EXTRA = ("sensitivity", "specificity")
REFERENCE_FILMS = 200


@dataclass(frozen=True)
class ValidationFilms:
    samples: list[ds.Sample]
    targets: np.ndarray  # in the model's own classes
    reference: list[ds.Sample]  # training-side films of other patients, for histogram matching


def training_split(metadata: dict) -> dict:
    """How the model's validation patients were drawn, from its metadata; models shipped before
    the split was recorded fall back to the config defaults their recipes used."""
    from pneumoscan.core.config import DataConfig, TrainConfig

    data, train = DataConfig(), TrainConfig()
    defaults = {
        "task": metadata.get("task", data.task.value),
        "fold": data.fold,
        "val_fraction": data.val_fraction,
        "seed": train.seed,
        "max_patients": data.max_patients,
        "augment_policy": train.augment_policy,
    }
    return {**defaults, **(metadata.get("training_split") or {})}


def validation_films(
    data_dir: Path | str,
    metadata: dict,
    limit: int | None = None,
    reference_films: int = REFERENCE_FILMS,
) -> ValidationFilms:
    """The model's own validation films, re-drawn from DATA exactly as training drew them."""
    split = training_split(metadata)
    train_task = Task(split["task"])
    samples, targets = ds.targets_for(ds.training_pool(data_dir), train_task)
    if split["max_patients"] is not None:
        chosen = ds.subset_patients(
            targets, [s.patient for s in samples], split["max_patients"], split["seed"]
        )
        samples, targets = [samples[i] for i in chosen], targets[chosen]
    folds = ds.split_by_patient(
        targets, [s.patient for s in samples], split["val_fraction"], split["fold"], split["seed"]
    )
    val = [samples[i] for i in folds.val]
    model_task = Task(metadata["task"])
    model_targets = np.asarray(
        [CLASS_NAMES[model_task].index(_class_of(s, model_task)) for s in val], dtype=np.int64
    )
    if limit is not None and limit < len(val):
        rng = np.random.default_rng(0)
        patients = sorted({s.patient for s in val})
        keep = set(rng.permutation(patients)[: max(2, limit // 2)].tolist())
        index = [i for i, s in enumerate(val) if s.patient in keep][:limit]
        val, model_targets = [val[i] for i in index], model_targets[index]
    rng = np.random.default_rng(split["seed"])
    train_side = [samples[i] for i in folds.train]
    picks = rng.choice(len(train_side), size=min(reference_films, len(train_side)), replace=False)
    return ValidationFilms(val, model_targets, [train_side[i] for i in sorted(picks)])


def _class_of(sample: ds.Sample, task: Task) -> str:
    from pneumoscan.core.labels import class_index

    index = class_index(task, sample.label, sample.subtype)
    if index is None:
        raise DatasetError(f"{sample.path}: no {task.value} label in its name.")
    return CLASS_NAMES[task][index]


def grey_references(reference: list[ds.Sample]) -> tuple[np.ndarray, np.ndarray]:
    """Grey-level quantiles of the darkest and the brightest quarter of the reference films."""
    images = [read_image(sample.path) for sample in reference]
    order = np.argsort([image.mean() for image in images])
    quarter = max(1, len(images) // 4)
    dark = reference_quantiles([images[i] for i in order[:quarter]])
    bright = reference_quantiles([images[i] for i in order[-quarter:]])
    return dark, bright


def score(model, images: list[np.ndarray], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated probabilities and gate scores for decoded films, prepared as prediction does."""
    outputs = model.run_images(images, batch_size)
    gate = outputs.get("ood_score", np.full(len(images), np.nan))
    return outputs["probabilities"], gate


def run_stress(
    model_ref: str | Path,
    data_dir: Path | str,
    out: Path | str,
    limit: int | None = None,
    bootstrap: int = 200,
    only: list[str] | None = None,
    reference_films: int = REFERENCE_FILMS,
    thresholds: list[float] | None = None,
) -> dict:
    """Score the model on every perturbation of its validation films; write JSON, Markdown, plot."""
    from pneumoscan.runtime.model import load_runtime_model

    if only:
        names = [p.name for p in panel(np.zeros(2), np.ones(2))]
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise DatasetError(
                f"--only {', '.join(unknown)}: no such perturbation; choose from {', '.join(names)}"
            )
    model = load_runtime_model(model_ref)
    films = validation_films(data_dir, model.metadata, limit, reference_films)
    logger.info(
        "stress: %d validation films of %d patients",
        len(films.samples),
        len({s.patient for s in films.samples}),
    )
    with ThreadPoolExecutor(max_workers=2) as pool:
        originals = list(pool.map(lambda s: read_image(s.path), films.samples))
    perturbations = panel(*grey_references(films.reference))
    if only:
        perturbations = [p for p in perturbations if p.name in only or p.name == "clean"]
    groups = [s.patient for s in films.samples]
    threshold = model.threshold
    policy = training_split(model.metadata).get("augment_policy", "basic")
    trained_families = AUGMENTATION_FAMILIES.get(policy, ())
    rows = []
    for perturbation in perturbations:
        perturbed = [perturbation(image, index) for index, image in enumerate(originals)]
        probabilities, gate = score(model, perturbed)
        metrics = compute_metrics(
            probabilities, films.targets, model.class_names, threshold, groups, bootstrap
        )
        refused = int(np.sum(gate > model.ood_threshold)) if model.ood_threshold is not None else 0
        trained = perturbation.family in trained_families
        row = _row(perturbation, trained, metrics, refused, len(perturbed))
        if thresholds and probabilities.shape[1] == 2:
            row["at_thresholds"] = {
                f"{t:g}": operating_point(films.targets, probabilities[:, 1], t) for t in thresholds
            }
        rows.append(row)
        logger.info(
            "stress %-18s accuracy %.4f  refused %d/%d",
            perturbation.name,
            metrics["accuracy"],
            refused,
            len(perturbed),
        )
    report = {
        "notice": NOT_DIAGNOSTIC_NOTICE,
        "model": shown_path(model.path),
        "model_name": model.metadata.get("name"),
        "task": model.metadata.get("task"),
        "threshold": threshold,
        "films": len(films.samples),
        "patients": len(set(groups)),
        "split": training_split(model.metadata),
        "bootstrap": bootstrap,
        "perturbations": rows,
        "worst": worst_case(rows, model.metadata.get("task")),
    }
    if rows and "at_thresholds" in rows[0]:
        report["thresholds"] = threshold_summary(rows)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "stress.json", report)
    atomic_write_text(out / "stress.md", render_markdown(report))
    write_plot(report, out / "stress.png")
    return report


def operating_point(targets: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Accuracy, sensitivity and specificity of a binary decision at `threshold`."""
    predicted = scores >= threshold
    positive, negative = targets == 1, targets == 0
    sensitivity = float(predicted[positive].mean()) if positive.any() else float("nan")
    specificity = float((~predicted[negative]).mean()) if negative.any() else float("nan")
    accuracy = float((predicted == positive).mean())
    return {"accuracy": accuracy, "sensitivity": sensitivity, "specificity": specificity}


def threshold_summary(rows: list[dict]) -> dict:
    """Per threshold: the worst sensitivity, specificity and accuracy over the panel, and the mean
    balanced accuracy, so operating points can be compared under shift."""
    summary = {}
    for key in rows[0].get("at_thresholds", {}):
        points = [row["at_thresholds"][key] for row in rows]
        summary[key] = {
            "worst_sensitivity": min(p["sensitivity"] for p in points),
            "worst_specificity": min(p["specificity"] for p in points),
            "worst_accuracy": min(p["accuracy"] for p in points),
            "mean_balanced_accuracy": float(
                np.mean([(p["sensitivity"] + p["specificity"]) / 2 for p in points])
            ),
        }
    return summary


def _row(
    perturbation: Perturbation, trained: bool, metrics: dict, refused: int, total: int
) -> dict:
    keys = [*HEADLINE, *BINARY_EXTRA, "accuracy_ci", "macro_f1_ci", "roc_auc_ci"]
    row = {
        "name": perturbation.name,
        "family": perturbation.family,
        "trained": trained,  # the family is in this model's training augmentation
        "description": perturbation.description,
        **{key: metrics[key] for key in keys if key in metrics},
        "recall": {name: value["recall"] for name, value in metrics["per_class"].items()},
        "refused": refused,
        "refusal_rate": refused / total if total else 0.0,
    }
    return row


def worst_case(rows: list[dict], task: str | None) -> dict:
    keys = [*HEADLINE, *(BINARY_EXTRA if task == "binary" else ()), "refusal_rate"]
    worst = {}
    for key in keys:
        present = [row for row in rows if row.get(key) is not None and np.isfinite(row[key])]
        if not present:
            continue
        pick = max if key in ("ece", "refusal_rate") else min
        row = pick(present, key=lambda r, k=key: r[k])
        worst[key] = {"value": row[key], "perturbation": row["name"]}
    recall_names = rows[0]["recall"].keys() if rows else []
    for name in recall_names:
        row = min(rows, key=lambda r, n=name: r["recall"][n])
        worst[f"recall_{name}"] = {"value": row["recall"][name], "perturbation": row["name"]}
    return worst


def render_markdown(report: dict) -> str:
    binary = report["task"] == "binary"
    columns = ["perturbation", "in training aug.", "accuracy [95% CI]", "macro-F1", "ROC AUC"]
    columns += ["sensitivity", "specificity"] if binary else ["recall per class"]
    columns += ["ECE", "gate refused"]
    lines = [
        f"# Shift stress benchmark: {report['model_name']}",
        "",
        f"> {report['notice']}",
        "",
        f"{report['films']} validation films of {report['patients']} patients (patient-grouped "
        f"fold {report['split']['fold']}, never used in training), each perturbation applied to "
        f"every film; 95% intervals from a {report['bootstrap']}-draw patient bootstrap. "
        "Metrics count every film, including those the gate refused.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in report["perturbations"]:
        low, high = row.get("accuracy_ci", [float("nan")] * 2)
        cells = [
            f"{row['name']} ({row['description']})",
            "yes" if row["trained"] else "no",
            f"{row['accuracy']:.4f} [{low:.3f}, {high:.3f}]",
            f"{row['macro_f1']:.4f}",
            f"{row['roc_auc']:.4f}",
        ]
        if binary:
            cells += [f"{row['sensitivity']:.4f}", f"{row['specificity']:.4f}"]
        else:
            cells.append(", ".join(f"{k} {v:.3f}" for k, v in row["recall"].items()))
        cells += [f"{row['ece']:.4f}", f"{row['refused']} ({100 * row['refusal_rate']:.1f}%)"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Worst case over the panel:", ""]
    for key, entry in report["worst"].items():
        lines.append(f"- {key}: {entry['value']:.4f} ({entry['perturbation']})")
    if report.get("thresholds"):
        lines += [
            "",
            "Other operating points on the same films (`--thresholds`), over the whole panel:",
            "",
            "| threshold | worst sensitivity | worst specificity | worst accuracy | mean balanced accuracy |",
            "|---|---|---|---|---|",
        ]
        for key, entry in report["thresholds"].items():
            lines.append(
                f"| {key} | {entry['worst_sensitivity']:.4f} | {entry['worst_specificity']:.4f} | "
                f"{entry['worst_accuracy']:.4f} | {entry['mean_balanced_accuracy']:.4f} |"
            )
    return "\n".join(lines) + "\n"


def write_plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["perturbations"]
    names = [row["name"] for row in rows]
    accuracy = np.array([row["accuracy"] for row in rows])
    ci = np.array([row.get("accuracy_ci", [np.nan, np.nan]) for row in rows])
    refusal = np.array([100 * row["refusal_rate"] for row in rows])
    colours = ["tab:blue" if row["trained"] else "tab:orange" for row in rows]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    positions = np.arange(len(rows))
    top.bar(positions, accuracy, color=colours)
    top.errorbar(
        positions,
        accuracy,
        yerr=[accuracy - ci[:, 0], ci[:, 1] - accuracy],
        fmt="none",
        ecolor="black",
        capsize=2,
    )
    top.set_ylim(max(0.0, float(np.nanmin(ci[:, 0])) - 0.05), 1.0)
    top.set_ylabel("accuracy (95% CI)")
    top.set_title(
        f"{report['model_name']}: blue = family in training augmentation, orange = held out"
    )
    bottom.bar(positions, refusal, color="tab:red")
    bottom.set_ylabel("gate refused (%)")
    bottom.set_xticks(positions, names, rotation=60, ha="right")
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    plt.close(figure)


def load_report(path: Path | str) -> dict:
    return json.loads(Path(path).read_text())
