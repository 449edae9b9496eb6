"""Static int8 quantization of an exported model, and its parity with the fp32 graph.

The convolutions get int8 weights (per output channel) and uint8 activations, in QDQ form, with
activation ranges calibrated on training films (onnxruntime's `quantize_static`), and so do the
operations between them that ONNX Runtime runs in int8 (residual additions, ReLU6 clips,
pooling). The linear heads (Gemm) and the class maps (Einsum) stay fp32, and so do each
member's first convolution, so the image itself is never quantized (`first_convolutions`), and
the gate's own arithmetic (`gate_only_nodes`). On the shipped Lite0 graph this op set took a
batch of 128 films from 6.9 to 4.2 ms a film; convolutions alone gained less (6.0 ms) and moved
the logits and gate scores more. `int8_parity` then runs both graphs on every member's
validation films and reports, per fold, how often the decisions agree and how much the ROC AUC
moves. The gate member's early stages, which the gate's texture part reads, stay fp32 too
(`gate_texture_stages`), and the int8 gate threshold is set on the films the gate was fitted
on, as the fp32 one was (`gate_threshold`; by rank on validation films where those are not
given). The pointwise and depthwise convolution weights are then rounded again by GPTQ on the
inputs each layer reads over the calibration films (`round_weights_gptq`): rounded to nearest,
the depthwise kernels alone moved more decisions than the rest of the quantization. The int8
logits' mean shift from fp32 on the calibration films is subtracted in the graph
(`correct_logit_shift`).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from pneumoscan.core.decision import METADATA_KEY
from pneumoscan.core.fileio import atomic_write
from pneumoscan.evaluation.metrics import roc_auc

logger = logging.getLogger(__name__)

QUANTIZED_OPS = ["Conv", "Add", "Mul", "GlobalAveragePool", "Clip"]
CALIBRATION_BATCH = 16
# Training films the activation ranges are calibrated on. 1,024 rather than 256 moved the decision
# agreement with fp32 by -0.2 to +0.2 points per fold and took 3.5x as long
# (`python -m pneumoscan.research.int8_study`, docs/ensemble.md).
CALIBRATION_FILMS = 256
AGREEMENT_GOAL = 0.995  # per fold: int8 decisions that equal fp32's
AUC_DROP_LIMIT = 0.002  # per fold: fp32 AUC minus int8 AUC


def first_convolutions(graph) -> list[str]:
    """The convolutions that read the input image (through padding, slicing, casts; no other
    convolution in between): each member's stem. They stay fp32, so the image itself is never
    quantized: on a three-member ensemble that raised the decision agreement with fp32 from
    98.6-98.9% to 98.7-99.3% per fold, at a negligible cost (one 3-channel convolution each;
    `python -m pneumoscan.research.int8_study`)."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found, seen = [], set()
    frontier = [tensor.name for tensor in graph.input]
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            if node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type == "Conv":
                found.append(node.name)
            else:
                frontier.extend(node.output)
    return found


GATE_OUTPUT = "ood_score"
CAM_OUTPUT = "cam"


def _ancestors(producer: dict, outputs) -> set[str]:
    found, frontier = set(), list(outputs)
    while frontier:
        node = producer.get(frontier.pop())
        if node is not None and node.name not in found:
            found.add(node.name)
            frontier.extend(node.input)
    return found


def gate_only_nodes(graph) -> list[str]:
    """The nodes that only the gate's score depends on (its Mahalanobis arithmetic, its pooled
    taps), not the logits or the class maps. They stay fp32: their activation ranges would be
    calibrated on chest films, so a photo's or a document's distances, far outside them, were
    clipped to about the threshold and the int8 gate refused 11 of 64 non-radiographs."""
    producer = {name: node for node in graph.node for name in node.output}
    outputs = [tensor.name for tensor in graph.output]
    if GATE_OUTPUT not in outputs:
        return []
    rest = _ancestors(producer, [name for name in outputs if name != GATE_OUTPUT])
    return sorted(_ancestors(producer, [GATE_OUTPUT]) - rest)


