"""`ship_model`: turn a finished training run into the files the repository ships.

    pneumoscan ship --run runs/robust-f0 --name three-class --fold-run runs/robust-f1 --stress-data DATA
    pneumoscan ship --run runs/robust-f0 --name binary --derive binary --fold-run runs/robust-f1 ...

writes models/<name>.pt (fp16 weights), models/<name>.onnx (with class-map and gate outputs),
models/<name>.md (the model card) and docs/stress/<name>/ (the shift stress benchmark).

Selection, calibration and reporting stay apart. Training selected nothing on validation when
its recipe says `train.select: last`; here the temperature and threshold are cross-fitted over
patient folds of the validation films (each film scored by a calibration fitted on other
patients) for the reported figures, then fitted once on all validation films for the shipped
file. Every line of the card comes from what the run and this command recorded.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from pneumoscan.core import dataset as ds
from pneumoscan.core.conformal import REPORTED_LEVELS, ConformalCalibration
from pneumoscan.core.decision import GATE_QUANTILE, calibrated_probabilities
from pneumoscan.core.errors import ConfigError, ModelFileError
from pneumoscan.core.fileio import atomic_write, atomic_write_text
from pneumoscan.core.images import read_image
from pneumoscan.core.labels import CLASS_NAMES, NOT_DIAGNOSTIC_NOTICE, Task
from pneumoscan.core.preprocess import prepare
from pneumoscan.core.shipped import write_provenance
from pneumoscan.evaluation import calibration as cal
from pneumoscan.evaluation.report import template
from pneumoscan.evaluation.rules import has_params
from pneumoscan.training.export import export_onnx, parity
from pneumoscan.training.gate import (
    GATE_DESIGN,
    PART_DESCRIPTIONS,
    fit_gate,
    gate_features,
    member_gate,
    texture_taps,
)
from pneumoscan.training.loaders import ImageTensorDataset, decode_images, scoring_batches
from pneumoscan.training.model_file import ModelInfo, load_model_file, save_model_file
from pneumoscan.training.networks import (
    EnsembleClassifier,
    GroupedClassifier,
    get_architecture,
    predict_logits,
    recorded_accelerator,
    scoring_device,
)
from pneumoscan.training.runs import (
    default_cache_dir,
    film_key,
    member_facts,
    read_teacher_record,
    run_timing,
)

logger = logging.getLogger(__name__)

CROSSFIT_FOLDS = 5
GATE_VARIANTS = 1  # augmented copies of each training film the gate is fitted on, besides the film
# The gate's copies leave out zoom-in crops: a network trained with them (policy `fov`) spreads
# cropped films so widely in feature space that, fitted on them, the gate let 14 of 64
# non-radiographs through (the astronaut photo among them; `pneumoscan bench-ood`).
GATE_POLICY = {"fov": "framing"}
GATE_POLICY_KEY = "fov-as-framing"  # in the gate cache's name: a change of rule refits it


@dataclass
class RunScores:
    """A run's network on its own validation films: raw logits, targets, patients."""

    run_dir: Path
    model: torch.nn.Module
    info: ModelInfo
    logits: np.ndarray
    targets: np.ndarray
    patients: list[str]
    keys: list[str] = field(default_factory=list)  # runs.film_key of each scored film
    # An ensemble's out-of-fold scores: how many films each member scored, and how many films
    # had 1, 2, ... out-of-fold members.
    ensemble: dict | None = None


def score_run(run_dir: Path) -> RunScores:
    run_dir = Path(run_dir)
    source = run_dir / "model.pt"
    if not source.is_file():
        raise ModelFileError(
            f"{source}: the run has not finished (no model.pt); train or --resume it first."
        )
    model, info = load_model_file(source)
    # The run's training device for every later pass of ship (scores, gate); saved on the CPU.
    device = scoring_device(recorded_accelerator(info.config))
    samples, targets = ds.read_split(run_dir, "val")
    decoded = decode_images(samples, info.preprocess.size, cache_dir=default_cache_dir())
    images = ImageTensorDataset(decoded.pixels, targets[decoded.kept], info.preprocess)
    logits = predict_logits(
        model.to(device, memory_format=torch.channels_last), scoring_batches(images, device)
    ).numpy()
    patients = [samples[i].patient for i in decoded.kept]
    keys = [film_key(samples[i].path) for i in decoded.kept]
    return RunScores(run_dir, model, info, logits, targets[decoded.kept], patients, keys)


