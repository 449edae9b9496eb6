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

Class-conditional (Mondrian) sets (Vovk 2012; Sadinle et al. 2019, section 4.3): with
`classwise=True` each class has its own quantile, taken over the calibration films of that class
only, so every class is covered at the level, not just the films on average. This matters for a
binary model whose label comes from a threshold (e.g. 0.742) rather than from 0.5: one marginal
quantile q ~ 0.07 lets a class in only at p >= 0.93, so a binary set could never hold both classes
and only repeated the 0.5 decision. Per-class quantiles let an uncertain film hold both.

The set always holds the label the model gives the film (`decided`: the thresholded decision for
a binary model, the most probable class otherwise), so a set never contradicts the label beside it
and is never empty. Forcing a class in can only raise coverage; `coverage_report` gives the
coverage of the sets before forcing (`coverage_unforced`, what the conformal guarantee is about)
next to the coverage of the sets as shown, and how many sets forcing changed.
The sorted calibration scores (per class with `classwise`) ship inside the model file
(ModelInfo.conformal, the ONNX metadata), so any coverage level can be asked for at prediction
time.
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


def classwise_quantiles(
    scores: np.ndarray, targets: np.ndarray, classes: int, coverage: float
) -> np.ndarray:
    """One conformal threshold per class, each from the scores of that class's films only."""
    targets = np.asarray(targets, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    return np.array([quantile(scores[targets == c], coverage) for c in range(classes)])


def prediction_sets(
    probabilities: np.ndarray,
    threshold: float | np.ndarray,
    method: str = "lac",
    decided: int | np.ndarray | None = None,
    force: bool = True,
) -> np.ndarray:
    """Boolean membership, (N, classes) or (classes,) for one film, of each film's set at the
    conformal `threshold` (one number, or one per class for Mondrian sets). With `force`, the
    `decided` class (the label the model gives; the most probable class when not given) is
    always in."""
    _check_method(method)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    squeeze = probabilities.ndim == 1
    probabilities = np.atleast_2d(probabilities)
    order = np.argsort(-probabilities, axis=1, kind="stable")
    if method == "lac":
        members = probabilities >= 1.0 - np.asarray(threshold, dtype=np.float64)
    else:
        ranked = np.take_along_axis(probabilities, order, axis=1)
        before = np.cumsum(ranked, axis=1) - ranked
        limit = np.asarray(threshold, dtype=np.float64)
        if limit.ndim == 1:  # per class: each class in rank order against its own threshold
            limit = limit[order]
        members = np.zeros(probabilities.shape, dtype=bool)
        np.put_along_axis(members, order, before < limit, axis=1)
    if force:
        chosen = order[:, 0] if decided is None else np.broadcast_to(decided, len(members))
        members[np.arange(len(members)), chosen] = True
    return members[0] if squeeze else members


def coverage_report(
    members: np.ndarray, targets: np.ndarray, class_names, unforced: np.ndarray | None = None
) -> dict:
    """Empirical coverage, mean set size and how often each set size occurs, overall and by class.
    With `unforced` (the same sets before the decided label was forced in): their coverage, how
    many were empty, and how many sets forcing changed."""
    targets = np.asarray(targets, dtype=np.int64)
    covered = members[np.arange(len(targets)), targets]
    sizes = members.sum(axis=1)
    extra = {}
    if unforced is not None:
        extra = {
            "coverage_unforced": float(unforced[np.arange(len(targets)), targets].mean()),
            "empty_unforced": int((unforced.sum(axis=1) == 0).sum()),
            "changed_by_forcing": int((unforced != members).any(axis=1).sum()),
        }
    return {
        "n": int(len(targets)),
        "coverage": float(covered.mean()),
        **extra,
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
    # Mondrian: the sorted scores of each class's films, in the model's class order. None in
    # model files written before class-conditional sets (one marginal quantile then).
    class_scores: tuple[tuple[float, ...], ...] | None = None

    @classmethod
    def fit(
        cls,
        probabilities: np.ndarray,
        targets: np.ndarray,
        source: str,
        method: str = "lac",
        classwise: bool = True,
    ) -> ConformalCalibration:
        targets = np.asarray(targets, dtype=np.int64)
        scores = conformity_scores(probabilities, targets, method)
        per_class = None
        if classwise:
            classes = np.asarray(probabilities).shape[1]
            per_class = tuple(_rounded(scores[targets == c]) for c in range(classes))
        return cls(_rounded(scores), source, method, per_class)

    @property
    def films(self) -> int:
        return len(self.scores)

    @property
    def classwise(self) -> bool:
        return self.class_scores is not None

    def threshold(self, coverage: float) -> float | np.ndarray:
        """The conformal threshold: one per class (an array) for Mondrian sets."""
        if self.class_scores is not None:
            return np.array([quantile(np.asarray(s), coverage) for s in self.class_scores])
        return quantile(np.asarray(self.scores), coverage)

    def sets(
        self,
        probabilities: np.ndarray,
        coverage: float,
        decided: int | np.ndarray | None = None,
        force: bool = True,
    ) -> np.ndarray:
        """Membership at `coverage`; the `decided` label (the model's decision) is always in."""
        threshold = self.threshold(coverage)
        return prediction_sets(probabilities, threshold, self.method, decided, force)

    def to_dict(self) -> dict:
        data = {
            "method": self.method,
            "films": self.films,
            "source": self.source,
            "scores": list(self.scores),
        }
        if self.class_scores is not None:
            data["class_scores"] = [list(s) for s in self.class_scores]
        return data

    @classmethod
    def from_dict(cls, data: dict | None) -> ConformalCalibration | None:
        if not data:
            return None
        _check_method(data.get("method"))
        per_class = data.get("class_scores")
        return cls(
            tuple(float(s) for s in data["scores"]),
            str(data["source"]),
            data["method"],
            tuple(tuple(float(s) for s in c) for c in per_class) if per_class else None,
        )


def _rounded(scores: np.ndarray) -> tuple[float, ...]:
    # 7 significant digits: confident films score ~1e-6 under lac, and sets hinge on them.
    return tuple(float(f"{s:.7g}") for s in np.sort(scores))


def _check_method(method: str | None) -> None:
    if method not in METHODS:
        raise ValueError(f"conformal method {method!r}: choose one of {', '.join(METHODS)}")


def _check_coverage(coverage: float) -> None:
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage {coverage}: give a level between 0 and 1, e.g. 0.9")
