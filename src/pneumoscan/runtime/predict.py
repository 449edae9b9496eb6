"""Prediction on ONNX Runtime: input -> calibrated probabilities, decision and heatmap. Never imports torch.

Three layers that the CLI, the Python API (`pneumoscan.api`) and the server all share:

- the pure path, `predict_pixels`: a decoded [0, 1] image -> `Result`;
- the batch path, `predict_many`: files, bytes, arrays or DICOM datasets -> `Result`s, in order,
  decoding on worker threads while the model runs, so both cores work; whatever goes wrong with
  one input becomes that input's `error` result and the batch goes on;
- one summary of outcomes, `summarize`, with the counts and the exit code.

Every input is prepared by the same two functions as in training (`core.images.read_image`, then
`core.preprocess.prepare` with the spec from the model's metadata). Temperature, threshold and the
decision rule come from `core.decision`, the module training and export use too. The model itself
is `runtime.model.OnnxModel`; heatmaps are drawn by `runtime.heatmap`.
"""

from __future__ import annotations

import base64
import logging
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pneumoscan.core.decision import decide, is_indeterminate
from pneumoscan.core.errors import InputError, NotChestRadiographError, PneumoscanError
from pneumoscan.core.hardware import usable_cpus
from pneumoscan.core.images import MAX_IMAGE_PIXELS, decode_input, source_label
from pneumoscan.core.labels import NOT_DIAGNOSTIC_NOTICE
from pneumoscan.core.preprocess import prepare
from pneumoscan.core.refusal import (
    FEATURE_DISTANCE,
    NO_RADIOGRAPH_STRUCTURE,
    STRUCTURE_FLOOR,
    structure_correlation,
)
from pneumoscan.runtime.heatmap import (
    HEATMAP_SIZE,
    heatmap_file_name,
    overlay_base,
    png_bytes,
    render_heatmaps,
    save_png,
)
from pneumoscan.runtime.model import OnnxModel

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
BATCH_SIZE = 16


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
    # Why a not_chest_xray input was refused: one of core.refusal.GATE_REASONS; None otherwise.
    gate_reason: str | None = None
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
            "gate_reason": self.gate_reason,
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


@dataclass
class _Prepared:
    """One input ready for the model (or the reason it is not)."""

    source: str
    tensor: np.ndarray | None = None  # (C, size, size), the model's input
    base: np.ndarray | None = None  # the film squared for the heatmap overlay
    error: str | None = None
    refusal: tuple[str, str] | None = None  # (gate_reason, message): refused before the network


def _prepare(
    model: OnnxModel, item, source: str, heatmap: bool, max_pixels: int, raising: bool = False
) -> _Prepared:
    if isinstance(item, _Prepared):  # prepared ahead by `prepare_input`
        return item
    try:
        overlay = heatmap and model.has_cam
        # Decoded at about twice the model's input (and no smaller than an overlay, when drawn).
        side = max(model.spec.decode_side, HEATMAP_SIZE) if overlay else model.spec.decode_side
        image = decode_input(item, source, max_pixels, model.header_check, min_side=side)
        base = overlay_base(image) if overlay else None
        return _Prepared(source, prepare(image, model.spec), base)
    except NotChestRadiographError as error:  # a refusal, not an error: never raised
        return _Prepared(source, refusal=(error.reason, " ".join(str(error).split())))
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
    ready = [
        index for index, item in enumerate(prepared) if item.error is None and item.refusal is None
    ]
    results: list[Result | None] = [None] * len(prepared)
    maps: list[np.ndarray | None] = [None] * len(prepared)
    outputs = None
    if ready:
        try:
            outputs = model.run(
                np.stack([prepared[i].tensor for i in ready]),
                cam=any(prepared[i].base is not None for i in ready),  # a heatmap to draw
            )
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
            model, outputs, row, prepared[index], margin, coverage
        )
    for index, item in enumerate(prepared):
        if results[index] is None and item.refusal is not None:
            reason, message = item.refusal
            results[index] = Result(
                source=item.source,
                status=NOT_CHEST_XRAY,
                gate_reason=reason,
                message=message,
                model_name=model.name,
                model_version=model.version,
            )
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
    item: _Prepared,
    margin: float,
    coverage: float | None = None,
) -> tuple[Result, np.ndarray | None]:
    """The decision for one row of a batch's outputs (the one place results are built)."""
    source = item.source
    probabilities = outputs["probabilities"][row]
    score = float(outputs["ood_score"][row]) if "ood_score" in outputs else None
    common = {
        "source": source,
        "gate_score": score,
        "model_name": model.name,
        "model_version": model.version,
    }
    if score is not None and model.is_out_of_distribution(score):
        # The exported score adds a large penalty for inputs without a radiograph's spatial
        # structure; the same correlation, measured here, says which of the two refused it.
        if structure_correlation(item.tensor[0]) < STRUCTURE_FLOOR:
            reason, why = NO_RADIOGRAPH_STRUCTURE, "has no radiograph structure (blank or noise)"
        else:
            reason, why = FEATURE_DISTANCE, "is unlike every training film (gate feature distance)"
        message = (
            f"{source}: {why}; does not look like a frontal chest radiograph, no prediction made."
        )
        return (
            Result(status=NOT_CHEST_XRAY, gate_reason=reason, message=message, **common),
            None,
        )
    index = decide(probabilities, model.threshold, model.class_names)
    named = {name: float(p) for name, p in zip(model.class_names, probabilities)}
    cams = outputs.get("cam")
    # Binary: the map of pneumonia evidence; three-class: of the predicted class.
    shown = 1 if len(model.class_names) == 2 else index
    class_map = cams[row, shown] if cams is not None else None
    if coverage is not None and model.conformal is not None:
        # The label given is always in its set, so the two never contradict each other.
        members = model.conformal.sets(probabilities, coverage, decided=index)
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


