"""The one place where input size and normalisation live.

A model file carries its `PreprocessSpec`, and training, evaluation and serving all call
`prepare` (or its two halves) with it, so they cannot drift apart.

Every image is resized whole to a square, as the seed studies did: 3,579 train images exist only
as 224x224 squashed copies, and squashing every other image the same way makes both kinds look
alike to the model (tests/core/test_preprocess.py checks that on real originals).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
from PIL import Image

# EfficientNet-Lite was trained on inputs scaled by (x - 127) / 128, i.e. mean = std = 0.5.
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_MEAN = (0.5,)
GRAY_STD = (0.25,)


INTENSITY_METHODS = ("none", "equalize")

# Films are decoded no smaller than this many times the model's input on their shorter side
# (`core.images.read_image(..., min_side=...)`): a JPEG in the DCT at 1/2, 1/4 or 1/8 scale, other
# films by an integer area mean. The resize to the square then averages at least 2x2 decoded pixels
# per input pixel, as it did from full size, so the answers stay those of the full-size film.
DECODE_MARGIN = 2


def decode_side(size: int) -> int:
    """The shorter side a film is decoded at, at least, for a `size` px model input."""
    return DECODE_MARGIN * size


@dataclass(frozen=True)
class PreprocessSpec:
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    intensity: str = "none"  # none | equalize (see `standardize_intensity`)

    @property
    def channels(self) -> int:
        return len(self.mean)

    @property
    def decode_side(self) -> int:
        """The shorter side films are decoded at, at least (see `decode_side`)."""
        return decode_side(self.size)

    def with_size(self, size: int) -> PreprocessSpec:
        return replace(self, size=size)

    def with_intensity(self, intensity: str) -> PreprocessSpec:
        if intensity not in INTENSITY_METHODS:
            raise ValueError(
                f"intensity {intensity!r}: choose one of {', '.join(INTENSITY_METHODS)}"
            )
        return replace(self, intensity=intensity)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessSpec:
        return cls(
            size=int(data["size"]),
            mean=tuple(data["mean"]),
            std=tuple(data["std"]),
            intensity=data.get("intensity", "none"),  # model files before intensity standardisation
        )


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a whole [0, 1] image to size x size (no crop), antialiased."""
    if image.shape == (size, size):
        return image.astype(np.float32, copy=False)
    resized = Image.fromarray(image.astype(np.float32, copy=False)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


LEVELS = 255  # squares are stored and compared as 8-bit images, in training and prediction alike


def square_uint8(image: np.ndarray, size: int) -> np.ndarray:
    """A whole [0, 1] image to the size x size 8-bit square that training caches and prediction uses.

    Training decodes each film once into this form, so prediction rounds to 8 bits as well:
    otherwise the two would differ by up to half a grey level and scores would drift from the card.
    """
    return np.round(resize_square(image, size) * LEVELS).astype(np.uint8)


def standardize_intensity(square: np.ndarray, method: str) -> np.ndarray:
    """Map a (H, W) [0, 1] square's grey levels so exposure and contrast no longer matter.

    `equalize`: global histogram equalisation on 256 levels, each level sent to the middle of its
    rank range. Any increasing change of grey levels (exposure, contrast, gamma, a different
    detector curve) gives the same output, so acquisition settings that differ between sites reach
    the model on one scale. `none` leaves the square as it is.
    """
    if method == "none":
        return square
    if method != "equalize":
        raise ValueError(f"intensity {method!r}: choose one of {', '.join(INTENSITY_METHODS)}")
    levels = np.clip(np.rint(square * LEVELS), 0, LEVELS).astype(np.intp)
    counts = np.bincount(levels.ravel(), minlength=LEVELS + 1)
    lookup = (np.cumsum(counts) - counts / 2.0) / levels.size
    return lookup[levels].astype(np.float32)


def prepare_square(square: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """A (H, W) [0, 1] square (8-bit levels) to the model's (C, H, W) input: intensity, then mean/std."""
    return normalize(standardize_intensity(square, spec.intensity), spec)


def normalize(square: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """A (..., H, W) image in [0, 1] to (..., C, H, W) normalised with the spec's mean and std."""
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    stacked = np.repeat(square[..., None, :, :], spec.channels, axis=-3)
    return ((stacked - mean) / std).astype(np.float32)


def prepare(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """A 2-D [0, 1] image to the (C, size, size) float32 array the model expects.

    The one path from pixels to model input: resize whole to a square, round to 8 bits (as the
    training cache does), standardise intensity, normalise.
    """
    square = square_uint8(image, spec.size).astype(np.float32) / LEVELS
    return prepare_square(square, spec)
