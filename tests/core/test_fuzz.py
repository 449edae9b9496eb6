"""Fuzzing `read_image` and the predict path (see fuzz_harness.py for the seeds and mutations).

Default suite: a seeded, derandomised few hundred cases. `make fuzz` (the slow test below) runs
10,000 or $PNEUMOSCAN_FUZZ_CASES and writes its counts to $PNEUMOSCAN_FUZZ_REPORT when set.
"""

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from fuzz_harness import FuzzStats, all_seeds, check_case, dicom_dataset, fuzz_case
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from pneumoscan.core.errors import ImageTooLargeError
from pneumoscan.core.images import MAX_IMAGE_PIXELS, read_image
from pneumoscan.runtime.model import load_runtime_model

SEEDS = all_seeds()


@pytest.fixture(scope="module")
def model():
    return load_runtime_model("binary", threads=1)


def _run(model, stats: FuzzStats, examples: int, derandomize: bool) -> None:
    @settings(
        max_examples=examples,
        derandomize=derandomize,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(content=fuzz_case())
    def case(content: bytes) -> None:
        check_case(content, model, stats)

    case()


def test_seeded_fuzz_cases_never_escape(model):
    stats = FuzzStats()
    _run(model, stats, examples=300, derandomize=True)
    report = stats.report()
    assert report["cases"] >= 300 and report["uncaught_exceptions"] == 0
    assert report["decoded"] > 30 and sum(report["refused_by_error_type"].values()) > 30


@pytest.mark.slow
def test_fuzz_benchmark(model):
    """`make fuzz`: at least 10,000 cases; zero uncaught exceptions, no case over 2 s, memory
    bounded (peak resident memory under 1.5 GB)."""
    examples = int(os.environ.get("PNEUMOSCAN_FUZZ_CASES", "10000"))
    stats = FuzzStats()
    _run(model, stats, examples=examples, derandomize=False)
    report = stats.report()
    print(json.dumps(report, indent=2))
    if os.environ.get("PNEUMOSCAN_FUZZ_REPORT"):
        Path(os.environ["PNEUMOSCAN_FUZZ_REPORT"]).write_text(json.dumps(report, indent=2) + "\n")
    assert report["cases"] >= examples and report["uncaught_exceptions"] == 0
    assert report["slowest_case_s"] < 2.0
    assert report["peak_rss_mb"] < 1500


# --- decompression bombs: refused from the header, before any pixel is decoded -------------


class DecodedTooEarly(BaseException):
    """Not an Exception, so read_image's last line of defence cannot turn it into an InputError."""


def _png_bomb(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, format="PNG")  # a few kB of zeros
    return buffer.getvalue()


@given(
    width=st.integers(1, 200_000),
    height=st.integers(1, 200_000),
    kind=st.sampled_from(["png", "jpeg", "dicom"]),
)
@settings(max_examples=60, derandomize=True, deadline=None, database=None)
def test_bombs_are_refused_before_decoding(width, height, kind):
    from fuzz_harness import _dicom_bytes, _jpeg_with_size, _png_with_header

    if kind == "png":
        data = _png_with_header(SEEDS["png-8bit"], width, height, 8, 0)
    elif kind == "jpeg":
        width, height = min(width, 65535), min(height, 65535)
        data = _jpeg_with_size(SEEDS["jpeg-gray"], width, height)
    else:
        width, height = min(width, 65535), min(height, 65535)
        dataset = dicom_dataset()
        dataset.Rows, dataset.Columns = height, width
        data = _dicom_bytes(dataset)
    if width * height <= MAX_IMAGE_PIXELS:
        return  # not a bomb; the general fuzzing covers it
    from pydicom.dataset import Dataset

    def no_decoding(*args, **kwargs):
        raise DecodedTooEarly("pixels decoded before the size check")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ImageFile.ImageFile, "load", no_decoding)
        patch.setattr(Dataset, "pixel_array", property(no_decoding))
        with pytest.raises(ImageTooLargeError, match="limit for safe decoding|too large"):
            read_image(data, name="bomb")


def test_a_real_bomb_file_is_refused_quickly():
    side = int(MAX_IMAGE_PIXELS**0.5) + 10
    data = _png_bomb(side, side)
    assert len(data) < 2_000_000
    with pytest.raises(ImageTooLargeError):
        read_image(data)
    assert read_image(_png_bomb(64, 64)).shape == (64, 64)
    assert np.all(read_image(_png_bomb(64, 64)) == 0)
