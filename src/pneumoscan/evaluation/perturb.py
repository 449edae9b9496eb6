"""A fixed, seeded panel of acquisition perturbations for `pneumoscan stress`. Torch-free.

Each perturbation takes a decoded [0, 1] film at its own resolution and returns another, the way a
different machine, site or export step could have produced it. Severities are fixed and every
random choice comes from a generator seeded by the perturbation and the film's index, so two runs
of the benchmark see the same films.

Each perturbation has a family; AUGMENTATION_FAMILIES says which families each training
augmentation policy covers, so the report can mark, per model, what was trained in and what
was kept out.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont  # noqa: I001

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]

# Which perturbation families each training augmentation policy (data.radiograph_augmentation)
# covers. JPEG, resolution, text and histogram matching are in no policy, so the benchmark always
# measures more than what was trained in.
# Each policy is the one before it plus what it adds.
_BASIC = ("none", "geometry", "exposure", "contrast")
_ACQUISITION = (*_BASIC, "gamma", "blur", "sharpen", "noise")
AUGMENTATION_FAMILIES: dict[str | None, tuple[str, ...]] = {
    None: (),
    "basic": _BASIC,
    "acquisition": _ACQUISITION,
    "framing": (*_ACQUISITION, "border", "collimation", "windowing"),
    "fov": (*_ACQUISITION, "border", "collimation", "windowing", "zoom"),
}


@dataclass(frozen=True)
class Perturbation:
    name: str
    family: str
    description: str
    apply: Transform = field(repr=False, compare=False)

    def __call__(self, image: np.ndarray, index: int) -> np.ndarray:
        seed = zlib.crc32(self.name.encode()) ^ index
        out = self.apply(image.astype(np.float32, copy=False), np.random.default_rng(seed))
        return np.clip(out, 0.0, 1.0).astype(np.float32)


def _pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image.astype(np.float32), mode="F")


def _from_pil(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


def _uint8(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), mode="L")


def exposure(shift: float) -> Transform:
    return lambda image, rng: image + shift


def contrast(factor: float) -> Transform:
    return lambda image, rng: (image - image.mean()) * factor + image.mean()


def gamma(power: float) -> Transform:
    return lambda image, rng: np.clip(image, 0, 1) ** power


def window(low: float, high: float) -> Transform:
    """A narrower display window: grey levels outside [low, high] saturate."""
    return lambda image, rng: (image - low) / (high - low)


def blur(sigma: float) -> Transform:
    from scipy.ndimage import gaussian_filter

    return lambda image, rng: gaussian_filter(image, sigma, mode="nearest")


def sharpen(radius: float, percent: int) -> Transform:
    def apply(image, rng):
        sharpened = _uint8(image).filter(ImageFilter.UnsharpMask(radius, percent, threshold=0))
        return np.asarray(sharpened, dtype=np.float32) / 255.0

    return apply


def noise(sigma: float) -> Transform:
    return lambda image, rng: image + rng.normal(0.0, sigma, image.shape).astype(np.float32)


def jpeg(quality: int) -> Transform:
    def apply(image, rng):
        buffer = io.BytesIO()
        _uint8(image).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        return np.asarray(Image.open(buffer).convert("L"), dtype=np.float32) / 255.0

    return apply


def resolution(factor: float) -> Transform:
    """Downsample by `factor` and back: a low-resolution detector or an aggressive export."""

    def apply(image, rng):
        height, width = image.shape
        small = (max(8, round(width * factor)), max(8, round(height * factor)))
        reduced = _pil(image).resize(small, Image.Resampling.BILINEAR)
        return _from_pil(reduced.resize((width, height), Image.Resampling.BILINEAR))

    return apply


def rotate(degrees: float) -> Transform:
    def apply(image, rng):
        angle = degrees * (1 if rng.random() < 0.5 else -1)
        fill = float(np.median(image[:4]))
        return _from_pil(_pil(image).rotate(angle, Image.Resampling.BILINEAR, fillcolor=fill))

    return apply


def shift(fraction: float) -> Transform:
    def apply(image, rng):
        height, width = image.shape
        dx, dy = (rng.choice([-1, 1], 2) * fraction * np.array([width, height])).round()
        moved = _pil(image).transform(
            image.shape[::-1], Image.Transform.AFFINE, (1, 0, dx, 0, 1, dy), fillcolor=0.0
        )
        return _from_pil(moved)

    return apply


def crop(fraction: float) -> Transform:
    """Zoom in: cut `fraction` of the width and height from each side."""

    def apply(image, rng):
        height, width = image.shape
        top, left = round(height * fraction), round(width * fraction)
        return image[top : height - top, left : width - left]

    return apply


def crop_off_centre(low: float, high: float) -> Transform:
    """Zoom in off-centre: each side loses its own share in [low, high], as a tighter, shifted
    field of view would leave it."""

    def apply(image, rng):
        height, width = image.shape
        top, bottom, left, right = rng.uniform(low, high, size=4)
        return image[
            round(height * top) : height - round(height * bottom),
            round(width * left) : width - round(width * right),
        ]

    return apply


def border(fraction: float) -> Transform:
    """Zoom out: the film inside a black frame, as from a scanned or padded export."""

    def apply(image, rng):
        height, width = image.shape
        pad_y, pad_x = round(height * fraction), round(width * fraction)
        framed = np.zeros((height + 2 * pad_y, width + 2 * pad_x), dtype=np.float32)
        framed[pad_y : pad_y + height, pad_x : pad_x + width] = image
        return framed

    return apply


def collimation(fraction: float) -> Transform:
    """Shutters: the outer `fraction` of each side blanked, as a tight collimator leaves it."""

    def apply(image, rng):
        height, width = image.shape
        out = image.copy()
        band_y, band_x = round(height * fraction), round(width * fraction)
        out[:band_y], out[height - band_y :] = 0.05, 0.05
        out[:, :band_x], out[:, width - band_x :] = 0.05, 0.05
        return out

    return apply


def text_markers() -> Transform:
    """Burned-in annotations: a side marker and a date/ID line in bright pixels."""

    def apply(image, rng):
        canvas = _uint8(image)
        draw = ImageDraw.Draw(canvas)
        height, width = image.shape
        size = max(10, height // 14)
        font = ImageFont.load_default(size=size)
        corner = (round(width * rng.uniform(0.03, 0.12)), round(height * rng.uniform(0.03, 0.1)))
        draw.text(corner, "R" if rng.random() < 0.5 else "L", fill=255, font=font)
        line = f"ID {rng.integers(10**5, 10**6)}  2017-0{rng.integers(1, 9)}-1{rng.integers(0, 9)}"
        draw.text((round(width * 0.05), round(height * 0.9)), line, fill=235, font=font)
        return np.asarray(canvas, dtype=np.float32) / 255.0

    return apply


def histogram_match(reference_quantiles: np.ndarray) -> Transform:
    """Give the film another group's grey-level distribution (quantile mapping)."""
    levels = np.linspace(0.0, 1.0, len(reference_quantiles))

    def apply(image, rng):
        flat = image.ravel()
        ranks = np.argsort(np.argsort(flat, kind="stable"), kind="stable") / max(flat.size - 1, 1)
        return np.interp(ranks, levels, reference_quantiles).reshape(image.shape)

    return apply


