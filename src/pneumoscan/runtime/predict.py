"""Prediction on ONNX Runtime: input -> calibrated probabilities, decision and heatmap. Never imports torch.

Three layers that the CLI, the Python API (`pneumoscan.api`) and the server all share:

- the pure path, `predict_pixels`: a decoded [0, 1] image -> `Result`;
- the batch path, `predict_many`: files, bytes, arrays or DICOM datasets -> `Result`s, in order,
  decoding on worker threads while the model runs, so both cores work; whatever goes wrong with
  one input becomes that input's `error` result and the batch goes on;
- one summary of outcomes, `summarize`, with the counts and the exit code.

Every input is prepared by the same two functions as in training (`images.read_image`, then
`preprocess.prepare` with the spec from the model's metadata). Temperature, threshold and the
decision rule come from `decision`, the module training and export use too.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import struct
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pneumoscan.core.conformal import ConformalCalibration
from pneumoscan.core.decision import (
    METADATA_KEY,
    ONNX_METADATA_FORMAT,
    REQUIRED_METADATA_KEYS,
    calibrated_probabilities,
    decide,
    is_indeterminate,
)
from pneumoscan.core.errors import InputError, ModelFileError, PneumoscanError
from pneumoscan.core.fileio import atomic_write
from pneumoscan.core.images import MAX_IMAGE_PIXELS, is_pydicom_dataset, read_image
from pneumoscan.core.labels import NOT_DIAGNOSTIC_NOTICE
from pneumoscan.core.preprocess import PreprocessSpec, prepare, resize_square
from pneumoscan.core.shipped import resolve_model

logger = logging.getLogger(__name__)

# Result.status values, and how each is shown to a person.
OK, INDETERMINATE, NOT_CHEST_XRAY, ERROR = "ok", "indeterminate", "not_chest_xray", "error"
STATUSES = (OK, INDETERMINATE, NOT_CHEST_XRAY, ERROR)
STATUS_TEXT = {
    OK: "predicted",
    INDETERMINATE: "indeterminate",
    NOT_CHEST_XRAY: "not a chest X-ray",
    ERROR: "error",
}
HEATMAP_SIZE = 512
BATCH_SIZE = 16


class OnnxModel:
    """An ONNX Runtime session plus the pneumoscan metadata stored in the file."""

    def __init__(self, path: Path | str, threads: int | None = None, gate: bool = True) -> None:
        import onnxruntime as ort

        path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        # Decoding runs beside inference on the same cores: idle ONNX threads must not spin.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own untyped errors for bad files
            raise ModelFileError(
                f"{path}: not a readable ONNX model ({type(error).__name__})."
            ) from None
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if raw is None:
            raise ModelFileError(
                f"{path}: ONNX file has no pneumoscan metadata; export it with `pneumoscan export`."
            )
        self.metadata = json.loads(raw)
        version = self.metadata.get("format", ONNX_METADATA_FORMAT)
        missing = [key for key in REQUIRED_METADATA_KEYS if key not in self.metadata]
        if version != ONNX_METADATA_FORMAT or missing:
            raise ModelFileError(
                f"{path}: metadata format {version!r} (missing {', '.join(missing) or 'nothing'}); "
                f"this pneumoscan reads {ONNX_METADATA_FORMAT}. Re-export it with `pneumoscan export`."
            )
        self.path = path
        self.class_names: tuple[str, ...] = tuple(self.metadata["class_names"])
        self.threshold: float | None = self.metadata.get("threshold")
        self.temperature: float = float(self.metadata.get("temperature", 1.0))
        self.class_bias: list[float] | None = self.metadata.get("class_bias")
        self.spec = PreprocessSpec.from_dict(self.metadata["preprocess"])
        self.has_cam = bool(self.metadata.get("has_cam"))
        self.ood_threshold: float | None = self.metadata.get("ood_threshold") if gate else None
        self.output_names = [output.name for output in self.session.get_outputs()]
        self.name: str = str(self.metadata.get("name", path.stem))
        self.version: str = str(self.metadata.get("model_version", self.name))
        try:
            self.conformal = ConformalCalibration.from_dict(self.metadata.get("conformal"))
        except (ValueError, KeyError, TypeError) as error:
            raise ModelFileError(f"{path}: unreadable conformal calibration ({error}).") from None

    def check_coverage(self, coverage: float | None) -> None:
        """Raise a clear error when prediction sets at `coverage` cannot be given."""
        if coverage is None:
            return
        if not 0.0 < coverage < 1.0:
            raise ModelFileError(
                f"set coverage {coverage}: give a level between 0 and 1, e.g. 0.9."
            )
        if self.conformal is None:
            raise ModelFileError(
                f"{self.path}: this model carries no conformal calibration, so it cannot give "
                "prediction sets; calibrate it with `pneumoscan calibrate` (or ship it again)."
            )

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """All outputs by name (raw `logits` among them), plus `probabilities`: temperature-calibrated."""
        outputs = dict(
            zip(
                self.output_names,
                self.session.run(None, {"image": batch.astype(np.float32, copy=False)}),
            )
        )
        outputs["probabilities"] = calibrated_probabilities(
            outputs["logits"], self.temperature, self.class_bias
        )
        return outputs

    def probabilities(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated probabilities (N, classes) and, when exported, class maps (N, classes, h, w)."""
        outputs = self.run(batch)
        return outputs["probabilities"], outputs.get("cam")

    def run_images(self, images: list[np.ndarray], batch_size: int = 64) -> dict[str, np.ndarray]:
        """`run` over decoded [0, 1] images, prepared with the model's own spec, in batches."""
        batches = [
            self.run(
                np.stack(
                    [prepare(image, self.spec) for image in images[start : start + batch_size]]
                )
            )
            for start in range(0, len(images), batch_size)
        ]
        return {name: np.concatenate([batch[name] for batch in batches]) for name in batches[0]}

    def ood_scores(self, images: list[np.ndarray], batch_size: int = 64) -> np.ndarray:
        """Gate scores of decoded [0, 1] images."""
        return self.run_images(images, batch_size)["ood_score"]

    def is_out_of_distribution(self, score: float) -> bool:
        return self.ood_threshold is not None and score > self.ood_threshold

    def label_index(self, probabilities: np.ndarray) -> int:
        return decide(probabilities, self.threshold, self.class_names)