def prepare_input(
    model: OnnxModel,
    item,
    source: str | None = None,
    heatmap: bool = False,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> _Prepared:
    """Decode and prepare one input now, to predict on later (`predict_one`, or in a list to
    `predict_many`, which then skips its decoding): the server decodes each upload on its own
    thread, then runs the model once for the films of several requests. An unreadable input
    raises its InputError subclass; a DICOM whose header says it is no chest film is prepared as
    a refusal (its result is `not_chest_xray`, without running the model)."""
    return _prepare(model, item, source_label(item, source), heatmap, max_pixels, raising=True)


def predict_batch(
    model: OnnxModel,
    items: Sequence,
    sources: Sequence[str],
    heatmap: bool = False,
    indeterminate_margin: float = 0.0,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> list[Result | Exception]:
    """`predict_one` for each item, with the model run once over the whole batch (the DICOM
    node's films that queued up): each entry is that item's Result, or the exception
    `predict_one` would have raised for it (an unreadable input's InputError, say)."""
    prepared: list[_Prepared] = []
    outcomes: list[Result | Exception | None] = []
    for item, source in zip(items, sources, strict=True):
        try:
            prepared.append(_prepare(model, item, source, heatmap, max_pixels, raising=True))
            outcomes.append(None)
        except Exception as error:  # this item's own failure; the others go on
            outcomes.append(error)
    if prepared:
        results, maps = _infer(model, prepared, indeterminate_margin)
        _attach_heatmaps(results, maps, prepared)
        made = iter(results)
        outcomes = [next(made) if outcome is None else outcome for outcome in outcomes]
    return outcomes


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

    Inputs are decoded and prepared on `workers` threads (default: the CPUs this process may use) while the model
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
    workers = max(1, workers if workers is not None else usable_cpus())
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
                # Each overlay is drawn, compressed and written on a worker while this thread
                # runs the model on the next batch.
                for offset, (item, class_map, result) in enumerate(zip(batch, maps, results)):
                    if class_map is not None and item.base is not None:
                        path = Path(heatmap_dir) / heatmap_file_name(done + offset, result.source)
                        result.heatmap_path = str(path)
                        written[offset] = pool.submit(_draw_heatmap, item.base, class_map, path)
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


def _draw_heatmap(base: np.ndarray, class_map: np.ndarray, path: Path) -> str | None:
    """One overlay drawn and saved as a PNG; what went wrong, or None."""
    overlay = render_heatmaps(base[None], class_map[None])[0]
    try:
        save_png(overlay, path)
    except OSError as error:
        return f"{path}: {error.strerror or error}"
    return None


def _attach_heatmaps(results, maps, prepared) -> None:
    for result, overlay in zip(results, _render_batch(prepared, maps)):
        result.heatmap = overlay


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
