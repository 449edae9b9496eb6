"""Which int8 settings keep an ensemble's decisions: a study, not a test.

    python -m pneumoscan.research.int8_study runs/m0-lite0-fov/shipped/three-class-fp32.onnx \\
        --run runs/m0-lite0-fov --run runs/m1-lite1-fram --run runs/m2-lite0-fram \\
        --out runs/int8-study

Quantizes one fp32 graph (as `ship --int8` writes it to RUN/shipped/) under each setting below,
runs both graphs on every run's validation films and writes `int8-study.md`: decision agreement
with fp32 and ROC AUC drop per fold, the largest probability difference and the file size.
Calibration films are the first run's training films (the same draw as `ship`). Needs the
[train] extra (onnx, onnxruntime's quantization tools).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from pneumoscan.core.fileio import atomic_write_text
from pneumoscan.runtime.model import OnnxModel
from pneumoscan.training import quantize as q


def _convs(graph, part: str) -> list[str]:
    return [n.name for n in graph.node if n.op_type == "Conv" and part in n.name]


def _none(graph) -> list[str]:
    return []


ROUNDED_KINDS = ("pointwise", "depthwise", "all")


def _int8_per_channel(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 values, fp32 scale per output channel): `values` rounded to nearest on a symmetric
    scale per output channel, as `quantize_static` scales int8 weights."""
    scale = np.abs(values).reshape(len(values), -1).max(axis=1) / 127
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    shape = (-1,) + (1,) * (values.ndim - 1)
    return np.clip(np.round(values / scale.reshape(shape)), -127, 127).astype(np.int8), scale


def _weights_rounded(fp32: Path, out: Path, kind: str) -> None:
    """`fp32` with only the weights of one kind of convolution (`ROUNDED_KINDS`; never the
    stems, the gate's or its early stages, which ship fp32) rounded to int8 per output channel,
    to nearest, and read back as fp32: nothing else quantized, so the decisions that move are
    that rounding's alone."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(fp32))
    kept = set(q.kept_in_fp32(proto.graph))
    weights = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type != "Conv" or node.name in kept or node.input[1] not in weights:
            continue
        values = numpy_helper.to_array(weights[node.input[1]])
        if kind == "all" or q.convolution_kind(node, values.shape) == kind:
            rounded, scale = _int8_per_channel(values)
            back = rounded * scale.reshape((-1,) + (1,) * (values.ndim - 1))
            weights[node.input[1]].CopyFrom(numpy_helper.from_array(back, node.input[1]))
    onnx.save(proto, str(out))


WEIGHT_STORAGE = ("int8", "fp16")


def _store_weights_smaller(path: Path, nodes: Iterable[str], storage: str) -> int:
    """Store the fp32 weights of the convolutions among `nodes` (ones left out of int8, so
    their activations stay fp32) in `storage`: "int8", per output channel, symmetric, read
    back through a DequantizeLinear; or "fp16", read back through a Cast, which ONNX Runtime
    folds into an fp32 constant when the session starts. The arithmetic stays fp32 either way;
    only the file shrinks. Rewrites `path`; returns how many weights it stored."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    proto = onnx.load(str(path))
    graph = proto.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    uses = Counter(name for node in graph.node for name in node.input)
    wanted, readers, stored = set(nodes), [], 0
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "Conv" else None
        if (
            node.name not in wanted
            or weight is None
            or weight.data_type != TensorProto.FLOAT
            or uses[weight.name] > 1
        ):
            continue
        values = numpy_helper.to_array(weight)
        read = f"{weight.name}_{storage}_read"
        if storage == "fp16":
            small = numpy_helper.from_array(values.astype(np.float16), f"{weight.name}_fp16")
            readers.append(helper.make_node("Cast", [small.name], [read], to=TensorProto.FLOAT))
            graph.initializer.append(small)
        else:
            rounded, scale = _int8_per_channel(values)
            tensors = [
                numpy_helper.from_array(rounded, f"{weight.name}_int8"),
                numpy_helper.from_array(scale, f"{weight.name}_int8_scale"),
                numpy_helper.from_array(np.zeros(len(values), np.int8), f"{weight.name}_int8_zero"),
            ]
            graph.initializer.extend(tensors)
            readers.append(
                helper.make_node("DequantizeLinear", [t.name for t in tensors], [read], axis=0)
            )
        node.input[1] = read
        graph.initializer.remove(weight)
        stored += 1
    for position, reader in enumerate(readers):
        graph.node.insert(position, reader)
    onnx.save(proto, str(path))
    return stored


