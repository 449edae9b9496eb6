"""Shared fixtures: the real data set when present, and tiny generated images otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "chest_xray"


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory) -> Path:
    """The runtime's optimised-graph cache in a folder of the test session's, not the user's
    ~/.cache (subprocesses the tests start inherit it)."""
    import os

    folder = tmp_path_factory.mktemp("onnx-cache")
    os.environ["PNEUMOSCAN_ONNX_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def real_data() -> Path:
    """../shared/data/chest_xray, or skip: these tests need the real Kermany images."""
    if not (SHARED_DATA / "train" / "NORMAL").is_dir():
        pytest.skip(
            f"real data set not found at {SHARED_DATA}; place the Kermany chest_xray folder there"
        )
    return SHARED_DATA


def synthetic_radiograph(seed: int, size: tuple[int, int] = (96, 80)) -> np.ndarray:
    """A smooth uint8 image with a bright 'mediastinum' band, enough to exercise the pipeline."""
    rng = np.random.default_rng(seed)
    width, height = size
    x = np.linspace(-1, 1, width)[None, :]
    y = np.linspace(-1, 1, height)[:, None]
    image = 120 + 80 * np.exp(-((x / 0.25) ** 2)) - 40 * (y**2) + rng.normal(0, 8, (height, width))
    return np.clip(image, 0, 255).astype(np.uint8)


def make_layout(root: Path, splits=("train", "test"), per_class: int = 3) -> Path:
    """A tiny Kermany-style folder with valid file names (Mendeley layout by default)."""
    for split in splits:
        for index in range(per_class):
            normal = root / split / "NORMAL" / f"IM-{index:04d}-0001.jpeg"
            bacteria = root / split / "PNEUMONIA" / f"person{index}_bacteria_{index}.jpeg"
            virus = root / split / "PNEUMONIA" / f"person{100 + index}_virus_{index}.jpeg"
            for offset, path in enumerate((normal, bacteria, virus)):
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(synthetic_radiograph(index * 3 + offset)).save(path, quality=90)
    return root


@pytest.fixture(scope="session")
def tiny_lite_model(tmp_path_factory) -> Path:
    """A real EfficientNet-Lite0 (ImageNet weights, linear head) trained one epoch at 64 px on
    generated images: small enough for the default suite, real enough for export and predict."""
    from pneumoscan.core.config import load_config
    from pneumoscan.training.fit import fit

    root = tmp_path_factory.mktemp("tiny")
    data = make_layout(root / "data", splits=("train",), per_class=6)
    config = load_config(None, tiny_overrides(root, data))
    return fit(config, root / "run", progress=False)


def tiny_overrides(root: Path, data: Path) -> list[str]:
    """Config overrides for a test-sized run: 64 px, one epoch, the cache under `root`."""
    return [
        f"data.root={data}",
        f"data.cache_dir={root / 'cache'}",
        "data.val_fraction=0.34",
        "model.image_size=64",
        "train.epochs=1",
        "train.batch_size=8",
        "train.threads=2",
        # In-process loading draws the augmentation from the same random stream as when the
        # parity tolerances (fp16 weights, PNG vs DICOM) were set on this model's outputs.
        "train.loader_workers=0",
    ]


@pytest.fixture(scope="session")
def tiny_onnx(tiny_lite_model, tmp_path_factory) -> Path:
    from pneumoscan.training.export import export_onnx

    return export_onnx(tiny_lite_model, tmp_path_factory.mktemp("onnx") / "tiny.onnx")
