"""`pneumoscan adapt SITE --model M --out DIR`: calibrate-only or fine-tune-then-calibrate,
whichever cross-validates better on the site's own labelled films.

Two arms, compared on the same films by the same patient-grouped folds (stratified by class):

- calibrate-only: the network as it is; temperature, biases and threshold refitted (`calibrate`).
- fine-tune: `train --init MODEL --data SITE` once per fold (`cross_validate`, data.fold=k of K,
  one split seed), each fold's network scoring its own held-out films through its exported ONNX
  file. Every site film then has an out-of-fold logit from a network that never trained on it.

Each arm's reported figures are cross-fitted on those films: fold k's films are calibrated
(temperature, biases, threshold) on the other folds' films only, so neither the network nor the
calibration that scores a film saw it or its patient. The arms are compared on ROC AUC, which
calibration cannot change for a binary model and fine-tuning can: the fine-tune is kept only when
its AUC gain reaches `min_gain` and the 95% interval of the gain (a paired patient bootstrap)
lies above zero. Anything less is a tie, and a tie goes to calibrate-only, the cheaper arm whose
network (and gate) was trained on thousands of films rather than a few hundred.

What is written: calibrate-only refits the calibration on every film, as `calibrate` does. A
fine-tune ships the network of fold 0 (trained on (K-1)/K of the films), with its temperature,
biases and threshold fitted on the pooled out-of-fold logits of all K fold networks and its
conformal scores cross-fitted on them, never on the films that network trained on: those logits
are overconfident (issue 26: a temperature fitted on 58 films gave ECE 0.10). A network refitted
on all films would have no out-of-fold logits of its own and would train for more steps than the
networks whose logits set its temperature; fold 0's own held-out logits are among the pooled
ones. Fold 0, not the best-scoring fold: picking a fold by its score would flatter the report.

Resumable: the fold runs live in a work folder beside DIR (DIR.work) and a rerun of the same
command skips finished folds and resumes an interrupted one. DIR itself is assembled in a
temporary folder and renamed into place, so it never holds half a model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pneumoscan.core.decision import calibrated_probabilities, decide
from pneumoscan.core.errors import DatasetError, ModelFileError
from pneumoscan.core.fileio import atomic_write_json, atomic_write_text, fsync_dir, shown_path
from pneumoscan.core.labels import NOT_DIAGNOSTIC_NOTICE
from pneumoscan.evaluation import calibration as cal
from pneumoscan.evaluation.metrics import roc_auc
from pneumoscan.evaluation.scoring import FilmScores
from pneumoscan.site.calibrate import Request, fit_operating, source_files, write_site_model
from pneumoscan.site.validate import Operating, load_scored, site_metrics

logger = logging.getLogger(__name__)

CALIBRATE_ONLY, FINE_TUNE = "calibrate-only", "fine-tune"
KEPT_FOLD = 0


@dataclass(frozen=True)
class AdaptRequest:
    """What `adapt` was asked to do; `calibration` is `calibrate`'s request (its holdout unused)."""

    calibration: Request = Request()
    folds: int = 5
    epochs: int = 3
    min_gain: float = 0.005  # the AUC gain a fine-tune must reach to be kept
    fine_tune: bool = True
    overrides: tuple[str, ...] = ()  # extra `train` overrides for the fold runs
    keep_work: bool = False


@dataclass(frozen=True)
class Choice:
    arm: str
    reason: str
    gain: float | None = None  # fine-tune AUC minus calibrate-only AUC, cross-fitted
    interval: tuple[float, float] | None = None  # its 95% paired patient-bootstrap interval


def training_missing() -> str | None:
    """The name of the first [train] package that cannot be imported, or None."""
    for name in ("torch", "lightning", "onnx"):
        try:
            __import__(name)
        except ImportError:
            return name
    return None


# --- the comparison -----------------------------------------------------------------------