class Setting(NamedTuple):
    described: str
    ops: list[str]  # operation types quantized
    keep: Callable[[Any], list[str]]  # nodes among them kept fp32
    films: int = 256  # calibration films
    method: str = "minmax"  # activation ranges (`quantize.RANGE_METHODS`)
    noisiest: int = 0  # the noisiest activations also kept fp32 (`quantize.noisiest_nodes`)
    storage: str | None = None  # how those nodes' weights are stored (`_store_weights_smaller`)
    shift_corrected: bool = False  # the int8 logits' mean shift taken out (`correct_logit_shift`)
    gptq: bool = False  # pointwise and depthwise weights rounded by GPTQ (`round_weights_gptq`)
    rounded: str | None = None  # instead of quantizing: only these weights rounded to int8


KEPT = "stems (and the gate) fp32"
SETTINGS = {
    "all-int8": Setting("op set, every convolution int8", q.QUANTIZED_OPS, _none),
    "films-1024": Setting("the same, 1,024 calibration films", q.QUANTIZED_OPS, _none, 1024),
    "gap-fp32": Setting(
        "pooled features fp32", [o for o in q.QUANTIZED_OPS if o != "GlobalAveragePool"], _none
    ),
    "head-fp32": Setting(
        "head convolutions fp32", q.QUANTIZED_OPS, lambda g: _convs(g, "_conv_head")
    ),
    "last-block-fp32": Setting(
        "last block fp32", q.QUANTIZED_OPS, lambda g: _convs(g, "_blocks.15/")
    ),
    "depthwise-fp32": Setting(
        "depthwise convolutions fp32", q.QUANTIZED_OPS, lambda g: _convs(g, "_depthwise")
    ),
    "conv-only": Setting("convolutions alone", ["Conv"], _none),
    "stems-fp32": Setting(KEPT, q.QUANTIZED_OPS, q.kept_in_fp32),
    "shift-corrected": Setting(
        f"{KEPT}, the logit shift corrected (release 6)",
        q.QUANTIZED_OPS,
        q.kept_in_fp32,
        shift_corrected=True,
    ),
    "stems-fp32-films-1024": Setting(
        f"{KEPT}, 1,024 calibration films", q.QUANTIZED_OPS, q.kept_in_fp32, 1024
    ),
    "percentile": Setting(
        f"{KEPT}, ranges at the {q.PERCENTILE}th percentile",
        q.QUANTIZED_OPS,
        q.kept_in_fp32,
        method="percentile",
    ),
    "entropy": Setting(
        f"{KEPT}, ranges by entropy", q.QUANTIZED_OPS, q.kept_in_fp32, method="entropy"
    ),
    **{
        f"rounded-{kind}": Setting(
            "nothing quantized but "
            + ("every convolution's" if kind == "all" else f"the {kind} convolutions'")
            + " weights, rounded to nearest",
            [],
            q.kept_in_fp32,
            rounded=kind,
        )
        for kind in ROUNDED_KINDS
    },
    "shipped": Setting(
        f"{KEPT}, pointwise and depthwise weights rounded by GPTQ, the logit shift corrected: "
        "what ships",
        q.QUANTIZED_OPS,
        q.kept_in_fp32,
        shift_corrected=True,
        gptq=True,
    ),
    **{
        f"noisiest-{count}{'' if storage is None else '-' + storage}": Setting(
            f"{KEPT}, and the {count} noisiest activations"
            + ("" if storage is None else f", their weights stored {storage}, shift corrected"),
            q.QUANTIZED_OPS,
            q.kept_in_fp32,
            noisiest=count,
            storage=storage,
            shift_corrected=storage is not None,
        )
        for count in (8, 24, 64, 128)
        for storage in (None, *WEIGHT_STORAGE)
    },
}
SENSITIVITY_FILMS = 32  # calibration films the noisiest activations are ranked on


