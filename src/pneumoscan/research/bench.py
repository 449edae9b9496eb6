"""Benchmarks (not tests): speed of the runtime and the out-of-distribution gate's rejection rates.

    pneumoscan bench --model binary --images examples/ --out docs/benchmarks.md
    pneumoscan bench-ood --model binary --run runs/binary-cv/fold-0 --out docs/ood.md
    pneumoscan bench-workers --model binary --images ../shared/data/chest_xray/train

Every figure is measured in one run on the machine named in the report.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pneumoscan.core.dataset import read_split
from pneumoscan.core.decision import GATE_QUANTILE
from pneumoscan.core.fileio import atomic_write_text, write_section
from pneumoscan.core.hardware import hardware
from pneumoscan.core.images import read_image
from pneumoscan.core.preprocess import prepare
from pneumoscan.evaluation.non_radiographs import non_radiograph_groups, to_unit_gray
from pneumoscan.runtime.model import load_runtime_model


def gate_report(model_ref: str, run_dir: Path | None) -> str:
    """Markdown: rejection of non-radiographs per group and kind, and of validation chest X-rays."""
    model = load_runtime_model(model_ref)
    if model.ood_threshold is None:
        return f"{model_ref}: this model has no out-of-distribution gate.\n"
    lines = [
        f"# Out-of-distribution gate: `{model_ref}`",
        "",
        f"Measured with `pneumoscan bench-ood --model {model_ref}"
        + (f" --run {run_dir}`" if run_dir else "`")
        + f" on {hardware()}.",
        "",
        f"Gate threshold {model.ood_threshold:.3f} ({100 * GATE_QUANTILE:g}th percentile of the "
        "training films' scores). The margin is the lowest score of a kind over the threshold: "
        "above 1 every input of that kind is refused.",
    ]
    missed = []
    for title, samples in non_radiograph_groups():
        scores = model.ood_scores([to_unit_gray(image) for _, image in samples])
        ratios = scores / model.ood_threshold
        kinds: dict[str, list[float]] = {}
        for (name, _), ratio in zip(samples, ratios):
            kinds.setdefault(name.split(":")[0], []).append(float(ratio))
        lines += ["", f"## {title}", "", "| kind | n | refused | margin |", "|---|---:|---:|---:|"]
        for kind, values in kinds.items():
            refused = sum(v > 1 for v in values)
            lines.append(f"| {kind} | {len(values)} | {refused} | {min(values):.2f} |")
        lines.append(
            f"| **all** | {len(ratios)} | {int((ratios > 1).sum())} "
            f"({100 * (ratios > 1).mean():.1f}%) | {ratios.min():.2f} |"
        )
        missed += [name for (name, _), ratio in zip(samples, ratios) if ratio <= 1]
    if run_dir is not None:
        validation, _ = read_split(Path(run_dir), "val")
        chest = model.ood_scores([read_image(s.path) for s in validation])
        refused = int((chest > model.ood_threshold).sum())
        lines += [
            "",
            f"Patient-grouped validation chest X-rays of `{run_dir}` (never trained on): "
            f"{refused} of {len(chest)} refused ({100 * refused / len(chest):.2f}%).",
        ]
    lines += ["", "Not refused: " + (", ".join(missed) if missed else "none") + ".", ""]
    return "\n".join(lines)


# --- speed ---------------------------------------------------------------------------------


def _timeit(function, repeats: int) -> list[float]:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def speed_report(
    model_ref: str,
    image_paths: list[Path],
    repeats: int = 30,
    films: int = 624,
    full_size_films: int = 200,
    process_repeats: int = 3,
) -> tuple[str, str]:
    """Markdown: in-process latency (ONNX vs torch eager), then whole-process figures from the
    command line: cold start, and folders to CSV (with and without heatmaps) on the given films
    and on full-size copies of them; and the short form of the same figures for the model card."""
    model = load_runtime_model(model_ref)
    image = prepare(read_image(image_paths[0]), model.spec)[None]
    onnx_latency = statistics.median(_timeit(lambda: model.run(image, cam=False), repeats))
    batch = np.repeat(image, 32, axis=0)
    onnx_batch = (
        statistics.median(_timeit(lambda: model.run(batch, cam=False), max(3, repeats // 5))) / 32
    )
    rows = [("ONNX Runtime, batch 1, median latency (in process)", f"{onnx_latency * 1000:.1f} ms")]
    rows.append(
        (
            "ONNX Runtime, batch 32, per image (in process)",
            f"{onnx_batch * 1000:.1f} ms ({1 / onnx_batch:.0f} img/s)",
        )
    )
    rows += _torch_rows(model_ref, image, onnx_latency, repeats)
    sharing = cpu_sharing_note()
    cold, timings = whole_process_timings(
        model_ref, image_paths, films, full_size_films, process_repeats
    )
    plain = next(t for t in timings if t.measure == FOLDER_RUNS[0][0])
    ceiling = 1 / onnx_batch
    lines = [
        f"# Benchmarks: `{model_ref}` ({model.spec.size} px)",
        "",
        f"Measured with `pneumoscan bench --model {model_ref} --images ... --films {films} "
        f"--full-size-films {full_size_films}` on {hardware()}, onnxruntime graph optimisation "
        f"level ALL, {model.session.get_session_options().intra_op_num_threads} threads. "
        f"{sharing}",
        "",
        "## In process",
        "",
        "| measure | value |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in rows],
        "",
        "## Whole process, from the command line",
        "",
        "Each figure times `pneumoscan predict` as a user runs it: a new process that loads the "
        "model, reads every file (decoding on worker threads while the model runs), predicts and "
        f"writes the CSV (median of {process_repeats} runs; the cold start of at least 5). "
        "Full-size films are the same films upscaled (bicubic) to a shorter side of 2,000 px and "
        "saved as JPEG (quality 95) or as uncompressed DICOM with "
        f"{DICOM_BITS_STORED} bits stored in 16, since the original full-size films are not on "
        "this machine; the 256 px copies of the full-size set are those same films as stored.",
        "",
        "| measure | films | time | throughput |",
        "|---|---|---:|---:|",
        f"| cold start: `pneumoscan predict one.jpeg`, process start to output | 1 | "
        f"{cold:.2f} s | |",
        *[
            f"| {t.measure} | {t.count}, {t.films} | {t.seconds:.1f} s | "
            f"{t.films_per_second:.0f} films/s |"
            for t in timings
        ],
        "",
        f"The folder run of {plain.count} {plain.films} reaches "
        f"{100 * plain.films_per_second / ceiling:.0f}% of the in-process inference rate measured "
        f"in the same session (batch 32, {ceiling:.0f} films/s): decoding overlaps inference, and "
        "process start, decoding and the CSV cost the rest.",
        "",
        "| goal (issues 26 and 27, 2 cores) | target | measured here | reached |",
        "|---|---|---:|---|",
        *_goal_rows(cold, timings),
        "",
        "Commands (FOLDER holds the films, copied or upscaled as above):",
        "",
        "```bash",
        f"pneumoscan predict --model {model_ref} one.jpeg",
        f"pneumoscan predict --model {model_ref} FOLDER --csv out.csv",
        f"pneumoscan predict --model {model_ref} FOLDER --csv out.csv --heatmaps maps/",
        f"pneumoscan predict --model {model_ref} FOLDER --csv out.csv --workers 1",
        "```",
        "",
    ]
    card = _card_speed(model_ref, films, onnx_latency, repeats, plain, process_repeats, cold)
    return "\n".join(lines), card + f" {sharing}"


def _card_speed(model_ref, films, latency, repeats, plain, process_repeats, cold) -> str:
    """The model card's Speed section: the same figures as the report, in one paragraph."""
    return "\n".join(
        [
            "## Speed",
            "",
            f"`pneumoscan bench --model {model_ref} --images ... --films {films}` on {hardware()}: "
            f"one film in {latency * 1000:.1f} ms at batch 1 (ONNX Runtime, in process, median "
            f"of {repeats}); a folder of {plain.count} {plain.films} to CSV at "
            f"{plain.films_per_second:.0f} films/s as a whole `pneumoscan predict` process "
            f"(median of {process_repeats}); cold start {cold:.2f} s. The full table is in "
            "docs/benchmarks.md; `pneumoscan ship` rewrites this card without it, so rerun the "
            "benchmark after shipping.",
        ]
    )