def out_of_sample(
    scores: RunScores,
    derive: str | None,
    rule: str,
    bootstrap: int = 1000,
    sets: bool = True,
    class_bias: bool = False,
    cost_fn: float = 1.0,
) -> dict:
    """Cross-fitted figures: calibration fitted on other validation patients than it is scored on.
    `bootstrap` patient resamples give the intervals; `sets` adds cross-validated conformal sets."""
    groups = cal.BINARY_GROUPS if derive == "binary" else None
    class_names = CLASS_NAMES[Task.BINARY] if groups else scores.info.class_names
    scored = cal.coarse_targets(scores.targets, groups) if groups else scores.targets
    result = cal.crossfit(
        scores.logits,
        scores.targets,
        scores.patients,
        rule if len(class_names) == 2 else None,
        folds=cal.crossfit_folds(scored, scores.patients, CROSSFIT_FOLDS),
        class_names=class_names,
        groups=groups,
        bias=class_bias and not groups,
        cost_fn=cost_fn,
    )
    metrics = cal.crossfit_metrics(result, scores.patients, class_names, bootstrap)
    if not sets:
        return metrics
    # Sets from the out-of-sample probabilities, each patient fold's from the others' scores.
    metrics["conformal"] = [
        cal.conformal_crossval(
            result.probabilities,
            result.targets,
            scores.patients,
            level,
            class_names,
            decided=result.predictions,
        )
        for level in REPORTED_LEVELS
    ]
    return metrics


