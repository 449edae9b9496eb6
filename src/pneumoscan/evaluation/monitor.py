"""Drift monitoring: are this week's predictions distributed like the reference's?

    pneumoscan monitor CURRENT.csv --reference BASELINE.csv --out DIR

Both inputs are prediction logs as `pneumoscan predict --csv` writes them. Without labels nothing
here measures accuracy: it tells when the films (or the model's view of them) changed, the first
sign of a new detector, protocol or population, and a reason to run `pneumoscan validate` on
labelled films.

What is compared, each with a test and an effect size:
- the status mix (predicted, indeterminate, refused by the gate, unreadable): chi-square, effect
  the largest change in any status's rate;
- the predicted labels among predicted films (the predicted prevalence): chi-square, effect the
  largest change in a label's share;
- the probability of each class after the first, and the gate score: two-sample Kolmogorov-
  Smirnov, effect the KS distance D.
p-values are adjusted for the several tests together (Holm); a check alarms when its adjusted
p-value is below ALPHA *and* its effect reaches the check's minimum, so a large log does not alarm
on a change too small to matter and a small one does not alarm on noise. Each log needs at least
MIN_FILMS films: with fewer, the tests cannot see a change of the minimum effect sizes.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pneumoscan.core.errors import InputError
from pneumoscan.core.fileio import atomic_write_text
from pneumoscan.core.labels import NOT_DIAGNOSTIC_NOTICE

ALPHA = 0.05  # family-wise, over all checks (Holm)
MIN_FILMS = 100  # per log
MIN_KS_DISTANCE = 0.1  # smallest distribution change that alarms
MIN_RATE_CHANGE = 0.05  # smallest change in a status rate or a label share that alarms
STATUSES = ("ok", "indeterminate", "not_chest_xray", "error")
FORMULA_PREFIX = "'"  # a spreadsheet-safety prefix some CSV writers put before = + - @


@dataclass(frozen=True)
class PredictionLog:
    path: Path
    classes: tuple[str, ...]
    statuses: list[str]
    labels: list[str]  # of the rows predicted (status ok)
    probabilities: dict[str, np.ndarray]  # class -> P(class) of the rows with probabilities
    gate_scores: np.ndarray


@dataclass(frozen=True)
class Check:
    name: str
    test: str
    statistic: float
    p_value: float
    effect_name: str
    effect: float
    min_effect: float
    adjusted_p: float = math.nan
    reference_summary: str = ""
    current_summary: str = ""

    @property
    def drift(self) -> bool:
        return self.adjusted_p < ALPHA and self.effect >= self.min_effect


def _number(cell: str | None) -> float | None:
    cell = (cell or "").strip().removeprefix(FORMULA_PREFIX)
    if not cell:
        return None
    value = float(cell)
    return value if math.isfinite(value) else None


def read_log(path: Path | str) -> PredictionLog:
    """A `predict --csv` log, or an InputError saying what is wrong with it."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{path}: cannot read this prediction log ({error}).") from None
    missing = [c for c in ("status", "label", "gate_score") if c not in columns]
    classes = tuple(c.removeprefix("p_") for c in columns if c.startswith("p_"))
    if missing or len(classes) < 2:
        raise InputError(
            f"{path}: not a `pneumoscan predict --csv` log (missing "
            f"{', '.join(missing) or 'p_<class> columns'}); write one with `pneumoscan predict "
            "FILMS --csv LOG.csv`."
        )
    statuses, labels, scores = [], [], []
    probabilities: dict[str, list[float]] = {name: [] for name in classes}
    for line, row in enumerate(rows, start=2):
        status = (row.get("status") or "").strip()
        if status not in STATUSES:
            raise InputError(f"{path}, line {line}: unknown status {status!r}.")
        statuses.append(status)
        try:
            values = [_number(row.get(f"p_{name}")) for name in classes]
            score = _number(row.get("gate_score"))
        except ValueError:
            raise InputError(
                f"{path}, line {line}: a probability or gate score is not a number."
            ) from None
        if status == "ok":
            labels.append(row["label"])
        if all(v is not None for v in values):
            for name, value in zip(classes, values):
                probabilities[name].append(value)
        if score is not None:
            scores.append(score)
    return PredictionLog(
        path,
        classes,
        statuses,
        labels,
        {name: np.asarray(v) for name, v in probabilities.items()},
        np.asarray(scores),
    )