def gate_texture_stages(graph) -> list[str]:
    """The nodes that compute the early feature maps the gate's texture part reads: the gate
    member's stem and first stages (the tensors the gate reads besides the final features, which
    the class maps read too). They stay fp32: quantized, they moved a framed film's texture far
    enough that the int8 gate refused 43% of films with a 20% black border (fp32: 5%); with them
    in fp32 and the threshold refitted (`gate_threshold`), 5%. Empty without a class-map output."""
    producer = {name: node for node in graph.node for name in node.output}
    gate = set(gate_only_nodes(graph))
    cam = producer.get(CAM_OUTPUT)
    if not gate or cam is None:
        return []
    reads = {
        tensor
        for node in graph.node
        if node.name in gate
        for tensor in node.input
        if tensor in producer and producer[tensor].name not in gate
    }
    return sorted(_ancestors(producer, reads - set(cam.input)))


def kept_in_fp32(graph) -> list[str]:
    """What ships in fp32 among the quantized op types: the stems, the gate's own nodes and the
    early stages its texture part reads."""
    return sorted(
        set(first_convolutions(graph))
        | set(gate_only_nodes(graph))
        | set(gate_texture_stages(graph))
    )


def gate_threshold(path: Path, films: Iterable[np.ndarray], quantile: float) -> tuple[float, int]:
    """(the `quantile` of the graph's gate scores over `films`, how many films): the int8 graph's
    threshold on the films the gate was fitted on, as the fp32 threshold was set on them. Carried
    by rank on clean validation films instead, it refused 36-43% of framed films, whose int8
    scores spread wider than clean films' do."""
    from pneumoscan.runtime.model import OnnxModel

    model = OnnxModel(path)
    scores = np.concatenate([model.run(batch, cam=False)[GATE_OUTPUT] for batch in films])
    return float(np.quantile(scores, quantile)), len(scores)


def _films_reader(calibration: np.ndarray):
    """onnxruntime's calibration reader over a batch of prepared films."""
    from onnxruntime.quantization import CalibrationDataReader

    class Films(CalibrationDataReader):
        def __init__(self) -> None:
            self.starts = iter(range(0, len(calibration), CALIBRATION_BATCH))

        def get_next(self):
            start = next(self.starts, None)
            if start is None:
                return None
            return {"image": calibration[start : start + CALIBRATION_BATCH].astype(np.float32)}

    return Films()


# Activation-range methods (`quantize_onnx(method=...)`): onnxruntime's calibrators, by the
# name of their `CalibrationMethod` member.
RANGE_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
PERCENTILE = 99.999


