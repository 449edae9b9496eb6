"""The one place where input size and normalisation live.

A model file carries its `PreprocessSpec`, and training, evaluation and serving all call
`prepare` (or its two halves) with it, so they cannot drift apart.

Every image is resized whole to a square, as the seed studies did: 3,579 train images exist only
as 224x224 squashed copies, and squashing every other image the same way makes both kinds look
alike to the model (tests/test_preprocess.py checks that on real originals).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

# EfficientNet-Lite was trained on inputs scaled by (x - 127) / 128, i.e. mean = std = 0.5.
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_MEAN = (0.5,)
GRAY_STD = (0.25,)


@dataclass(frozen=True)
class PreprocessSpec:
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def channels(self) -> int:
        return len(self.mean)

    def with_size(self, size: int) -> PreprocessSpec:
        return PreprocessSpec(size=size, mean=self.mean, std=self.std)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessSpec:
        return cls(size=int(data["size"]), mean=tuple(data["mean"]), std=tuple(data["std"]))


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a whole [0, 1] image to size x size (no crop), antialiased."""
    if image.shape == (size, size):
        return image.astype(np.float32, copy=False)
    resized = Image.fromarray(image.astype(np.float32, copy=False)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def normalize(square: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """A (..., H, W) image in [0, 1] to (..., C, H, W) normalised with the spec's mean and std."""
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    stacked = np.repeat(square[..., None, :, :], spec.channels, axis=-3)
    return ((stacked - mean) / std).astype(np.float32)


def prepare(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """A 2-D [0, 1] image to the (C, size, size) float32 array the model expects."""
    return normalize(resize_square(image, spec.size), spec)
