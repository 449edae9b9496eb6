import csv
import io

import numpy as np
import pytest
from PIL import Image

from pneumoscan.images import read_image
from pneumoscan.preprocess import LITE_MEAN, LITE_STD, PreprocessSpec, prepare, resize_square


def test_prepare_shape_and_normalisation():
    spec = PreprocessSpec(32, LITE_MEAN, LITE_STD)
    image = np.full((50, 80), 0.75, dtype=np.float32)
    prepared = prepare(image, spec)
    assert prepared.shape == (3, 32, 32) and prepared.dtype == np.float32
    np.testing.assert_allclose(prepared, (0.75 - 0.5) / 0.5, atol=1e-5)


def test_whole_image_is_resized_not_cropped():
    image = np.zeros((100, 200), dtype=np.float32)
    image[:, :10] = 1.0  # a bright strip at the far left edge survives a whole-image resize
    square = resize_square(image, 50)
    assert square[:, 0].mean() > 0.9 and square[:, -1].max() == 0.0


def _squashed_copy(image: np.ndarray, size: int = 224) -> np.ndarray:
    """What the 3,579 train copies went through: whole image squashed to 224x224, then JPEG."""
    squashed = Image.fromarray((image * 255).round().astype(np.uint8)).resize(
        (size, size), Image.Resampling.LANCZOS
    )
    buffer = io.BytesIO()
    squashed.save(buffer, format="JPEG", quality=90)
    return read_image(buffer.getvalue())


@pytest.mark.parametrize("size", [160, 224])
def test_squashed_copies_look_like_originals_after_preprocessing(real_data, size):
    """The model must not be able to tell a 224x224 squashed copy from an original by its pixels."""
    with (real_data / "MANIFEST.csv").open() as handle:
        originals = [
            row
            for row in csv.DictReader(handle)
            if row["split"] == "train"
            and row["orig_width"] != "224"
            and row["orig_width"] != row["orig_height"]
        ][:24]
    spec = PreprocessSpec(size, (0.5,), (0.5,))
    same_image, other_image = [], []
    previous = None
    for row in originals:
        original = read_image(real_data / "train" / row["label"] / row["filename"])
        a = prepare(original, spec)[0] * 0.5 + 0.5
        b = prepare(_squashed_copy(original), spec)[0] * 0.5 + 0.5
        same_image.append(np.abs(a - b).mean())
        assert abs(a.mean() - b.mean()) < 0.005  # no brightness shift
        if previous is not None:
            other_image.append(np.abs(a - previous).mean())
        previous = a
    assert np.mean(same_image) < 0.01
    assert np.mean(same_image) < 0.15 * np.mean(other_image)