def _torch_rows(model_ref: str, image: np.ndarray, onnx_latency: float, repeats: int) -> list:
    """The report's torch eager rows: batch-1 latency and ONNX Runtime's speed-up over it, or
    why torch was not timed."""
    torch_file = _torch_model_file(model_ref)
    if torch_file is None:
        return [("torch eager", "no model file (.pt) beside it")]
    try:
        import torch

        from pneumoscan.training.model_file import load_model_file
    except ImportError:
        return [("torch eager", "not installed (lean install)")]
    torch_model, _ = load_model_file(torch_file)
    tensor = torch.from_numpy(image)
    with torch.no_grad():
        eager = statistics.median(_timeit(lambda: torch_model(tensor), repeats))
    return [
        ("torch eager, batch 1, median latency (in process)", f"{eager * 1000:.1f} ms"),
        ("ONNX Runtime speed-up at batch 1", f"{eager / onnx_latency:.1f}x"),
    ]


def _torch_model_file(model_ref: str) -> Path | None:
    """The pneumoscan model file (.pt) that torch eager is timed on: a shipped name's, the one
    given, or the .pt beside a given .onnx; None when there is none."""
    from pneumoscan.core.errors import ModelFileError
    from pneumoscan.core.shipped import resolve_model

    try:
        path = resolve_model(model_ref, suffix=".pt").with_suffix(".pt")
    except ModelFileError:  # a shipped name without its .pt (an install without torch files)
        return None
    return path if path.is_file() else None


