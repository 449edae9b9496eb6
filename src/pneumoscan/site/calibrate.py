"""A site's own labelled films: check a model on them, and recalibrate it for them.

    pneumoscan validate SITE --model binary --out reports/site
    pneumoscan calibrate SITE --model binary --out models/site --target-sensitivity 0.95

SITE is a folder with NORMAL/ and PNEUMONIA/ subfolders (images anywhere below each; BACTERIA/ and
VIRUS/ subfolders, or Kermany file names, give the three-class labels), or a CSV file with the
columns path,label[,patient] (label: normal, pneumonia, bacteria or virus; paths relative to the
CSV's folder). A film's patient is the CSV's patient, else the patient in a Kermany file name,
else the file itself: films of one child must never sit on both sides of a split, so give the
patient column when a child has several films.

`validate` scores the films with the model as it is and writes the evaluation report (the one
`evaluate` writes), plus the gate's refusal rate and, for a model that carries them, the coverage
of its conformal prediction sets.

`calibrate` keeps the network and refits what depends on the site: the temperature, the binary
threshold (a target sensitivity, Youden, or the expected-cost rule), the conformal scores and,
with --refit-gate, the gate's threshold. It fits them on a patient-grouped part of the films and
reports before and after on the rest, with patient-bootstrap intervals, and measures how the
figures depend on the number of calibration films. The result is a new model file pair whose
card says what was calibrated on how many films.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pneumoscan.core.conformal import REPORTED_LEVELS, ConformalCalibration, coverage_report
from pneumoscan.core.dataset import Sample, load_site
from pneumoscan.core.decision import calibrated_probabilities
from pneumoscan.core.errors import DatasetError, InputError, ModelFileError
from pneumoscan.core.fileio import atomic_write, atomic_write_json, atomic_write_text
from pneumoscan.core.labels import CLASS_NAMES, NOT_DIAGNOSTIC_NOTICE, Task
from pneumoscan.core.preprocess import prepare
from pneumoscan.core.shipped import resolve_model
from pneumoscan.evaluation import calibration as cal
from pneumoscan.runtime.predict import OnnxModel, decode_input, load_runtime_model
from pneumoscan.training.gate import QUANTILE

logger = logging.getLogger(__name__)

CURVE_SIZES = (25, 50, 100, 200, 400, 800)  # calibration films in the learning curve
CURVE_REPEATS = 30


# --- the site's films ---------------------------------------------------------------------


def site_targets(samples: list[Sample], class_names: tuple[str, ...]) -> np.ndarray:
    """Each film's class index for a model with these classes; a three-class model needs a
    bacteria/virus label on every pneumonia film."""
    if tuple(class_names) == CLASS_NAMES[Task.BINARY]:
        return np.asarray([int(s.label == "PNEUMONIA") for s in samples], dtype=np.int64)
    missing = [s for s in samples if s.subtype is None]
    if missing:
        shown = ", ".join(str(s.path) for s in missing[:3])
        raise DatasetError(
            f"{len(missing)} pneumonia film(s) have no bacteria/virus label (e.g. {shown}); a "
            "three-class model needs one for every film: put them in BACTERIA/ and VIRUS/ "
            "folders, or give a CSV with label bacteria or virus, or use the binary model."
        )
    return np.asarray([class_names.index(s.subtype) for s in samples], dtype=np.int64)


@dataclass
class SiteScores:
    """The model's raw outputs on the films it could read."""

    samples: list[Sample]
    targets: np.ndarray
    logits: np.ndarray  # before the model's temperature
    gate: np.ndarray | None  # gate scores, None for a model without a gate
    failed: list[str]  # one line per film that could not be read

    @property
    def patients(self) -> list[str]:
        return [s.patient for s in self.samples]

    def subset(self, index: np.ndarray) -> SiteScores:
        return SiteScores(
            [self.samples[i] for i in index],
            self.targets[index],
            self.logits[index],
            None if self.gate is None else self.gate[index],
            [],
        )


