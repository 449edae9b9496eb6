"""The site reports: the gate and conformal sections of `validate`'s report, `calibrate`'s
before/after report and learning curve, and the card of a recalibrated model.

`calibrate`'s report and card are Jinja2 templates in templates/ fed by the facts calibrate
records (calibration.json, the model file's site_calibration record); `validate`'s sections stay
Python: validate runs on the torch-free [eval] install, and Jinja2 comes with [train]."""

from __future__ import annotations

from pathlib import Path

from pneumoscan.core.fileio import atomic_write
from pneumoscan.core.labels import NOT_DIAGNOSTIC_NOTICE


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
            "those; on another site's films it is an empirical question, answered here. "
            "The label the model gives a film is always in its set (forced in when the "
            "conformal rule leaves it out), so a set never contradicts the label; forcing can "
            "only raise coverage, so the coverage before forcing is shown too.",
            "",
            "| level | coverage | before forcing | sets changed by forcing | mean set size "
            "| sets of 1 / 2 / 3 classes |",
            "|---|---|---|---|---|---|",
        ]
        for row in conformal["levels"]:
            counts = " / ".join(str(v) for v in row["size_counts"].values())
            unforced = row.get("coverage_unforced")
            lines.append(
                f"| {row['level']:.0%} | {row['coverage']:.4f} | "
                + (f"{unforced:.4f}" if unforced is not None else "n/a")
                + f" | {row.get('changed_by_forcing', 'n/a')} | {row['mean_size']:.3f} | {counts} |"
            )
        lines += [""]
    return lines


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


def _bias_cell(metrics: dict) -> str:
    bias = metrics.get("class_bias")
    return "none" if bias is None else ", ".join(f"{b:+.3f}" for b in bias)


def _sets_cell(metrics: dict, level: float) -> str:
    rows = {r["level"]: r for r in (metrics.get("conformal") or {}).get("levels", [])}
    if level not in rows:
        return "no sets"
    return f"{rows[level]['coverage']:.4f} / {rows[level]['mean_size']:.3f}"


def _template(name: str):
    """templates/<name> (package data), with the table cells of the before/after comparison."""
    from pneumoscan.evaluation.report import template

    filters = {"bias_cell": _bias_cell, "sets_cell": _sets_cell}
    return template(Path(__file__).parent / "templates", name, filters)


def render_calibration_report(report: dict, curve_repeats: int) -> str:
    """`calibrate`'s report.md: templates/calibration_report.md.j2 fed by calibration.json."""
    return _template("calibration_report.md.j2").render(
        report=report,
        request=report["request"],
        curve_repeats=curve_repeats,
        notice=NOT_DIAGNOSTIC_NOTICE,
    )


def render_site_card(name: str, version: str, conformal: dict, record: dict) -> str:
    """The recalibrated model's card: templates/site_card.md.j2 fed by its site_calibration
    record and its conformal scores."""
    return _template("site_card.md.j2").render(
        name=name,
        version=version,
        record=record,
        conformal=conformal,
        notice=NOT_DIAGNOSTIC_NOTICE,
    )


def render_adapt_report(report: dict) -> str:
    """`adapt`'s report.md: templates/adapt_report.md.j2 fed by adapt.json."""
    import statistics

    from pneumoscan.evaluation.report import template

    filters = {"median": statistics.median}
    adapt_template = template(Path(__file__).parent / "templates", "adapt_report.md.j2", filters)
    return adapt_template.render(report=report, notice=NOT_DIAGNOSTIC_NOTICE)