def cpu_sharing_note() -> str:
    """Say so when another pneumoscan job (training, a study) shared the cores while timing."""
    import os

    busy = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = " ".join(word.decode(errors="replace") for word in words if word)
        if "pneumoscan" in text and any(
            f" {job} " in f"{text} " for job in ("train", "cv", "experiments", "stress", "ship")
        ):
            busy.append(" ".join(text.split("pneumoscan", 1)[1].split()[:3]))
    if not busy:
        return "No other pneumoscan job was running."
    jobs = "; ".join(f"`pneumoscan {job}`" for job in sorted(set(busy)))
    return (
        f"Other pneumoscan jobs were running on the same cores while these figures were taken "
        f"({jobs}), so every figure is lower than on an idle machine."
    )


def _film_folder(
    sources: list[Path], count: int, folder: Path, short_side: int = 0, dicom: bool = False
) -> Path:
    """`count` films spread evenly over `sources` (cycled when fewer): copied as they are, or
    upscaled (bicubic) to a shorter side of `short_side` px and saved as JPEG (quality 95) or,
    with `dicom`, as 16-bit DICOM."""
    folder.mkdir(parents=True)
    for index in range(count):
        source = sources[(index * max(len(sources) // count, 1)) % len(sources)]
        if not short_side:
            (folder / f"film{index:04d}{source.suffix.lower()}").write_bytes(source.read_bytes())
            continue
        with Image.open(source) as image:
            image = image.convert("F" if dicom else "L")
            scale = short_side / min(image.size)
            size = (round(image.width * scale), round(image.height * scale))
            image = image.resize(size, Image.Resampling.BICUBIC)
        if dicom:
            _write_dicom16(np.asarray(image), folder / f"film{index:04d}.dcm")
        else:
            image.save(folder / f"film{index:04d}.jpeg", quality=95)
    return folder


DICOM_BITS_STORED = 12  # as most digital radiography detectors store, in 16-bit words


def _write_dicom16(pixels: np.ndarray, path: Path) -> None:
    """An uncompressed DX film of 8-bit-range `pixels` rescaled to 12 bits stored in 16 (the
    bicubic upscale gives the in-between values); no patient fields at all."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        DigitalXRayImageStorageForPresentation,
        ExplicitVRLittleEndian,
        generate_uid,
    )

    top = 2**DICOM_BITS_STORED - 1
    values = np.clip(np.rint(pixels * (top / 255.0)), 0, top).astype(np.uint16)
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SOPClassUID = DigitalXRayImageStorageForPresentation
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID
    dataset.Modality, dataset.BodyPartExamined, dataset.ViewPosition = "DX", "CHEST", "PA"
    dataset.Rows, dataset.Columns = values.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored = 16, DICOM_BITS_STORED
    dataset.HighBit, dataset.PixelRepresentation = DICOM_BITS_STORED - 1, 0
    dataset.PixelData = values.tobytes()
    dataset.save_as(path, enforce_file_format=True)


def _predict_seconds(model_ref: str, arguments: list[str], repeats: int) -> float:
    command = [sys.executable, "-m", "pneumoscan", "predict", "--model", model_ref, *arguments]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        finished = subprocess.run(command, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if finished.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {finished.stderr[-500:]}")
    return statistics.median(times)


# (measure, extra arguments) for each folder run; FOLDER and the CSV path come first.
FOLDER_RUNS = (
    ("folder to CSV", []),
    ("folder to CSV with heatmaps", ["--heatmaps", "{work}/maps"]),
    ("folder to CSV, one decoding thread (`--workers 1`)", ["--workers", "1"]),
)
SMALL = "256 px copies"
SAME_SMALL = "256 px copies of the full-size set"
FULL_JPEG = "2,000 px JPEG"
FULL_DICOM = "2,000 px 16-bit DICOM"
# (kind of films, the full-size set's count or the --films count, shorter side, DICOM, runs)
FILM_SETS = (
    (SMALL, False, 0, False, FOLDER_RUNS),
    (SAME_SMALL, True, 0, False, FOLDER_RUNS[:1]),
    (FULL_JPEG, True, 2000, False, FOLDER_RUNS[:2]),
    (FULL_DICOM, True, 2000, True, FOLDER_RUNS[:1]),
)
# Goals on 2 idle cores (issues 26 and 27): (measure, films, at least films/s, at least this
# share of the same films' 256 px rate or None)
GOALS = (
    ("folder to CSV", SMALL, 150.0, None),
    ("folder to CSV with heatmaps", SMALL, 90.0, None),
    ("folder to CSV", FULL_JPEG, 100.0, 0.7),
    ("folder to CSV", FULL_DICOM, 60.0, 0.4),
)
COLD_START_GOAL_S = 0.35


@dataclass(frozen=True)
class ProcessTiming:
    measure: str
    films: str  # which films: one of FILM_SETS' kinds
    count: int
    seconds: float

    @property
    def films_per_second(self) -> float:
        return self.count / self.seconds


def whole_process_timings(
    model_ref: str, sources: list[Path], films: int, full_size_films: int, repeats: int
) -> tuple[float, list[ProcessTiming]]:
    """Cold start (median of at least 5) and every folder run (median of `repeats`). The
    full-size JPEG and DICOM folders hold the same `full_size_films` films as one 256 px
    folder, so their rates compare film for film."""
    timings = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        cold = _predict_seconds(model_ref, [str(sources[0])], max(repeats, 5))
        for kind, full_set, short_side, dicom, runs in FILM_SETS:
            count = full_size_films if full_set else films
            if count <= 0:
                continue
            name = "".join(c if c.isalnum() else "-" for c in kind)
            folder = _film_folder(sources, count, work / name, short_side, dicom)
            for measure, extra in runs:
                arguments = [str(folder), "--csv", str(work / "out.csv")]
                arguments += [value.format(work=work) for value in extra]
                seconds = _predict_seconds(model_ref, arguments, repeats)
                timings.append(ProcessTiming(measure, kind, count, seconds))
    return cold, timings


def _goal_rows(cold: float, timings: list[ProcessTiming]) -> list[str]:
    rows = [
        f"| cold start, one film | at most {COLD_START_GOAL_S * 1000:.0f} ms | "
        f"{cold * 1000:.0f} ms | {'yes' if cold <= COLD_START_GOAL_S else 'no'} |"
    ]
    rate = {(t.measure, t.films): t.films_per_second for t in timings}
    for measure, kind, goal, share in GOALS:
        if (measure, kind) not in rate:
            continue
        measured = rate[measure, kind]
        target = f"at least {goal:.0f} films/s"
        shown = f"{measured:.0f} films/s"
        reached = measured >= goal
        small = rate.get((measure, SAME_SMALL))
        if share is not None and small:
            target += f" and {share:.1f}x the same films at 256 px"
            shown += f" ({measured / small:.2f}x of {small:.0f})"
            reached = reached and measured >= share * small
        rows.append(f"| {measure}, {kind} | {target} | {shown} | {'yes' if reached else 'no'} |")
    return rows


WORKERS_SHORT_SIDE = 2000  # a full-size chest film's shorter side, roughly
WORKERS_COUNTS = (1, 2)
# (kind of films, saved as DICOM) for the decoding-threads benchmark
WORKERS_FILMS = (("full-size JPEG", False), ("full-size 16-bit DICOM", True))


def workers_report(
    model_ref: str, sources: list[Path], films: int = 200, repeats: int = 3, command: str = ""
) -> str:
    """Markdown: `pneumoscan predict FOLDER --csv out.csv --workers N` as whole processes, N
    decoding threads, on full-size JPEG and 16-bit DICOM copies of the same films. Decoding a
    2,000 px film costs far more than the model's 160-224 px input, so this is where a second
    decoding thread could pay, or not, on the cores at hand."""
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for kind, dicom in WORKERS_FILMS:
            folder = _film_folder(
                sources, films, work / kind.replace(" ", "-"), WORKERS_SHORT_SIDE, dicom
            )
            size_mb = statistics.median(path.stat().st_size for path in folder.iterdir()) / 2**20
            seconds = {
                workers: _predict_seconds(
                    model_ref,
                    [str(folder), "--csv", str(work / "out.csv"), "--workers", str(workers)],
                    repeats,
                )
                for workers in WORKERS_COUNTS
            }
            one, two = (seconds[workers] for workers in WORKERS_COUNTS)
            rows.append(
                f"| {films} {kind} (median {size_mb:.1f} MB) | {one:.1f} s ({films / one:.0f} "
                f"films/s) | {two:.1f} s ({films / two:.0f} films/s) | {one / two:.2f}x |"
            )
    return "\n".join(
        [
            "## Decoding threads on full-size films: `--workers 1` vs `--workers 2`",
            "",
            f"Measured with `{command or 'pneumoscan bench-workers'}` on {hardware()}. "
            f"{cpu_sharing_note()}",
            "",
            "Each figure times `pneumoscan predict --model "
            f"{model_ref} FOLDER --csv out.csv --workers N` as a whole process (model load, "
            f"decoding, prediction, CSV; median of {repeats} runs). The data set's films are "
            "stored downscaled on this machine (shorter side 256 px), so FOLDER holds the same "
            f"films upscaled (bicubic) to a shorter side of {WORKERS_SHORT_SIDE:,} px: as JPEG "
            f"(quality 95), and as uncompressed DICOM with {DICOM_BITS_STORED} bits stored in 16. "
            "Upscaled films cost what full-size ones cost to read, not what they show.",
            "",
            "| films | `--workers 1` | `--workers 2` | speed-up |",
            "|---|---:|---:|---:|",
            *rows,
            "",
        ]
    )


def write_report(text: str, out: Path, section: str | None = None) -> Path:
    """Write `out`; with `section`, only that section of it (`core.fileio.write_section`), so
    reports that other commands keep in the same file (serving under load, int8) stay."""
    if section is not None:
        return write_section(out, section, text)
    atomic_write_text(Path(out), text)
    return Path(out)


# --- int8 ----------------------------------------------------------------------------------


def quantization_report(model_ref: str, run_dir: Path) -> str:
    """The model quantized to int8 as `ship --int8` quantizes (`quantize.quantize_as_shipped`:
    calibrated on the run's training films, GPTQ rounding, the logit shift taken out), against
    fp32 on the run's validation films: decision agreement, ROC AUC and accuracy (the ship's
    goals), batch-1 latency and file size."""
    from pneumoscan.core.errors import ConfigError
    from pneumoscan.core.shipped import resolve_model
    from pneumoscan.runtime.model import OnnxModel
    from pneumoscan.training import quantize as q

    fp32_path = resolve_model(model_ref, suffix=".onnx")
    fp32 = OnnxModel(fp32_path)
    if (fp32.metadata.get("record") or {}).get("int8"):
        raise ConfigError(
            f"--int8-run: {fp32_path} is already int8; give its fp32 graph "
            "(RUN/shipped/NAME-fp32.onnx after `ship --int8`) or a single network (binary-fast)."
        )
    binary = fp32.class_names == ("normal", "pneumonia")
    with tempfile.TemporaryDirectory() as folder:
        int8_path = Path(folder) / "int8.onnx"
        steps = q.quantize_as_shipped(fp32_path, int8_path, Path(run_dir), fp32.spec)
        images, targets, folds, _ = q.validation_films([Path(run_dir)], fp32.spec, binary)
        facts = q.int8_parity(fp32_path, int8_path, images, targets, folds)
        int8 = OnnxModel(int8_path)
        latency = {
            name: statistics.median(_timeit(lambda m=m: m.run(images[:1], cam=False), 30))
            for name, m in (("fp32", fp32), ("int8", int8))
        }
        size = {"fp32": fp32_path.stat().st_size / 1e6, "int8": int8_path.stat().st_size / 1e6}
    fold = facts["folds"][0]
    verdict = "meets" if facts["within_goals"] else "misses"
    return "\n".join(
        [
            f"## int8 quantization: `{model_ref}`",
            "",
            f"`pneumoscan bench --model {model_ref} --int8-run {run_dir} ...`: the model quantized "
            "as `ship --int8` quantizes it (static QDQ, per-channel int8 weights rounded by GPTQ, "
            f"uint8 activations, the stems and the gate fp32, calibrated on "
            f"{steps['calibration_films']} training films, the logit shift taken out), against "
            f"fp32 on the run's {fold['films']} validation films.",
            "",
            "| | validation accuracy | ROC AUC | batch-1 latency | file size |",
            "|---|---|---|---|---|",
            *(
                f"| {name} | {fold[f'{name}_accuracy']:.4f} | {fold[f'{name}_auc']:.4f} | "
                f"{latency[name] * 1000:.1f} ms | {size[name]:.1f} MB |"
                for name in ("fp32", "int8")
            ),
            "",
            f"Decisions agree on {100 * fold['agreement']:.2f}% of films and the ROC AUC moves by "
            f"{-fold['auc_drop']:+.4f}: the int8 graph {verdict} the ship's goals (agreement at "
            f"least {100 * q.AGREEMENT_GOAL:.1f}%, a drop of at most {q.AUC_DROP_LIMIT}).",
            "",
        ]
    )


# --- films for other benchmarks --------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """`python -m pneumoscan.research.bench IMAGES OUT`: keep the full-size JPEG copies the
    benchmarks here time, in OUT, for benchmarks that cannot import this module (the serve load
    benchmark stands on the runtime alone)."""
    import argparse

    from pneumoscan.core.images import IMAGE_SUFFIXES

    parser = argparse.ArgumentParser(description=main.__doc__.split(":")[0])
    parser.add_argument("images", type=Path, help="folder of films (searched recursively)")
    parser.add_argument("out", type=Path, help="new folder for the copies")
    parser.add_argument("--films", type=int, default=64, help="how many (cycled from IMAGES)")
    parser.add_argument("--shorter-side", type=int, default=WORKERS_SHORT_SIDE, help="pixels")
    parser.add_argument("--dicom", action="store_true", help="16-bit DICOM instead of JPEG")
    args = parser.parse_args(argv)
    sources = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not sources:
        parser.error(f"{args.images}: no films found")
    if args.out.exists():
        parser.error(f"{args.out} exists; remove it or name a new folder")
    _film_folder(sources, args.films, args.out, args.shorter_side, args.dicom)
    print(f"wrote {args.films} films to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
