import csv
import io

import numpy as np
import pytest
from PIL import Image

from pneumoscan.core.images import read_image
from pneumoscan.core.preprocess import (
    LITE_MEAN,
    LITE_STD,
    PreprocessSpec,
    prepare,
    prepare_square,
    resize_square,
    square_uint8,
)


def test_prepare_shape_and_normalisation():
    spec = PreprocessSpec(32, LITE_MEAN, LITE_STD)
    image = np.full((50, 80), 0.75, dtype=np.float32)
    prepared = prepare(image, spec)
    assert prepared.shape == (3, 32, 32) and prepared.dtype == np.float32
    level = round(0.75 * 255) / 255  # rounded to 8 bits, as the training cache stores it
    np.testing.assert_allclose(prepared, (level - 0.5) / 0.5, atol=1e-6)


def test_prediction_rounds_to_the_same_8_bit_square_as_training():
    """Training caches `square_uint8`; `prepare` must see exactly those grey levels."""
    rng = np.random.default_rng(0)
    image = rng.random((70, 90)).astype(np.float32)
    spec = PreprocessSpec(40, LITE_MEAN, LITE_STD)
    cached = square_uint8(image, 40).astype(np.float32) / 255
    np.testing.assert_array_equal(prepare(image, spec), prepare_square(cached, spec))


def test_equalisation_ignores_exposure_contrast_and_gamma():
    rng = np.random.default_rng(1)
    image = np.clip(rng.normal(0.5, 0.15, (64, 64)), 0, 1).astype(np.float32)
    spec = PreprocessSpec(64, LITE_MEAN, LITE_STD, intensity="equalize")
    reference = prepare(image, spec)
    for changed in (image**1.6, 0.2 + 0.6 * image, image * 0.7):
        assert np.abs(prepare(changed, spec) - reference).mean() < 0.02
    flat = prepare(np.full((20, 20), 0.3, dtype=np.float32), spec.with_size(20))
    np.testing.assert_allclose(flat, 0.0, atol=1e-6)  # one grey level maps to the middle rank
    assert (
        np.abs(
            prepare(image**1.6, spec.with_intensity("none"))
            - prepare(image, spec.with_intensity("none"))
        ).mean()
        > 0.1
    )


def test_intensity_travels_with_the_spec():
    spec = PreprocessSpec(224, LITE_MEAN, LITE_STD, intensity="equalize")
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    legacy = {"size": 224, "mean": [0.5] * 3, "std": [0.5] * 3}  # model files from before
    assert PreprocessSpec.from_dict(legacy).intensity == "none"
    with pytest.raises(ValueError, match="equalize"):
        spec.with_intensity("clahe")


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