def pool_out_of_fold(
    members: list[RunScores],
) -> tuple[list[str], np.ndarray, np.ndarray, list[str], list[int]]:
    """(keys, logits, targets, patients, counts) over every film some member held out: the mean
    logits of the members that held it out, and how many they were."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    facts: dict[str, tuple[int, str]] = {}
    for member in members:
        for key, logits, target, patient in zip(
            member.keys, member.logits, member.targets, member.patients
        ):
            sums[key] = sums.get(key, 0) + logits
            counts[key] = counts.get(key, 0) + 1
            facts[key] = (int(target), patient)
    order = sorted(sums)
    logits = np.stack([sums[k] / counts[k] for k in order]).astype(np.float32)
    targets = np.asarray([facts[k][0] for k in order], dtype=np.int64)
    return order, logits, targets, [facts[k][1] for k in order], [counts[k] for k in order]


def network_info(info: ModelInfo, **changes) -> ModelInfo:
    """A new ModelInfo with what describes `info`'s network and training (architecture, classes,
    preprocessing, config), none of its calibration, gate or records, and `changes`."""
    facts = {
        "arch": info.arch,
        "head": info.head,
        "dropout": info.dropout,
        "task": info.task,
        "class_names": info.class_names,
        "preprocess": info.preprocess,
        "config": info.config,
        "versions": info.versions,
        "name": info.name,
        "phase": info.phase,
        "epoch": info.epoch,
        "global_step": info.global_step,
    }
    return ModelInfo(**{**facts, **changes})


def out_of_fold_scores(members: list[RunScores], graph_members: int | None = None) -> RunScores:
    """Every film that is validation for at least one member, scored by the mean logits of the
    members that never trained on it (its out-of-fold members), with the ensemble of the first
    `graph_members` members (all by default) as the network; the others only score their
    held-out films. Figures from these scores describe one or two members per film, not the
    whole ensemble: a conservative estimate of it."""
    keys, logits, targets, patients, counts = pool_out_of_fold(members)
    graph = members[: graph_members or len(members)]
    ensemble = EnsembleClassifier([m.model for m in graph], [m.info.to_dict() for m in graph])
    # The members' epochs are their own (in member_infos), not the ensemble's.
    info = network_info(members[0].info, phase=None, epoch=None, global_step=None)
    facts = {
        "films_per_member": {str(m.run_dir): len(m.targets) for m in members},
        "films_by_out_of_fold_members": {
            str(n): int(c) for n, c in enumerate(np.bincount(counts)) if c
        },
    }
    return RunScores(members[0].run_dir, ensemble, info, logits, targets, patients, keys, facts)


def shipped_network(
    scores: RunScores,
    derive: str | None,
    rule: str,
    class_bias: bool = False,
    cost_fn: float = 1.0,
) -> tuple[torch.nn.Module, ModelInfo]:
    """The network and its info, calibrated on all validation films of the run (with
    `class_bias`, per-class logit biases too: bias-corrected temperature scaling)."""
    model, info = scores.model, scores.info
    if derive is None:
        calibration = cal.fit(
            scores.logits,
            scores.targets,
            rule if len(info.class_names) == 2 else None,
            bias=class_bias,
            cost_fn=cost_fn,
        )
        info.temperature, info.threshold = calibration.temperature, calibration.threshold
        info.class_bias = calibration.bias
        probabilities = calibrated_probabilities(
            scores.logits, calibration.temperature, calibration.bias
        )
        info.conformal = _conformal(probabilities, scores.targets, scores.run_dir)
        return model, info
    if derive != "binary" or info.task != Task.THREE_CLASS.value:
        raise ConfigError(
            f"--derive {derive}: only a binary model can be read from a three-class run "
            f"(this run is {info.task})."
        )
    source_temperature, calibration = cal.fit_grouped(
        scores.logits, scores.targets, cal.BINARY_GROUPS, rule, cost_fn=cost_fn
    )
    derived = GroupedClassifier(model, source_temperature, cal.BINARY_GROUPS)
    grouped = cal.grouped_log_probabilities(
        calibrated_probabilities(scores.logits, source_temperature), cal.BINARY_GROUPS
    )
    conformal = _conformal(
        calibrated_probabilities(grouped, calibration.temperature),
        cal.coarse_targets(scores.targets, cal.BINARY_GROUPS),
        scores.run_dir,
    )
    derived_info = network_info(
        info,
        task=Task.BINARY.value,
        class_names=CLASS_NAMES[Task.BINARY],
        threshold=calibration.threshold,
        temperature=calibration.temperature,
        ood=info.ood,
        derived_from={
            "class_names": list(info.class_names),
            "temperature": source_temperature,
            "groups": [list(members) for members in cal.BINARY_GROUPS],
        },
        conformal=conformal,
    )
    return derived, derived_info


def _conformal(probabilities: np.ndarray, targets: np.ndarray, run_dir: Path) -> dict:
    """The shipped conformal scores: every validation film, under the shipped calibration."""
    source = f"{len(targets)} validation films of {run_dir}"
    return ConformalCalibration.fit(probabilities, targets, source).to_dict()


def refit_gate(run_dir: Path, model, info: ModelInfo, cache: Path) -> None:
    """Fit the gate on the run's training films as training presented them: each film as stored
    and `GATE_VARIANTS` copies through the run's augmentation (blur, noise, gamma, geometry...).
    A softer, noisier or re-framed chest film is still a chest film; photos and documents stay far
    away. An ensemble's gate reads its first member (`member_gate`). Cached in the run folder, so
    shipping both models from one run fits it once."""
    if cache.is_file():
        info.ood = _gate_from_file(cache)
        return
    sets = gate_film_sets(run_dir, info)
    taps, width = member_gate(
        model, texture_taps(model, info.preprocess.size, info.preprocess.channels)
    )
    device = next(model.parameters()).device  # score_run's: the run's training device
    parts = [gate_features(model, scoring_batches(images, device), taps, width) for images in sets]
    features = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    info.ood = fit_gate(features, taps, width=width)
    atomic_write(cache, lambda tmp: torch.save(info.ood.to_tensors(), tmp))


def gate_film_sets(run_dir: Path, info: ModelInfo) -> list[ImageTensorDataset]:
    """The films the gate is fitted on: the run's training films as stored, and `GATE_VARIANTS`
    copies through the run's augmentation (`GATE_POLICY`), drawn from seed 0."""
    samples, targets = ds.read_split(run_dir, "train")
    decoded = decode_images(samples, info.preprocess.size, cache_dir=default_cache_dir())
    train = (info.config or {}).get("train", {})
    policy = train.get("augment_policy", "basic") if train.get("augment", True) else False
    policy = GATE_POLICY.get(policy, policy)
    torch.manual_seed(0)
    sets = [ImageTensorDataset(decoded.pixels, targets[decoded.kept], info.preprocess)]
    sets += [
        ImageTensorDataset(decoded.pixels, targets[decoded.kept], info.preprocess, augment=policy)
        for _ in range(GATE_VARIANTS if policy else 0)
    ]
    return sets


