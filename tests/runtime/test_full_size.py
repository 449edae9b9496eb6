"""Full-size films get the answers of their 256 px copies: decoding at `decode_side` (JPEG draft,
integer area mean for PNG and 16-bit DICOM) must not move the shipped model's decisions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumoscan.core.images import read_image
from pneumoscan.research.bench import _write_dicom16
from pneumoscan.runtime.model import load_runtime_model
from pneumoscan.runtime.predict import predict_many

VAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "chest_xray" / "val"
FULL_SIDE = 2000


def _upscaled(source: Path, folder: Path, kind: str) -> Path:
    """The film upscaled (bicubic) to a 2,000 px shorter side, as `pneumoscan bench` makes them."""
    with Image.open(source) as image:
        image = image.convert("F" if kind == "dcm" else "L")
        scale = FULL_SIDE / min(image.size)
        image = image.resize(
            (round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC
        )
    path = folder / f"{source.stem}.{kind}"
    if kind == "dcm":
        _write_dicom16(np.asarray(image), path)
    elif kind == "jpeg":
        image.save(path, quality=95)
    else:
        image.save(path)
    return path


@pytest.mark.parametrize("kind", ["jpeg", "dcm", "png"])
def test_full_size_films_agree_with_their_256_px_copies(tmp_path, kind):
    films = sorted(VAL.rglob("*.jpeg"))[:16]
    if not films:
        pytest.skip(f"{VAL}: no validation films here (the shared data set is absent)")
    model = load_runtime_model("binary")
    large = [_upscaled(film, tmp_path, kind) for film in films]
    small = list(predict_many(model, films))
    full = list(predict_many(model, large))
    decided = [a.label == b.label and a.status == b.status for a, b in zip(small, full)]
    gap = max(
        abs(a.probabilities["pneumonia"] - b.probabilities["pneumonia"])
        for a, b in zip(small, full)
    )
    assert np.mean(decided) >= 0.97 and gap < 0.1, (np.mean(decided), gap)


def test_films_are_decoded_at_twice_the_input_not_at_full_size(tmp_path):
    films = sorted(VAL.rglob("*.jpeg"))[:1]
    if not films:
        pytest.skip(f"{VAL}: no validation films here (the shared data set is absent)")
    for kind in ("jpeg", "dcm", "png"):
        image = read_image(_upscaled(films[0], tmp_path, kind), min_side=320)
        assert 320 <= min(image.shape) < 640, (kind, image.shape)
        assert min(read_image(films[0], min_side=320).shape) == 256  # never enlarged