def quantize_onnx(
    fp32: Path,
    out: Path,
    calibration: np.ndarray,
    ops: list[str] = QUANTIZED_OPS,
    keep_fp32: Callable[[Any], list[str]] | None = None,
    method: str = "minmax",
) -> Path:
    """Write `out` (atomically): `fp32` with int8 convolutions, its metadata unchanged.
    `calibration` is a batch of prepared training films (N, C, H, W) for activation ranges; `ops`
    the operation types quantized, `keep_fp32(graph)` the nodes among them left in fp32, `method`
    how the activation ranges are set (`RANGE_METHODS`; the defaults are what ships;
    `research.int8_study` compares others)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibrate_method = getattr(CalibrationMethod, RANGE_METHODS[method])
    extra = {}
    if method != "minmax":  # histograms: merged every few batches, or 256 films fill 24 GB
        extra["CalibMaxIntermediateOutputs"] = 4
    if method == "percentile":
        extra["CalibPercentile"] = PERCENTILE

    metadata = {p.key: p.value for p in onnx.load(str(fp32)).metadata_props}
    with tempfile.TemporaryDirectory() as folder:
        prepared = Path(folder) / "prepared.onnx"
        # The gate's arithmetic defeats symbolic shape inference; ONNX's own inference suffices.
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)

        excluded = (keep_fp32 or kept_in_fp32)(onnx.load(str(prepared)).graph)

        def write(tmp: Path) -> None:
            quantize_static(
                str(prepared),
                str(tmp),
                _films_reader(calibration),
                quant_format=QuantFormat.QDQ,
                calibrate_method=calibrate_method,
                extra_options=extra,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=ops,
                nodes_to_exclude=excluded,
            )
            proto = onnx.load(str(tmp))
            del proto.metadata_props[:]
            for key, value in metadata.items():
                entry = proto.metadata_props.add()
                entry.key, entry.value = key, value
            onnx.save(proto, str(tmp))

        atomic_write(Path(out), write)
    return Path(out)


def noisiest_nodes(int8: Path, calibration: np.ndarray, count: int) -> list[str]:
    """A per-layer sensitivity measure: the nodes around the `count` quantized activations whose
    own int8 rounding is noisiest (lowest signal-to-quantization-noise ratio between each
    tensor before its QuantizeLinear and after its DequantizeLinear, over `calibration`): each
    such tensor's producer and consumers, by name, for `quantize_onnx(keep_fp32=...)`."""
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as debug

    with tempfile.TemporaryDirectory() as folder:
        augmented = Path(folder) / "augmented.onnx"
        debug.modify_model_output_intermediate_tensors(str(int8), str(augmented))
        activations = debug.collect_activations(str(augmented), _films_reader(calibration))
    noise = {
        tensor: debug.compute_signal_to_quantization_noice_ratio(
            match["pre_qdq"], match["post_qdq"]
        )
        for tensor, match in debug.create_activation_matching(activations).items()
    }
    noisy = set(sorted(noise, key=noise.get)[:count])

    def original(name: str) -> str:
        return name.removesuffix(debug.DEQUANT_OUTPUT_SUFFIX).removesuffix(debug.QUANT_INPUT_SUFFIX)

    nodes = set()
    for node in onnx.load(str(int8)).graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if {original(name) for name in [*node.input, *node.output]} & noisy:
            nodes.add(node.name)
    return sorted(nodes)


GPTQ_DAMPING = 0.01  # of the mean diagonal, added to each layer's input second moments


class _Layer(NamedTuple):
    """An int8 convolution whose weights GPTQ re-rounds: pointwise (1x1, one set of input
    moments for all its rows) or depthwise (one k x k kernel per channel, moments per channel)."""

    node: Any
    reader: Any  # the weight's DequantizeLinear
    depthwise: bool
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]


def convolution_kind(node, weight_shape) -> str | None:
    """ "depthwise" (one k x k kernel per channel), "pointwise" (1x1, not grouped) or None for
    any other convolution, from its group and its weight's shape."""
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    shape = list(weight_shape)
    if group > 1 and group == shape[0] and shape[1] == 1:
        return "depthwise"
    if group == 1 and shape[2:] == [1, 1]:
        return "pointwise"
    return None


def _gptq_layers(graph) -> list[_Layer]:
    """The int8 convolutions, pointwise or depthwise, whose input activation is int8 too: every
    convolution but the fp32 stems."""
    producer = {name: node for node in graph.node for name in node.output}
    shapes = {tensor.name: list(tensor.dims) for tensor in graph.initializer}
    found = []
    for node in graph.node:
        reader = producer.get(node.input[1]) if node.op_type == "Conv" else None
        if (
            reader is None
            or reader.op_type != "DequantizeLinear"
            or getattr(producer.get(node.input[0]), "op_type", "") != "DequantizeLinear"
        ):
            continue
        shape = shapes.get(reader.input[0], [])
        kind = convolution_kind(node, shape)
        if kind is None:
            continue
        attributes = {a.name: list(a.ints) or a.s or a.i for a in node.attribute}
        padded_by_rule = attributes.get("auto_pad", b"NOTSET") not in (b"NOTSET", 0)
        if padded_by_rule or any(d != 1 for d in attributes.get("dilations", [1, 1])):
            continue
        found.append(
            _Layer(
                node,
                reader,
                kind == "depthwise",
                tuple(shape[2:]),
                tuple(attributes.get("strides", [1, 1])),
                tuple(attributes.get("pads", [0, 0, 0, 0])),
            )
        )
    return found


