"""`pneumoscan calibrate SITE --model M --out DIR`: recalibrate a model for a site's films.

`calibrate` keeps the network and refits what depends on the site: the temperature, the binary
threshold (a target sensitivity, Youden, or the expected-cost rule), the conformal scores and,
with --refit-gate, the gate's threshold. It fits them on a patient-grouped part of the films and
reports before and after on the rest, with patient-bootstrap intervals, and measures how the
figures depend on the number of calibration films. The result is a new model file pair whose
card says what was calibrated on how many films. SITE is read as `validate` reads it.

The temperature and biases, and the conformal scores, use disjoint information, by cross-fitting
rather than by a second split (`crossfit_conformal`): each film's conformal score comes from
probabilities calibrated on the other patients' films only (patient folds, stratified by class),
so no film is scored by a calibration that saw it or its patient. A split into a temperature half
and a conformal half would do the same with half the films on each side: the temperature and
biases are two or three numbers, stable between folds, while the conformal quantiles (one per
class) need every film, and a few dozen site films are all a site may have.

Prevalence: a calibration fitted by likelihood reproduces the class shares of the films it was
fitted on, so a curated 50/50 calibration set gives probabilities for a 50/50 population. With
`Request.prevalence` (`--prevalence`), the calibrated logits are shifted to the site's expected
shares (Saerens et al. 2002; `evaluation.calibration.prior_shift`), in every fold as in the final
fit, and the shift lives in the written model's per-class bias: the runtime, CLI, API and server
all turn logits into probabilities through `core.decision.calibrated_probabilities` with it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pneumoscan.core.conformal import REPORTED_LEVELS, ConformalCalibration, coverage_report
from pneumoscan.core.contract import recalibrated
from pneumoscan.core.decision import GATE_QUANTILE, calibrated_probabilities, decide
from pneumoscan.core.errors import DatasetError, ModelFileError
from pneumoscan.core.fileio import atomic_write_json, atomic_write_text, shown_path
from pneumoscan.core.labels import NOT_DIAGNOSTIC_NOTICE
from pneumoscan.core.shipped import resolve_model
from pneumoscan.evaluation import calibration as cal
from pneumoscan.evaluation.rules import ThresholdRule, make_rule
from pneumoscan.evaluation.scoring import FilmScores
from pneumoscan.site.report import (
    plot_learning_curve,
    render_calibration_report,
    render_site_card,
    site_sections,
)
from pneumoscan.site.validate import Operating, load_scored, site_metrics
from pneumoscan.training.onnx_file import write_with_metadata

logger = logging.getLogger(__name__)


CURVE_SIZES = (25, 50, 100, 200, 400, 800)  # calibration films in the learning curve
CURVE_REPEATS = 30


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
    # The site's expected class shares: None (those of the calibration films), the share of
    # pneumonia for a binary model, or one share per class in the model's class order.
    prevalence: tuple[float, ...] | None = None

    def rule_of(self) -> ThresholdRule:
        """The binary threshold rule asked for, with its parameters (`evaluation.rules`)."""
        try:
            return make_rule(
                self.rule, target_sensitivity=self.target_sensitivity, cost_fn=self.cost_fn
            )
        except ValueError as error:
            raise DatasetError(f"--rule {self.rule}: {error}") from None

    def describe(self) -> dict:
        """The rule as the model's record keeps it: name, parameters and the card's words."""
        rule = self.rule_of()
        return {**rule.record(), "description": rule.describe("site calibration")}

    def shares(self, class_names: tuple[str, ...]) -> tuple[float, ...] | None:
        """The site's expected share of each class, checked against the model's classes."""
        if self.prevalence is None:
            return None
        given = tuple(float(p) for p in self.prevalence)
        if len(class_names) == 2 and len(given) == 1:
            given = (1.0 - given[0], given[0])
        named = ",".join(class_names)
        if len(given) != len(class_names):
            raise DatasetError(
                f"--prevalence {','.join(f'{p:g}' for p in self.prevalence)}: give one share per "
                f"class of the model ({named}), e.g. "
                + ",".join(f"{1 / len(class_names):.2g}" for _ in class_names)
                + (", or the share of pneumonia alone" if len(class_names) == 2 else "")
            )
        if not all(0.0 < p < 1.0 for p in given) or abs(sum(given) - 1.0) > 1e-6:
            raise DatasetError(
                f"--prevalence {','.join(f'{p:g}' for p in self.prevalence)}: shares of {named} "
                "must lie strictly between 0 and 1 and sum to 1."
            )
        return given


def fit_operating(
    scores: FilmScores, before: Operating, request: Request, class_names: tuple[str, ...]
) -> Operating:
    """Temperature, biases and threshold fitted on these films (shifted to the site's prevalence
    when asked), conformal scores cross-fitted over their patients, and the gate threshold."""
    binary = len(class_names) == 2
    fitted = cal.fit(
        scores.logits,
        scores.targets,
        request.rule_of() if binary else None,
        bias=request.bias,
        prevalence=request.shares(class_names),
    )
    conformal, _ = crossfit_conformal(scores, request, class_names)
    gate = before.gate_threshold
    if request.refit_gate and scores.gate is not None and gate is not None:
        gate, left_out = widened_gate(gate, scores.gate)
        if left_out:
            logger.info("gate refit: %d film(s) beyond the widening cap left out", left_out)
    return Operating(fitted.temperature, fitted.bias, fitted.threshold, gate, conformal)


def crossfit_conformal(
    scores: FilmScores, request: Request, class_names: tuple[str, ...]
) -> tuple[ConformalCalibration, np.ndarray]:
    """The conformal scores of every film, each from probabilities calibrated (temperature,
    biases, prevalence shift) on the other patient folds' films; and the fold of each film.

    Scores from the calibration fitted on the same films would be optimistic (the fit pulls its
    own films' probabilities toward their labels), so sets would under-cover new films."""
    fewest = _fewest_patients(scores, len(class_names))
    if fewest < 2:
        raise DatasetError(
            f"a class has films of {fewest} patient(s) only; calibration needs at least two "
            "patients of every class, so that each film's conformal score can come from a "
            "calibration fitted on other patients. Add films of more patients."
        )
    folds = cal.crossfit_folds(scores.targets, scores.patients)
    prevalence = request.shares(class_names)
    probabilities = np.zeros(scores.logits.shape)
    fold_of = np.zeros(len(scores.targets), dtype=np.int64)
    for fold, held in enumerate(
        cal.patient_folds(scores.targets, scores.patients, folds, request.seed)
    ):
        rest = np.setdiff1d(np.arange(len(scores.targets)), held)
        fitted = cal.fit(
            scores.logits[rest],
            scores.targets[rest],
            None,
            bias=request.bias,
            prevalence=prevalence,
        )
        probabilities[held] = calibrated_probabilities(
            scores.logits[held], fitted.temperature, fitted.bias
        )
        fold_of[held] = fold
    source = (
        f"{len(scores.targets)} site calibration films, each scored out-of-fold "
        f"({folds} patient folds)"
    )
    conformal = ConformalCalibration.fit(probabilities, scores.targets, source, request.set_method)
    return conformal, fold_of


# `--refit-gate` widens the shipped threshold by at most this factor: two mislabelled or
# structure-penalised films (scores in the hundreds) once pushed it into the hundreds, so that
# the gate accepted anything.
MAX_GATE_WIDENING = 2.0


def widened_gate(shipped: float, site_scores: np.ndarray) -> tuple[float, int]:
    """(new gate threshold, films left out) for a site's gate scores.

    Only ever widened, and never past MAX_GATE_WIDENING x the shipped threshold: the site's own
    chest films pass, and what was refused as no chest film at all (photos, documents, blank or
    noise images, whose structure penalty adds hundreds) stays above it. Films scoring beyond the
    cap (penalised or mislabelled films, or no chest film at all) are left out of the quantile,
    so they cannot pull it up either. The share of the remaining films accepted is the share of
    training films the gate was fitted to accept.
    """
    cap = shipped * MAX_GATE_WIDENING
    scores = np.asarray(site_scores, dtype=np.float64)
    kept = scores[np.isfinite(scores) & (scores <= cap)]
    left_out = int(len(scores) - len(kept))
    if len(kept) == 0:
        return shipped, left_out
    return float(min(cap, max(shipped, np.quantile(kept, GATE_QUANTILE)))), left_out


def holdout_split(scores: FilmScores, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, held-out) film indices, grouped by patient and stratified by class; the
    held-out share is the nearest 1/k to `fraction`."""
    folds = max(2, round(1 / fraction))
    held = cal.patient_folds(scores.targets, scores.patients, folds, seed)[0]
    return np.setdiff1d(np.arange(len(scores.targets)), held), held


def learning_curve(
    fit_part: FilmScores,
    held: FilmScores,
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
            if _fewest_patients(part, len(class_names)) < 2:
                continue  # a class on one patient or none: nothing to cross-fit
            operating = fit_operating(part, before, request, class_names)
            runs.append(_curve_point(held, operating, class_names, coverage))
        if runs:
            rows.append(_summarise(size, runs))
    return rows


def _fewest_patients(scores: FilmScores, classes: int) -> int:
    """The number of patients of the class with the fewest."""
    patients = np.asarray(scores.patients)
    return min(len(set(patients[scores.targets == c])) for c in range(classes))


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
    held: FilmScores, operating: Operating, class_names: tuple[str, ...], coverage: float
) -> dict:
    from pneumoscan.evaluation.metrics import compute_metrics

    probabilities = operating.probabilities(held.logits)
    metrics = compute_metrics(
        probabilities, held.targets, class_names, operating.threshold, bootstrap=0
    )
    point = {k: metrics[k] for k in ("accuracy", "macro_f1", "ece")}
    if len(class_names) == 2:
        point.update(sensitivity=metrics["sensitivity"], specificity=metrics["specificity"])
    decided = decide(probabilities, operating.threshold)
    sets = coverage_report(
        operating.conformal.sets(probabilities, coverage, decided=decided),
        held.targets,
        class_names,
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


def source_files(model_ref: str | Path) -> tuple[Path | None, Path]:
    """The (model file or None, ONNX file) pair of a shipped name, a .pt or a .onnx path: the
    ONNX file is needed, its .pt twin is rewritten too when it is there and torch is installed."""
    reference = str(model_ref)
    if Path(reference).suffix.lower() == ".pt":
        onnx_path = resolve_model(reference, suffix=".pt").with_suffix(".onnx")
    else:
        onnx_path = resolve_model(reference, suffix=".onnx")
    if not onnx_path.is_file():
        raise ModelFileError(
            f"{onnx_path}: the ONNX file is missing; calibrate recalibrates an exported model "
            "(export it with `pneumoscan export`)."
        )
    pt_path = onnx_path.with_suffix(".pt")
    return (pt_path if pt_path.is_file() and torch_installed() else None), onnx_path


def torch_installed() -> bool:
    """Whether torch can be imported here: without it (the [eval] install) calibrate writes the
    ONNX file alone, which is all that predict, the API, serve and validate read."""
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def calibrate(
    data: Path,
    model_ref: str | Path,
    out: Path,
    request: Request = Request(),
    coverage: float = 0.9,
    name: str | None = None,
    bootstrap: int = 1000,
    allow_outside: bool = False,
) -> dict:
    """Fit the site's calibration on part of its films, report before/after on the rest, write
    the recalibrated model (out/model.onnx, and out/model.pt where torch is), its card and the
    report."""
    request.rule_of()  # an unknown rule or a bad parameter fails before any film is scored
    if not 0.0 <= request.holdout < 1.0:
        raise DatasetError(f"--holdout {request.holdout}: give a fraction in [0, 1), e.g. 0.5")
    pt_path, onnx_path = source_files(model_ref)
    out = Path(out)
    if out.resolve() == onnx_path.parent.resolve() and any(
        (out / f).exists() for f in ("model.onnx", "model.pt")
    ):
        raise DatasetError(f"{out}: holds the model being calibrated; choose another --out folder.")
    model, scores = load_scored(data, onnx_path, allow_outside)
    class_names = model.class_names
    before = Operating.of(model)
    if len(np.unique(scores.targets)) < len(class_names):
        raise DatasetError(
            f"{data}: films of {len(np.unique(scores.targets))} class(es); calibration needs every "
            f"class of the model ({', '.join(class_names)})."
        )
    report: dict = {
        "model": shown_path(onnx_path),
        "model_name": model.name,
        "model_version": model.version,
        "data": str(data),
        "films": len(scores.targets),
        "patients": len(set(scores.patients)),
        "skipped_files": scores.failed,
        "request": dataclasses.asdict(request),
        "coverage_level": coverage,
        "prevalence": _prevalence_record(scores, request, class_names),
        "notice": NOT_DIAGNOSTIC_NOTICE,
    }
    if request.holdout > 0:
        _evaluate_held_out(data, out, scores, model, before, request, coverage, bootstrap, report)
    # The shipped calibration is refitted on every film, the way ship fits on all validation films.
    final = fit_operating(scores, before, request, class_names)
    if request.refit_gate and final.gate_threshold is not None:
        report["non_radiographs"] = non_radiograph_refusals(
            model, {"before": before.gate_threshold, "after": final.gate_threshold}
        )
    name = name or f"{model.name}-site"
    version = f"{name}-{datetime.now(timezone.utc):%Y%m%d%H%M}"
    calibration_record = _calibration_record(
        data, scores, model, request, before, final, coverage, report
    )
    out.mkdir(parents=True, exist_ok=True)
    metadata = _recalibrated_metadata(model, onnx_path, request, final, name, version)
    metadata["record"] = {**(metadata.get("record") or {}), "site_calibration": calibration_record}
    written = {"onnx": str(write_with_metadata(onnx_path, out / "model.onnx", metadata))}
    if pt_path is not None:
        written["model"] = str(_write_model_file(pt_path, out / "model.pt", metadata))
    report["written"] = written
    report["version"] = version
    atomic_write_json(out / "calibration.json", report)
    card = render_site_card(name, version, metadata["conformal"], calibration_record)
    atomic_write_text(out / "card.md", card)
    atomic_write_text(out / "report.md", render_calibration_report(report, CURVE_REPEATS))
    return report


def _recalibrated_metadata(
    model, onnx_path: Path, request: Request, final: Operating, name: str, version: str
) -> dict:
    """The source model's metadata with the site's operating point, name and version."""
    binary = len(model.class_names) == 2
    changes = {
        "name": name,
        "model_version": version,
        "temperature": final.temperature,
        "class_bias": list(final.bias) if final.bias is not None else None,
        "threshold": final.threshold,
        "rule": request.rule_of().record() if binary else None,
        "conformal": final.conformal.to_dict(),
    }
    if model.metadata.get("ood_threshold") is not None and final.gate_threshold is not None:
        changes["ood_threshold"] = final.gate_threshold
    return recalibrated(model.metadata, onnx_path, **changes)


def write_site_model(
    pt_path: Path | None,
    onnx_path: Path,
    out: Path,
    final: Operating,
    name: str,
    version: str,
    record_key: str,
    record: dict,
    request: Request | None = None,
) -> dict:
    """out/model.onnx (and out/model.pt where torch and the source's .pt are): the source's
    network, weights untouched, with `final`'s operating point and `record` under `record_key`
    in its record. Without `request` the source's threshold rule is kept. Returns what was
    written."""
    from pneumoscan.runtime.model import OnnxModel

    model = OnnxModel(onnx_path)
    binary = len(model.class_names) == 2
    changes = {
        "name": name,
        "model_version": version,
        "temperature": final.temperature,
        "class_bias": list(final.bias) if final.bias is not None else None,
        "threshold": final.threshold,
        "rule": (request.rule_of().record() if request else model.metadata.get("rule"))
        if binary
        else None,
        "conformal": final.conformal.to_dict(),
    }
    if model.metadata.get("ood_threshold") is not None and final.gate_threshold is not None:
        changes["ood_threshold"] = final.gate_threshold
    metadata = recalibrated(model.metadata, onnx_path, **changes)
    metadata["record"] = {**(metadata.get("record") or {}), record_key: record}
    out.mkdir(parents=True, exist_ok=True)
    written = {"onnx": str(write_with_metadata(onnx_path, out / "model.onnx", metadata))}
    if pt_path is not None:
        written["model"] = str(_write_model_file(pt_path, out / "model.pt", metadata, record_key))
    return written


def _write_model_file(
    source: Path, out: Path, metadata: dict, record_key: str = "site_calibration"
) -> Path:
    """The model file (.pt) beside the ONNX file, with the weights as they are and the same
    operating point, name and record as the ONNX metadata."""
    from pneumoscan.training.model_file import load_model_file, relabel_model_file

    _, info = load_model_file(source)
    info.name = metadata["name"]
    info.temperature, info.threshold = metadata["temperature"], metadata["threshold"]
    bias = metadata["class_bias"]
    info.class_bias = tuple(bias) if bias is not None else None
    info.conformal = metadata["conformal"]
    site = metadata["record"][record_key]
    info.record = {**(info.record or {}), record_key: site}
    if info.ood is not None and metadata.get("ood_threshold") is not None:
        info.ood = dataclasses.replace(info.ood, threshold=metadata["ood_threshold"])
    relabel_model_file(source, out, info)
    return out


def non_radiograph_refusals(model, thresholds: dict[str, float]) -> dict:
    """How many of the gate's benchmark non-radiographs (photos, documents, screenshots, charts,
    other modalities...) each gate threshold refuses: what a widened gate gives away."""
    from pneumoscan.evaluation.non_radiographs import non_radiograph_groups, to_unit_gray

    images = [to_unit_gray(image) for _, group in non_radiograph_groups() for _, image in group]
    scores = model.ood_scores(images)
    return {"inputs": len(images), **{k: int((scores > t).sum()) for k, t in thresholds.items()}}


def _evaluate_held_out(
    data, out: Path, scores, model, before, request: Request, coverage, bootstrap, report: dict
) -> None:
    """Fit on part of the site's films and report before/after on the held-out rest, with the
    learning curve; fills report["before"], ["after"], ["learning_curve"] and ["split"]."""
    from pneumoscan.evaluation.report import write_report

    class_names = model.class_names
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
            model=report["model"],
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


def _calibration_record(data, scores, model, request: Request, before, final, coverage, report):
    """What the recalibrated model file records about its site calibration."""
    class_names = model.class_names
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "source_model": report["model"],
        "source_version": model.version,
        "data": str(data),
        "films": len(scores.targets),
        "patients": len(set(scores.patients)),
        "class_counts": {n: int((scores.targets == i).sum()) for i, n in enumerate(class_names)},
        "rule": request.describe() if len(class_names) == 2 else None,
        "prevalence": report["prevalence"],
        "conformal_folds": cal.crossfit_folds(scores.targets, scores.patients),
        "temperature": {"before": before.temperature, "after": final.temperature},
        "class_bias": {"before": before.bias, "after": final.bias},
        "threshold": {"before": before.threshold, "after": final.threshold},
        "gate_threshold": {"before": before.gate_threshold, "after": final.gate_threshold},
        "non_radiographs": report.get("non_radiographs"),
        "held_out": {
            "level": coverage,
            **{k: report[k] for k in ("split", "before", "after") if k in report},
        },
    }


def _prevalence_record(scores, request: Request, class_names: tuple[str, ...]) -> dict:
    """The class shares the calibration reproduces: the calibration films' own, or the site's
    expected shares (--prevalence) and the logit shift that moved them there."""
    films = cal.class_shares(scores.targets, len(class_names))
    site = request.shares(class_names)
    return {
        "calibration_films": dict(zip(class_names, films)),
        "site": None if site is None else dict(zip(class_names, site)),
        "logit_shift": None if site is None else cal.prior_shift(films, site).tolist(),
    }


def _without_files(metrics: dict) -> dict:
    trimmed = {k: v for k, v in metrics.items() if k not in ("confusion_matrix", "skipped_files")}
    if "gate" in trimmed:
        trimmed["gate"] = {k: v for k, v in trimmed["gate"].items() if k != "refused_files"}
    return trimmed
