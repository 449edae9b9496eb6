"""The self-describing model file (`model.pt`): weights plus `ModelInfo`.

`ModelInfo` holds everything needed to rebuild the network, preprocess for it and read its
outputs: architecture and head, classes, preprocessing, the temperature and threshold chosen on
validation, the gate, the training config, validation metrics, package versions and what `ship`
or `calibrate` recorded. Files hold only tensors and plain containers and load with
`weights_only=True`, so no class is ever unpickled.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch

from pneumoscan.core.errors import ModelFileError
from pneumoscan.core.fileio import atomic_write
from pneumoscan.core.preprocess import PreprocessSpec
from pneumoscan.training.gate import OodGate
from pneumoscan.training.networks import (
    Classifier,
    EnsembleClassifier,
    GroupedClassifier,
    create_model,
)

MODEL_FILE_FORMAT = "pneumoscan-model/1"


@dataclass
class ModelInfo:
    """Everything needed to rebuild, preprocess for and interpret a trained model."""

    arch: str
    head: str
    dropout: tuple[float, ...]
    task: str
    class_names: tuple[str, ...]
    preprocess: PreprocessSpec
    threshold: float | None = None  # binary: on the calibrated probability of class 1
    temperature: float = 1.0
    class_bias: tuple[float, ...] | None = None  # per-class logit bias after T (site recalibration)
    config: dict | None = None
    val_metrics: dict | None = None
    versions: dict | None = None
    name: str = "pneumoscan-model"
    ood: OodGate | None = None  # the out-of-distribution gate, fitted on training films
    # A model read from a finer one (GroupedClassifier): the source's class names, temperature
    # and the groups of its classes that make each of ours.
    derived_from: dict | None = None
    # What `pneumoscan ship` recorded: calibration rule and films, out-of-sample figures, run facts.
    record: dict | None = None
    # Split-conformal calibration scores (conformal.ConformalCalibration.to_dict), for prediction sets.
    conformal: dict | None = None
    # Where in training the shipped weights were saved (`train.select` picks best or last): the
    # phase (phase-2 is the full-resolution finish), the epoch counted from 1 and the optimizer
    # steps of that phase. None in files written before they were recorded.
    phase: str | None = None
    epoch: int | None = None
    global_step: int | None = None

    def to_dict(self) -> dict:
        return {
            "format": MODEL_FILE_FORMAT,
            "name": self.name,
            "arch": self.arch,
            "head": self.head,
            "dropout": list(self.dropout),
            "task": self.task,
            "class_names": list(self.class_names),
            "preprocess": self.preprocess.to_dict(),
            "threshold": self.threshold,
            "temperature": self.temperature,
            "class_bias": list(self.class_bias) if self.class_bias is not None else None,
            "config": self.config,
            "val_metrics": self.val_metrics,
            "versions": self.versions,
            "derived_from": self.derived_from,
            "record": self.record,
            "conformal": self.conformal,
            "phase": self.phase,
            "epoch": self.epoch,
            "global_step": self.global_step,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ModelInfo:
        return cls(
            arch=data["arch"],
            head=data["head"],
            dropout=tuple(data["dropout"]),
            task=data["task"],
            class_names=tuple(data["class_names"]),
            preprocess=PreprocessSpec.from_dict(data["preprocess"]),
            threshold=data.get("threshold"),
            temperature=float(data.get("temperature", 1.0)),
            class_bias=tuple(data["class_bias"]) if data.get("class_bias") is not None else None,
            config=data.get("config"),
            val_metrics=data.get("val_metrics"),
            versions=data.get("versions"),
            name=data.get("name", "pneumoscan-model"),
            derived_from=data.get("derived_from"),
            record=data.get("record"),
            conformal=data.get("conformal"),
            phase=data.get("phase"),
            epoch=data.get("epoch"),
            global_step=data.get("global_step"),
        )


def package_versions() -> dict:
    import platform

    versions = {"python": platform.python_version()}
    for package in ("pneumoscan", "torch", "torchvision", "lightning", "numpy"):
        try:
            versions[package] = str(importlib.import_module(package).__version__)
        except ImportError:
            continue
    return versions


def save_model_file(
    path: Path, model: Classifier | GroupedClassifier, info: ModelInfo, half: bool = False
) -> None:
    """One self-describing file: weights plus `ModelInfo`, written atomically."""

    weights = model.source if isinstance(model, GroupedClassifier) else model

    def plain(module: torch.nn.Module) -> dict:
        # On the CPU: a network scored on a GPU (networks.scoring_device) loads anywhere.
        return {
            key: value.half().cpu() if half and value.is_floating_point() else value.cpu()
            for key, value in module.state_dict().items()
        }

    payload = {"info": info.to_dict()}
    if isinstance(weights, EnsembleClassifier):
        payload["members"] = [
            {"info": member_info, "state_dict": plain(member)}
            for member, member_info in zip(weights.members, weights.member_infos)
        ]
    else:
        payload["state_dict"] = plain(weights)
    if info.ood is not None:
        payload["ood"] = info.ood.to_tensors()
    atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))


def relabel_model_file(source: Path, out: Path, info: ModelInfo) -> None:
    """A copy of a model file with new `ModelInfo` (and gate) and the weights bit for bit."""

    payload = torch.load(Path(source), map_location="cpu", weights_only=True)
    payload["info"] = info.to_dict()
    if info.ood is not None:
        payload["ood"] = info.ood.to_tensors()
    atomic_write(Path(out), lambda tmp: torch.save(payload, tmp))


def load_model_file(path: Path) -> tuple[Classifier | GroupedClassifier, ModelInfo]:

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        info_dict = payload["info"]
        if info_dict.get("format") != MODEL_FILE_FORMAT:
            raise KeyError("format")
    except Exception as error:  # torch raises many types for foreign or damaged files
        raise ModelFileError(
            f"{path}: not a pneumoscan model file ({type(error).__name__}); "
            "train one with `pneumoscan train`."
        ) from None
    info = ModelInfo.from_dict(info_dict)
    if "ood" in payload:
        info.ood = OodGate.from_tensors(payload["ood"])
    derived = info.derived_from
    if "members" in payload:
        members = [
            _network(ModelInfo.from_dict(m["info"]), m["state_dict"]) for m in payload["members"]
        ]
        model = EnsembleClassifier(members, [m["info"] for m in payload["members"]])
    else:
        classes = len(derived["class_names"] if derived else info.class_names)
        model = _network(info, payload["state_dict"], classes)
    if derived:
        groups = tuple(tuple(members) for members in derived["groups"])
        model = GroupedClassifier(model, derived["temperature"], groups)
    model.eval()
    return model, info


def _network(info: ModelInfo, state_dict: dict, classes: int | None = None) -> Classifier:
    model = create_model(
        info.arch,
        classes or len(info.class_names),
        head=info.head,
        dropout=info.dropout,
        pretrained=False,
        image_size=info.preprocess.size,
    )
    model.load_state_dict(
        {
            key: value.float() if value.is_floating_point() else value
            for key, value in state_dict.items()
        }
    )
    return model
