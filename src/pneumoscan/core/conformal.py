"""Split-conformal prediction sets. numpy only: the runtime imports this module too.

With the conformity scores of n labelled calibration films, q is the ceil((n + 1) * coverage)-th
smallest score, and a new film's set holds every class whose score would not exceed q. When the
calibration films and the new films are exchangeable (same site, same kind of patient), the set
holds the true class with probability at least `coverage` (Vovk et al. 2005; Angelopoulos & Bates
2021, "A gentle introduction to conformal prediction"). A set of two or three classes says the
model cannot tell them apart at that level, e.g. {bacteria, virus}. Two scores:

- `lac` (default; Sadinle, Lei & Wasserman 2019): 1 - P(y). A class is in the set when its
  calibrated probability is at least 1 - q. It gives the smallest sets on average.
- `aps` (Romano, Sesia & Candes 2020): the mass of the classes ranked at or above y; classes are
  taken most probable first while the mass already taken is below q. Without randomisation (left
  out so that a film always gets the same set) it is conservative: with two or three classes and
  confident probabilities it often returns every class, and over-covers.

The most probable class is always in the set, so no set is empty (this can only raise coverage).
The sorted calibration scores ship inside the model file (ModelInfo.conformal, the ONNX
metadata), so any coverage level can be asked for at prediction time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

METHODS = ("lac", "aps")
REPORTED_LEVELS = (0.9, 0.95)  # the coverage levels model cards and site reports give


def conformity_scores(
    probabilities: np.ndarray, targets: np.ndarray, method: str = "lac"
) -> np.ndarray:
    """Each film's score for its true class: 1 - P(y) (lac), or the mass of the classes ranked
    at or above y (aps)."""
    _check_method(method)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    own = probabilities[np.arange(len(targets)), np.asarray(targets, dtype=np.int64)]
    if method == "lac":
        return 1.0 - own
    above = np.where(probabilities > own[:, None], probabilities, 0.0).sum(axis=1)
    return above + own


def quantile(scores: np.ndarray, coverage: float) -> float:
    """The conformal threshold for `coverage` from n calibration scores; inf (every class) when n
    is too small for that level, i.e. when (n + 1) * coverage > n."""
    _check_coverage(coverage)
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    rank = math.ceil((len(scores) + 1) * coverage)
    return float(scores[rank - 1]) if rank <= len(scores) else math.inf


def prediction_sets(probabilities: np.ndarray, threshold: float, method: str = "lac") -> np.ndarray:
    """Boolean membership, (N, classes) or (classes,) for one film, of each film's set at the
    conformal `threshold`; the most probable class is always in."""
    _check_method(method)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    squeeze = probabilities.ndim == 1
    probabilities = np.atleast_2d(probabilities)
    order = np.argsort(-probabilities, axis=1, kind="stable")
    if method == "lac":
        members = probabilities >= 1.0 - threshold
    else:
        ranked = np.take_along_axis(probabilities, order, axis=1)
        before = np.cumsum(ranked, axis=1) - ranked
        members = np.zeros(probabilities.shape, dtype=bool)
        np.put_along_axis(members, order, before < threshold, axis=1)
    members[np.arange(len(members)), order[:, 0]] = True
    return members[0] if squeeze else members


def coverage_report(members: np.ndarray, targets: np.ndarray, class_names) -> dict:
    """Empirical coverage, mean set size and how often each set size occurs, overall and by class."""
    targets = np.asarray(targets, dtype=np.int64)
    covered = members[np.arange(len(targets)), targets]
    sizes = members.sum(axis=1)
    return {
        "n": int(len(targets)),
        "coverage": float(covered.mean()),
        "mean_size": float(sizes.mean()),
        "size_counts": {str(k): int((sizes == k).sum()) for k in range(1, members.shape[1] + 1)},
        "coverage_by_class": {
            name: float(covered[targets == index].mean())
            for index, name in enumerate(class_names)
            if (targets == index).any()
        },
    }


@dataclass(frozen=True)
class ConformalCalibration:
    """The sorted calibration scores a model file carries, how they were computed and from what."""

    scores: tuple[float, ...]
    source: str  # e.g. "364 site calibration films"
    method: str = "lac"

    @classmethod
    def fit(
        cls, probabilities: np.ndarray, targets: np.ndarray, source: str, method: str = "lac"
    ) -> ConformalCalibration:
        scores = np.sort(conformity_scores(probabilities, targets, method))
        # 7 significant digits: confident films score ~1e-6 under lac, and sets hinge on them.
        return cls(tuple(float(f"{s:.7g}") for s in scores), source, method)

    @property
    def films(self) -> int:
        return len(self.scores)

    def threshold(self, coverage: float) -> float:
        return quantile(np.asarray(self.scores), coverage)

    def sets(self, probabilities: np.ndarray, coverage: float) -> np.ndarray:
        return prediction_sets(probabilities, self.threshold(coverage), self.method)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "films": self.films,
            "source": self.source,
            "scores": list(self.scores),
        }

    @classmethod
    def from_dict(cls, data: dict | None) -> ConformalCalibration | None:
        if not data:
            return None
        _check_method(data.get("method"))
        return cls(tuple(float(s) for s in data["scores"]), str(data["source"]), data["method"])


def _check_method(method: str | None) -> None:
    if method not in METHODS:
        raise ValueError(f"conformal method {method!r}: choose one of {', '.join(METHODS)}")


def _check_coverage(coverage: float) -> None:
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage {coverage}: give a level between 0 and 1, e.g. 0.9")