def reference_quantiles(images: list[np.ndarray], points: int = 257) -> np.ndarray:
    """Pooled grey-level quantiles of a group of films, the target of `histogram_match`."""
    pooled = np.concatenate([image.ravel() for image in images])
    return np.quantile(pooled, np.linspace(0.0, 1.0, points)).astype(np.float32)


def panel(dark_reference: np.ndarray, bright_reference: np.ndarray) -> list[Perturbation]:
    """The benchmark's fixed panel. The references are two other groups' grey-level quantiles."""

    def p(name, family, description, apply):
        return Perturbation(name, family, description, apply)

    identity: Transform = lambda image, rng: image  # noqa: E731
    return [
        p("clean", "none", "the film as stored", identity),
        p("exposure-up", "exposure", "grey levels +0.15", exposure(0.15)),
        p("exposure-down", "exposure", "grey levels -0.15", exposure(-0.15)),
        p("contrast-low", "contrast", "contrast x0.6", contrast(0.6)),
        p("contrast-high", "contrast", "contrast x1.5", contrast(1.5)),
        p("gamma-0.6", "gamma", "x ** 0.6 (brighter mid-tones)", gamma(0.6)),
        p("gamma-1.6", "gamma", "x ** 1.6 (darker mid-tones)", gamma(1.6)),
        p("window-narrow", "windowing", "window [0.15, 0.85], outside saturates", window(0.15, 0.85)),
        p("blur-1.5", "blur", "Gaussian blur, sigma 1.5 px", blur(1.5)),
        p("blur-3", "blur", "Gaussian blur, sigma 3 px", blur(3.0)),
        p("sharpen", "sharpen", "unsharp mask, radius 2 px, 150%", sharpen(2.0, 150)),
        p("noise-0.02", "noise", "Gaussian noise, sigma 0.02", noise(0.02)),
        p("noise-0.04", "noise", "Gaussian noise, sigma 0.04", noise(0.04)),
        p("jpeg-30", "jpeg", "JPEG re-compression, quality 30", jpeg(30)),
        p("jpeg-10", "jpeg", "JPEG re-compression, quality 10", jpeg(10)),
        p("resolution-0.5", "resolution", "down to 1/2 and back up", resolution(0.5)),
        p("resolution-0.25", "resolution", "down to 1/4 and back up", resolution(0.25)),
        p("rotate-7", "geometry", "rotation by 7 degrees, either way", rotate(7.0)),
        p("shift-8", "geometry", "shift by 8% of each side", shift(0.08)),
        p("crop-6", "zoom", "6% cut from each side (zoom in)", crop(0.06)),
        p("crop-12", "zoom", "12% cut from each side (zoom in)", crop(0.12)),
        p("crop-20", "zoom", "20% cut from each side (zoom in)", crop(0.20)),
        p("crop-off-centre", "zoom", "5-20% cut from each side, each its own (zoom in, shifted)", crop_off_centre(0.05, 0.20)),
        p("border-10", "border", "black frame of 10% per side (zoom out)", border(0.10)),
        p("border-20", "border", "black frame of 20% per side (zoom out)", border(0.20)),
        p("collimation-12", "collimation", "outer 12% of each side shuttered", collimation(0.12)),
        p("text-markers", "text", "burned-in side marker and ID/date line", text_markers()),
        p("histmatch-dark", "histogram", "grey levels of the darkest quarter of other films", histogram_match(dark_reference)),
        p("histmatch-bright", "histogram", "grey levels of the brightest quarter of other films", histogram_match(bright_reference)),
    ]  # fmt: skip
