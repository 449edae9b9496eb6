"""Training speed (a benchmark, not a test): the data loader alone and the model step alone at each
image size, then Lightning's training loop on one process and under DDP, at the same global batch.

    python -m pneumoscan.research.bench_train --config configs/three_class_robust.yaml --out docs/benchmarks.md
    make bench-train

Real films from the recipe's data folder, the recipe's model, augmentation, intensity and
optimizer; every figure is measured in one run on the machine named in the report, and the report
says whether other pneumoscan jobs shared the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks.weight_averaging import EMAWeightAveraging

from pneumoscan.core import dataset as ds
from pneumoscan.core.config import Config, load_config, trainable_blocks
from pneumoscan.core.hardware import hardware
from pneumoscan.core.labels import CLASS_NAMES
from pneumoscan.research.bench import cpu_sharing_note, write_report
from pneumoscan.training.fit import with_overrides
from pneumoscan.training.lit import LitClassifier
from pneumoscan.training.loaders import ChestXrayDataModule, ImageTensorDataset, decode_images
from pneumoscan.training.networks import create_model, get_architecture
from pneumoscan.training.runs import default_cache_dir

SECTION = "train-speed"


@dataclass(frozen=True)
class Films:
    pixels: np.ndarray  # (N, size, size) uint8, decoded as training decodes them
    targets: np.ndarray


def load_films(config: Config, size: int, count: int) -> Films:
    """`count` films spread evenly over the training pool (both classes), decoded and cached."""
    samples, targets = ds.targets_for(ds.training_pool(config.data.root), config.data.task)
    chosen = np.linspace(0, len(samples) - 1, count).round().astype(int)
    cache = Path(config.data.cache_dir) if config.data.cache_dir else default_cache_dir()
    decoded = decode_images([samples[i] for i in chosen], size, cache_dir=cache)
    return Films(decoded.pixels, targets[chosen][decoded.kept])


def _lit(config: Config, size: int) -> LitClassifier:
    model_config, num_classes = config.model, len(CLASS_NAMES[config.data.task])
    model = create_model(
        model_config.arch,
        num_classes,
        head=model_config.head or get_architecture(model_config.arch).default_head,
        dropout=model_config.dropout,
        pretrained=model_config.pretrained,
        image_size=size,
    )
    model.set_trainable_blocks(trainable_blocks(model_config.strategy))
    return LitClassifier(model.to(memory_format=torch.channels_last), num_classes, config.train)


def _training_set(config: Config, films: Films, size: int) -> ImageTensorDataset:
    architecture = get_architecture(config.model.arch)
    spec = architecture.preprocess.with_size(size).with_intensity(config.model.intensity)
    policy = config.train.augment_policy if config.train.augment else False
    return ImageTensorDataset(films.pixels, films.targets, spec, augment=policy)


def _data_module(
    config: Config, train_set: ImageTensorDataset, batch_size: int
) -> ChestXrayDataModule:
    """The DataModule as `fit` builds it: the recipe's seed and loader workers."""
    return ChestXrayDataModule(
        train_set,
        train_set,
        batch_size,
        seed=config.train.seed,
        workers=config.train.loader_workers,
    )


def loader_rate(config: Config, films: Films, size: int, batches: int) -> float:
    """Films/s the training DataLoader delivers (decoded cache -> augmentation -> normalisation),
    as `fit` runs it, timed after its first batch (worker start-up)."""
    module = _data_module(config, _training_set(config, films, size), config.train.batch_size)
    loader = module.train_dataloader()  # persistent workers: one start-up for every pass
    delivered, started = None, None
    while delivered is None or delivered < batches * config.train.batch_size:
        for inputs, _ in loader:
            if started is None:
                delivered, started = 0, time.perf_counter()
                continue
            delivered += len(inputs)
            if delivered >= batches * config.train.batch_size:
                break
    return delivered / (time.perf_counter() - started)