def score_site(
    model: OnnxModel, samples: list[Sample], targets: np.ndarray, batch_size: int = 32
) -> SiteScores:
    """Run the model on every film; a film that cannot be read is listed, never fatal."""

    def load(sample: Sample):
        try:
            return prepare(decode_input(sample.path, str(sample.path)), model.spec), None
        except InputError as error:
            return None, str(error)
        except OSError as error:
            return None, f"{sample.path}: cannot be read ({error.strerror or error})."

    kept, logits, gate, failed = [], [], [], []
    with ThreadPoolExecutor() as pool:
        for start in range(0, len(samples), batch_size):
            chunk = list(range(start, min(start + batch_size, len(samples))))
            loaded = list(pool.map(load, [samples[i] for i in chunk]))
            ready = [(i, tensor) for i, (tensor, _) in zip(chunk, loaded) if tensor is not None]
            failed += [error for _, error in loaded if error is not None]
            if not ready:
                continue
            outputs = model.run(np.stack([tensor for _, tensor in ready]))
            kept += [i for i, _ in ready]
            logits.append(outputs["logits"])
            if "ood_score" in outputs:
                gate.append(outputs["ood_score"])
    if failed:
        logger.warning(
            "%d of %d films could not be read and are left out", len(failed), len(samples)
        )
    if not kept:
        raise DatasetError(f"none of the {len(samples)} films could be read: {failed[0]}")
    index = np.asarray(kept)
    return SiteScores(
        [samples[i] for i in index],
        targets[index],
        np.concatenate(logits).astype(np.float64),
        np.concatenate(gate) if gate else None,
        failed,
    )


def load_scored(data: Path, model_ref: str | Path) -> tuple[OnnxModel, SiteScores]:
    model = load_runtime_model(model_ref, gate=True)
    samples = load_site(data)
    targets = site_targets(samples, model.class_names)
    logger.info("scoring %d films of %s with %s", len(samples), data, model.name)
    return model, score_site(model, samples, targets)


# --- reports ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operating:
    """What turns a network's logits into decisions: calibration, threshold, gate, sets."""

    temperature: float
    bias: tuple[float, ...] | None
    threshold: float | None
    gate_threshold: float | None
    conformal: ConformalCalibration | None

    @classmethod
    def of(cls, model: OnnxModel) -> Operating:
        bias = tuple(model.class_bias) if model.class_bias is not None else None
        return cls(model.temperature, bias, model.threshold, model.ood_threshold, model.conformal)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return calibrated_probabilities(logits, self.temperature, self.bias)


def site_metrics(
    scores: SiteScores,
    operating: Operating,
    class_names: tuple[str, ...],
    bootstrap: int = 1000,
    levels: tuple[float, ...] = REPORTED_LEVELS,
) -> tuple[dict, np.ndarray]:
    """The evaluate metrics, the gate's refusals and the conformal coverage on these films."""
    from pneumoscan.evaluation.metrics import compute_metrics

    probabilities = operating.probabilities(scores.logits)
    metrics = compute_metrics(
        probabilities,
        scores.targets,
        class_names,
        operating.threshold,
        groups=scores.patients,
        bootstrap=bootstrap,
    )
    metrics["temperature"] = operating.temperature
    metrics["class_bias"] = list(operating.bias) if operating.bias is not None else None
    if scores.gate is not None and operating.gate_threshold is not None:
        refused = scores.gate > operating.gate_threshold
        metrics["gate"] = {
            "threshold": operating.gate_threshold,
            "refused": int(refused.sum()),
            "refusal_rate": float(refused.mean()),
            "refused_files": [str(s.path) for s, r in zip(scores.samples, refused) if r],
        }
    if operating.conformal is not None:
        metrics["conformal"] = {
            "method": operating.conformal.method,
            "films": operating.conformal.films,
            "source": operating.conformal.source,
            "levels": [
                {
                    "level": level,
                    **coverage_report(
                        operating.conformal.sets(probabilities, level), scores.targets, class_names
                    ),
                }
                for level in sorted(set(levels))
            ],
        }
    return metrics, probabilities