def gate_film_batches(run_dir: Path, info: ModelInfo):
    """`gate_film_sets` as model-input batches (numpy), for the int8 graph's gate threshold."""
    for images in gate_film_sets(run_dir, info):
        for batch, _ in scoring_batches(images, torch.device("cpu")):
            yield batch.numpy()


def _gate_from_file(path: Path):
    from pneumoscan.training.gate import OodGate

    return OodGate.from_tensors(torch.load(path, weights_only=True))


def ship_model(
    run_dir: Path,
    name: str,
    models_dir: Path,
    fold_runs: list[Path] = (),
    derive: str | None = None,
    rule: str = "balanced",
    stress_data: Path | None = None,
    stress_dir: Path = Path("docs/stress"),
    ensemble: list[Path] = (),
    class_bias: bool = False,
    cost_fn: float = 1.0,
    int8: bool = False,
    oof_runs: list[Path] = (),
) -> Path:
    """Calibrate, refit the gate, write the fp16 model file, the ONNX file and the card.

    With `ensemble` (run folders trained on different patient folds) the shipped network
    averages the members' logits in one graph, and every fit and figure uses out-of-fold scores
    (of the members and of `oof_runs`, the split's other folds that are not in the graph).
    With `int8` the shipped ONNX file has int8 convolutions (`training.quantize`), checked
    against fp32 on every member's validation films; the fp16 model file and the fp32 graph
    stay in RUN/shipped/, outside the size budget of models/.
    """
    try:
        cal.make_rule(rule, cost_fn=cost_fn)
    except ValueError as error:
        raise ConfigError(f"--rule {rule}: {error}") from None
    models_dir = Path(models_dir)
    if class_bias and derive is not None:
        raise ConfigError("--class-bias applies to the three-class model, not a derived reading")
    if oof_runs and not ensemble:
        raise ConfigError("--oof-run adds out-of-fold films to an --ensemble; give its members")
    run_dir, scores, oos, folds = _validation_scores(
        run_dir, ensemble, fold_runs, derive, rule, class_bias, cost_fn, oof_runs
    )
    model, info = shipped_network(scores, derive, rule, class_bias, cost_fn)
    info.val_metrics = oos  # the figures a user should expect: out-of-sample for calibration
    gate_cache = f"gate-{weights_key(ensemble or [run_dir])}-{GATE_VARIANTS}-{GATE_POLICY_KEY}-{GATE_DESIGN}.pt"
    refit_gate(run_dir, model, info, run_dir / gate_cache)
    info.name = name
    info.record = _ship_record(
        run_dir, info, scores, oos, folds, derive, rule, cost_fn, ensemble, oof_runs
    )
    kept = Path(run_dir) / "shipped"  # with int8: the torch-side files, not shipped
    if int8:
        kept.mkdir(parents=True, exist_ok=True)
    shipped_pt = (kept if int8 else models_dir) / f"{name}.pt"
    info.record["model_file"] = str(shipped_pt)
    save_model_file(shipped_pt, model, info, half=True)
    version = f"{name}-{datetime.now(timezone.utc):%Y%m%d}"
    fp32_onnx = (kept / f"{name}-fp32.onnx") if int8 else models_dir / f"{name}.onnx"
    onnx_path = export_onnx(shipped_pt, fp32_onnx, model_version=version)
    difference = _checked_parity(shipped_pt, onnx_path, run_dir, info)
    info.record["onnx_parity"] = difference  # in the model file; the ONNX file was written before
    if int8:
        from pneumoscan.training.quantize import quantize_shipped, set_metadata_value

        onnx_path = models_dir / f"{name}.onnx"
        binary = info.task == Task.BINARY.value
        runs = [Path(m) for m in ensemble] or [Path(run_dir)]
        info.record["int8"] = quantize_shipped(
            fp32_onnx,
            onnx_path,
            info.preprocess,
            runs,
            binary,
            gate_films=lambda: gate_film_batches(run_dir, info),
        )
        set_metadata_value(onnx_path, "record", info.record)
    save_model_file(shipped_pt, model, info, half=True)
    stress = None
    if stress_data is not None:
        from pneumoscan.evaluation.stress import run_stress

        stress = run_stress(onnx_path, stress_data, Path(stress_dir) / name)
    card = write_card(name, models_dir, stress, Path(stress_dir) / name, shipped_pt)
    write_provenance(models_dir)  # SHA256SUMS and each card's digests, of the files just written
    return card