def study(fp32: Path, runs: list[Path], out: Path, names: list[str]) -> list[dict]:
    model = OnnxModel(fp32)
    prepared = {
        films: q.calibration_batch(runs[0], model.spec, films)
        for films in {SETTINGS[name].films for name in names}
    }
    binary = model.class_names == ("normal", "pneumonia")
    images, targets, folds, _ = q.validation_films(runs, model.spec, binary)
    rows = []
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        setting = SETTINGS[name]
        films = prepared[setting.films]
        path = out / f"{len(rows)}.onnx"
        started = time.perf_counter()
        if setting.rounded:
            _weights_rounded(fp32, path, setting.rounded)
        else:
            q.quantize_onnx(
                fp32, path, films, setting.ops, keep_fp32=setting.keep, method=setting.method
            )
        if setting.noisiest:
            extra = q.noisiest_nodes(path, films[:SENSITIVITY_FILMS], setting.noisiest)
            print(f"{name}: {len(extra)} more nodes fp32", flush=True)

            def keep(graph, first=setting.keep, extra=extra):
                return sorted(set(first(graph)) | set(extra))

            q.quantize_onnx(fp32, path, films, setting.ops, keep_fp32=keep, method=setting.method)
            if setting.storage:
                stored = _store_weights_smaller(path, extra, setting.storage)
                print(f"{name}: {stored} weights stored {setting.storage}", flush=True)
        if setting.gptq:
            print(f"{name}: {q.round_weights_gptq(path, fp32, films)}", flush=True)
        if setting.shift_corrected:
            q.correct_logit_shift(path, q.logit_shift(fp32, path, films))
        seconds = time.perf_counter() - started
        facts = q.int8_parity(fp32, path, images, targets, folds)
        rows.append(
            {
                "setting": setting.described,
                "agreement": [r["agreement"] for r in facts["folds"]],
                "auc_drop": [r["auc_drop"] for r in facts["folds"]],
                "max_probability_difference": facts["max_probability_difference"],
                "mb": path.stat().st_size / 1e6,
                "quantize_s": seconds,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def report(rows: list[dict], fp32: Path, runs: list[Path]) -> str:
    lines = [
        "# int8 settings against fp32",
        "",
        f"`{fp32}` on the validation films of {', '.join(f'`{r}`' for r in runs)} "
        "(`python -m pneumoscan.research.int8_study`).",
        "",
        "| setting | decisions agree, per fold | largest ROC AUC drop | largest probability "
        "difference | size | quantization time |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        agree = " / ".join(f"{100 * a:.2f}%" for a in row["agreement"])
        lines.append(
            f"| {row['setting']} | {agree} | {max(row['auc_drop']):.5f} | "
            f"{row['max_probability_difference']:.3f} | {row['mb']:.1f} MB | "
            f"{row['quantize_s']:.0f} s |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fp32", type=Path, help="the fp32 graph (RUN/shipped/NAME-fp32.onnx)")
    parser.add_argument("--run", type=Path, action="append", required=True, help="a member run")
    parser.add_argument("--out", type=Path, default=Path("runs/int8-study"))
    parser.add_argument("--setting", action="append", choices=list(SETTINGS), default=None)
    args = parser.parse_args()
    rows = study(args.fp32, args.run, args.out, args.setting or list(SETTINGS))
    atomic_write_text(args.out / "int8-study.md", report(rows, args.fp32, args.run))
    print(f"wrote {args.out / 'int8-study.md'}")


if __name__ == "__main__":
    main()
