"""`pneumoscan validate SITE --model M --out DIR`: a model as it is, on a site's labelled films.

SITE is a folder with NORMAL/ and PNEUMONIA/ subfolders (images anywhere below each; BACTERIA/ and
VIRUS/ subfolders, or Kermany file names, give the three-class labels), or a CSV file with the
columns path,label[,patient] (label: normal, pneumonia, bacteria or virus; paths relative to the
CSV's folder). A film's patient is the CSV's patient, else the patient in a Kermany file name,
else the file itself: films of one child must never sit on both sides of a split, so give the
patient column when a child has several films.

`validate` scores the films with the model as it is and writes the evaluation report (the one
`evaluate` writes), plus the gate's refusal rate and, for a model that carries them, the coverage
of its conformal prediction sets. Torch-free: it runs on the exported model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumoscan.core.conformal import REPORTED_LEVELS, ConformalCalibration, coverage_report
from pneumoscan.core.dataset import Sample, load_site
from pneumoscan.core.decision import calibrated_probabilities, decide
from pneumoscan.core.errors import DatasetError
from pneumoscan.core.fileio import shown_path
from pneumoscan.core.labels import CLASS_NAMES, Task
from pneumoscan.evaluation.scoring import FilmScores, score_films
from pneumoscan.runtime.model import OnnxModel, load_runtime_model
from pneumoscan.site.report import site_sections

logger = logging.getLogger(__name__)


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


def load_scored(
    data: Path, model_ref: str | Path, allow_outside: bool = False
) -> tuple[OnnxModel, FilmScores]:
    model = load_runtime_model(model_ref, gate=True)
    samples = load_site(data, allow_outside)
    targets = site_targets(samples, model.class_names)
    logger.info("scoring %d films of %s with %s", len(samples), data, model.name)
    return model, score_films(model, samples, targets)


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
    scores: FilmScores,
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
        decided = decide(probabilities, operating.threshold)  # the label each film is given
        metrics["conformal"] = {
            "method": operating.conformal.method,
            "films": operating.conformal.films,
            "source": operating.conformal.source,
            "levels": [
                {
                    "level": level,
                    **coverage_report(
                        operating.conformal.sets(probabilities, level, decided=decided),
                        scores.targets,
                        class_names,
                        operating.conformal.sets(probabilities, level, force=False),
                    ),
                }
                for level in sorted(set(levels))
            ],
        }
    return metrics, probabilities


def validate(
    data: Path, model_ref: str | Path, out: Path, bootstrap: int = 1000, allow_outside: bool = False
) -> dict:
    """Score the site's films with the model as it is; write the evaluation report."""
    from pneumoscan.evaluation.report import write_report

    model, scores = load_scored(data, model_ref, allow_outside)
    metrics, probabilities = site_metrics(scores, Operating.of(model), model.class_names, bootstrap)
    metrics.update(
        split="site",
        in_training_pool=False,
        caveat=None,
        model=shown_path(model.path),
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