def _validation_scores(
    run_dir, ensemble, fold_runs, derive, rule, class_bias, cost_fn, oof_runs=()
):
    """(run folder, scores, out-of-sample figures, per-fold rows) of what `ship_model` ships.

    With an ensemble the members are on different patient folds and the reported films are each
    member's own validation films, scored by the members that never trained on them. Runs in
    `oof_runs` (other folds of the same split, not in the graph) add their own validation films,
    scored by themselves, so the fitted and reported films can cover the whole training pool."""
    if ensemble:
        member_scores = [score_run(Path(member)) for member in [*ensemble, *oof_runs]]
        run_dir = member_scores[0].run_dir
        scores = out_of_fold_scores(member_scores, graph_members=len(ensemble))
        folds = [
            {
                "run": str(m.run_dir),
                **_fold_row(out_of_sample(m, derive, rule, class_bias=class_bias, cost_fn=cost_fn)),
            }
            for m in member_scores
        ]
    else:
        run_dir = Path(run_dir)
        scores = score_run(run_dir)
        folds = []
    logger.info("cross-fitting calibration on %d validation films", len(scores.targets))
    oos = out_of_sample(scores, derive, rule, class_bias=class_bias, cost_fn=cost_fn)
    if not ensemble:
        folds.append({"run": str(run_dir), **_fold_row(oos)})
    for other in fold_runs:
        other_scores = score_run(Path(other))
        other_oos = out_of_sample(
            other_scores, derive, rule, class_bias=class_bias, cost_fn=cost_fn
        )
        folds.append({"run": str(other), **_fold_row(other_oos)})
    return run_dir, scores, oos, folds


def _checked_parity(shipped_pt: Path, onnx_path: Path, run_dir: Path, info: ModelInfo) -> float:
    """The largest probability difference between the model file and its ONNX export on 8 of
    the run's validation films; a `ModelFileError` when it exceeds 1e-4."""
    samples, _ = ds.read_split(run_dir, "val")
    check = np.stack(
        [
            prepare(read_image(s.path, min_side=info.preprocess.decode_side), info.preprocess)
            for s in samples[:8]
        ]
    )
    difference = parity(shipped_pt, onnx_path, check)
    if difference > 1e-4:
        raise ModelFileError(
            f"{onnx_path}: ONNX differs from torch by {difference:.2e}; not shipping it."
        )
    return difference