def load_runtime_model(
    reference: str | Path = "binary", threads: int | None = None, gate: bool = True
) -> OnnxModel:
    """A shipped model name (`binary`, `three-class`) or a path to an exported .onnx file."""
    path = resolve_model(reference, suffix=".onnx")
    if path.suffix != ".onnx":
        raise ModelFileError(
            f"{path}: prediction runs on ONNX; convert it first with "
            f"`pneumoscan export --model {path} --out model.onnx`."
        )
    return OnnxModel(path, threads=threads, gate=gate)


# --- results -------------------------------------------------------------------------------


@dataclass
class Result:
    """One input's outcome. `status` is one of STATUSES; `label` is set only when it is `ok`;
    `probabilities` are empty for `not_chest_xray` and `error`."""

    source: str
    status: str
    label: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    threshold: float | None = None
    gate_score: float | None = None
    message: str | None = None
    heatmap: Image.Image | None = None
    model_name: str | None = None
    model_version: str | None = None
    notice: str = NOT_DIAGNOSTIC_NOTICE
    heatmap_path: str | None = None
    # Split-conformal prediction set at `set_coverage` (classes in the model's order), when asked.
    prediction_set: list[str] | None = None
    set_coverage: float | None = None

    def heatmap_array(self) -> np.ndarray | None:
        """The heatmap overlay as an (H, W, 3) uint8 array, or None."""
        if self.heatmap is not None:
            return np.asarray(self.heatmap.convert("RGB"), dtype=np.uint8)
        if self.heatmap_path is not None:
            with Image.open(self.heatmap_path) as image:
                return np.asarray(image.convert("RGB"), dtype=np.uint8)
        return None

    def to_dict(self, heatmap: str = "omit") -> dict:
        """JSON-ready. heatmap: `omit` (no key), `base64` (a base64 PNG string or null) or
        `path` (the file it was saved to, or null)."""
        document = {
            "source": self.source,
            "status": self.status,
            "label": self.label,
            "probabilities": dict(self.probabilities),
            "threshold": self.threshold,
            "gate_score": self.gate_score,
            "message": self.message,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "prediction_set": self.prediction_set,
            "set_coverage": self.set_coverage,
            "notice": self.notice,
        }
        if heatmap == "base64":
            document["heatmap"] = _png_base64(self.heatmap, self.heatmap_path)
        elif heatmap == "path":
            document["heatmap"] = self.heatmap_path
        elif heatmap != "omit":
            raise ValueError(f"heatmap={heatmap!r}: choose omit, base64 or path")
        return document