def paired_auc_gain(
    targets: np.ndarray,
    baseline: np.ndarray,
    candidate: np.ndarray,
    patients: list[str],
    repeats: int = 1000,
    seed: int = 0,
) -> tuple[float, tuple[float, float]]:
    """(candidate AUC - baseline AUC, its 95% interval), resampling patients for both at once."""
    gain = roc_auc(targets, candidate) - roc_auc(targets, baseline)
    rng = np.random.default_rng(seed)
    _, group = np.unique(np.asarray(patients), return_inverse=True)
    members = [np.flatnonzero(group == g) for g in range(group.max() + 1)]
    draws = []
    for _ in range(repeats):
        index = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        draw = roc_auc(targets[index], candidate[index]) - roc_auc(targets[index], baseline[index])
        if np.isfinite(draw):
            draws.append(draw)
    if not draws:
        return float(gain), (float("nan"), float("nan"))
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(gain), (float(low), float(high))


def choose(
    targets: np.ndarray,
    calibrated: np.ndarray,
    fine_tuned: np.ndarray | None,
    patients: list[str],
    min_gain: float,
    repeats: int = 1000,
    seed: int = 0,
    unavailable: str | None = None,
) -> Choice:
    """The arm to keep, from both arms' cross-fitted probabilities on the same films. Fine-tune
    only for an AUC gain of at least `min_gain` whose interval lies above zero; else
    calibrate-only (a tie goes to the cheaper arm)."""
    if fine_tuned is None:
        return Choice(CALIBRATE_ONLY, unavailable or "the fine-tune arm was not run")
    gain, interval = paired_auc_gain(targets, calibrated, fine_tuned, patients, repeats, seed)
    shown = f"ROC AUC {gain:+.4f} (95% interval {interval[0]:+.4f} to {interval[1]:+.4f})"
    if gain >= min_gain and interval[0] > 0:
        reason = (
            f"fine-tuning raised the cross-validated {shown}: at least the required "
            f"{min_gain:g}, and the interval lies above zero"
        )
        return Choice(FINE_TUNE, reason, gain, interval)
    why = f"below the required {min_gain:g}" if gain < min_gain else "an interval reaching zero"
    reason = (
        f"fine-tuning changed the cross-validated {shown}, {why}: a tie goes to calibrate-only, "
        "which keeps the network (and gate) trained on thousands of films"
    )
    return Choice(CALIBRATE_ONLY, reason, gain, interval)


def crossfit_arm(
    logits: np.ndarray,
    targets: np.ndarray,
    fold_of: np.ndarray,
    request: Request,
    class_names: tuple[str, ...],
) -> cal.CrossFit:
    """Each fold's films calibrated (temperature, biases, threshold) on the other folds' films."""
    from pneumoscan.evaluation.metrics import compute_metrics

    binary = len(class_names) == 2
    probabilities = np.zeros(logits.shape)
    predictions = np.zeros(len(targets), dtype=np.int64)
    thresholds, temperatures, per_fold = [], [], []
    for fold in np.unique(fold_of):
        held, rest = fold_of == fold, fold_of != fold
        fitted = cal.fit(
            logits[rest],
            targets[rest],
            request.rule if binary else None,
            request.target_sensitivity,
            request.cost_fn,
            bias=request.bias,
            prevalence=request.shares(class_names),
        )
        probabilities[held] = calibrated_probabilities(
            logits[held], fitted.temperature, fitted.bias
        )
        predictions[held] = decide(probabilities[held], fitted.threshold)
        thresholds.append(fitted.threshold)
        temperatures.append(fitted.temperature)
        per_fold.append(
            compute_metrics(
                probabilities[held], targets[held], class_names, fitted.threshold, bootstrap=0
            )
        )
    return cal.CrossFit(
        probabilities, targets, thresholds, temperatures, per_fold, predictions, fold_of
    )


def arm_metrics(
    crossfitted: cal.CrossFit, patients: list[str], class_names: tuple[str, ...], bootstrap: int
) -> dict:
    metrics = cal.crossfit_metrics(crossfitted, patients, class_names, bootstrap)
    metrics.pop("confusion_matrix", None)
    return with_balanced_accuracy(
        metrics, crossfitted.targets, crossfitted.predictions, patients, bootstrap
    )


