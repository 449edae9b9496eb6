"""api: `pneumoscan.load_model`, the Python API over the runtime; torch-free.

Load a model once, predict on paths, bytes, arrays or DICOM datasets.

    >>> import pneumoscan
    >>> model = pneumoscan.load_model("binary")            # or "three-class", or a .onnx path
    >>> result = model.predict("examples/pneumonia_person1946_bacteria_4874.jpeg", heatmap=True)
    >>> result.status, result.label, result.probabilities   # ('ok', 'pneumonia', {...})
    >>> result.heatmap_array().shape                        # (512, 512, 3)

Torch-free (ONNX Runtime). The CLI's `predict` and the HTTP server run the same functions from
`pneumoscan.runtime`, so all three give the same answer for the same input. May import `runtime`
and `core` only.

Array inputs follow one pixel contract: a 2-D grayscale image, either float in [0, 1] or uint8 /
uint16 with the range the dtype implies (0..255, 0..65535). Other shapes, dtypes or ranges raise
`InputError` instead of giving a silently wrong answer. Every result carries the
not-a-diagnostic-device notice.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pneumoscan.core.images import MAX_IMAGE_PIXELS
from pneumoscan.runtime.model import OnnxModel, load_runtime_model
from pneumoscan.runtime.predict import (
    Result,
    Summary,
    predict_many,
    predict_one,
    prepare_input,
    summarize,
)

__all__ = ["Model", "Result", "Summary", "load_model", "summarize"]


class Model:
    """A loaded model: its metadata as attributes, and `predict`.

    Attributes: `name`, `version`, `task` (`binary` or `three_class`), `class_names`,
    `threshold` (binary: on the calibrated P(class 1), chosen on validation; None otherwise),
    `card` (the model card text beside the model file, or None), `gate` (whether inputs unlike
    chest radiographs are refused) and `max_pixels` (larger images are refused before decoding).
    """

    def __init__(self, runtime: OnnxModel, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        self.runtime = runtime
        self.max_pixels = max_pixels

    @property
    def name(self) -> str:
        return self.runtime.name

    @property
    def version(self) -> str:
        return self.runtime.version

    @property
    def task(self) -> str:
        return str(self.runtime.metadata.get("task", ""))

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.runtime.class_names

    @property
    def threshold(self) -> float | None:
        return self.runtime.threshold

    @property
    def gate(self) -> bool:
        return self.runtime.ood_threshold is not None

    @property
    def card(self) -> str | None:
        # models/<name>.md beside a shipped model; card.md beside a calibrated DIR/model.onnx
        for card in (self.runtime.path.with_suffix(".md"), self.runtime.path.parent / "card.md"):
            if card.is_file():
                return card.read_text(encoding="utf-8")
        return None

    def predict(
        self,
        x,
        heatmap: bool = False,
        indeterminate_margin: float = 0.0,
        source: str | Sequence[str] | None = None,
        sets: float | None = None,
    ) -> Result | list[Result]:
        """Predict on one input, or on a list of them.

        x: a path (str or Path), the bytes of a JPEG/PNG/DICOM file, a 2-D numpy array (see the
        module docstring for its contract), a pydicom Dataset or what `prepare` returned; or a list
        of these. `source` names the input in the result (a list of names for a list); by default
        a path names itself and other inputs are called `<upload>`, `<array>` or `<dicom>`.

        One input: a `Result`, or an `InputError` subclass when it cannot be read
        (`UnsupportedFormatError`, `ImageTooLargeError`). A list: a list of `Result`s in the same
        order, never raising for one bad item (its result has status `error` and a message).
        heatmap=True adds the class-activation overlay (`result.heatmap`, a PIL image).
        sets=0.9 adds each result's conformal prediction set at 90% coverage
        (`result.prediction_set`); `ModelFileError` if the model carries no conformal calibration.
        """
        if isinstance(x, (list, tuple)):
            sources = source if isinstance(source, (list, tuple)) else None
            return list(
                predict_many(
                    self.runtime,
                    list(x),
                    sources=sources,
                    heatmap=heatmap,
                    indeterminate_margin=indeterminate_margin,
                    max_pixels=self.max_pixels,
                    set_coverage=sets,
                )
            )
        return predict_one(
            self.runtime,
            x,
            source=source if isinstance(source, str) else None,
            heatmap=heatmap,
            indeterminate_margin=indeterminate_margin,
            max_pixels=self.max_pixels,
            set_coverage=sets,
        )

    def prepare(self, x, source: str | None = None, heatmap: bool = False):
        """Decode and prepare one input (any kind `predict` takes) for a later `predict`, alone or
        in a list with others; `predict` then runs the model only. For callers that decode on
        their own threads and batch the model across requests, as the server does. Raises the
        input's `InputError` subclass as `predict` does; heatmap=True keeps what its overlay needs."""
        return prepare_input(self.runtime, x, source, heatmap, self.max_pixels)

    def __repr__(self) -> str:
        return f"Model(name={self.name!r}, version={self.version!r}, classes={self.class_names})"


def load_model(
    reference: str | Path = "binary",
    gate: bool = True,
    threads: int | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> Model:
    """Load a shipped model (`"binary"`, `"three-class"`) or an exported `.onnx` file.

    gate=False turns off the out-of-distribution gate (inputs unlike chest radiographs are then
    classified too). threads: ONNX Runtime threads (default: the CPUs this process may use). Raises
    `ModelFileError` for a missing or foreign file.
    """
    return Model(load_runtime_model(reference, threads=threads, gate=gate), max_pixels=max_pixels)