def _png_base64(image: Image.Image | None, path: str | None) -> str | None:
    if image is not None:
        return base64.b64encode(png_bytes(np.asarray(image.convert("RGB")))).decode("ascii")
    if path is not None:
        return base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return None


@dataclass(frozen=True)
class Summary:
    """Counts of each outcome; the exit code is 1 when any input failed."""

    predicted: int
    indeterminate: int
    not_chest_xray: int
    failed: int

    @property
    def total(self) -> int:
        return self.predicted + self.indeterminate + self.not_chest_xray + self.failed

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def text(self) -> str:
        return (
            f"{self.predicted} predicted, {self.indeterminate} indeterminate, "
            f"{self.not_chest_xray} not a chest X-ray, {self.failed} failed. {NOT_DIAGNOSTIC_NOTICE}"
        )


def summarize(results: Iterable[Result]) -> Summary:
    counts = dict.fromkeys(STATUSES, 0)
    for result in results:
        counts[result.status] += 1
    return Summary(counts[OK], counts[INDETERMINATE], counts[NOT_CHEST_XRAY], counts[ERROR])


# --- inputs --------------------------------------------------------------------------------


def source_label(item, source: str | None = None) -> str:
    """How an input is named in results: the given source, a path as given, or a placeholder
    (uploads and arrays are never named after anything inside them)."""
    if source is not None:
        return str(source)
    if isinstance(item, (str, Path)):
        return str(item)
    if isinstance(item, (bytes, bytearray)):
        return "<upload>"
    if isinstance(item, np.ndarray):
        return "<array>"
    return "<dicom>" if is_pydicom_dataset(item) else "<input>"


def pixels_from_array(array: np.ndarray, label: str = "<array>") -> np.ndarray:
    """The array contract: 2-D grayscale; float in [0, 1], or uint8 / uint16 with the range their
    dtype implies (0..255, 0..65535). Anything else is an InputError, never a silent rescale."""
    if array.ndim != 2 or array.size == 0:
        raise InputError(
            f"{label}: array of shape {array.shape}; pass a 2-D grayscale image (H, W) "
            "(convert colour first, e.g. PIL's .convert('L'))."
        )
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if np.issubdtype(array.dtype, np.floating):
        pixels = array.astype(np.float32)
        if not np.isfinite(pixels).all():
            raise InputError(f"{label}: array holds NaN or infinity; pass finite values in [0, 1].")
        low, high = float(pixels.min()), float(pixels.max())
        if low < 0.0 or high > 1.0:
            raise InputError(
                f"{label}: float pixels range {low:g}..{high:g}; float input must be in [0, 1] "
                "(divide by the bit depth's maximum, or pass uint8 / uint16)."
            )
        return pixels
    raise InputError(
        f"{label}: array dtype {array.dtype}; pass uint8 (0..255), uint16 (0..65535) or float "
        "in [0, 1]."
    )