def site_sections(metrics: dict) -> list[str]:
    """Markdown on the gate and the prediction sets, appended to the evaluation report."""
    lines = []
    gate = metrics.get("gate")
    if gate:
        lines += [
            "## Out-of-distribution gate",
            "",
            f"{gate['refused']} of {metrics['n']} films ({100 * gate['refusal_rate']:.1f}%) score "
            f"above the gate threshold {gate['threshold']:.2f} and would be answered `not a chest "
            "X-ray`. The figures above count every film; a high refusal rate on genuine chest "
            "films means the site's films look unlike the training films "
            "(`pneumoscan calibrate --refit-gate` widens the gate for them).",
            "",
        ]
        lines += [f"- `{path}`" for path in gate["refused_files"][:20]]
        lines += [f"- ... and {gate['refused'] - 20} more"] if gate["refused"] > 20 else []
        lines += [""]
    conformal = metrics.get("conformal")
    if conformal:
        lines += [
            "## Conformal prediction sets",
            "",
            f"Split-conformal sets (`{conformal['method']}` score) from {conformal['films']} "
            "calibration films "
            f"({conformal['source']}). The promised coverage holds for films exchangeable with "
            "those; on another site's films it is an empirical question, answered here.",
            "",
            "| level | coverage | mean set size | sets of 1 / 2 / 3 classes |",
            "|---|---|---|---|",
        ]
        for row in conformal["levels"]:
            counts = " / ".join(str(v) for v in row["size_counts"].values())
            lines.append(
                f"| {row['level']:.0%} | {row['coverage']:.4f} | {row['mean_size']:.3f} | {counts} |"
            )
        lines += [""]
    return lines


def validate(data: Path, model_ref: str | Path, out: Path, bootstrap: int = 1000) -> dict:
    """Score the site's films with the model as it is; write the evaluation report."""
    from pneumoscan.training.evaluate import write_report

    model, scores = load_scored(data, model_ref)
    metrics, probabilities = site_metrics(scores, Operating.of(model), model.class_names, bootstrap)
    metrics.update(
        split="site",
        in_training_pool=False,
        caveat=None,
        model=str(model.path),
        model_name=model.name,
        model_version=model.version,
        skipped_files=scores.failed,
    )
    write_report(
        out,
        metrics,
        scores.samples,
        scores.targets,
        probabilities,
        model.class_names,
        model.threshold,
        str(data),
        sections=site_sections(metrics),
        title=f"Site validation: {model.name} ({model.version}) on {data}",
    )
    return metrics


# --- calibration --------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What `calibrate` was asked to fit."""

    rule: str = "sensitivity"
    target_sensitivity: float = 0.95
    cost_fn: float = 1.0
    holdout: float = 0.5
    refit_gate: bool = False
    bias: bool = True  # per-class biases besides the temperature (bias-corrected scaling)
    set_method: str = "lac"  # conformal score: conformal.METHODS
    seed: int = 0

    def describe(self) -> str:
        if self.rule == "sensitivity":
            return f"the highest threshold reaching sensitivity {self.target_sensitivity:g}"
        if self.rule == "cost":
            return (
                f"expected cost, a missed pneumonia costing {self.cost_fn:g} false alarms "
                f"(threshold 1 / (1 + {self.cost_fn:g}))"
            )
        return f"rule `{self.rule}`"


def fit_operating(
    scores: SiteScores, before: Operating, request: Request, class_names: tuple[str, ...]
) -> Operating:
    """Temperature, threshold, conformal scores (and gate threshold) fitted on these films."""
    binary = len(class_names) == 2
    fitted = cal.fit(
        scores.logits,
        scores.targets,
        request.rule if binary else None,
        request.target_sensitivity,
        request.cost_fn,
        bias=request.bias,
    )
    probabilities = calibrated_probabilities(scores.logits, fitted.temperature, fitted.bias)
    conformal = ConformalCalibration.fit(
        probabilities,
        scores.targets,
        f"{len(scores.targets)} site calibration films",
        request.set_method,
    )
    gate = before.gate_threshold
    if request.refit_gate and scores.gate is not None and gate is not None:
        # Only ever widened: the site's own chest films pass; what was refused as no chest
        # film at all (photos, documents) stays far above either threshold.
        # The share of the site's films it accepts is the share of training films the gate was
        # fitted to accept.
        gate = max(gate, float(np.quantile(scores.gate, QUANTILE)))
    return Operating(fitted.temperature, fitted.bias, fitted.threshold, gate, conformal)