def with_balanced_accuracy(
    metrics: dict, targets: np.ndarray, predictions: np.ndarray, patients: list[str], repeats: int
) -> dict:
    """Binary: balanced accuracy (the mean of sensitivity and specificity) and its 95% patient
    bootstrap interval."""
    if "sensitivity" not in metrics:
        return metrics
    metrics["balanced_accuracy"] = (metrics["sensitivity"] + metrics["specificity"]) / 2
    if repeats <= 0:
        return metrics
    rng = np.random.default_rng(0)
    _, group = np.unique(np.asarray(patients), return_inverse=True)
    members = [np.flatnonzero(group == g) for g in range(group.max() + 1)]
    draws = []
    for _ in range(repeats):
        index = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        truth, decided = targets[index], predictions[index]
        if len(np.unique(truth)) == 2:
            draws.append(
                ((decided[truth == 1] == 1).mean() + (decided[truth == 0] == 0).mean()) / 2
            )
    if draws:
        metrics["balanced_accuracy_ci"] = [float(v) for v in np.percentile(draws, [2.5, 97.5])]
    return metrics


# --- the fine-tune arm --------------------------------------------------------------------


@dataclass
class FoldRuns:
    """The fold networks and what they gave: out-of-fold logits of the films they held out."""

    folds: int
    runs: list[Path]
    onnx: list[Path]
    fold_of: np.ndarray  # per film of the site's scores: the fold that held it out, -1 none
    logits: np.ndarray  # per film: the logits of the network that held it out
    gate: np.ndarray | None  # per film: that network's gate score (None without a gate)
    seconds: float
    train_films: list[int] = field(default_factory=list)


def fold_count(scores: FilmScores, wanted: int) -> int:
    """`wanted` folds, fewer when a class has fewer patients; at least two patients per class."""
    patients = np.asarray(scores.patients)
    fewest = min(len(set(patients[scores.targets == c])) for c in np.unique(scores.targets))
    if fewest < 2:
        raise DatasetError(
            f"a class has films of {fewest} patient(s) only; adapt cross-validates over patients "
            "and needs at least two of every class. Add films of more patients."
        )
    if fewest < wanted:
        logger.warning("only %d patients in the smallest class: %d folds", fewest, fewest)
    return min(wanted, fewest)


def fine_tune_folds(
    data: Path,
    pt_path: Path,
    work: Path,
    scores: FilmScores,
    task: str,
    request: AdaptRequest,
    allow_outside: bool,
) -> FoldRuns:
    """`train --init` on each fold's training films (resumable), each network exported and
    scoring its own held-out films."""
    from pneumoscan.core import dataset as ds
    from pneumoscan.core.config import FINETUNE_RECIPE, load_config
    from pneumoscan.evaluation.scoring import score_films
    from pneumoscan.runtime.model import load_runtime_model
    from pneumoscan.training.export import export_onnx
    from pneumoscan.training.fit import cross_validate

    folds = fold_count(scores, request.folds)
    overrides = [
        *FINETUNE_RECIPE,
        f"model.init={pt_path}",
        f"data.task={task}",
        f"data.root={data}",
        f"data.val_fraction={1 / folds!r}",
        f"data.split_seed={request.calibration.seed}",
        f"data.allow_outside={str(allow_outside).lower()}",
        f"train.epochs={request.epochs}",
        *request.overrides,
    ]
    _claim_work(work, {"model": str(pt_path), "data": str(data), "overrides": overrides})
    started = time.time()
    logger.info("fine-tuning %d fold networks on %s (work folder %s)", folds, data, work)
    cross_validate(load_config(None, overrides), work, list(range(folds)), progress=False)
    index = {str(s.path): i for i, s in enumerate(scores.samples)}
    fold_of = np.full(len(scores.targets), -1, dtype=np.int64)
    logits = np.zeros(scores.logits.shape)
    gate = np.full(len(scores.targets), np.nan)
    runs, onnx, train_films = [], [], []
    for fold in range(folds):
        run = work / f"fold-{fold}"
        onnx_path = run / "model.onnx"
        if not onnx_path.is_file():
            export_onnx(run / "model.pt", onnx_path)
        held = [index[str(s.path)] for s in ds.read_split(run, "val")[0] if str(s.path) in index]
        train_films.append(len(ds.read_split(run, "train")[0]))
        part = scores.subset(np.asarray(held, dtype=np.int64))
        scored = score_films(load_runtime_model(onnx_path), part.samples, part.targets)
        kept = [index[str(s.path)] for s in scored.samples]
        fold_of[kept], logits[kept] = fold, scored.logits
        if scored.gate is not None:
            gate[kept] = scored.gate
        runs.append(run)
        onnx.append(onnx_path)
    seconds = _fold_seconds(runs) or time.time() - started
    has_gate = bool(np.isfinite(gate).any())
    return FoldRuns(
        folds, runs, onnx, fold_of, logits, gate if has_gate else None, seconds, train_films
    )


