import io

import numpy as np
import pytest
from dicom_fixtures import write_dicom
from PIL import Image

from pneumoscan.core.errors import InputError
from pneumoscan.core.images import MAX_IMAGE_PIXELS, read_image

GRADIENT = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (32, 1))  # 32 x 64, 0..252


def _save(tmp_path, image: Image.Image, name: str, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def test_8bit_grayscale_png_maps_to_unit_range(tmp_path):
    result = read_image(_save(tmp_path, Image.fromarray(GRADIENT), "g.png"))
    assert result.dtype == np.float32 and result.shape == (32, 64)
    assert result[0, 0] == 0.0 and result[0, -1] == pytest.approx(252 / 255)


def test_16bit_png_keeps_its_precision(tmp_path):
    pixels = GRADIENT.astype(np.uint16) * 257
    path = _save(tmp_path, Image.fromarray(pixels), "g16.png")
    assert Image.open(path).mode.startswith("I")
    np.testing.assert_allclose(read_image(path), GRADIENT / 255.0, atol=1e-4)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA"])
def test_color_modes_become_the_same_grayscale(tmp_path, mode):
    image = Image.fromarray(GRADIENT).convert(mode)
    result = read_image(_save(tmp_path, image, f"c_{mode}.png"))
    np.testing.assert_allclose(result, GRADIENT / 255.0, atol=2 / 255)


def test_jpeg_and_bytes_input(tmp_path):
    path = _save(tmp_path, Image.fromarray(GRADIENT), "g.jpeg", quality=95)
    from_path = read_image(path)
    from_bytes = read_image(path.read_bytes(), name="upload.jpeg")
    np.testing.assert_array_equal(from_path, from_bytes)
    assert np.abs(from_path - GRADIENT / 255.0).max() < 0.05


def test_wrong_extension_is_sniffed_by_content(tmp_path):
    png_named_jpeg = _save(tmp_path, Image.fromarray(GRADIENT), "really_png.jpeg", format="PNG")
    np.testing.assert_allclose(read_image(png_named_jpeg), GRADIENT / 255.0, atol=1e-6)


def test_dicom_monochrome2_scaled_by_stored_bits(tmp_path):
    raw = GRADIENT.astype(np.uint16) * 16  # 12 stored bits: 0..4032 of 0..4095
    result = read_image(write_dicom(tmp_path / "m2.dcm", raw))
    np.testing.assert_allclose(result, raw / 4095.0, atol=1e-6)


def test_dicom_rescale_slope_and_intercept_do_not_change_the_picture(tmp_path):
    raw = GRADIENT.astype(np.uint16) * 16
    plain = read_image(write_dicom(tmp_path / "a.dcm", raw))
    rescaled = read_image(write_dicom(tmp_path / "b.dcm", raw, slope=2.0, intercept=-100.0))
    np.testing.assert_allclose(rescaled, plain, atol=1e-6)


def test_dicom_monochrome1_is_inverted(tmp_path):
    raw = GRADIENT.astype(np.uint16) * 16
    mono2 = read_image(write_dicom(tmp_path / "m2.dcm", raw))
    mono1 = read_image(write_dicom(tmp_path / "m1.dcm", raw, photometric="MONOCHROME1"))
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


def test_dicom_window_clips_outside_values(tmp_path):
    raw = GRADIENT.astype(np.uint16) * 16  # 0..4032
    result = read_image(write_dicom(tmp_path / "w.dcm", raw, window=(2000.0, 1000.0)))
    assert result[0, 0] == 0.0 and result[0, -1] == 1.0  # below / above the window
    inside = (raw[0] > 1600) & (raw[0] < 2400)
    assert np.all((result[0, inside] > 0) & (result[0, inside] < 1))
    assert np.all(np.diff(result[0, inside]) > 0)  # contrast stretched inside the window


def test_dicom_multiframe_is_refused(tmp_path):
    path = write_dicom(tmp_path / "mf.dcm", GRADIENT.astype(np.uint16), frames=3)
    with pytest.raises(InputError, match="3 frames"):
        read_image(path)


def test_dicom_patient_fields_never_reach_the_result(tmp_path):
    path = write_dicom(tmp_path / "p.dcm", GRADIENT.astype(np.uint16))
    result = read_image(path)
    assert isinstance(result, np.ndarray)  # pixels only: no dataset, no tags


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"this is a text file, not an image", "not a JPEG, PNG or DICOM"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "truncated or corrupt|not a JPEG"),
        (b"\x00" * 128 + b"DICM" + b"\x00" * 20, "DICOM"),
    ],
)
def test_bad_files_give_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.jpeg"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as raised:
        read_image(path)
    assert str(path) in str(raised.value)


