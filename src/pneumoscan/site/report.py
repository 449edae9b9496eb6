"""The site reports: the gate and conformal sections of `validate`'s report, `calibrate`'s
before/after report and learning curve, and the card of a recalibrated model."""

from __future__ import annotations

import math
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


def render_calibration_report(report: dict, sections: list[str], curve_repeats: int) -> str:
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
            f"Each point recalibrates on random patient subsets of that many films ({curve_repeats} "
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