def _claim_work(work: Path, settings: dict) -> None:
    """The work folder belongs to one set of settings: a rerun with the same ones resumes it."""
    marker = work / "adapt-settings.json"
    if marker.is_file():
        if json.loads(marker.read_text()) != settings:
            raise DatasetError(
                f"{work}: holds fold runs of other settings (model, data or training "
                "overrides); remove it, or rerun with the settings it was started with."
            )
        logger.info("resuming the fold runs in %s", work)
        return
    atomic_write_json(marker, settings)


def _fold_seconds(runs: list[Path]) -> float | None:
    total = 0.0
    for run in runs:
        timing = run / "timing.json"
        if not timing.is_file():
            return None
        total += json.loads(timing.read_text()).get("wall_seconds", 0.0)
    return total


# --- the command --------------------------------------------------------------------------


def adapt(
    data: Path,
    model_ref: str | Path,
    out: Path,
    request: AdaptRequest = AdaptRequest(),
    bootstrap: int = 1000,
    allow_outside: bool = False,
) -> dict:
    """Compare the arms by patient-grouped cross-validation on the site's films, write the kept
    one as out/model.onnx (and model.pt) with report.md and adapt.json; return the report."""
    out = Path(out)
    if out.exists():
        raise DatasetError(f"{out}: already exists; choose a new --out folder (or remove it).")
    missing = training_missing()
    if missing is not None:
        raise DatasetError(
            f"adapt needs the [train] extra ({missing} is missing) to fine-tune and to write "
            'model files: pip install "pneumoscan[train]"; `pneumoscan validate` runs without it.'
        )
    pt_path, onnx_path = source_files(model_ref)
    start = (pt_path or fine_tune_start(model_ref)) if request.fine_tune else None
    if request.fine_tune and start is None:
        raise ModelFileError(
            f"{model_ref}: no torch model file to fine-tune (an ONNX-only model); give its .pt, "
            "or compare calibration alone with --no-fine-tune."
        )
    model, scores = load_scored(data, onnx_path, allow_outside)
    class_names = model.class_names
    if len(np.unique(scores.targets)) < len(class_names):
        raise DatasetError(
            f"{data}: films of {len(np.unique(scores.targets))} class(es); adapt needs films of "
            f"every class of the model ({', '.join(class_names)})."
        )
    work = out.with_name(out.name + ".work")
    runs = None
    if request.fine_tune:
        runs = fine_tune_folds(
            data, start, work, scores, _task(class_names), request, allow_outside
        )
        fold_of = runs.fold_of
    else:
        folds = fold_count(scores, request.folds)
        fold_of = np.full(len(scores.targets), -1, dtype=np.int64)
        for fold, held in enumerate(
            cal.patient_folds(scores.targets, scores.patients, folds, request.calibration.seed)
        ):
            fold_of[held] = fold
    report = compare_arms(data, model, scores, fold_of, runs, request, bootstrap)
    if runs is not None:
        # the network the folds started from: the model's own, or its single-network twin
        report["fine_tune"]["start"] = shown_path(start)
        report["fine_tune"]["twin"] = start != pt_path
    if report["choice"]["arm"] == FINE_TUNE:
        guard_gate(report, model, kept_network(runs))
    _write_adapted(out, report, model, scores, runs, fold_of, pt_path, onnx_path, request)
    if runs is not None and not request.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return report


def fine_tune_start(model_ref: str | Path) -> Path | None:
    """Where the fine-tune arm starts when the model has no torch file: a shipped ensemble's
    single-network twin (`binary` -> `binary-fast`), else None."""
    from pneumoscan.core.shipped import TORCH_TWIN, resolve_model, shipped_name

    twin = TORCH_TWIN.get(shipped_name(model_ref) or "")
    return resolve_model(twin, suffix=".pt") if twin else None


