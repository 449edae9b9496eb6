"""The binary threshold rules: one registry that ship, calibrate, the CLI and the cards read.

A rule turns calibrated P(pneumonia) on calibration films into a threshold. Each is a frozen
dataclass whose fields are its typed parameters, with `choose()` (the threshold) and
`describe()` (what a model card says it did); `THRESHOLD_RULES` maps each name to its class. To
add a rule, write its class here and add it to `THRESHOLD_RULES`: the `--rule` help of `ship`
and `calibrate`, the check of a rule name, the card's prose and the record in the model's
metadata (`rule: {name, params}`) follow. A parameter whose name is not an option of those
commands yet (`--target-sensitivity`, `--cost-fn`) needs that option too.

numpy only at import (scikit-learn inside `Youden.choose`): the CLI imports this module to list
the rules, and the lean install has no scikit-learn.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np


@dataclass(frozen=True)
class ThresholdRule:
    """A binary threshold rule; a subclass's dataclass fields are its parameters."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one phrase, for the CLI's --rule help

    def choose(self, targets: np.ndarray, scores: np.ndarray, prior: float) -> float:
        """The threshold on calibrated P(pneumonia) `scores` of films with binary `targets`;
        `prior` is the pneumonia share the probabilities are calibrated to."""
        raise NotImplementedError

    def describe(self, source: str = "validation") -> str:
        """The rule in a card's words (no final full stop), fitted on `source` films."""
        raise NotImplementedError

    def params(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    def record(self) -> dict:
        """What the model's metadata records of the rule (`core.contract.Rule`)."""
        return {"name": self.name, "params": self.params()}


@dataclass(frozen=True)
class Balanced(ThresholdRule):
    """Pneumonia when the calibrated odds exceed the calibration films' prior odds. It is set by
    the class balance, not by the few films at the edge of a saturated ROC curve, so it is the
    same in every calibration fold, and it sits high enough on the probability scale that normal
    films pushed toward pneumonia by acquisition shift keep room below it. In the stress
    benchmark it had the best worst-case accuracy of the rules (docs/experiments.md)."""

    name: ClassVar[str] = "balanced"
    summary: ClassVar[str] = "the calibration films' pneumonia share"

    def choose(self, targets, scores, prior):
        return float(prior)

    def describe(self, source="validation"):
        return (
            f"pneumonia when the calibrated odds exceed the {source} films' prior odds. It is "
            "set by the class balance, not by the few films at the edge of a saturated ROC "
            "curve, so it does not move between calibration folds, and it leaves normal films "
            "room: acquisition shift mostly pushes normal films toward pneumonia (the first "
            "release lost specificity on the test films; here, shutters and crops do it in the "
            "stress benchmark). On clean validation it trades sensitivity for specificity; "
            "`pneumoscan stress --thresholds` and docs/experiments.md compare it with the other "
            "rules under shift"
        )


@dataclass(frozen=True)
class Youden(ThresholdRule):
    """The ROC point maximising sensitivity + specificity - 1. On a saturated ROC curve this is
    decided by a handful of films at its edge (the first release chose 0.13 this way)."""

    name: ClassVar[str] = "youden"
    summary: ClassVar[str] = "the ROC point maximising sensitivity + specificity - 1"

    def choose(self, targets, scores, prior):
        from sklearn.metrics import roc_curve

        false_positive, true_positive, thresholds = roc_curve(
            targets, scores, drop_intermediate=False
        )
        finite = np.isfinite(thresholds)  # roc_curve starts with +inf: "call nothing positive"
        best = int(np.argmax(np.where(finite, true_positive - false_positive, -np.inf)))
        return float(thresholds[best])

    def describe(self, source="validation"):
        return f"the ROC point maximising sensitivity + specificity - 1 on {source}"


@dataclass(frozen=True)
class Sensitivity(ThresholdRule):
    """The highest threshold reaching a target sensitivity on the calibration films."""

    name: ClassVar[str] = "sensitivity"
    summary: ClassVar[str] = "the highest threshold reaching --target-sensitivity"
    target_sensitivity: float = 0.98

    def __post_init__(self) -> None:
        if not 0.0 < self.target_sensitivity <= 1.0:
            raise ValueError(
                f"target sensitivity {self.target_sensitivity}: give a value in (0, 1]"
            )

    def choose(self, targets, scores, prior):
        from sklearn.metrics import roc_curve

        _, true_positive, thresholds = roc_curve(targets, scores, drop_intermediate=False)
        reaching = np.flatnonzero(true_positive >= self.target_sensitivity)
        return float(min(thresholds[reaching[0]], 1.0))

    def describe(self, source="validation"):
        return (
            f"the highest threshold reaching the target sensitivity "
            f"{self.target_sensitivity:g} on {source}"
        )


@dataclass(frozen=True)
class Half(ThresholdRule):
    """0.5, the accuracy-optimal decision at the calibration films' own prevalence."""

    name: ClassVar[str] = "half"
    summary: ClassVar[str] = "0.5"

    def choose(self, targets, scores, prior):
        return 0.5

    def describe(self, source="validation"):
        return f"0.5, the accuracy-optimal decision at the {source} prevalence"


@dataclass(frozen=True)
class Cost(ThresholdRule):
    """Pneumonia when P(pneumonia) x cost_fn > P(normal), i.e. the threshold 1 / (1 + cost_fn):
    the decision with the least expected cost when a missed pneumonia costs `cost_fn` false
    alarms. It needs calibrated probabilities and nothing else, so it is stable on a few dozen
    films."""

    name: ClassVar[str] = "cost"
    summary: ClassVar[str] = "the least expected cost, a missed pneumonia costing --cost-fn"
    cost_fn: float = 1.0

    def __post_init__(self) -> None:
        if not self.cost_fn > 0:
            raise ValueError(f"cost of a missed pneumonia {self.cost_fn}: give a positive number")

    def choose(self, targets, scores, prior):
        return 1.0 / (1.0 + self.cost_fn)

    def describe(self, source="validation"):
        cost = self.cost_fn
        return (
            f"pneumonia when P(pneumonia) x {cost:g} > P(normal), i.e. the threshold "
            f"1 / (1 + {cost:g}): the least expected cost when a missed pneumonia costs {cost:g} "
            "false alarms"
        )


THRESHOLD_RULES: dict[str, type[ThresholdRule]] = {
    rule.name: rule for rule in (Balanced, Youden, Sensitivity, Half, Cost)
}


def make_rule(name: str, **options: float) -> ThresholdRule:
    """The rule called `name`, with those of `options` that are its parameters (the others,
    e.g. a cost for a rule without one, are left out)."""
    if name not in THRESHOLD_RULES:
        raise ValueError(f"threshold rule {name!r}: choose one of {', '.join(THRESHOLD_RULES)}")
    rule = THRESHOLD_RULES[name]
    fields = {field.name for field in dataclasses.fields(rule)}
    return rule(**{k: v for k, v in options.items() if k in fields and v is not None})


def has_params(name: str) -> bool:
    """Whether the rule takes parameters (the card's rule comparison leaves those out)."""
    return bool(dataclasses.fields(THRESHOLD_RULES[name]))


def rules_help() -> str:
    """The --rule help's list: each rule's name and summary."""
    return "; ".join(f"{name} ({rule.summary})" for name, rule in THRESHOLD_RULES.items())