def test_truncated_jpeg(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(GRADIENT).save(buffer, format="JPEG")
    path = tmp_path / "cut.jpeg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        read_image(path)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    side = int(MAX_IMAGE_PIXELS**0.5) + 10
    path = tmp_path / "bomb.png"
    Image.new("1", (side, side)).save(path)
    with pytest.raises(InputError, match="limit for safe decoding|too large"):
        read_image(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(InputError, match="is a folder"):
        read_image(tmp_path)


def test_compressed_dicom_that_cannot_be_decoded_says_which_syntax(tmp_path):
    from pydicom import dcmread
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    path = write_dicom(tmp_path / "j2k.dcm", GRADIENT.astype(np.uint16))
    dataset = dcmread(path)
    dataset.file_meta.TransferSyntaxUID = JPEG2000Lossless
    dataset.PixelData = encapsulate([b"\xff\x4f\xff\x51 not really a codestream"])
    dataset["PixelData"].VR = "OB"
    dataset.save_as(path)
    with pytest.raises(InputError, match="cannot decode DICOM pixel data.*JPEG 2000") as raised:
        read_image(path)
    assert "pylibjpeg" in str(raised.value)


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(GRADIENT).save(buffer, format="PNG")
    return buffer.getvalue()


def test_two_decodes_run_at_the_same_time(monkeypatch):
    """Issue 18 item 5: no global decoder lock. Each fake decode waits at a two-party barrier, so
    the two only finish if they are inside the decoder together (no timing involved: under a lock
    the barrier breaks after its timeout and both reads fail)."""
    import threading

    from pneumoscan.core import images

    barrier = threading.Barrier(2, timeout=10)
    real = images._read_raster

    def slow_decoder(data, label, max_pixels, min_side):
        barrier.wait()
        return real(data, label, max_pixels, min_side)

    monkeypatch.setattr(images, "_read_raster", slow_decoder)
    data, results, errors = _png_bytes(), [], []

    def decode():
        try:
            results.append(read_image(data))
        except Exception as error:  # collected: a thread's exception would vanish otherwise
            errors.append(error)

    threads = [threading.Thread(target=decode) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors and len(results) == 2


def test_decoder_warnings_are_never_shown_even_after_a_filter_reset(recwarn):
    """The filters are set once, not per decode; a caller that resets `warnings.filters` (as
    pytest does per test) gets them back on the next decode, and user warnings stay untouched."""
    import warnings

    from pneumoscan.core import images

    warnings.resetwarnings()
    warnings.simplefilter("always")
    images._quiet_decoders()
    warnings.warn_explicit("from pydicom", UserWarning, "x.py", 1, module="pydicom.valuerep")
    warnings.warn_explicit("from PIL", UserWarning, "x.py", 1, module="PIL.Image")
    warnings.warn_explicit("from a user", UserWarning, "x.py", 1, module="user_code")
    assert [str(w.message) for w in recwarn] == ["from a user"]


def test_workers_are_sized_from_the_cpus_this_process_may_use(monkeypatch):
    import os

    from pneumoscan.core import hardware

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert hardware.usable_cpus() == 3


@pytest.mark.parametrize(
    "bits, stored, window, slope",
    [
        (16, 12, None, 1.0),
        (16, 16, None, 1.0),
        (8, 8, None, 1.0),
        (16, 12, (2000.0, 1000.0), 1.0),
        (16, 10, None, 2.0),
    ],
)
def test_dicom_read_without_pydicoms_pixel_copy_matches_pydicoms_pixels(
    tmp_path, bits, stored, window, slope
):
    """Uncompressed films are read from a view of their pixel data, masked to their stored bits
    in the block-mean pass (pydicom's `pixel_array` copies and masks the whole frame first): the
    same image, at full size and reduced, with garbage in the unused high bits too."""
    import pydicom
    from dicom_fixtures import film_dataset

    from pneumoscan.core.images import _dicom_unit, decode_input, reduction_factor

    rng = np.random.default_rng(bits + stored)
    top = (1 << stored) - 1
    pixels = rng.integers(0, top + 1, size=(203, 170)).astype(np.uint16)
    if stored < bits:
        pixels |= rng.integers(0, 2, size=pixels.shape).astype(np.uint16) << stored  # garbage
    dataset = film_dataset(pixels, bits=bits, bits_stored=stored)
    dataset.RescaleSlope, dataset.RescaleIntercept = slope, 0.0
    if window:
        dataset.WindowCenter, dataset.WindowWidth = window
    path = tmp_path / "film.dcm"
    dataset.save_as(path, enforce_file_format=True)
    stored_pixels = pydicom.dcmread(path).pixel_array  # pydicom's own decode and mask
    for min_side in (None, 60):
        ours = decode_input(path, "film", MAX_IMAGE_PIXELS, False, min_side=min_side)
        factor = reduction_factor(170, 203, min_side)
        theirs = _dicom_unit(stored_pixels, pydicom.dcmread(path), "film", factor)
        np.testing.assert_allclose(ours, theirs, atol=1e-6)