def kept_network(runs: FoldRuns) -> tuple[Path, Path, Operating]:
    """Fold 0's model file, ONNX file and operating point, its gate threshold widened (as
    `calibrate --refit-gate` widens, at most MAX_GATE_WIDENING x) to its own held-out films:
    `fit` set it from the films the network trained on, whose gate scores are lower than new
    films' are."""
    from pneumoscan.runtime.model import load_runtime_model
    from pneumoscan.site.calibrate import widened_gate

    onnx_path = runs.onnx[KEPT_FOLD]
    operating = Operating.of(load_runtime_model(onnx_path))
    if runs.gate is not None and operating.gate_threshold is not None:
        held = runs.gate[runs.fold_of == KEPT_FOLD]
        threshold, _ = widened_gate(operating.gate_threshold, held)
        operating = dataclasses.replace(operating, gate_threshold=threshold)
    return runs.runs[KEPT_FOLD] / "model.pt", onnx_path, operating


def guard_gate(report: dict, model, kept: tuple[Path, Path, Operating]) -> None:
    """A fine-tuned network's gate is refitted on the site's few hundred films: it is kept only
    if it refuses every benchmark non-radiograph the shipped gate refuses; else calibrate-only,
    with the reason in the report."""
    from pneumoscan.runtime.model import load_runtime_model

    _, onnx_path, operating = kept
    if model.ood_threshold is None:
        return
    if operating.gate_threshold is None:
        refused = {"inputs": None, "shipped": None, FINE_TUNE: None}
        lost = "has no gate"
    else:
        shipped = non_radiograph_refusals(model, {"shipped": model.ood_threshold})
        tuned = non_radiograph_refusals(
            load_runtime_model(onnx_path), {FINE_TUNE: operating.gate_threshold}
        )
        refused = {**shipped, **tuned}
        if refused[FINE_TUNE] >= refused["shipped"]:
            report["non_radiographs"] = refused
            return
        lost = (
            f"refuses {refused[FINE_TUNE]} of the {refused['inputs']} benchmark non-radiographs "
            f"(photos, documents, other modalities...), where the shipped gate refuses "
            f"{refused['shipped']}"
        )
    report["non_radiographs"] = refused
    choice = report["choice"]
    choice["arm"] = CALIBRATE_ONLY
    choice["reason"] = (
        f"{choice['reason']}; but the fine-tuned network's gate, refitted on the site's films, "
        f"{lost}: calibrate-only is kept, whose gate is the shipped one"
    )


def non_radiograph_refusals(model, thresholds: dict[str, float]) -> dict:
    from pneumoscan.site.calibrate import non_radiograph_refusals as refusals

    return refusals(model, thresholds)


def _task(class_names: tuple[str, ...]) -> str:
    return "binary" if len(class_names) == 2 else "three_class"


def compare_arms(data, model, scores: FilmScores, fold_of, runs, request, bootstrap) -> dict:
    """Both arms' cross-fitted figures on the films every fold network scored, the shipped
    model's figures on the same films, and the choice."""
    class_names = model.class_names
    common = np.flatnonzero(fold_of >= 0)
    films = scores.subset(common)
    patients = films.patients
    calibration = request.calibration
    shipped, probabilities = site_metrics(films, Operating.of(model), class_names, bootstrap)
    decided = decide(probabilities, model.threshold)
    arms = {
        CALIBRATE_ONLY: crossfit_arm(
            films.logits, films.targets, fold_of[common], calibration, class_names
        )
    }
    if runs is not None:
        arms[FINE_TUNE] = crossfit_arm(
            runs.logits[common], films.targets, fold_of[common], calibration, class_names
        )
    choice = choose(
        films.targets,
        arms[CALIBRATE_ONLY].probabilities,
        arms[FINE_TUNE].probabilities if FINE_TUNE in arms else None,
        patients,
        request.min_gain,
        repeats=bootstrap,
        seed=calibration.seed,
        unavailable="fine-tuning was not asked for (--no-fine-tune)",
    )
    return {
        "model": shown_path(model.path),
        "model_name": model.name,
        "model_version": model.version,
        "data": str(data),
        "films": len(scores.targets),
        "compared_films": len(common),
        "patients": len(set(patients)),
        "skipped_files": scores.failed,
        "folds": int(fold_of.max() + 1),
        "request": {
            **dataclasses.asdict(request),
            "calibration": dataclasses.asdict(calibration),
            "rule": calibration.describe() if len(class_names) == 2 else None,
        },
        "shipped": with_balanced_accuracy(
            _trimmed(shipped), films.targets, decided, patients, bootstrap
        ),
        "arms": {
            name: arm_metrics(arm, patients, class_names, bootstrap) for name, arm in arms.items()
        },
        "choice": dataclasses.asdict(choice),
        "fine_tune": None if runs is None else _runs_record(runs),
        "notice": NOT_DIAGNOSTIC_NOTICE,
    }