def step_rate(config: Config, films: Films, size: int, steps: int, warmup: int) -> float:
    """Films/s of the model step alone (forward, loss, backward, optimizer) on loaded batches."""
    lit = _lit(config, size).train()
    optimizers = lit.configure_optimizers()
    optimizer = optimizers["optimizer"] if isinstance(optimizers, dict) else optimizers
    module = _data_module(config, _training_set(config, films, size), config.train.batch_size)
    batches = list(module.train_dataloader())
    times = []
    for index in range(warmup + steps):
        inputs, targets = batches[index % len(batches)]
        started = time.perf_counter()
        loss = lit.loss(lit(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if index >= warmup:
            times.append(time.perf_counter() - started)
    return len(batches[0][0]) / statistics.median(times)


class StepClock(Callback):
    """Wall time from the end of the warm-up batches to the end of the last training batch."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.started, self.ended, self.batches = warmup, None, None, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_index) -> None:
        self.batches += 1
        if self.batches == self.warmup:
            self.started = time.perf_counter()
        self.ended = time.perf_counter()


def benchmark_config(arguments: argparse.Namespace) -> Config:
    """The recipe, without a scheduler: a plateau scheduler waits for validation scores that a
    speed run does not compute, and no scheduler changes the cost of a step."""
    config = load_config(arguments.config, arguments.override)
    return with_overrides(config, train={"scheduler": "none"})


def fit_worker(arguments: argparse.Namespace) -> None:
    """One `fit` of the training loop on `--devices` processes; rank zero writes the timing.

    Run as its own command, so Lightning's launcher can start the other ranks by rerunning it.
    """
    config = benchmark_config(arguments)
    devices = arguments.devices
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // devices))
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    films = load_films(config, arguments.size, arguments.films)
    train_set = _training_set(config, films, arguments.size)
    batch_size = config.train.batch_size // devices  # the same global batch on any count
    clock = StepClock(arguments.warmup)
    callbacks: list[Callback] = [clock]
    if config.train.ema_decay is not None:  # as `fit` trains the recipe's first phase
        callbacks.append(EMAWeightAveraging(decay=config.train.ema_decay))
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        use_distributed_sampler=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    module = _data_module(config, train_set, batch_size)
    trainer.fit(_lit(config, arguments.size), datamodule=module)
    if trainer.is_global_zero:
        measured = (clock.batches - clock.warmup) * batch_size * devices
        rate = measured / (clock.ended - clock.started)
        Path(arguments.result).write_text(json.dumps({"films_per_second": rate}))


def fit_rate(arguments: argparse.Namespace, size: int, devices: int) -> float:
    with tempfile.TemporaryDirectory() as work:
        result = Path(work) / "result.json"
        command = [sys.executable, "-m", "pneumoscan.research.bench_train", "fit"]
        command += ["--config", str(arguments.config), "--size", str(size)]
        command += ["--films", str(arguments.fit_films), "--warmup", str(arguments.warmup)]
        command += ["--devices", str(devices), "--result", str(result)]
        command += [item for override in arguments.override for item in ("--override", override)]
        finished = subprocess.run(command, capture_output=True, text=True)
        if finished.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {finished.stderr[-2000:]}")
        return json.loads(result.read_text())["films_per_second"]


def report(arguments: argparse.Namespace) -> str:
    config = benchmark_config(arguments)
    torch.set_num_threads(os.cpu_count() or 1)
    sharing_before = cpu_sharing_note()
    rows = []
    for size in arguments.sizes:
        films = load_films(config, size, arguments.films)
        loader = loader_rate(config, films, size, arguments.steps)
        step = step_rate(config, films, size, arguments.steps, arguments.warmup)
        rows.append((size, loader, step))
    fit_size = arguments.sizes[0]
    one = fit_rate(arguments, fit_size, devices=1)
    two = fit_rate(arguments, fit_size, devices=2)
    sharing = cpu_sharing_note()
    if sharing_before != sharing and "No other" in sharing:
        sharing = sharing_before
    batch, threads = config.train.batch_size, os.cpu_count() or 1
    sizes = " ".join(str(size) for size in arguments.sizes)
    lines = [
        "## Training speed",
        "",
        f"Measured with `python -m pneumoscan.research.bench_train --config {arguments.config} --sizes "
        f"{sizes} --films {arguments.films} --steps {arguments.steps} --fit-films "
        f"{arguments.fit_films}` (`make bench-train`) on {hardware()}, torch "
        f"{torch.__version__}: the recipe's model ({config.model.arch}, {config.model.strategy} "
        f"fine-tuning, {config.train.optimizer}), augmentation (`{config.train.augment_policy}`), "
        f"intensity (`{config.model.intensity}`) and batch of {batch}, on real training films. "
        f"{sharing}",
        "",
        "| size | data loader alone | model step alone | loader / step | loader at least 2x |",
        "|---:|---:|---:|---:|---|",
        *[
            f"| {size} px | {loader:.0f} films/s | {step:.1f} films/s | {loader / step:.1f}x | "
            f"{'yes' if loader >= 2 * step else 'no'} |"
            for size, loader, step in rows
        ],
        "",
        "The loader runs as `fit` runs it: decoded uint8 squares from the cache, the augmentation, "
        "intensity standardisation and normalisation, in "
        f"{config.train.loader_workers} DataLoader worker process(es) of one torch thread "
        f"(`train.loader_workers`; 0 loads in the training process, with its {threads} threads). "
        "The model step is forward, loss, backward and the optimizer on loaded batches (median of "
        f"{arguments.steps} steps after {arguments.warmup} warm-up steps).",
        "",
        f"Lightning's training loop at {fit_size} px, one epoch over {arguments.fit_films} films "
        f"at a global batch of {batch}, timed from the end of batch {arguments.warmup} to the end "
        "of the last, loader, step and the recipe's weight averaging together:",
        "",
        "| processes | per-process batch | torch threads each | training loop | vs 1 process |",
        "|---:|---:|---:|---:|---:|",
        f"| 1 | {batch} | {threads} | {one:.1f} films/s | 1.00x |",
        f"| 2 (DDP, gloo) | {batch // 2} | {max(1, threads // 2)} | {two:.1f} films/s | "
        f"{two / one:.2f}x |",
        "",
        "Both rows run on the same cores, so DDP adds no compute on this machine: on idle cores the "
        "difference is what splitting the batch, the gradient all-reduce and one thread per "
        "process instead of two cost or save. DDP pays off with a device (or a machine) per "
        "process. GPU: no GPU was available to this benchmark, so there is no GPU figure.",
    ]
    if "No other" not in sharing:
        lines += [
            "",
            "**Measured on busy cores.** Another job held the cores, and a process with two torch "
            "threads loses most when one of its threads waits for a core, so the one-process rows "
            "(model step, training loop) are the most understated and the DDP ratio says nothing "
            "about an idle machine. Run `make bench-train` with no other job running before "
            "quoting these figures.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", choices=("report", "fit"), default="report")
    parser.add_argument("--config", type=Path, default=Path("configs/three_class_robust.yaml"))
    parser.add_argument("--override", action="append", default=[], help="section.key=value")
    parser.add_argument("--sizes", type=int, nargs="+", default=[160, 224])
    parser.add_argument("--films", type=int, default=128, help="films for loader and step")
    parser.add_argument("--steps", type=int, default=8, help="timed batches per measure")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--fit-films", type=int, default=384, help="films in the timed epoch")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to update")
    # fit mode (run by `report` itself, once per process count)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--result", type=Path)
    arguments = parser.parse_args(argv)
    if arguments.mode == "fit":
        fit_worker(arguments)
        return 0
    text = report(arguments)
    print(text)
    if arguments.out is not None:
        write_report(text, arguments.out, section=SECTION)
        print(f"wrote {arguments.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