def _ship_record(
    run_dir: Path,
    info: ModelInfo,
    scores: RunScores,
    oos: dict,
    folds: list[dict],
    derive: str | None,
    rule: str,
    cost_fn: float,
    ensemble: list[Path],
    oof_runs: list[Path] = (),
) -> dict:
    """What the model file records of its shipping: run facts, out-of-sample figures, the fold
    spread, the rule comparison, the ensemble's members and its out-of-fold-only runs."""
    binary = len(info.class_names) == 2
    arch = get_architecture(info.arch)
    timing = run_timing(run_dir)
    config = info.config or {}
    return {
        "run": str(run_dir),
        "config": config,
        "weights_source": arch.pretrained_source
        if config.get("model", {}).get("pretrained", True)
        else None,
        "architecture": arch.description,
        "training_hardware": timing.get("hardware"),
        "training_minutes": round(timing["wall_seconds"] / 60, 1)
        if "wall_seconds" in timing
        else None,
        "threshold_rule": rule if binary else None,
        "cost_fn": cost_fn if binary and rule == "cost" else None,
        "rule": cal.make_rule(rule, cost_fn=cost_fn).record() if binary else None,
        "calibration_films": int(len(scores.targets)),
        "crossfit_folds": oos["calibration_folds"]["count"],
        "out_of_sample": oos,
        "fold_runs": folds,
        "rule_comparison": (
            {
                other: _fold_row(out_of_sample(scores, derive, other))
                for other in cal.THRESHOLD_RULES
                if not has_params(other)  # a rule with parameters is compared at its own only
            }
            if binary
            else None
        ),
        "shipped": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "members": [member_facts(Path(member)) for member in ensemble] or None,
        "oof_runs": [member_facts(Path(run)) for run in oof_runs] or None,
        "ensemble": scores.ensemble,
        "teacher": read_teacher_record(config.get("train", {}).get("distill_targets")),
    }


def weights_key(run_dirs: list[Path]) -> str:
    """A short hash of the runs' weight files: a cache fitted on other weights is never reused."""
    import hashlib

    digest = hashlib.sha256()
    for run_dir in run_dirs:
        digest.update((Path(run_dir) / "model.pt").read_bytes())
    return digest.hexdigest()[:12]


def _fold_row(metrics: dict) -> dict:
    keys = ["n", "accuracy", "macro_f1", "roc_auc", "ece", "sensitivity", "specificity"]
    row = {k: metrics[k] for k in keys if k in metrics}
    row["recall"] = {name: value["recall"] for name, value in metrics["per_class"].items()}
    row["conformal"] = [
        {k: c[k] for k in ("level", "coverage", "mean_size")} for c in metrics.get("conformal", [])
    ]
    return row


def write_card(
    name: str,
    models_dir: Path,
    stress: dict | None = None,
    stress_dir: Path | None = None,
    model_file: Path | None = None,
) -> Path:
    """(Re)write models/<name>.md from what the shipped model file recorded (an int8 ship keeps
    its model file in the run folder: the ONNX file's record says where)."""
    models_dir = Path(models_dir)
    shipped_pt = Path(model_file) if model_file else models_dir / f"{name}.pt"
    if not shipped_pt.is_file() and (models_dir / f"{name}.onnx").is_file():
        shipped_pt = Path(_onnx_record(models_dir / f"{name}.onnx").get("model_file", shipped_pt))
    _, info = load_model_file(shipped_pt)
    if info.record is None:
        raise ModelFileError(
            f"{shipped_pt}: no shipping record; ship it again with `pneumoscan ship`."
        )
    if stress is None and stress_dir is not None and (Path(stress_dir) / "stress.json").is_file():
        stress = json.loads((Path(stress_dir) / "stress.json").read_text())
    card = render_card(name, info, stress, stress_dir)
    path = models_dir / f"{name}.md"
    atomic_write_text(path, card)
    return path


def _onnx_record(path: Path) -> dict:
    import onnx

    from pneumoscan.core.decision import METADATA_KEY

    proto = onnx.load(str(path), load_external_data=False)
    raw = next((p.value for p in proto.metadata_props if p.key == METADATA_KEY), "{}")
    return json.loads(raw).get("record") or {}