def _moments_of(layer: _Layer, value: np.ndarray) -> tuple[np.ndarray, int]:
    """(the second moments of what `layer` reads in `value` (N, C, H, W), summed; how many
    positions they sum over): C x C across channels for a pointwise layer; C x K x K within each
    channel's K = k*k window for a depthwise one (its padding and strides applied)."""
    if not layer.depthwise:
        rows = value.transpose(0, 2, 3, 1).reshape(-1, value.shape[1]).astype(np.float64)
        return rows.T @ rows, len(rows)
    top, left, bottom, right = layer.pads
    padded = np.pad(value, ((0, 0), (0, 0), (top, bottom), (left, right)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, layer.kernel, axis=(2, 3))
    windows = windows[:, :, :: layer.strides[0], :: layer.strides[1]]
    channels = value.shape[1]
    patches = windows.transpose(1, 0, 2, 3, 4, 5).reshape(channels, -1, int(np.prod(layer.kernel)))
    patches = patches.astype(np.float64)
    return patches.transpose(0, 2, 1) @ patches, patches.shape[1]


def _input_moments(int8, layers: list[_Layer], calibration: np.ndarray) -> list:
    """Each layer's input moments (`_moments_of`) divided by the positions they sum over, from
    the int8 graph (`int8`, a ModelProto, left as it is) run on `calibration`: what each layer
    really reads."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    proto = onnx.ModelProto()
    proto.CopyFrom(int8)
    wanted = list(dict.fromkeys(layer.node.input[0] for layer in layers))
    have = {tensor.name for tensor in proto.graph.output}
    proto.graph.output.extend(
        helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
        for name in wanted
        if name not in have
    )
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    sums, positions = [0.0] * len(layers), [0] * len(layers)
    for start in range(0, len(calibration), CALIBRATION_BATCH):
        batch = calibration[start : start + CALIBRATION_BATCH].astype(np.float32)
        values = dict(zip(wanted, session.run(wanted, {"image": batch}), strict=True))
        for index, layer in enumerate(layers):
            moments, count = _moments_of(layer, values[layer.node.input[0]])
            sums[index] = sums[index] + moments
            positions[index] += count
    return [total / count for total, count in zip(sums, positions, strict=True)]


def _gptq_rows(weight: np.ndarray, scale: np.ndarray, moments: np.ndarray) -> np.ndarray:
    """GPTQ (Frantar et al., 2023) at 8 bits: `weight` (rows, K) rounded to int8 one column at a
    time on the fixed per-row `scale`, each column's rounding error pushed onto the columns not
    yet rounded through the inverse of the input second `moments` (K x K shared by every row,
    or rows x K x K), so the layer's output on its inputs moves least. Shared moments take the
    columns largest input energy first."""
    moments = np.array(moments, np.float64, ndmin=3)  # (1 or rows, K, K)
    weight = weight.astype(np.float64)
    diagonal = np.diagonal(moments, axis1=1, axis2=2).copy()
    dead = diagonal == 0
    weight = np.where(dead, 0.0, weight)
    moments[:, np.arange(moments.shape[1]), np.arange(moments.shape[1])] = np.where(
        dead, 1.0, diagonal
    ) + GPTQ_DAMPING * diagonal.mean(axis=1, keepdims=True)
    order = np.arange(weight.shape[1])
    if len(moments) == 1:
        order = np.argsort(-diagonal[0], kind="stable")
        weight, moments = weight[:, order], moments[:, order][:, :, order]
    inverse = np.linalg.cholesky(np.linalg.inv(moments)).transpose(0, 2, 1)  # H^-1 = U^T U
    rounded = np.zeros(weight.shape)
    for column in range(weight.shape[1]):
        rounded[:, column] = np.clip(np.round(weight[:, column] / scale), -127, 127)
        error = (weight[:, column] - rounded[:, column] * scale) / inverse[:, column, column]
        weight[:, column + 1 :] -= error[:, None] * inverse[:, column, column + 1 :]
    return rounded[:, np.argsort(order)].astype(np.int8)


def _output_error(change: np.ndarray, moments: np.ndarray) -> float:
    """The mean squared output change of a layer whose weights moved by `change` (rows, K)."""
    if moments.ndim == 2:
        return float(np.einsum("ri,ij,rj->", change, moments, change))
    return float(np.einsum("ri,rij,rj->", change, moments, change))


def round_weights_gptq(int8: Path, fp32: Path, calibration: np.ndarray) -> dict:
    """Re-round the int8 graph's pointwise and depthwise convolution weights with GPTQ
    (`_gptq_rows`) on the inputs those layers read over `calibration`, from the fp32 weights and
    on each weight's own scale, so nothing else in the graph changes. Rounded to nearest, the
    depthwise weights alone had moved a three-member ensemble's decisions on 0.6-0.7% of films
    (every other weight on 0.1-0.6%). Rewrites `int8` atomically; returns the layers and how
    much their summed output error on those inputs fell against rounding to nearest."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(int8))
    layers = _gptq_layers(proto.graph)
    originals = {t.name: t for t in onnx.load(str(fp32)).graph.initializer}
    initializers = {t.name: t for t in proto.graph.initializer}
    errors, done = {"nearest": 0.0, "gptq": 0.0}, []
    for layer, moments in zip(layers, _input_moments(proto, layers, calibration), strict=True):
        stored = initializers[layer.reader.input[0]]
        original = originals.get(layer.reader.input[0].removesuffix("_quantized"))
        if original is None:  # a weight name this version of the quantizer did not derive
            logger.warning("GPTQ: no fp32 weight for %s; left rounded to nearest", layer.node.name)
            continue
        weight = numpy_helper.to_array(original).reshape(stored.dims[0], -1).astype(np.float64)
        scale = numpy_helper.to_array(initializers[layer.reader.input[1]]).astype(np.float64)
        rounded = _gptq_rows(weight, scale, moments)
        nearest = numpy_helper.to_array(stored).reshape(weight.shape)
        for kind, values in (("nearest", nearest), ("gptq", rounded)):
            errors[kind] += _output_error(weight - values * scale[:, None], moments)
        stored.CopyFrom(numpy_helper.from_array(rounded.reshape(stored.dims), stored.name))
        done.append(layer)
    atomic_write(Path(int8), lambda tmp: onnx.save(proto, str(tmp)))
    return {
        "layers": len(done),
        "depthwise": sum(layer.depthwise for layer in done),
        "output_error_ratio": errors["gptq"] / errors["nearest"] if errors["nearest"] else 1.0,
    }


LOGITS_OUTPUT = "logits"


def logit_shift(fp32: Path, int8: Path, calibration: np.ndarray) -> np.ndarray:
    """The int8 graph's mean logit minus the fp32 graph's, per class, over the calibration films:
    quantization's systematic part, which `correct_logit_shift` takes out."""
    runs = [_run_all(path, calibration)[LOGITS_OUTPUT] for path in (int8, fp32)]
    return (runs[0] - runs[1]).mean(axis=0)


def correct_logit_shift(int8: Path, shift: np.ndarray) -> None:
    """Subtract `shift` from the int8 graph's logits, in the graph (atomically): bias correction
    at the output. The class maps and the gate are left as they are. The shift is a few
    hundredths of a logit; over eight paired folds of release 5's and 6's graphs (1,046 films
    each) it kept 9 more decisions equal to fp32's than it lost, at no cost in speed or size.
    Keeping the 64 noisiest activations in fp32 instead reached 99.81% / 99.52% but made each
    graph 39 MB (`python -m pneumoscan.research.int8_study`, docs/ensemble.md)."""
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(str(int8))
    graph = proto.graph
    raw = f"{LOGITS_OUTPUT}_before_shift"
    for node in graph.node:
        node.output[:] = [raw if name == LOGITS_OUTPUT else name for name in node.output]
        node.input[:] = [raw if name == LOGITS_OUTPUT else name for name in node.input]
    constant = f"{LOGITS_OUTPUT}_int8_shift"
    graph.initializer.append(numpy_helper.from_array(shift.astype(np.float32), constant))
    graph.node.append(
        helper.make_node("Sub", [raw, constant], [LOGITS_OUTPUT], name="int8_logit_shift")
    )
    atomic_write(Path(int8), lambda tmp: onnx.save(proto, str(tmp)))


def set_metadata_value(path: Path, key: str, value) -> None:
    """Replace one key of the pneumoscan metadata in an ONNX file (atomically)."""
    import onnx

    proto = onnx.load(str(path))
    entry = next(p for p in proto.metadata_props if p.key == METADATA_KEY)
    metadata = json.loads(entry.value)
    metadata[key] = value
    entry.value = json.dumps(metadata)
    atomic_write(Path(path), lambda tmp: onnx.save(proto, str(tmp)))


def _run_all(path: Path, images: np.ndarray, batch: int = 64) -> dict[str, np.ndarray]:
    from pneumoscan.runtime.model import OnnxModel

    model = OnnxModel(path)
    parts = [
        model.run(images[start : start + batch], cam=False)
        for start in range(0, len(images), batch)
    ]
    outputs = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    outputs["labels"] = np.array([model.label_index(p) for p in outputs["probabilities"]])
    outputs["ood_threshold"] = model.ood_threshold
    return outputs


def _auc(targets: np.ndarray, probabilities: np.ndarray, binary: bool) -> float:
    """Binary: P(pneumonia). Three-class: P(bacteria) + P(virus) against normal, the reading
    that both tasks share."""
    positive = probabilities[:, 1] if binary else probabilities[:, 1:].sum(axis=1)
    return roc_auc((targets > 0).astype(int), np.stack([1 - positive, positive], axis=1))


def int8_parity(
    fp32: Path, int8: Path, images: np.ndarray, targets: np.ndarray, folds: np.ndarray
) -> dict:
    """Decision agreement and ROC AUC of both graphs per validation fold, and the gate threshold
    on the int8 scale (same rank among these films as the fp32 threshold)."""
    reference, quantized = _run_all(fp32, images), _run_all(int8, images)
    binary = reference["probabilities"].shape[1] == 2
    rows = []
    for fold in np.unique(folds):
        keep = folds == fold
        fp32_auc = _auc(targets[keep], reference["probabilities"][keep], binary)
        int8_auc = _auc(targets[keep], quantized["probabilities"][keep], binary)
        rows.append(
            {
                "fold": int(fold),
                "films": int(keep.sum()),
                "agreement": float((reference["labels"][keep] == quantized["labels"][keep]).mean()),
                "fp32_auc": fp32_auc,
                "int8_auc": int8_auc,
                "auc_drop": fp32_auc - int8_auc,
                "fp32_accuracy": float((reference["labels"][keep] == targets[keep]).mean()),
                "int8_accuracy": float((quantized["labels"][keep] == targets[keep]).mean()),
            }
        )
    facts = {
        "films": len(targets),
        "quantized_ops": QUANTIZED_OPS,
        "folds": rows,
        "max_probability_difference": float(
            np.abs(reference["probabilities"] - quantized["probabilities"]).max()
        ),
        "within_goals": all(
            r["agreement"] >= AGREEMENT_GOAL and r["auc_drop"] <= AUC_DROP_LIMIT for r in rows
        ),
    }
    threshold = reference["ood_threshold"]
    if threshold is not None and "ood_score" in quantized:
        rank = float((reference["ood_score"] <= threshold).mean())
        facts["gate"] = {
            "fp32_threshold": float(threshold),
            "int8_threshold": float(np.quantile(quantized["ood_score"], rank)),
            "fp32_refused": float((reference["ood_score"] > threshold).mean()),
        }
    return facts


def _prepared(paths: list[Path], spec) -> np.ndarray:
    from pneumoscan.core.images import read_image
    from pneumoscan.core.preprocess import prepare

    return np.stack([prepare(read_image(path, min_side=spec.decode_side), spec) for path in paths])


def calibration_batch(run: Path, spec, films: int = CALIBRATION_FILMS) -> np.ndarray:
    """`films` of the run's training films (all, if it has fewer), prepared: the same draw every
    time, for the activation ranges."""
    from pneumoscan.core import dataset as ds

    train, _ = ds.read_split(run, "train")
    chosen = np.random.default_rng(0).choice(len(train), size=min(films, len(train)), replace=False)
    return _prepared([train[i].path for i in sorted(chosen)], spec)


def validation_films(
    runs: list[Path], spec, binary: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(images, targets, fold index, run names): every run's validation films prepared, each
    fold once (two members on the same fold share it), targets read as binary where asked."""
    from pneumoscan.core import dataset as ds

    paths, targets, folds, seen, names = [], [], [], set(), []
    for run in runs:
        samples, run_targets = ds.read_split(run, "val")
        films = tuple(sorted(str(s.path) for s in samples))
        if films in seen:
            continue
        seen.add(films)
        paths += [s.path for s in samples]
        targets.append(run_targets)
        folds += [len(names)] * len(samples)
        names.append(str(run))
    targets = np.concatenate(targets)
    if binary and targets.max() > 1:
        targets = (targets > 0).astype(int)  # a binary reading of three-class runs
    logger.info("int8 parity on %d validation films of %d fold(s)", len(paths), len(names))
    return _prepared(paths, spec), targets, np.array(folds), names


def quantize_as_shipped(fp32: Path, out: Path, run: Path, spec) -> dict:
    """Quantize `fp32` into `out` as `ship --int8` does: calibrated on `CALIBRATION_FILMS` of
    `run`'s training films, weights re-rounded by GPTQ, the logit shift taken out. Returns what
    each step did (calibration films, GPTQ's facts, the shift per class)."""
    calibration = calibration_batch(run, spec)
    quantize_onnx(fp32, out, calibration)
    rounding = round_weights_gptq(out, fp32, calibration)
    shift = logit_shift(fp32, out, calibration)
    correct_logit_shift(out, shift)
    return {
        "calibration_films": len(calibration),
        "gptq": rounding,
        "logit_shift": [float(value) for value in shift],
    }


def quantize_shipped(
    fp32: Path,
    out: Path,
    spec,
    runs: list[Path],
    binary: bool,
    gate_films: Callable[[], Iterable[np.ndarray]] | None = None,
) -> dict:
    """Quantize a shipped graph into `out`, calibrated on `CALIBRATION_FILMS` training films of the
    first run, and check it on every run's validation films (each run's fold kept apart). Returns
    the parity facts; the int8 file gets the gate threshold on its own scale: `GATE_QUANTILE` of
    its scores on `gate_films()` (batches of the films the gate was fitted on), or without them,
    the fp32 threshold's rank among the validation films."""
    import onnx

    steps = quantize_as_shipped(fp32, out, runs[0], spec)
    images, targets, folds, names = validation_films(runs, spec, binary)
    facts = int8_parity(fp32, out, images, targets, folds)
    for row in facts["folds"]:
        row["run"] = names[row["fold"]]  # whose validation films
    facts.update(steps)
    graph = onnx.load(str(fp32)).graph
    facts["fp32_convolutions"] = first_convolutions(graph)
    facts["fp32_gate_nodes"] = len(gate_only_nodes(graph))
    facts["fp32_texture_nodes"] = len(gate_texture_stages(graph))
    facts["sizes_mb"] = {"fp32": fp32.stat().st_size / 1e6, "int8": out.stat().st_size / 1e6}
    if "gate" in facts and gate_films is not None:
        from pneumoscan.core.decision import GATE_QUANTILE

        facts["gate"]["int8_threshold_by_rank"] = facts["gate"]["int8_threshold"]
        threshold, films = gate_threshold(out, gate_films(), GATE_QUANTILE)
        facts["gate"].update({"int8_threshold": threshold, "int8_threshold_films": films})
    if "gate" in facts:
        set_metadata_value(out, "ood_threshold", facts["gate"]["int8_threshold"])
    return facts
