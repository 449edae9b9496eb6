"""A simulated new site: a model's own validation films through an acquisition shift.

    python -m pneumoscan.site.simulate DATA --model binary --out site --films 400 --shift scanner

For trying `validate`, `calibrate` and `predict --sets` without a hospital's films, and for the
tests that check them. The films are the model's validation films, re-drawn from DATA as training
drew them (never its training films), each passed through one fixed, seeded shift from
`perturb` and written as 8-bit PNG under NORMAL/ and PNEUMONIA/ with their Kermany names (so the
patient and the bacteria/virus subtype stay readable), plus labels.csv (path,label,patient).
Torch-free.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image

from pneumoscan.core.fileio import atomic_write_bytes, atomic_write_text
from pneumoscan.core.images import read_image
from pneumoscan.evaluation import perturb

# Each shift: what a different hospital's machine and habits could do to every film.
SHIFTS: dict[str, tuple[str, list[perturb.Transform]]] = {
    "scanner": (
        "lower contrast (x0.75), darker mid-tones (gamma 1.3), blur (sigma 1.2 px), noise (0.02)",
        [perturb.contrast(0.75), perturb.gamma(1.3), perturb.blur(1.2), perturb.noise(0.02)],
    ),
    "zoomed": (
        "the scanner shift plus edge enhancement (unsharp mask, radius 2 px, 150%) and tighter "
        "framing (20% cut from each side)",
        [
            perturb.contrast(0.75),
            perturb.gamma(1.3),
            perturb.noise(0.02),
            perturb.sharpen(2.0, 150),
            perturb.crop(0.2),
        ],
    ),
    "tight": (
        "the scanner shift with blur (sigma 1.5 px) and a tight field of view (25% cut from each "
        "side): beyond the zoom-in crops the release-4 models were trained with",
        [
            perturb.contrast(0.75),
            perturb.gamma(1.3),
            perturb.noise(0.02),
            perturb.blur(1.5),
            perturb.crop(0.25),
        ],
    ),
    "collimated": (
        "the scanner shift plus tight collimation (outer 10% of each side shuttered)",
        [
            perturb.contrast(0.75),
            perturb.gamma(1.3),
            perturb.blur(1.2),
            perturb.noise(0.02),
            perturb.collimation(0.10),
        ],
    ),
}


def simulate_site(
    data: Path, model: str | Path, out: Path, films: int | None = 400, shift: str = "scanner"
) -> Path:
    """Write the simulated site to `out`; returns the path of its labels.csv."""
    from pneumoscan.evaluation.stress import validation_films
    from pneumoscan.runtime.model import load_runtime_model

    if shift not in SHIFTS:
        raise ValueError(f"shift {shift!r}: choose one of {', '.join(SHIFTS)}")
    metadata = load_runtime_model(model).metadata
    chosen = validation_films(data, {**metadata, "task": "three_class"}, limit=films)
    transforms = SHIFTS[shift][1]
    rows = []
    for index, (sample, target) in enumerate(zip(chosen.samples, chosen.targets)):
        image = read_image(sample.path)
        rng = np.random.default_rng(index)
        for transform in transforms:
            image = np.clip(transform(image, rng), 0.0, 1.0)
        folder = "NORMAL" if target == 0 else "PNEUMONIA"
        path = Path(folder) / f"{Path(sample.path).stem}.png"
        buffer = io.BytesIO()
        Image.fromarray(np.round(image * 255).astype(np.uint8), mode="L").save(buffer, "PNG")
        atomic_write_bytes(out / path, buffer.getvalue())
        rows.append([str(path), ("normal", "bacteria", "virus")[target], sample.patient])
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["path", "label", "patient"])
    writer.writerows(rows)
    atomic_write_text(out / "labels.csv", text.getvalue())
    return out / "labels.csv"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="the Kermany data folder the model trained on")
    parser.add_argument("--model", default="binary", help="whose validation films to use")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the site to")
    parser.add_argument("--films", type=int, default=400, help="how many films (0: all)")
    parser.add_argument("--shift", default="scanner", choices=sorted(SHIFTS))
    args = parser.parse_args(argv)
    labels = simulate_site(args.data, args.model, args.out, args.films or None, args.shift)
    print(f"wrote {labels} and the films beside it ({SHIFTS[args.shift][0]})")


if __name__ == "__main__":  # pragma: no cover
    main()