def holdout_split(scores: SiteScores, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, held-out) film indices, grouped by patient and stratified by class; the
    held-out share is the nearest 1/k to `fraction`."""
    folds = max(2, round(1 / fraction))
    held = cal.patient_folds(scores.targets, scores.patients, folds, seed)[0]
    return np.setdiff1d(np.arange(len(scores.targets)), held), held


def learning_curve(
    fit_part: SiteScores,
    held: SiteScores,
    before: Operating,
    request: Request,
    class_names: tuple[str, ...],
    coverage: float,
) -> list[dict]:
    """Held-out figures when calibrating on random patient subsets of n films, for growing n."""
    rng = np.random.default_rng(request.seed)
    patients = np.asarray(fit_part.patients)
    unique = np.unique(patients)
    rows = []
    sizes = [n for n in CURVE_SIZES if n < len(fit_part.targets)] + [len(fit_part.targets)]
    for size in sizes:
        runs = []
        for _ in range(CURVE_REPEATS if size < len(fit_part.targets) else 1):
            chosen = _films_of_patients(patients, rng.permutation(unique), size)
            part = fit_part.subset(chosen)
            if len(np.unique(part.targets)) < len(class_names):
                continue  # a class absent: nothing to calibrate on
            operating = fit_operating(part, before, request, class_names)
            runs.append(_curve_point(held, operating, class_names, coverage))
        if runs:
            rows.append(_summarise(size, runs))
    return rows


def _films_of_patients(patients: np.ndarray, order: np.ndarray, size: int) -> np.ndarray:
    chosen, count = [], 0
    for patient in order:
        films = np.flatnonzero(patients == patient)
        chosen.append(films)
        count += len(films)
        if count >= size:
            break
    return np.concatenate(chosen)


def _curve_point(
    held: SiteScores, operating: Operating, class_names: tuple[str, ...], coverage: float
) -> dict:
    from pneumoscan.evaluation.metrics import compute_metrics

    probabilities = operating.probabilities(held.logits)
    metrics = compute_metrics(
        probabilities, held.targets, class_names, operating.threshold, bootstrap=0
    )
    point = {k: metrics[k] for k in ("accuracy", "macro_f1", "ece")}
    if len(class_names) == 2:
        point.update(sensitivity=metrics["sensitivity"], specificity=metrics["specificity"])
    sets = coverage_report(
        operating.conformal.sets(probabilities, coverage), held.targets, class_names
    )
    point.update(coverage=sets["coverage"], mean_set_size=sets["mean_size"])
    return point


def _summarise(size: int, runs: list[dict]) -> dict:
    row = {"films": size, "repeats": len(runs)}
    for key in runs[0]:
        values = np.asarray([r[key] for r in runs])
        row[key] = {
            "mean": float(values.mean()),
            "p10": float(np.quantile(values, 0.1)),
            "p90": float(np.quantile(values, 0.9)),
        }
    return row


def plot_learning_curve(
    path: Path, rows: list[dict], before: dict, binary: bool, coverage: float
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["sensitivity", "specificity", "ece"] if binary else ["accuracy", "macro_f1", "ece"]
    figure, axes = plt.subplots(1, len(keys) + 1, figsize=(4 * (len(keys) + 1), 3.4))
    films = [row["films"] for row in rows]
    for axis, key in zip(axes, [*keys, "coverage"]):
        mean = [row[key]["mean"] for row in rows]
        axis.fill_between(
            films, [row[key]["p10"] for row in rows], [row[key]["p90"] for row in rows], alpha=0.25
        )
        axis.plot(films, mean, "o-", label="recalibrated (mean, 10-90%)")
        reference = coverage if key == "coverage" else before.get(key)
        if reference is not None:
            label = "promised" if key == "coverage" else "before calibration"
            axis.axhline(reference, color="k", linestyle=":", label=label)
        axis.set_xscale("log")
        axis.set_xlabel("calibration films")
        axis.set_title(key if key != "coverage" else f"coverage of {coverage:.0%} sets")
    axes[0].legend(loc="lower right", fontsize=8)
    figure.suptitle("Held-out figures against the number of site calibration films")
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    plt.close(figure)


def source_files(model_ref: str | Path) -> tuple[Path, Path]:
    """The (model file, ONNX file) pair of a shipped name, a .pt or a .onnx path."""
    reference = str(model_ref)
    if Path(reference).suffix.lower() == ".onnx":
        onnx_path = resolve_model(reference, suffix=".onnx")
        pt_path = onnx_path.with_suffix(".pt")
    else:
        pt_path = resolve_model(reference, suffix=".pt")
        onnx_path = pt_path.with_suffix(".onnx")
    for path, what in ((pt_path, "model file (.pt)"), (onnx_path, "ONNX file")):
        if not path.is_file():
            raise ModelFileError(
                f"{path}: the {what} is missing; calibrate needs both files of a model side by "
                "side (export the ONNX file with `pneumoscan export`)."
            )
    return pt_path, onnx_path


def calibrate(
    data: Path,
    model_ref: str | Path,
    out: Path,
    request: Request = Request(),
    coverage: float = 0.9,
    name: str | None = None,
    bootstrap: int = 1000,
) -> dict:
    """Fit the site's calibration on part of its films, report before/after on the rest, write
    the recalibrated model (out/model.pt, out/model.onnx), its card and the report."""
    from pneumoscan.training.evaluate import write_report
    from pneumoscan.training.export import relabel_onnx
    from pneumoscan.training.networks import load_model_file, relabel_model_file

    if request.rule not in cal.THRESHOLD_RULES:
        raise DatasetError(f"rule {request.rule!r}: choose one of {', '.join(cal.THRESHOLD_RULES)}")
    if not 0.0 <= request.holdout < 1.0:
        raise DatasetError(f"--holdout {request.holdout}: give a fraction in [0, 1), e.g. 0.5")
    pt_path, onnx_path = source_files(model_ref)
    out = Path(out)
    if (out / "model.pt").exists() and out.resolve() == pt_path.parent.resolve():
        raise DatasetError(f"{out}: holds the model being calibrated; choose another --out folder.")
    model, scores = load_scored(data, onnx_path)
    class_names = model.class_names
    before = Operating.of(model)
    if len(np.unique(scores.targets)) < len(class_names):
        raise DatasetError(
            f"{data}: films of {len(np.unique(scores.targets))} class(es); calibration needs every "
            f"class of the model ({', '.join(class_names)})."
        )
    report: dict = {
        "model": str(onnx_path),
        "model_name": model.name,
        "model_version": model.version,
        "data": str(data),
        "films": len(scores.targets),
        "patients": len(set(scores.patients)),
        "skipped_files": scores.failed,
        "request": dataclasses.asdict(request),
        "coverage_level": coverage,
        "notice": NOT_DIAGNOSTIC_NOTICE,
    }
    sections: list[str] = []
    if request.holdout > 0:
        fit_index, held_index = holdout_split(scores, request.holdout, request.seed)
        fit_part, held = scores.subset(fit_index), scores.subset(held_index)
        after = fit_operating(fit_part, before, request, class_names)
        for label, operating in (("before", before), ("after", after)):
            metrics, probabilities = site_metrics(
                held, operating, class_names, bootstrap, (*REPORTED_LEVELS, coverage)
            )
            metrics.update(
                split=f"held-out site films ({label} calibration)",
                in_training_pool=False,
                caveat=None,
                model=str(onnx_path),
                model_name=model.name,
                skipped_files=[],
            )
            write_report(
                out / label,
                metrics,
                held.samples,
                held.targets,
                probabilities,
                class_names,
                operating.threshold,
                str(data),
                sections=site_sections(metrics),
                title=f"{model.name} on held-out site films, {label} calibration",
            )
            report[label] = _without_files(metrics)
        curve = learning_curve(fit_part, held, before, request, class_names, coverage)
        report["learning_curve"] = curve
        plot_learning_curve(
            out / "learning_curve.png", curve, report["before"], len(class_names) == 2, coverage
        )
        report["split"] = {
            "calibration_films": len(fit_index),
            "held_out_films": len(held_index),
            "calibration_patients": len(set(fit_part.patients)),
            "held_out_patients": len(set(held.patients)),
        }
    # The shipped calibration is refitted on every film, the way ship fits on all validation films.
    final = fit_operating(scores, before, request, class_names)
    _, info = load_model_file(pt_path)
    name = name or f"{model.name}-site"
    version = f"{name}-{datetime.now(timezone.utc):%Y%m%d%H%M}"
    info.name = name
    info.temperature, info.threshold = final.temperature, final.threshold
    info.class_bias = final.bias
    info.conformal = final.conformal.to_dict()
    if info.ood is not None and final.gate_threshold is not None:
        info.ood = dataclasses.replace(info.ood, threshold=final.gate_threshold)
    calibration_record = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "source_model": str(onnx_path),
        "source_version": model.version,
        "data": str(data),
        "films": len(scores.targets),
        "patients": len(set(scores.patients)),
        "class_counts": {n: int((scores.targets == i).sum()) for i, n in enumerate(class_names)},
        "rule": request.describe() if len(class_names) == 2 else None,
        "temperature": {"before": before.temperature, "after": final.temperature},
        "class_bias": {"before": before.bias, "after": final.bias},
        "threshold": {"before": before.threshold, "after": final.threshold},
        "gate_threshold": {"before": before.gate_threshold, "after": final.gate_threshold},
        "held_out": {
            "level": coverage,
            **{k: report[k] for k in ("split", "before", "after") if k in report},
        },
    }
    info.record = {**(info.record or {}), "site_calibration": calibration_record}
    out.mkdir(parents=True, exist_ok=True)
    relabel_model_file(pt_path, out / "model.pt", info)
    relabel_onnx(onnx_path, out / "model.onnx", info, version)
    report["written"] = {"model": str(out / "model.pt"), "onnx": str(out / "model.onnx")}
    report["version"] = version
    atomic_write_json(out / "calibration.json", report)
    atomic_write_text(out / "card.md", render_site_card(name, version, info, calibration_record))
    atomic_write_text(out / "report.md", render_calibration_report(report, sections))
    return report


def _without_files(metrics: dict) -> dict:
    trimmed = {k: v for k, v in metrics.items() if k not in ("confusion_matrix", "skipped_files")}
    if "gate" in trimmed:
        trimmed["gate"] = {k: v for k, v in trimmed["gate"].items() if k != "refused_files"}
    return trimmed


def _cell(metrics: dict, key: str) -> str:
    value = metrics.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    interval = metrics.get(f"{key}_ci")
    return f"{value:.4f}" + (f" [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else "")


def _comparison(report: dict) -> list[str]:
    before, after = report["before"], report["after"]
    keys = ["accuracy", "macro_f1", "roc_auc", "sensitivity", "specificity", "ece"]
    lines = ["| metric | before | after |", "|---|---|---|"]
    lines += [
        f"| {key} | {_cell(before, key)} | {_cell(after, key)} |" for key in keys if key in before
    ]
    if "threshold" in before:
        lines.append(f"| threshold | {before['threshold']:.4f} | {after['threshold']:.4f} |")
    lines.append(f"| temperature | {before['temperature']:.4f} | {after['temperature']:.4f} |")
    lines.append(f"| class bias | {_bias(before)} | {_bias(after)} |")
    if "gate" in before:
        lines.append(
            f"| gate refusals | {100 * before['gate']['refusal_rate']:.1f}% | "
            f"{100 * after['gate']['refusal_rate']:.1f}% |"
        )
    level = report["coverage_level"]
    lines.append(
        f"| {level:.0%} sets: coverage / mean size | {_sets_cell(before, level)} | "
        f"{_sets_cell(after, level)} |"
    )
    return lines


def _bias(metrics: dict) -> str:
    bias = metrics.get("class_bias")
    return "none" if bias is None else ", ".join(f"{b:+.3f}" for b in bias)


def _sets_cell(metrics: dict, level: float) -> str:
    rows = {r["level"]: r for r in (metrics.get("conformal") or {}).get("levels", [])}
    if level not in rows:
        return "no sets"
    return f"{rows[level]['coverage']:.4f} / {rows[level]['mean_size']:.3f}"


def render_calibration_report(report: dict, sections: list[str]) -> str:
    request = report["request"]
    lines = [
        f"# Site calibration of {report['model_name']} ({report['model_version']})",
        "",
        f"> {NOT_DIAGNOSTIC_NOTICE}",
        "",
        f"- data: `{report['data']}`: {report['films']} films of {report['patients']} patients "
        f"({len(report['skipped_files'])} unreadable, left out)",
        f"- written: `{report['written']['model']}`, `{report['written']['onnx']}` "
        f"(version `{report['version']}`), card.md",
    ]
    if "split" in report:
        split = report["split"]
        lines += [
            f"- fitted on {split['calibration_films']} films ({split['calibration_patients']} "
            f"patients); reported on the other {split['held_out_films']} films "
            f"({split['held_out_patients']} patients), no patient on both sides "
            f"(--holdout {request['holdout']}, seed {request['seed']})",
            "- the written model is then refitted on all films, as the figures below estimate",
            "",
            "## Before and after, on the held-out films",
            "",
            "95% intervals from a patient bootstrap. `before`: the model as it came; `after`: the "
            "temperature, threshold, conformal scores"
            + (" and gate threshold" if request["refit_gate"] else "")
            + " fitted on the calibration part.",
            "",
            *_comparison(report),
            "",
            "Full reports: [before/report.md](before/report.md), [after/report.md](after/report.md).",
            "",
            "## How many local films are needed",
            "",
            f"Each point recalibrates on random patient subsets of that many films ({CURVE_REPEATS} "
            "draws) and scores the same held-out films; the band spans the 10th to 90th percentile.",
            "",
            "![learning curve](learning_curve.png)",
            "",
            *_curve_table(report),
        ]
    else:
        lines += [
            "",
            "--holdout 0: every film was used for fitting, so there is no held-out estimate of the "
            "recalibrated model; run `pneumoscan validate` on other films of the site.",
        ]
    lines += ["", *sections, f"**{NOT_DIAGNOSTIC_NOTICE}**", ""]
    return "\n".join(lines)


def _curve_table(report: dict) -> list[str]:
    rows = report["learning_curve"]
    if not rows:
        return []
    keys = [
        k for k in ("sensitivity", "specificity", "accuracy", "ece", "coverage") if k in rows[0]
    ]
    lines = [
        "| films | draws | " + " | ".join(f"{k} (mean, 10-90%)" for k in keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for row in rows:
        cells = [f"{row[k]['mean']:.3f} ({row[k]['p10']:.3f}-{row[k]['p90']:.3f})" for k in keys]
        lines.append(f"| {row['films']} | {row['repeats']} | " + " | ".join(cells) + " |")
    return lines


def render_site_card(name: str, version: str, info, record: dict) -> str:
    held = record.get("held_out", {})
    lines = [
        f"# Model card: `{name}` (site-calibrated)",
        "",
        f"> **{NOT_DIAGNOSTIC_NOTICE}**",
        "",
        f"- Version `{version}`, calibrated {record['date']} from `{record['source_model']}` "
        f"(version `{record['source_version']}`). The network's weights are unchanged; its card "
        "describes the training.",
        f"- Calibrated on {record['films']} films of {record['patients']} patients from "
        f"`{record['data']}` ("
        + ", ".join(f"{n} {c}" for c, n in record["class_counts"].items())
        + ").",
        f"- Temperature {record['temperature']['before']:.4f} -> "
        f"{record['temperature']['after']:.4f}"
        + (
            ", with per-class logit biases "
            + ", ".join(f"{b:+.3f}" for b in record["class_bias"]["after"])
            + " (bias-corrected temperature scaling)"
            if record["class_bias"]["after"] is not None
            else ""
        )
        + ".",
    ]
    if record["threshold"]["after"] is not None:
        lines.append(
            f"- Threshold on P(pneumonia) {record['threshold']['before']:.4f} -> "
            f"{record['threshold']['after']:.4f}, by {record['rule']}."
        )
    gate = record["gate_threshold"]
    if gate["after"] is not None:
        lines.append(
            f"- Gate threshold {gate['before']:.3f} -> {gate['after']:.3f}"
            + (" (refitted on the site's films)" if gate["after"] != gate["before"] else "")
            + "."
        )
    lines.append(
        f"- Conformal prediction sets (`{info.conformal['method']}` score) calibrated on these "
        f"{record['films']} films: "
        "`pneumoscan predict --model DIR/model.onnx --sets 0.9`."
    )
    if held.get("after"):
        split, after, before = held["split"], held["after"], held["before"]
        lines += [
            "",
            "## Held-out figures",
            "",
            f"Fitted on {split['calibration_films']} films, scored on {split['held_out_films']} "
            "other films (other patients) of the site; 95% patient-bootstrap intervals.",
            "",
            *_comparison({"before": before, "after": after, "coverage_level": held["level"]}),
        ]
    else:
        lines += ["", "No held-out films were kept (--holdout 0): no held-out figures."]
    lines += [
        "",
        "## Limitations",
        "",
        "- Valid for films like the calibration films: same site, devices, patient group and "
        "labelling. Recalibrate when any of these changes.",
        "- Calibration moves the operating point; it cannot add what the network does not "
        "separate (see ROC AUC, unchanged by calibration).",
        "",
        f"**{NOT_DIAGNOSTIC_NOTICE}**",
        "",
    ]
    return "\n".join(lines)
