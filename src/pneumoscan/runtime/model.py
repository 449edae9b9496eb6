"""The exported model on ONNX Runtime: the session, the pneumoscan metadata stored in the file
(classes, preprocessing, temperature, threshold, gate threshold, conformal scores), checked on
load against the model contract (`core.contract`), and `load_runtime_model` for a shipped name
or a path. Never imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pneumoscan.core.conformal import ConformalCalibration
from pneumoscan.core.decision import (
    METADATA_KEY,
    ONNX_METADATA_FORMAT,
    REQUIRED_METADATA_KEYS,
    calibrated_probabilities,
    decide,
)
from pneumoscan.core.errors import ModelFileError
from pneumoscan.core.fileio import atomic_write, user_cache_dir
from pneumoscan.core.hardware import usable_cpus
from pneumoscan.core.preprocess import PreprocessSpec, prepare
from pneumoscan.core.shipped import resolve_model

OPTIMIZED_CACHE_ENV = "PNEUMOSCAN_ONNX_CACHE"  # a folder, or 0 to switch the cache off


def optimized_cache_path(path: Path) -> Path | None:
    """Where the graph ONNX Runtime optimised from `path` is kept between processes, keyed by
    the file (path, size, modification time) and the onnxruntime version; None when off."""
    import hashlib

    import onnxruntime as ort

    folder = _cache_folder()
    if folder is None:
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{ort.__version__}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return folder / f"{path.stem}-{digest}.ort.onnx"


def optimized_session(path: Path, options):
    """An ONNX Runtime session on `path`, fully optimised (ORT_ENABLE_ALL). The optimised graph
    is saved once in the cache (`optimized_cache_path`) and later processes load it with no
    optimisation pass, which is most of a cold start's session time; a cache that cannot be
    read or written is passed over, and the model file itself is never changed."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    cache = optimized_cache_path(path)
    if cache is not None and cache.is_file():
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            return ort.InferenceSession(str(cache), options, providers=providers)
        except Exception:  # a damaged or foreign cache entry: optimise from the file again
            cache.unlink(missing_ok=True)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if cache is None:
        return ort.InferenceSession(str(path), options, providers=providers)
    sessions = []

    def optimise_into(temporary: Path) -> None:
        options.optimized_model_filepath = str(temporary)
        # ONNX Runtime warns that an ALL-level graph suits this machine only: the cache is this
        # machine's, keyed by the file and the onnxruntime version.
        options.log_severity_level = 3
        sessions.append(ort.InferenceSession(str(path), options, providers=providers))

    try:
        atomic_write(cache, optimise_into, durable=False)  # a rerun makes it again
    except OSError:  # a cache folder that cannot be written: the session serves without it
        if not sessions:
            options.optimized_model_filepath = ""
            return ort.InferenceSession(str(path), options, providers=providers)
    return sessions[0]


def _cache_folder() -> Path | None:
    """The runtime's cache folder (`OPTIMIZED_CACHE_ENV`, else the user cache), None when off."""
    import os

    setting = os.environ.get(OPTIMIZED_CACHE_ENV, "")
    if setting == "0":
        return None
    return Path(setting) if setting else user_cache_dir() / "onnx"


def check_contract(raw: str, metadata: dict, path: Path) -> None:
    """`core.contract.validate_metadata`, once per metadata text and contract: a text that
    passed leaves a marker in the cache, named by the digests of the text and of the contract's
    source, and later loads of it skip pydantic (about a fifth of a cold `predict`). Any other
    text, a changed contract or no cache: validated in full."""
    import hashlib
    import importlib.util

    folder = _cache_folder()
    marker = None
    if folder is not None:
        try:
            origin = importlib.util.find_spec("pneumoscan.core.contract").origin
            contract = hashlib.sha256(Path(origin).read_bytes()).hexdigest()[:16]
        except (AttributeError, OSError, TypeError):
            contract = None
        if contract is not None:
            text = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:32]
            marker = folder / "contracts" / f"{text}-{contract}"
            if marker.is_file():
                return
    from pneumoscan.core.contract import validate_metadata

    validate_metadata(metadata, path)
    if marker is not None:
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        except OSError:  # a cache that cannot be written: validated again next time
            pass


class OnnxModel:
    """An ONNX Runtime session plus the pneumoscan metadata stored in the file."""

    def __init__(self, path: Path | str, threads: int | None = None, gate: bool = True) -> None:
        import onnxruntime as ort

        path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or usable_cpus()
        options.inter_op_num_threads = 1
        # Decoding runs beside inference on the same cores: idle ONNX threads must not spin.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = optimized_session(path, options)
        except Exception as error:  # onnxruntime raises its own untyped errors for bad files
            raise ModelFileError(
                f"{path}: not a readable ONNX model ({type(error).__name__})."
            ) from None
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if raw is None:
            raise ModelFileError(
                f"{path}: ONNX file has no pneumoscan metadata; export it with `pneumoscan export`."
            )
        try:
            self.metadata = json.loads(raw)
        except ValueError as error:  # JSONDecodeError, or bytes that are not text
            raise ModelFileError(
                f"{path}: the pneumoscan metadata in this ONNX file is not valid JSON "
                f"({error.__class__.__name__} at character {getattr(error, 'pos', '?')}); "
                "re-export it with `pneumoscan export`."
            ) from None
        if not isinstance(self.metadata, dict):
            raise ModelFileError(
                f"{path}: the pneumoscan metadata in this ONNX file is a JSON "
                f"{type(self.metadata).__name__}, not an object; re-export it."
            )
        version = self.metadata.get("format", ONNX_METADATA_FORMAT)
        missing = [key for key in REQUIRED_METADATA_KEYS if key not in self.metadata]
        if version != ONNX_METADATA_FORMAT or missing:
            raise ModelFileError(
                f"{path}: metadata format {version!r} (missing {', '.join(missing) or 'nothing'}); "
                f"this pneumoscan reads {ONNX_METADATA_FORMAT}. Re-export it with `pneumoscan export`."
            )
        check_contract(raw, self.metadata, path)
        self.path = path
        self.class_names: tuple[str, ...] = tuple(self.metadata["class_names"])
        self.threshold: float | None = self.metadata.get("threshold")
        self.temperature: float = float(self.metadata.get("temperature", 1.0))
        self.class_bias: list[float] | None = self.metadata.get("class_bias")
        self.spec = PreprocessSpec.from_dict(self.metadata["preprocess"])
        self.has_cam = bool(self.metadata.get("has_cam"))
        self.ood_threshold: float | None = self.metadata.get("ood_threshold") if gate else None
        # The DICOM header pre-check (modality, body part, view) runs whenever the gate is on.
        self.header_check = gate
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

    def run(self, batch: np.ndarray, cam: bool = True) -> dict[str, np.ndarray]:
        """All outputs by name (raw `logits` among them; the class maps only with `cam`, which
        ONNX Runtime then skips computing), plus `probabilities`: temperature-calibrated."""
        names = self.output_names if cam else [n for n in self.output_names if n != "cam"]
        outputs = dict(
            zip(names, self.session.run(names, {"image": batch.astype(np.float32, copy=False)}))
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