def _holm(p_values: list[float]) -> list[float]:
    order = np.argsort(p_values)
    adjusted, running = [1.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def _shares(values: list[str], categories: tuple[str, ...]) -> np.ndarray:
    counts = np.asarray([values.count(c) for c in categories], dtype=float)
    return counts / max(1.0, counts.sum())


def _categorical(name: str, reference: list[str], current: list[str], categories) -> Check | None:
    from scipy.stats import chi2_contingency

    table = np.asarray([[r.count(c) for c in categories] for r in (reference, current)])
    table = table[:, table.sum(axis=0) > 0]
    if (table.sum(axis=1) == 0).any():
        return None  # no rows of this kind in one log (nothing predicted): nothing to compare
    # One category only, in both logs (every film predicted): identical, nothing to test.
    statistic, p_value = chi2_contingency(table)[:2] if table.shape[1] > 1 else (0.0, 1.0)
    before, after = _shares(reference, categories), _shares(current, categories)

    def shown(shares: np.ndarray) -> str:
        return ", ".join(f"{c} {s:.3f}" for c, s in zip(categories, shares) if s)

    return Check(
        name,
        "chi-square",
        float(statistic),
        float(p_value),
        "largest change in a share",
        float(np.abs(after - before).max()),
        MIN_RATE_CHANGE,
        reference_summary=shown(before),
        current_summary=shown(after),
    )


def _continuous(name: str, reference: np.ndarray, current: np.ndarray) -> Check | None:
    from scipy.stats import ks_2samp

    if len(reference) < 2 or len(current) < 2:
        return None
    result = ks_2samp(reference, current)

    def shown(values: np.ndarray) -> str:
        quartiles = np.percentile(values, [25, 50, 75])
        return f"median {quartiles[1]:.3f}, IQR {quartiles[2] - quartiles[0]:.3f}"

    return Check(
        name,
        "Kolmogorov-Smirnov",
        float(result.statistic),
        float(result.pvalue),
        "KS distance D",
        float(result.statistic),
        MIN_KS_DISTANCE,
        reference_summary=shown(reference),
        current_summary=shown(current),
    )


def compare(reference: PredictionLog, current: PredictionLog) -> list[Check]:
    """Every check, its p-value adjusted over all of them."""
    for log in (reference, current):
        if len(log.statuses) < MIN_FILMS:
            raise InputError(
                f"{log.path}: {len(log.statuses)} films; drift needs at least {MIN_FILMS} in "
                "each log to see a change of the minimum effect sizes. Collect more."
            )
    if reference.classes != current.classes:
        raise InputError(
            f"{current.path}: classes {', '.join(current.classes)} but the reference "
            f"{reference.path} has {', '.join(reference.classes)}: compare logs of one model."
        )
    checks = [
        _categorical("status mix", reference.statuses, current.statuses, STATUSES),
        _categorical("predicted labels", reference.labels, current.labels, reference.classes),
        *[
            _continuous(f"P({name})", reference.probabilities[name], current.probabilities[name])
            for name in reference.classes[1:]
        ],
        _continuous("gate score", reference.gate_scores, current.gate_scores),
    ]
    checks = [c for c in checks if c is not None]
    adjusted = _holm([c.p_value for c in checks])
    return [Check(**{**asdict(c), "adjusted_p": p}) for c, p in zip(checks, adjusted)]


LIMITS = (
    "What drift can tell: that the films, or the model's view of them, are not distributed as "
    "in the reference: a new detector, protocol, population or a fault upstream. What it cannot "
    "tell: whether the model is still accurate. There are no labels here, so no accuracy, "
    "sensitivity or specificity; a shift in predicted prevalence may be a real change in the "
    "patients. An alarm is a reason to check the model on labelled films of the site "
    "(`pneumoscan validate`) and, if needed, recalibrate (`pneumoscan calibrate`); no alarm is "
    "not evidence that the model is accurate."
)


def _plot(reference: PredictionLog, current: PredictionLog, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (f"P({n})", reference.probabilities[n], current.probabilities[n])
        for n in reference.classes[1:]
    ]
    panels.append(("gate score", reference.gate_scores, current.gate_scores))
    panels = [p for p in panels if len(p[1]) and len(p[2])]
    if not panels:
        return []
    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.2), squeeze=False)
    for axis, (title, before, after) in zip(axes[0], panels):
        bins = np.histogram_bin_edges(np.concatenate([before, after]), bins=30)
        axis.hist(before, bins=bins, density=True, alpha=0.5, label=f"reference (n={len(before)})")
        axis.hist(after, bins=bins, density=True, alpha=0.5, label=f"current (n={len(after)})")
        axis.set_title(title)
        axis.legend(fontsize=7)
    figure.tight_layout()
    path = out / "distributions.png"
    tmp = path.with_suffix(".tmp.png")
    figure.savefig(tmp, dpi=100)
    plt.close(figure)
    tmp.replace(path)
    return [path.name]


def write_report(
    reference: PredictionLog, current: PredictionLog, checks: list[Check], out: Path
) -> bool:
    """DIR/drift.json, DIR/report.md and DIR/distributions.png; True when any check alarms."""
    out.mkdir(parents=True, exist_ok=True)
    drift = any(c.drift for c in checks)
    document = {
        "drift": drift,
        "reference": {"log": str(reference.path), "films": len(reference.statuses)},
        "current": {"log": str(current.path), "films": len(current.statuses)},
        "alpha": ALPHA,
        "correction": "holm",
        "min_films": MIN_FILMS,
        "checks": [{**asdict(c), "drift": c.drift} for c in checks],
        "limits": LIMITS,
        "notice": NOT_DIAGNOSTIC_NOTICE,
    }
    atomic_write_text(out / "drift.json", json.dumps(document, indent=2) + "\n")
    plots = _plot(reference, current, out)
    lines = [
        "# Drift report",
        "",
        f"> {NOT_DIAGNOSTIC_NOTICE}",
        "",
        f"**{'Drift detected' if drift else 'No drift detected'}**: {current.path} "
        f"({len(current.statuses)} films) against {reference.path} ({len(reference.statuses)} "
        f"films). A check alarms when its Holm-adjusted p-value is below {ALPHA} and its effect "
        "reaches the minimum shown.",
        "",
        "| check | test | reference | current | effect | minimum | adjusted p | drift |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {c.name} | {c.test} | {c.reference_summary} | {c.current_summary} | "
            f"{c.effect:.3f} ({c.effect_name}) | {c.min_effect} | {c.adjusted_p:.2g} | "
            f"{'**yes**' if c.drift else 'no'} |"
            for c in checks
        ],
        "",
        *[f"![{name}]({name})" for name in plots],
        "",
        "## What this can and cannot tell",
        "",
        LIMITS,
        "",
    ]
    atomic_write_text(out / "report.md", "\n".join(lines))
    return drift