def render_card(name: str, info: ModelInfo, stress: dict | None, stress_dir: Path | None) -> str:
    """The model card: templates/model_card.md.j2 fed by what the model file recorded."""
    record, config = info.record, info.record["config"]
    binary = info.task == Task.BINARY.value
    oos = record["out_of_sample"]
    folds = record["fold_runs"]
    keys = ["accuracy", "macro_f1", "roc_auc", "ece"] + (
        ["sensitivity", "specificity"] if binary else []
    )
    facts = {
        "name": name,
        "notice": NOT_DIAGNOSTIC_NOTICE,
        "info": info,
        "record": record,
        "data": config["data"],
        "model": config["model"],
        "train": config["train"],
        "pp": info.preprocess,
        "binary": binary,
        "derived": info.derived_from,
        "split_folds": round(1 / config["data"]["val_fraction"]),
        "members": record.get("members"),
        "oof_runs": record.get("oof_runs") or [],
        "teacher": record.get("teacher"),
        "films_by_members": (record.get("ensemble") or {}).get("films_by_out_of_fold_members", {}),
        "oos": oos,
        "folds": folds,
        "fold_keys": keys,
        "fold_spread": [
            (np.mean([f[k] for f in folds]), np.std([f[k] for f in folds], ddof=1)) for k in keys
        ]
        if len(folds) > 1
        else [],
        "class_biases": list(zip(info.class_names, info.class_bias)) if info.class_bias else [],
        "rule_text": _rule_text(record["threshold_rule"], record.get("cost_fn")) if binary else "",
        "rule_comparison": (record.get("rule_comparison") or {}) if binary else {},
        "conformal_text": _conformal_text(info, oos) if info.conformal else "",
        "stress": stress,
        "stress_dir": stress_dir,
        "gate_percentile": f"{100 * GATE_QUANTILE:g}",
        "gate_spaces": PART_DESCRIPTIONS,
        "distill_table": _shown_path(config["train"].get("distill_targets")),
    }
    return template(Path(__file__).parent / "templates", "model_card.md.j2").render(facts)


def _shown_path(path: str | None) -> str | None:
    """A recorded path as a card shows it: relative paths as given, absolute ones by their last
    two parts (`runs/teacher.csv`), so no machine's folders end up in a shipped card."""
    if not path:
        return path
    return str(path) if not Path(path).is_absolute() else "/".join(Path(path).parts[-2:])


def _conformal_text(info: ModelInfo, oos: dict) -> str:
    rows = oos.get("conformal") or []
    measured = "; ".join(
        f"{row['level']:.0%}: coverage {row['coverage']:.4f}, mean size {row['mean_size']:.3f} "
        + (
            f", {row['coverage_unforced']:.4f} before the label is forced in"
            if "coverage_unforced" in row
            else ""
        )
        + " (sets of 1 / 2"
        + (" / 3" if len(row["size_counts"]) > 2 else "")
        + " classes: "
        + " / ".join(str(v) for v in row["size_counts"].values())
        + ")"
        for row in rows
    )
    return (
        f"- Conformal prediction sets (`pneumoscan predict --sets 0.9`): split-conformal, "
        f"`{info.conformal['method']}` score"
        + (
            ", class-conditional (one quantile per class)"
            if "class_scores" in info.conformal
            else ""
        )
        + f", from the {info.conformal['films']} validation films "
        "under the shipped calibration. The label the model gives (the thresholded decision) is "
        "always in its set, so a set never contradicts it; forcing it in can only raise "
        "coverage, and the coverage before forcing is what the conformal guarantee is about. "
        "Cross-validated over patient folds of the out-of-sample "
        f"probabilities (each fold's sets from the other folds' scores): {measured}. The "
        "promise holds for films like the validation films; a new site recalibrates them with "
        "`pneumoscan calibrate`."
    )


def _rule_text(rule: str, cost_fn: float | None = None) -> str:
    """The card's words on the shipped rule, from the registry (`evaluation.rules`)."""
    options = {"cost_fn": cost_fn if cost_fn is not None else 1.0}
    return ": " + cal.make_rule(rule, **options).describe("validation") + "."
