"""Ensemble, test-time augmentation and distillation, compared on out-of-fold films.

    python -m pneumoscan.research.ensemble_study RUN RUN RUN [--student RUN] --out docs/ensemble.md

Every figure is out-of-sample: a film counts for a network only when it is one of that
network's own validation films, and calibration (temperature, binary threshold) is cross-fitted
over patient folds of the films being reported, as `pneumoscan ship` does. Members trained on
different split seeds have overlapping validation folds; on the films two members both held out,
the pair's mean is compared with each member alone, which is the ensemble's gain measured
without selection.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from pneumoscan.core.fileio import atomic_write_text
from pneumoscan.core.hardware import hardware
from pneumoscan.training.ship import RunScores, out_of_sample, score_run

ZOOM = 0.05  # test-time zoom in: this share cut from each side


def _views(size: int) -> dict[str, v2.Transform | None]:
    inner = round(size * (1 - 2 * ZOOM))
    return {
        "plain": None,
        "flip": v2.RandomHorizontalFlip(p=1.0),
        "zoom": v2.Compose([v2.CenterCrop(inner), v2.Resize(size, antialias=True)]),
    }


@torch.no_grad()
def view_logits(scores: RunScores) -> dict[str, np.ndarray]:
    """The member's logits on its validation films under each test-time view."""
    from pneumoscan.core.dataset import read_split
    from pneumoscan.training.loaders import ImageTensorDataset, decode_images
    from pneumoscan.training.networks import predict_logits
    from pneumoscan.training.runs import default_cache_dir

    samples, targets = read_split(scores.run_dir, "val")
    spec = scores.info.preprocess
    decoded = decode_images(samples, spec.size, cache_dir=default_cache_dir())
    out = {}
    for name, transform in _views(spec.size).items():
        if transform is None:
            out[name] = scores.logits
            continue
        images = ImageTensorDataset(decoded.pixels, targets[decoded.kept], spec)
        images.augment = transform
        out[name] = predict_logits(scores.model, DataLoader(images, batch_size=64)).numpy()
    return out


def figures(scores: RunScores, logits: np.ndarray, keep: np.ndarray | None = None) -> dict:
    """Three-class and binary-read figures, calibration cross-fitted on the same films."""
    keep = np.arange(len(scores.targets)) if keep is None else keep
    subset = RunScores(
        scores.run_dir,
        scores.model,
        scores.info,
        logits[keep],
        scores.targets[keep],
        [scores.patients[i] for i in keep],
    )
    three = out_of_sample(subset, None, "balanced", bootstrap=0, sets=False)
    binary = out_of_sample(subset, "binary", "balanced", bootstrap=0, sets=False)
    return {
        "n": len(keep),
        "accuracy": three["accuracy"],
        "macro_f1": three["macro_f1"],
        "viral_recall": three["per_class"]["virus"]["recall"],
        "bacterial_recall": three["per_class"]["bacteria"]["recall"],
        "binary_accuracy": binary["accuracy"],
        "binary_auc": binary["roc_auc"],
        "sensitivity": binary["sensitivity"],
        "specificity": binary["specificity"],
    }


COLUMNS = [
    ("n", "{:d}"),
    ("accuracy", "{:.4f}"),
    ("macro_f1", "{:.4f}"),
    ("viral_recall", "{:.3f}"),
    ("bacterial_recall", "{:.3f}"),
    ("binary_accuracy", "{:.4f}"),
    ("binary_auc", "{:.4f}"),
    ("sensitivity", "{:.3f}"),
    ("specificity", "{:.3f}"),
]


def _row(label: str, values: dict) -> str:
    return f"| {label} | " + " | ".join(fmt.format(values[k]) for k, fmt in COLUMNS) + " |"


def _header(first: str) -> list[str]:
    return [
        f"| {first} | " + " | ".join(k.replace("_", " ") for k, _ in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]


def study(run_dirs: list[Path], student: Path | None = None) -> str:
    members = [score_run(Path(r)) for r in run_dirs]
    lines = [
        "## Test-time augmentation (each member on its own validation films)",
        "",
        f"Views: as stored; mirrored left-right; zoomed in ({ZOOM:.0%} cut from each side). "
        "A TTA row averages the views' logits.",
        "",
        *_header("member / views"),
    ]
    for member in members:
        views = view_logits(member)
        combos = {
            "plain": views["plain"],
            "plain + flip": (views["plain"] + views["flip"]) / 2,
            "plain + zoom": (views["plain"] + views["zoom"]) / 2,
            "plain + flip + zoom": (views["plain"] + views["flip"] + views["zoom"]) / 3,
        }
        for name, logits in combos.items():
            lines.append(_row(f"`{member.run_dir.name}` {name}", figures(member, logits)))
    lines += [
        "",
        "## Ensemble gain on films two members both held out",
        "",
        "Members trained on different split seeds share some validation patients. On those "
        "films, each member alone and the pair's mean logits, calibration cross-fitted on them:",
        "",
        *_header("network"),
    ]
    for a, b in itertools.combinations(members, 2):
        shared = sorted(set(a.keys) & set(b.keys))
        if len(shared) < 50:
            continue
        ia = np.asarray([a.keys.index(k) for k in shared])
        ib = np.asarray([b.keys.index(k) for k in shared])
        lines.append(_row(f"`{a.run_dir.name}`", figures(a, a.logits, ia)))
        lines.append(_row(f"`{b.run_dir.name}`", figures(b, b.logits, ib)))
        pair = RunScores(
            a.run_dir,
            a.model,
            a.info,
            (a.logits[ia] + b.logits[ib]) / 2,
            a.targets[ia],
            [a.patients[i] for i in ia],
        )
        lines.append(_row(f"mean of both ({len(shared)} films)", figures(pair, pair.logits)))
    if student is not None:
        lines += _student_rows(members, score_run(Path(student)))
    lines += ["", f"Hardware: {hardware()}.", ""]
    return "\n".join(lines)


def _student_rows(members: list[RunScores], student: RunScores) -> list[str]:
    """The student beside each member, on the films both held out."""
    lines = [
        "",
        "## Distilled student beside the members (films both held out)",
        "",
        *_header("network"),
    ]
    for member in members:
        shared = sorted(set(member.keys) & set(student.keys))
        if len(shared) < 50:
            continue
        im = np.asarray([member.keys.index(k) for k in shared])
        st = np.asarray([student.keys.index(k) for k in shared])
        lines.append(
            _row(
                f"`{member.run_dir.name}` ({len(shared)} films)", figures(member, member.logits, im)
            )
        )
        lines.append(_row(f"`{student.run_dir.name}`", figures(student, student.logits, st)))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--student", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(2)
    text = "# Ensemble, TTA and distillation (out-of-fold)\n\n" + study(args.runs, args.student)
    atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
