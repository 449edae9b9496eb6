"""`run_eda`: what is in a data folder, as PNG plots and a Markdown summary.

Reads only image headers for sizes, so it takes seconds on the full data set.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pneumoscan.core import dataset as ds
from pneumoscan.core.errors import DatasetError, InputError
from pneumoscan.core.fileio import atomic_write, atomic_write_text
from pneumoscan.core.images import image_size, read_image
from pneumoscan.core.preprocess import resize_square

logger = logging.getLogger(__name__)

GRID_SIDE = 4
GRID_THUMB = 128


def _table(samples: list[ds.Sample]):
    import pandas as pd

    rows = []
    for sample in samples:
        size = image_size(sample.path)
        rows.append(
            {
                "split": sample.split,
                "label": sample.label,
                "subtype": sample.subtype or "unknown",
                "patient": sample.patient,
                "path": str(sample.path),
                "width": size[0] if size else np.nan,
                "height": size[1] if size else np.nan,
            }
        )
    return pd.DataFrame(rows)


def run_eda(data_dir: Path, out: Path, seed: int = 0) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = ds.available_splits(data_dir)
    if not splits:
        raise DatasetError(f"{data_dir}: no train, val or test folder; {ds.EXPECTED_LAYOUT}.")
    samples = [sample for split in splits for sample in ds.scan_split(data_dir, split)]
    frame = _table(samples)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def save(figure, name: str) -> str:
        figure.tight_layout()
        atomic_write(out / name, lambda tmp: figure.savefig(tmp, dpi=100, format="png"))
        plt.close(figure)
        return name

    counts = frame.groupby(["split", "label", "subtype"]).size().rename("images").reset_index()
    patients = frame.groupby(["split", "label", "subtype"])["patient"].nunique().rename("patients")
    counts = counts.merge(patients.reset_index(), on=["split", "label", "subtype"])
    pivot = counts.pivot_table(index="split", columns="subtype", values="images", fill_value=0)
    figure, axis = plt.subplots(figsize=(6, 4))
    pivot.plot.bar(ax=axis, rot=0)
    axis.set_ylabel("images")
    axis.set_title("Images per split and subtype")
    plots = {"counts": save(figure, "counts.png")}

    per_patient = frame.groupby(["split", "patient"]).size()
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.hist(per_patient.values, bins=np.arange(1, per_patient.max() + 2) - 0.5)
    axis.set_xlabel("images per patient")
    axis.set_ylabel("patients")
    axis.set_yscale("log")
    axis.set_title("Images per patient")
    plots["images_per_patient"] = save(figure, "images_per_patient.png")

    sized = frame.dropna(subset=["width", "height"])
    figure, axis = plt.subplots(figsize=(6, 4))
    for label, group in sized.groupby("label"):
        axis.scatter(group["width"], group["height"], s=4, alpha=0.4, label=label)
    axis.set_xlabel("width (px)")
    axis.set_ylabel("height (px)")
    axis.legend()
    axis.set_title("Image sizes")
    plots["sizes"] = save(figure, "image_sizes.png")

    plots.update(_sample_grids(frame, seed, save, plt))

    lines = _summary_lines(data_dir, splits, frame, counts, per_patient, sized, plots)
    summary = out / "summary.md"
    atomic_write_text(summary, "\n".join(lines))
    counts.to_csv(out / "counts.csv", index=False)
    return summary


def _sample_grids(frame, seed: int, save, plt) -> dict[str, str]:
    """One grid of random films per subtype, each resized to a square as the model sees it."""
    rng = np.random.default_rng(seed)
    plots = {}
    for subtype, group in frame.groupby("subtype"):
        paths = group["path"].to_numpy()
        chosen = rng.choice(paths, size=min(GRID_SIDE * GRID_SIDE, len(paths)), replace=False)
        figure, axes = plt.subplots(GRID_SIDE, GRID_SIDE, figsize=(8, 8))
        for axis in axes.ravel():
            axis.axis("off")
        for axis, path in zip(axes.ravel(), chosen):
            try:
                axis.imshow(
                    resize_square(read_image(Path(path)), GRID_THUMB), cmap="gray", vmin=0, vmax=1
                )
            except InputError as error:
                logger.warning("%s", error)
        figure.suptitle(f"{subtype}: random sample (resized to a square, as the model sees it)")
        plots[f"grid_{subtype}"] = save(figure, f"samples_{subtype}.png")
    return plots


def _summary_lines(data_dir, splits, frame, counts, per_patient, sized, plots) -> list[str]:
    """summary.md: the tables and figures the plots were made from."""
    aspect = (sized["width"] / sized["height"]).describe()
    squashed = int(((sized["width"] == 224) & (sized["height"] == 224)).sum())
    unreadable = int(frame["width"].isna().sum())
    lines = [
        f"# Data set summary: `{data_dir}`",
        "",
        f"{len(frame)} images, {frame['patient'].nunique()} patients, splits: {', '.join(splits)}.",
        "",
        "## Images and patients per split, label and subtype",
        "",
        "| split | label | subtype | images | patients |",
        "|---|---|---|---:|---:|",
        *[
            f"| {r.split} | {r.label} | {r.subtype} | {r.images} | {r.patients} |"
            for r in counts.itertuples()
        ],
        "",
        f"![counts]({plots['counts']})",
        "",
        "## Images per patient",
        "",
        f"Mean {per_patient.mean():.2f}, max {per_patient.max()}; "
        f"{int((per_patient > 1).sum())} patients have more than one image, "
        "so validation must be split by patient.",
        "",
        f"![images per patient]({plots['images_per_patient']})",
        "",
        "## Image sizes",
        "",
        f"Width {sized['width'].min():.0f}-{sized['width'].max():.0f} px, height "
        f"{sized['height'].min():.0f}-{sized['height'].max():.0f} px; aspect ratio (w/h) "
        f"median {aspect['50%']:.2f} (range {aspect['min']:.2f}-{aspect['max']:.2f}). "
        f"{squashed} images are exactly 224x224 (squashed copies in the downscaled set). "
        f"{unreadable} files have unreadable headers.",
        "",
        f"![sizes]({plots['sizes']})",
        "",
        "## Sample images",
        "",
        *[f"![{name}]({file})" for name, file in plots.items() if name.startswith("grid_")],
        "",
    ]
    return lines
