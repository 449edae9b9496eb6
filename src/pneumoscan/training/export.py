"""Model file -> ONNX with its metadata and, for a global-pool + linear head, a class map output.

For a global-average-pool + linear head, the class activation map (CAM) equals Grad-CAM up to
scale: logit_c = mean_hw(sum_f w_cf A_f) + b_c, so the map sum_f w_cf A_f is one more matrix
product on the last feature map. Exporting it as a second output lets the torch-free runtime draw
heatmaps. Other heads export logits only, and the metadata says so (`has_cam: false`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pneumoscan.core.decision import ONNX_METADATA_FORMAT, calibrated_probabilities
from pneumoscan.core.fileio import atomic_write
from pneumoscan.core.shipped import resolve_model
from pneumoscan.training.gate import GateModule, OodGate, TapRecorder, feature_model
from pneumoscan.training.model_file import ModelInfo, load_model_file
from pneumoscan.training.networks import Classifier, EnsembleClassifier, GroupedClassifier
from pneumoscan.training.onnx_file import set_metadata

logger = logging.getLogger(__name__)

OPSET = 18


def cam_weights(model: Classifier | GroupedClassifier) -> torch.Tensor | None:
    """(classes, features) weights whose product with the last feature map is each class's map.

    For a model read from a finer one, a coarse class's map is its fine classes' mean map minus
    the other classes' (evidence for the group over the rest); None when the head has no CAM.
    """
    source = model.source if isinstance(model, GroupedClassifier) else model
    if isinstance(source, EnsembleClassifier):
        weight = source.cam_weight()
    else:
        linear = linear_classifier(source)
        weight = linear.weight if linear is not None else None
    if weight is None:
        return None
    return model.cam_mixing() @ weight if isinstance(model, GroupedClassifier) else weight


def linear_classifier(model: Classifier) -> nn.Linear | None:
    """The final Linear of a global-pool + linear head, or None for other heads."""
    layers = [m for m in model.head if not isinstance(m, (nn.Dropout, nn.Identity))]
    if (
        len(layers) == 3
        and isinstance(layers[0], nn.AdaptiveAvgPool2d)
        and isinstance(layers[1], nn.Flatten)
        and isinstance(layers[2], nn.Linear)
    ):
        return layers[2]
    return None


class _ExportGraph(nn.Module):
    """logits, then (for a linear head) class maps, then (with a gate) the out-of-distribution score."""

    def __init__(self, model: Classifier, cam: torch.Tensor | None, gate: OodGate | None) -> None:
        super().__init__()
        self.model = model
        self.cam = cam is not None
        if cam is not None:
            self.register_buffer("cam_weight", cam.detach().clone())
        self.gate = GateModule(gate) if gate is not None else None
        # The texture part reads an early stage's output: hooks keep it during the traced pass.
        self.recorder = TapRecorder(feature_model(model), gate.taps) if gate is not None else None

    def forward(self, image: torch.Tensor):
        features = self.model.forward_features(image)
        outputs = [self.model.forward_head(features)]
        if self.cam:
            outputs.append(torch.einsum("cf,nfhw->nchw", self.cam_weight, features))
        if self.gate is not None:
            outputs.append(self.gate(image, features, self.recorder))
        return tuple(outputs)


def export_onnx(model_ref: str | Path, out: Path, model_version: str | None = None) -> Path:
    """Write `out` (atomically) and return it; the ONNX metadata carries everything the runtime needs."""
    model, info = load_model_file(resolve_model(model_ref))
    model.eval()
    cam = cam_weights(model)
    graph = _ExportGraph(model, cam, info.ood).eval()
    output_names = (
        ["logits"] + (["cam"] if cam is not None else []) + (["ood_score"] if info.ood else [])
    )
    spec = info.preprocess
    example = torch.zeros(1, spec.channels, spec.size, spec.size)

    def write(tmp: Path) -> None:
        torch.onnx.export(
            graph,
            (example,),
            str(tmp),
            input_names=["image"],
            output_names=output_names,
            dynamic_axes={name: {0: "batch"} for name in ["image", *output_names]},
            opset_version=OPSET,
            dynamo=False,
        )
        _add_metadata(tmp, info, has_cam=cam is not None, model_version=model_version)

    atomic_write(Path(out), write)
    if graph.recorder is not None:
        graph.recorder.remove()
    return Path(out)


def onnx_metadata(info: ModelInfo, has_cam: bool, model_version: str | None) -> dict:
    from pneumoscan import __version__

    metrics = info.val_metrics or {}
    return {
        "format": ONNX_METADATA_FORMAT,
        "name": info.name,
        "model_version": model_version or info.name,
        "pneumoscan_version": __version__,
        "arch": info.arch,
        "task": info.task,
        "class_names": list(info.class_names),
        "threshold": info.threshold,
        "rule": (info.record or {}).get("rule"),  # what ship recorded: {name, params}
        "temperature": info.temperature,
        "class_bias": list(info.class_bias) if info.class_bias is not None else None,
        "preprocess": info.preprocess.to_dict(),
        "has_cam": has_cam,
        "ood_threshold": info.ood.threshold if info.ood is not None else None,
        "val_metrics": {
            k: metrics[k] for k in ("n", "accuracy", "macro_f1", "roc_auc", "ece") if k in metrics
        },
        "training_split": training_split(info),
        "derived_from": info.derived_from,
        "record": info.record,
        "conformal": info.conformal,
    }


def training_split(info: ModelInfo) -> dict | None:
    """How the model's validation patients were drawn, so `stress` and `evaluate` can redraw them."""
    config = info.config or {}
    data, train = config.get("data"), config.get("train", {})
    if not data:
        return None
    return {
        "task": data.get("task", info.task),
        "fold": data.get("fold", 0),
        "val_fraction": data.get("val_fraction", 0.2),
        "seed": train.get("seed", 42) if data.get("split_seed") is None else data["split_seed"],
        "max_patients": data.get("max_patients"),
        "augment_policy": train.get("augment_policy", "basic")
        if train.get("augment", True)
        else None,
    }


def _add_metadata(path: Path, info: ModelInfo, has_cam: bool, model_version: str | None) -> None:
    import onnx

    proto = onnx.load(str(path))
    set_metadata(proto, onnx_metadata(info, has_cam, model_version))
    onnx.save(proto, str(path))


def parity(model_ref: str | Path, onnx_path: Path, images: np.ndarray) -> float:
    """Largest absolute difference of calibrated probabilities between torch and ONNX Runtime."""
    from pneumoscan.runtime.model import OnnxModel

    model, info = load_model_file(resolve_model(model_ref))
    with torch.no_grad():
        logits = model(torch.from_numpy(images)).numpy()
    reference = calibrated_probabilities(logits, info.temperature, info.class_bias)
    onnx_probabilities = OnnxModel(onnx_path).probabilities(images)[0]
    return float(np.abs(reference - onnx_probabilities).max())