def _runs_record(runs: FoldRuns) -> dict:
    return {
        "folds": runs.folds,
        "training_films": runs.train_films,
        "kept_fold": KEPT_FOLD,
        "training_seconds": round(runs.seconds, 1),
    }


def _trimmed(metrics: dict) -> dict:
    trimmed = {k: v for k, v in metrics.items() if k not in ("confusion_matrix", "skipped_files")}
    if "gate" in trimmed:
        trimmed["gate"] = {k: v for k, v in trimmed["gate"].items() if k != "refused_files"}
    return trimmed


def _write_adapted(out, report, model, scores, runs, fold_of, pt_path, onnx_path, request):
    """The kept arm's model files, adapt.json and report.md, assembled beside `out` and renamed
    into place at once."""
    from pneumoscan.site.report import render_adapt_report

    calibration = request.calibration
    class_names = model.class_names
    if report["choice"]["arm"] == FINE_TUNE:
        pt_path, onnx_path, source = kept_network(runs)
        fitted_on = scores.subset(np.flatnonzero(fold_of >= 0))
        fitted_on.logits = runs.logits[fold_of >= 0]
        fitted_on.gate = None
        how = (
            f"the network of fold {KEPT_FOLD} (fine-tuned on {runs.train_films[KEPT_FOLD]} films); "
            f"temperature, biases and threshold fitted on the out-of-fold logits of all "
            f"{runs.folds} fold networks ({len(fitted_on.targets)} films), conformal scores "
            "cross-fitted on them; its gate (refitted on its training films) widened to its own "
            "held-out films"
        )
    else:
        fitted_on, source = scores, Operating.of(model)
        how = (
            "the network as it came; temperature, biases, threshold and conformal scores refitted "
            f"on all {len(scores.targets)} films, as `calibrate` does"
        )
    final = fit_operating(fitted_on, source, calibration, class_names)
    report["written"] = {
        "arm": report["choice"]["arm"],
        "how": how,
        "temperature": final.temperature,
        "class_bias": None if final.bias is None else list(final.bias),
        "threshold": final.threshold,
        "gate_threshold": final.gate_threshold,
    }
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    name = f"{model.name}-adapted"
    version = f"{name}-{datetime.now(timezone.utc):%Y%m%d%H%M}"
    record = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "source_model": report["model"],
        "source_version": model.version,
        "data": report["data"],
        "arm": report["choice"]["arm"],
        "reason": report["choice"]["reason"],
        "how": how,
        "cross_validated": {k: _headline(v) for k, v in report["arms"].items()},
    }
    write_site_model(pt_path, onnx_path, staging, final, name, version, "site_adaptation", record)
    # model.pt only where there is a network file to carry (not for an ONNX-only ensemble)
    report["written"]["files"] = sorted(path.name for path in staging.glob("model.*"))
    report["version"] = version
    atomic_write_json(staging / "adapt.json", report)
    atomic_write_text(staging / "report.md", render_adapt_report(report))
    os.replace(staging, out)
    fsync_dir(out.parent)
    logger.info("wrote %s", out)


def _headline(metrics: dict) -> dict:
    keys = ("roc_auc", "balanced_accuracy", "sensitivity", "specificity", "accuracy", "ece")
    return {k: metrics[k] for k in keys if k in metrics}
