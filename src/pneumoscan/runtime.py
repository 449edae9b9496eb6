"""Prediction on ONNX Runtime: file -> calibrated probabilities, label and heatmap. Never imports torch.

The same two functions as training prepare every input (`images.read_image`, then
`preprocess.prepare` with the spec from the model's metadata), so serving matches training by
construction. Temperature and threshold come from the ONNX metadata, chosen on validation.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pneumoscan.errors import InputError, ModelFileError
from pneumoscan.images import read_image
from pneumoscan.labels import NOT_DIAGNOSTIC_NOTICE
from pneumoscan.preprocess import PreprocessSpec, prepare, resize_square
from pneumoscan.shipped import resolve_model

METADATA_KEY = "pneumoscan"


class OnnxModel:
    """An ONNX Runtime session plus the pneumoscan metadata stored in the file."""

    def __init__(self, path: Path | str, threads: int | None = None, gate: bool = True) -> None:
        import onnxruntime as ort

        path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
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
        self.path = path
        self.class_names: tuple[str, ...] = tuple(self.metadata["class_names"])
        self.threshold: float | None = self.metadata.get("threshold")
        self.temperature: float = float(self.metadata.get("temperature", 1.0))
        self.spec = PreprocessSpec.from_dict(self.metadata["preprocess"])
        self.has_cam = bool(self.metadata.get("has_cam"))
        self.ood_threshold: float | None = self.metadata.get("ood_threshold") if gate else None
        self.output_names = [output.name for output in self.session.get_outputs()]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """All outputs by name, with `probabilities` (temperature-calibrated) instead of logits."""
        outputs = dict(
            zip(
                self.output_names,
                self.session.run(None, {"image": batch.astype(np.float32, copy=False)}),
            )
        )
        scaled = outputs.pop("logits").astype(np.float64) / self.temperature
        scaled -= scaled.max(axis=1, keepdims=True)
        exp = np.exp(scaled)
        outputs["probabilities"] = exp / exp.sum(axis=1, keepdims=True)
        return outputs

    def probabilities(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated probabilities (N, classes) and, when exported, class maps (N, classes, h, w)."""
        outputs = self.run(batch)
        return outputs["probabilities"], outputs.get("cam")

    def ood_scores(self, images: list[np.ndarray], batch_size: int = 64) -> np.ndarray:
        """Gate scores of decoded [0, 1] images, prepared with the model's own spec, in batches."""
        return np.concatenate(
            [
                self.run(
                    np.stack(
                        [prepare(image, self.spec) for image in images[start : start + batch_size]]
                    )
                )["ood_score"]
                for start in range(0, len(images), batch_size)
            ]
        )

    def is_out_of_distribution(self, score: float) -> bool:
        return self.ood_threshold is not None and score > self.ood_threshold

    def label_index(self, probabilities: np.ndarray) -> int:
        if self.threshold is not None and len(probabilities) == 2:
            return int(probabilities[1] >= self.threshold)
        return int(np.argmax(probabilities))


NOT_A_CHEST_XRAY = "not a chest X-ray"
INDETERMINATE = "indeterminate"


@dataclass
class Prediction:
    source: str
    status: str  # ok | rejected (out of distribution) | error
    label: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    threshold: float | None = None
    ood_score: float | None = None
    message: str | None = None
    heatmap: str | None = None
    notice: str = NOT_DIAGNOSTIC_NOTICE

    def to_dict(self) -> dict:
        return {key: value for key, value in self.__dict__.items()}


def load_runtime_model(
    reference: str | Path = "binary", threads: int | None = None, gate: bool = True
) -> OnnxModel:
    path = resolve_model(reference, suffix=".onnx")
    if path.suffix != ".onnx":
        raise ModelFileError(
            f"{path}: prediction runs on ONNX; convert it first with "
            f"`pneumoscan export --model {path} --out model.onnx`."
        )
    return OnnxModel(path, threads=threads, gate=gate)


def predict_image(
    model: OnnxModel,
    image: np.ndarray,
    source: str,
    heatmap_path: Path | None = None,
    indeterminate_margin: float = 0.0,
) -> Prediction:
    """One decoded image ([0, 1] 2-D array) -> Prediction (and a heatmap PNG when asked).

    An input the gate finds unlike any training film gets `not a chest X-ray` and no diagnosis.
    With `indeterminate_margin` > 0, a binary probability within that distance of the threshold
    is reported as `indeterminate`.
    """
    outputs = model.run(prepare(image, model.spec)[None])
    probabilities = outputs["probabilities"][0]
    score = float(outputs["ood_score"][0]) if "ood_score" in outputs else None
    if score is not None and model.is_out_of_distribution(score):
        return Prediction(
            source=source,
            status="rejected",
            label=NOT_A_CHEST_XRAY,
            ood_score=score,
            message=f"{source}: does not look like a frontal chest radiograph; no prediction made.",
        )
    index = model.label_index(probabilities)
    label = model.class_names[index]
    if (
        indeterminate_margin > 0
        and model.threshold is not None
        and abs(probabilities[1] - model.threshold) < indeterminate_margin
    ):
        label = INDETERMINATE
    prediction = Prediction(
        source=source,
        status="ok",
        label=label,
        probabilities={name: float(p) for name, p in zip(model.class_names, probabilities)},
        threshold=model.threshold,
        ood_score=score,
    )
    cams = outputs.get("cam")
    if heatmap_path is not None and cams is not None:
        # Binary: the map of pneumonia evidence; three-class: of the predicted class.
        shown = 1 if len(model.class_names) == 2 else index
        overlay = render_heatmap(image, cams[0, shown])
        heatmap_path.parent.mkdir(parents=True, exist_ok=True)
        overlay.save(heatmap_path)
        prediction.heatmap = str(heatmap_path)
    return prediction


def predict_file(
    model: OnnxModel,
    path: Path | str,
    heatmap_path: Path | None = None,
    indeterminate_margin: float = 0.0,
) -> Prediction:
    try:
        image = read_image(path)
    except InputError as error:
        return Prediction(source=str(path), status="error", message=str(error))
    return predict_image(model, image, str(path), heatmap_path, indeterminate_margin)


def render_heatmap(
    image: np.ndarray, class_map: np.ndarray, size: int = 512, alpha: float = 0.55
) -> Image.Image:
    """The radiograph (squared, as the model saw it) under a jet-coloured class map.

    The map is clipped at zero (evidence for the class), scaled to its own maximum, and blended
    more strongly where it is higher, so cold regions still show the film.
    """
    base = resize_square(image, size)
    positive = np.maximum(class_map, 0.0).astype(np.float32)
    peak = positive.max()
    heat = positive / peak if peak > 0 else positive
    heat = np.clip(
        np.asarray(Image.fromarray(heat).resize((size, size), Image.Resampling.BICUBIC)), 0.0, 1.0
    )
    colour = np.stack(
        [np.clip(1.5 - np.abs(4 * heat - offset), 0.0, 1.0) for offset in (3, 2, 1)], axis=-1
    )
    weight = (alpha * np.sqrt(heat))[..., None]
    rgb = (1 - weight) * base[..., None] + weight * colour
    return Image.fromarray((rgb * 255).round().astype(np.uint8), mode="RGB")