def decode_input(item, label: str, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Any accepted input -> the [0, 1] 2-D pixel contract, or an InputError."""
    if isinstance(item, np.ndarray):
        return pixels_from_array(item, label)
    if isinstance(item, (str, Path, bytes, bytearray)) or is_pydicom_dataset(item):
        return read_image(item, name=label, max_pixels=max_pixels)
    raise InputError(
        f"{label}: cannot predict on a {type(item).__name__}; pass a path, bytes, a 2-D numpy "
        "array or a pydicom Dataset."
    )


@dataclass
class _Prepared:
    """One input ready for the model (or the reason it is not)."""

    source: str
    tensor: np.ndarray | None = None  # (C, size, size), the model's input
    base: np.ndarray | None = None  # the film squared for the heatmap overlay
    error: str | None = None


def _prepare(
    model: OnnxModel, item, source: str, heatmap: bool, max_pixels: int, raising: bool = False
) -> _Prepared:
    try:
        image = decode_input(item, source, max_pixels)
        base = resize_square(image, HEATMAP_SIZE) if heatmap and model.has_cam else None
        return _Prepared(source, prepare(image, model.spec), base)
    except PneumoscanError as error:
        if raising:
            raise
        return _Prepared(source, error=" ".join(str(error).split()))
    except Exception as error:  # a bug or a decoder surprise: this input fails, the batch goes on
        if raising:
            raise InputError(_unprepared(source, error)) from None
        return _Prepared(source, error=_unprepared(source, error))


def _unprepared(source: str, error: Exception) -> str:
    return (
        f"{source}: could not be prepared for the model ({type(error).__name__}); re-export it as "
        "an 8-bit grayscale PNG and try again."
    )


def _infer(
    model: OnnxModel, prepared: Sequence[_Prepared], margin: float, coverage: float | None = None
) -> tuple[list[Result], np.ndarray | None]:
    """Results for a batch, and the class maps to draw (one per result, None where not drawn)."""
    ready = [index for index, item in enumerate(prepared) if item.error is None]
    results: list[Result | None] = [None] * len(prepared)
    maps: list[np.ndarray | None] = [None] * len(prepared)
    outputs = None
    if ready:
        try:
            outputs = model.run(np.stack([prepared[i].tensor for i in ready]))
        except Exception as error:  # one odd input must not sink its batch: retry one by one
            if len(ready) > 1:
                partial = [_infer(model, [prepared[i]], margin, coverage) for i in ready]
                for index, (one, one_map) in zip(ready, partial):
                    results[index], maps[index] = one[0], one_map[0]
                ready = []
            else:
                prepared[ready[0]].error = (
                    f"{prepared[ready[0]].source}: the model failed on this input "
                    f"({type(error).__name__}); re-export it as an 8-bit grayscale PNG and try "
                    "again, and report the file if that fails too."
                )
                ready = []
    for row, index in enumerate(ready):
        results[index], maps[index] = _decide(
            model, outputs, row, prepared[index].source, margin, coverage
        )
    for index, item in enumerate(prepared):
        if results[index] is None:
            results[index] = _error(model, item.source, item.error or "unknown error")
    return results, maps


def _error(model: OnnxModel, source: str, message: str) -> Result:
    return Result(
        source=source,
        status=ERROR,
        message=message,
        model_name=model.name,
        model_version=model.version,
    )


def _decide(
    model: OnnxModel,
    outputs: dict[str, np.ndarray],
    row: int,
    source: str,
    margin: float,
    coverage: float | None = None,
) -> tuple[Result, np.ndarray | None]:
    """The decision for one row of a batch's outputs (the one place results are built)."""
    probabilities = outputs["probabilities"][row]
    score = float(outputs["ood_score"][row]) if "ood_score" in outputs else None
    common = {
        "source": source,
        "gate_score": score,
        "model_name": model.name,
        "model_version": model.version,
    }
    if score is not None and model.is_out_of_distribution(score):
        message = f"{source}: does not look like a frontal chest radiograph; no prediction made."
        return Result(status=NOT_CHEST_XRAY, message=message, **common), None
    index = decide(probabilities, model.threshold, model.class_names)
    named = {name: float(p) for name, p in zip(model.class_names, probabilities)}
    cams = outputs.get("cam")
    # Binary: the map of pneumonia evidence; three-class: of the predicted class.
    shown = 1 if len(model.class_names) == 2 else index
    class_map = cams[row, shown] if cams is not None else None
    if coverage is not None and model.conformal is not None:
        members = model.conformal.sets(probabilities, coverage)
        common["prediction_set"] = [n for n, member in zip(model.class_names, members) if member]
        common["set_coverage"] = coverage
    if is_indeterminate(probabilities, model.threshold, margin):
        message = (
            f"{source}: P({model.class_names[1]}) {probabilities[1]:.3f} is within {margin:g} of "
            f"the threshold {model.threshold:.3f}; too close to call."
        )
        return (
            Result(
                status=INDETERMINATE,
                probabilities=named,
                threshold=model.threshold,
                message=message,
                **common,
            ),
            class_map,
        )
    result = Result(
        status=OK,
        label=model.class_names[index],
        probabilities=named,
        threshold=model.threshold,
        **common,
    )
    return result, class_map


# --- the pure path and the batch path ------------------------------------------------------


def predict_pixels(
    model: OnnxModel,
    image: np.ndarray,
    source: str = "<array>",
    heatmap: bool = False,
    indeterminate_margin: float = 0.0,
    set_coverage: float | None = None,
) -> Result:
    """One decoded image (2-D float in [0, 1]) -> Result, with the heatmap as an image if asked.

    An input the gate finds unlike any training film gets `not_chest_xray` and no diagnosis. With
    `indeterminate_margin` > 0, a binary probability within that distance of the threshold is
    reported as `indeterminate`.
    """
    return predict_one(
        model, image, source, heatmap, indeterminate_margin, set_coverage=set_coverage
    )


def predict_one(
    model: OnnxModel,
    item,
    source: str | None = None,
    heatmap: bool = False,
    indeterminate_margin: float = 0.0,
    max_pixels: int = MAX_IMAGE_PIXELS,
    set_coverage: float | None = None,
) -> Result:
    """One path, bytes, array or DICOM dataset -> Result. An unreadable input raises its
    InputError subclass (the server maps them to HTTP codes); use `predict_many` not to raise.
    With `set_coverage` (e.g. 0.9), the result carries its conformal prediction set."""
    model.check_coverage(set_coverage)
    label = source_label(item, source)
    prepared = _prepare(model, item, label, heatmap, max_pixels, raising=True)
    results, maps = _infer(model, [prepared], indeterminate_margin, set_coverage)
    _attach_heatmaps(results, maps, [prepared])
    return results[0]


def predict_many(
    model: OnnxModel,
    items: Sequence,
    sources: Sequence[str | None] | None = None,
    heatmap: bool = False,
    heatmap_dir: Path | None = None,
    indeterminate_margin: float = 0.0,
    workers: int | None = None,
    batch_size: int = BATCH_SIZE,
    max_pixels: int = MAX_IMAGE_PIXELS,
    set_coverage: float | None = None,
) -> Iterator[Result]:
    """Results for every input, in order; never raises for one input.

    Inputs are decoded and prepared on `workers` threads (default: the CPU count) while the model
    runs batches of `batch_size` in this thread. With `heatmap_dir`, overlays are written there as
    PNGs (`00012_<name>.png`, `heatmap_path` set, images not kept in memory); with `heatmap` only,
    each result carries its overlay image. With `set_coverage` (e.g. 0.9), each prediction
    carries its conformal prediction set.
    """
    model.check_coverage(set_coverage)
    labels = [
        source_label(item, sources[index] if sources is not None else None)
        for index, item in enumerate(items)
    ]
    draw = heatmap or heatmap_dir is not None
    workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
    ahead = max(batch_size * 2, workers * 4)  # decoded inputs waiting: bounds memory
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pneumoscan") as pool:
        pending: deque[Future] = deque()
        submitted = 0

        def top_up() -> None:
            nonlocal submitted
            while submitted < len(items) and len(pending) < ahead:
                pending.append(
                    pool.submit(
                        _prepare, model, items[submitted], labels[submitted], draw, max_pixels
                    )
                )
                submitted += 1

        done = 0
        waiting: tuple[list[Result], dict[int, Future]] | None = None  # results whose PNGs are due
        top_up()
        while pending:
            batch = [pending.popleft().result() for _ in range(min(batch_size, len(pending)))]
            top_up()
            results, maps = _infer(model, batch, indeterminate_margin, set_coverage)
            written: dict[int, Future] = {}
            if heatmap_dir is not None:
                # Drawn here in one vectorised pass; each PNG is compressed and written on a
                # worker while the model runs the next batch.
                for offset, (result, overlay) in enumerate(
                    zip(results, _render_batch(batch, maps))
                ):
                    if overlay is not None:
                        path = Path(heatmap_dir) / _heatmap_name(done + offset, result.source)
                        result.heatmap_path = str(path)
                        written[offset] = pool.submit(_write_heatmap, overlay, path)
            elif draw:
                for result, overlay in zip(results, _render_batch(batch, maps)):
                    result.heatmap = overlay
            done += len(batch)
            if waiting is not None:
                yield from _when_written(*waiting)
            waiting = (results, written)
        if waiting is not None:
            yield from _when_written(*waiting)


def _when_written(results: list[Result], written: dict[int, Future]) -> list[Result]:
    """The batch's results once its heatmaps are on disk; a heatmap that could not be written
    is noted in its result's message (the prediction itself stands)."""
    for index, future in written.items():
        problem = future.result()
        if problem is not None:
            result = results[index]
            result.heatmap_path = None
            note = f"heatmap not written ({problem})"
            result.message = (
                f"{result.message} {note}" if result.message else f"{result.source}: {note}"
            )
    return results


def _write_heatmap(overlay: Image.Image, path: Path) -> str | None:
    try:
        _save_png(overlay, path)
    except OSError as error:
        return f"{path}: {error.strerror or error}"
    return None


def _attach_heatmaps(results, maps, prepared) -> None:
    for result, overlay in zip(results, _render_batch(prepared, maps)):
        result.heatmap = overlay


def _heatmap_name(index: int, source: str) -> str:
    stem = Path(source).stem if not source.startswith("<") else "input"
    safe = "".join(char if char.isalnum() or char in "-_." else "_" for char in stem)[:80]
    return f"{index:05d}_{safe or 'input'}.png"


def _save_png(image: Image.Image, path: Path) -> None:
    data = png_bytes(np.asarray(image))
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def png_bytes(rgb: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 array as an 8-bit RGB PNG, fast.

    Every row uses PNG's `Up` filter (the difference from the row above, one numpy subtraction)
    and zlib level 1: for a smooth overlay that is as small as Pillow's adaptive filtering at
    level 1 and about twice as fast, and zlib runs without the GIL, beside the model.
    """
    height, width, _ = rgb.shape
    rows = np.ascontiguousarray(rgb, dtype=np.uint8).reshape(height, width * 3)
    raw = np.empty((height, width * 3 + 1), dtype=np.uint8)
    raw[:, 0] = 2  # filter type Up
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])  # uint8 arithmetic wraps modulo 256

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), 1))
        + chunk(b"IEND", b"")
    )


# --- heatmaps ------------------------------------------------------------------------------


def _upsampling_matrix(source_size: int, size: int) -> np.ndarray:
    """(size, source_size) bicubic interpolation weights (Keys, a = -0.5, as PIL's BICUBIC), pixel
    centres aligned and edges clamped: upsampling a map is then one matrix product per axis."""
    positions = (np.arange(size) + 0.5) * source_size / size - 0.5
    base = np.floor(positions).astype(int)
    weights = np.zeros((size, source_size), dtype=np.float64)
    for step in (-1, 0, 1, 2):
        distance = np.abs(positions - (base + step))
        kernel = np.where(
            distance <= 1,
            1.5 * distance**3 - 2.5 * distance**2 + 1,
            np.where(distance < 2, -0.5 * distance**3 + 2.5 * distance**2 - 4 * distance + 2, 0.0),
        )
        np.add.at(weights, (np.arange(size), np.clip(base + step, 0, source_size - 1)), kernel)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


HEAT_LEVELS = 256  # the map is shown in 8 bits, so colour and weight are looked up, not computed


def _jet_tables(alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(levels, 3) jet colours scaled by their blend weight, and (levels,) blend weights."""
    heat = np.linspace(0.0, 1.0, HEAT_LEVELS, dtype=np.float32)
    colour = np.stack(
        [np.clip(1.5 - np.abs(4.0 * heat - offset), 0.0, 1.0) for offset in (3.0, 2.0, 1.0)],
        axis=1,
    )
    weight = alpha * np.sqrt(heat)  # hotter regions cover more of the film
    return (colour * weight[:, None] * 255.0).astype(np.float32), weight.astype(np.float32)


def render_heatmaps(bases: np.ndarray, class_maps: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Overlays for a whole batch at once: (N, S, S) films in [0, 1] under (N, h, w) class maps
    -> (N, S, S, 3) uint8.

    Each map is clipped at zero (evidence for the class), scaled to its own maximum, upsampled by
    two small matrix products, coloured with the jet colormap and blended more strongly where it
    is higher, so cold regions still show the film. Colour and weight come from 256-entry tables.
    """
    size = bases.shape[-1]
    positive = np.maximum(class_maps, 0.0).astype(np.float32)
    peak = positive.reshape(len(positive), -1).max(axis=1)
    positive /= np.where(peak > 0, peak, 1.0)[:, None, None]
    rows = _upsampling_matrix(positive.shape[1], size)
    columns = _upsampling_matrix(positive.shape[2], size)
    heat = np.einsum("ij,njk,lk->nil", rows, positive, columns, optimize=True)
    levels = np.clip(heat * (HEAT_LEVELS - 1) + 0.5, 0, HEAT_LEVELS - 1).astype(np.uint8)
    coloured, weight = _jet_tables(alpha)
    film = bases.astype(np.float32) * (255.0 * (1.0 - weight[levels]))
    film += 0.5  # rounds on the cast below
    rgb = np.empty(levels.shape + (3,), dtype=np.uint8)
    channel = np.empty_like(film)
    for index in range(3):  # one-dimensional lookups per channel are far cheaper than (256, 3)
        np.add(film, coloured[:, index][levels], out=channel)
        rgb[..., index] = channel
    return rgb


def render_heatmap(
    image: np.ndarray, class_map: np.ndarray, size: int = HEATMAP_SIZE
) -> Image.Image:
    """One overlay as a PIL image: the film squared (as the model saw it) under its class map."""
    base = resize_square(image, size)
    return Image.fromarray(render_heatmaps(base[None], class_map[None])[0])


def _render_batch(
    prepared: Sequence[_Prepared], maps: Sequence[np.ndarray | None]
) -> list[Image.Image | None]:
    drawn = [
        i for i, (p, m) in enumerate(zip(prepared, maps)) if m is not None and p.base is not None
    ]
    overlays: list[Image.Image | None] = [None] * len(prepared)
    if drawn:
        pixels = render_heatmaps(
            np.stack([prepared[i].base for i in drawn]), np.stack([maps[i] for i in drawn])
        )
        for row, index in enumerate(drawn):
            overlays[index] = Image.fromarray(pixels[row])
    return overlays
