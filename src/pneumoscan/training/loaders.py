"""Decoded-image cache, torch Datasets and the LightningDataModule.

On 2 CPU cores, decoding JPEGs every epoch costs as much as a small model's forward pass, so each
image is decoded and resized once (`images.read_image` at `preprocess.decode_side`, as prediction
decodes it, -> `preprocess.square_uint8`) into a uint8 array, cached on disk, and augmented on the fly as a tensor. Under DDP each rank reads its own
share of the films per epoch (`training_sampler`, `validation_sampler`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from filelock import SoftFileLock
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, WeightedRandomSampler
from torchvision.transforms import v2

from pneumoscan.core.config import AUGMENT_POLICIES
from pneumoscan.core.dataset import Sample
from pneumoscan.core.errors import DatasetError, InputError
from pneumoscan.core.fileio import atomic_write
from pneumoscan.core.images import read_image
from pneumoscan.core.preprocess import (
    LEVELS,
    PreprocessSpec,
    decode_side,
    prepare_square,
    square_uint8,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodedImages:
    pixels: np.ndarray  # (N, size, size) uint8
    kept: np.ndarray  # indices of the samples that decoded
    failed: list[str]  # one message per unreadable file


# Names how films are decoded in the cache key: a new decoding gets new cache files (the old
# ones are left as they are). 2: decoded at `decode_side`, no longer at full size.
DECODING = "decode-side-2"


def _decode(path: Path, size: int) -> np.ndarray:
    """One film as prediction prepares it: decoded at `decode_side(size)`, then squared."""
    return square_uint8(read_image(path, min_side=decode_side(size)), size)


def decode_images(
    samples: list[Sample],
    size: int,
    strict: bool = False,
    cache_dir: Path | None = None,
    threads: int = 2,
) -> DecodedImages:
    """Decode and resize every sample once; unreadable files are listed, then skipped or fatal.

    The cache file is read and written under a lock: DDP ranks started together (torchrun, srun)
    decode once, and the others wait for the file instead of decoding the same films.
    """
    if cache_dir is None:
        return _decode_all(samples, size, strict, threads, cache_file=None)
    key = hashlib.sha256(f"{DECODING}\n".encode())
    for sample in samples:
        stat = sample.path.stat()
        key.update(f"{sample.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    cache_file = Path(cache_dir) / f"images-{size}-{key.hexdigest()[:16]}.npz"
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    with cache_lock(cache_file):
        if not cache_file.is_file():
            return _decode_all(samples, size, strict, threads, cache_file)
        with np.load(cache_file, allow_pickle=False) as cached:
            decoded = DecodedImages(cached["pixels"], cached["kept"], list(cached["failed"]))
    _report_failures(decoded.failed, len(samples), strict)
    return decoded


def cache_lock(cache_file: Path) -> SoftFileLock:
    """The lock DDP processes take around a shared cache file (decoded films, backbone features).

    A soft lock (the lock file's existence, created atomically) rather than an OS lock: flock
    and fcntl locks are not honoured across machines on every shared file system (NFS without
    its lock manager, Lustre without -o flock), where multi-node ranks share a cache. A lock file
    left by a killed process on this machine is reclaimed (filelock records the holder's PID and
    host); one left by a process on another machine is not, since this machine cannot tell it
    dead: delete `<cache file>.lock` when no run is using that cache.

    Earlier versions took an OS lock, whose lock file stays behind empty after every run; a soft
    lock holder always writes its PID and host into the file, so an empty lock file older than
    `EMPTY_LOCK_GRACE_S` holds no one and is removed (else every cache built before would wait
    forever).
    """
    path = cache_file.with_name(cache_file.name + ".lock")
    try:
        info = path.stat()
        if info.st_size == 0 and time.time() - info.st_mtime > EMPTY_LOCK_GRACE_S:
            path.unlink()
    except FileNotFoundError:
        pass
    return SoftFileLock(path)


EMPTY_LOCK_GRACE_S = 60  # a soft lock's holder writes its PID within moments of creating it


def _decode_all(
    samples: list[Sample], size: int, strict: bool, threads: int, cache_file: Path | None
) -> DecodedImages:
    def attempt(sample: Sample):
        try:
            return _decode(sample.path, size), None
        except InputError as error:
            return None, str(error)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(attempt, samples))
    kept = np.asarray(
        [i for i, (pixels, _) in enumerate(results) if pixels is not None], dtype=np.int64
    )
    failed = [error for _, error in results if error is not None]
    _report_failures(failed, len(samples), strict)
    if len(kept) == 0:
        raise DatasetError("no image could be read; see the messages above.")
    pixels = np.stack([results[i][0] for i in kept])
    decoded = DecodedImages(pixels, kept, failed)
    if cache_file is not None:

        def write(tmp: Path) -> None:
            with tmp.open("wb") as handle:
                np.savez(handle, pixels=pixels, kept=kept, failed=np.asarray(failed, dtype=str))

        atomic_write(cache_file, write)
    return decoded


def _report_failures(failed: list[str], total: int, strict: bool) -> None:
    if not failed:
        return
    listing = "\n  ".join(failed)
    if strict:
        raise DatasetError(
            f"{len(failed)} of {total} image(s) could not be read (--strict):\n  {listing}"
        )
    logger.warning(
        "skipped %d of %d unreadable image(s) (use --strict to stop instead):\n  %s",
        len(failed),
        total,
        listing,
    )


class RandomGamma(v2.Transform):
    """x -> x ** gamma with log-uniform gamma: a different detector or processing curve."""

    def __init__(self, low: float = 0.7, high: float = 1.4) -> None:
        super().__init__()
        self.log_low, self.log_high = float(np.log(low)), float(np.log(high))

    def make_params(self, flat_inputs):
        log_gamma = torch.empty(1).uniform_(self.log_low, self.log_high)
        return {"gamma": float(torch.exp(log_gamma))}

    def transform(self, inpt, params):
        return inpt.clamp(0.0, 1.0).pow(params["gamma"])


class RandomFrame(v2.Transform):
    """How the film is framed: a black border (a padded or scanned export, the film shrunk inside
    it) or collimator shutters (the outer bands blanked to a dark grey). Each side gets its own
    width, up to `max_fraction` of the image."""

    def __init__(self, max_fraction: float = 0.15) -> None:
        super().__init__()
        self.max_fraction = max_fraction

    def make_params(self, flat_inputs):
        sides = torch.empty(4).uniform_(0.0, self.max_fraction).tolist()
        return {
            "sides": sides,
            "shutter": bool(torch.rand(1) < 0.5),
            "level": float(torch.empty(1).uniform_(0.0, 0.1)),
        }

    def transform(self, inpt, params):
        height, width = inpt.shape[-2:]
        top, bottom, left, right = params["sides"]
        y0, y1 = round(top * height), height - round(bottom * height)
        x0, x1 = round(left * width), width - round(right * width)
        if params["shutter"]:
            out = torch.full_like(inpt, params["level"])
            out[..., y0:y1, x0:x1] = inpt[..., y0:y1, x0:x1]
            return out
        inner = torch.nn.functional.interpolate(
            inpt.reshape(-1, 1, height, width),
            size=(y1 - y0, x1 - x0),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        ).reshape(*inpt.shape[:-2], y1 - y0, x1 - x0)
        out = torch.zeros_like(inpt)
        out[..., y0:y1, x0:x1] = inner
        return out


class RandomWindow(v2.Transform):
    """A different display window: grey levels outside [low, high] clipped, the rest stretched."""

    def make_params(self, flat_inputs):
        return {
            "low": float(torch.empty(1).uniform_(0.0, 0.15)),
            "high": float(torch.empty(1).uniform_(0.85, 1.0)),
        }

    def transform(self, inpt, params):
        low, high = params["low"], params["high"]
        return ((inpt - low) / (high - low)).clamp(0.0, 1.0)


def radiograph_augmentation(size: int, policy: str = "basic") -> v2.Transform:
    """Changes a real film could show; no flips (anatomy is sided).

    `basic`: small geometric changes plus brightness and contrast. `acquisition` adds what differs
    between machines and sites: detector curve (gamma), focus and scatter (blur), edge
    enhancement (sharpening) and quantum noise. `framing` adds how the film is cut and shown:
    black borders, collimator shutters and display windows. `fov` adds a tighter field of view:
    in 40% of films a crop of 45-80% of the area (up to about 16% cut from each side), the rest
    the usual 80-100%.
    """
    crop = v2.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True)
    if policy == "fov":
        zoom_in = v2.RandomResizedCrop(size, scale=(0.45, 0.8), ratio=(0.85, 1.18), antialias=True)
        crop = v2.RandomChoice([zoom_in, crop], p=[0.4, 0.6])
    geometric = [v2.RandomAffine(degrees=10, translate=(0.06, 0.06), scale=(0.9, 1.1)), crop]
    if policy == "basic":
        return v2.Compose([*geometric, v2.ColorJitter(brightness=0.2, contrast=0.2)])
    if policy not in AUGMENT_POLICIES:
        raise ValueError(f"augment policy {policy!r}: choose one of {', '.join(AUGMENT_POLICIES)}")
    framing = (
        [v2.RandomApply([RandomFrame(0.15)], p=0.35), v2.RandomApply([RandomWindow()], p=0.2)]
        if policy in ("framing", "fov")
        else []
    )
    return v2.Compose(
        [
            *geometric,
            *framing,
            v2.ColorJitter(brightness=0.3, contrast=0.3),
            v2.RandomApply([RandomGamma(0.7, 1.4)], p=0.5),
            v2.RandomApply([v2.GaussianBlur(kernel_size=7, sigma=(0.3, 1.8))], p=0.3),
            v2.RandomAdjustSharpness(sharpness_factor=2.0, p=0.2),
            v2.RandomApply([v2.GaussianNoise(mean=0.0, sigma=0.03, clip=True)], p=0.3),
        ]
    )


class ImageTensorDataset(Dataset):
    """uint8 squares -> model inputs (C, H, W), augmented when `augment` is set.

    Augmentation works on the [0, 1] square; intensity standardisation and normalisation then
    run through `preprocess.prepare_square`, the same function prediction uses.
    """

    def __init__(
        self,
        pixels: np.ndarray,
        targets: np.ndarray,
        spec: PreprocessSpec,
        augment: bool | str = False,
    ) -> None:
        self.pixels = torch.from_numpy(pixels)
        targets = np.asarray(targets)
        # class indices, or (films, classes) target distributions (distillation)
        self.targets = torch.from_numpy(
            targets.astype(np.float32) if targets.ndim == 2 else targets.astype(np.int64)
        )
        self.spec = spec
        policy = "basic" if augment is True else augment
        self.augment = radiograph_augmentation(spec.size, policy) if policy else None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = self.pixels[index].unsqueeze(0).float().div_(LEVELS)
        if image.shape[-1] != self.spec.size:
            image = torch.nn.functional.interpolate(
                image[None],
                size=(self.spec.size, self.spec.size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )[0]
        if self.augment is not None:
            image = self.augment(image).clamp_(0.0, 1.0)
        prepared = prepare_square(image[0].numpy(), self.spec)
        return torch.from_numpy(prepared), self.targets[index]


def training_sampler(
    size: int,
    sampler_weights: np.ndarray | None,
    seed: int,
    num_replicas: int = 1,
    rank: int = 0,
) -> Sampler | None:
    """The order of the training films for one process; None: plain shuffling (one process).

    Under DDP torch's DistributedSampler gives each rank a disjoint share of a permutation that all
    ranks draw alike (seed + epoch). Class balancing draws one weighted sample for the whole epoch,
    identical on every rank (same seeded generator), and Lightning's DistributedSamplerWrapper
    (catalyst's) deals its positions out. drop_last: every rank gets the same number of films and
    no position twice (padding would repeat up to num_replicas - 1 of them).
    """
    weighted = None
    if sampler_weights is not None:
        weighted = WeightedRandomSampler(
            torch.as_tensor(sampler_weights, dtype=torch.double),
            num_samples=size,
            replacement=True,
            generator=torch.Generator().manual_seed(seed),
        )
    if num_replicas == 1:
        return weighted
    if weighted is not None:  # the weighted draw is already in random order
        return DistributedSamplerWrapper(
            weighted, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=True
        )
    return DistributedSampler(
        range(size), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
    )


def validation_sampler(size: int, num_replicas: int = 1, rank: int = 0) -> Sampler | None:
    """Each validation film on exactly one rank (Lightning's UnrepeatedDistributedSampler; shares
    differ by at most one film), so metrics gathered across ranks count every film once."""
    if num_replicas == 1:
        return None
    return UnrepeatedDistributedSampler(range(size), num_replicas=num_replicas, rank=rank)


def scoring_batches(dataset: Dataset, device: torch.device, batch_size: int = 64) -> DataLoader:
    """Batches in order for scoring a trained network on `device` (networks.scoring_device),
    page-locked for a fast copy when that is a CUDA GPU."""
    return DataLoader(dataset, batch_size=batch_size, pin_memory=device.type == "cuda")


def on_cuda(accelerator) -> bool:
    """Whether a Lightning trainer's accelerator is a CUDA GPU."""
    return isinstance(accelerator, CUDAAccelerator)


class ChestXrayDataModule(L.LightningDataModule):
    """Thin: the arrays are prepared (and split by patient) before the trainer sees them."""

    def __init__(
        self,
        train: Dataset,
        val: Dataset,
        batch_size: int,
        sampler_weights: np.ndarray | None = None,
        seed: int = 0,
        workers: int = 0,
    ) -> None:
        super().__init__()
        self.train_set, self.val_set = train, val
        self.batch_size = batch_size  # per process: the global batch is this x world size
        self.sampler_weights = sampler_weights
        self.seed = seed
        self.workers = workers  # training loader processes (train.loader_workers)

    def _ranks(self) -> tuple[int, int]:
        return (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)

    def _pin_memory(self) -> bool:
        """Page-locked batches when the trainer feeds a CUDA device: the copy to the GPU runs
        asynchronously. On CPU pinning only costs memory."""
        return self.trainer is not None and on_cuda(self.trainer.accelerator)

    def train_dataloader(self) -> DataLoader:
        num_replicas, rank = self._ranks()
        sampler = training_sampler(
            len(self.train_set), self.sampler_weights, self.seed, num_replicas, rank
        )
        films = len(sampler) if sampler is not None else len(self.train_set)
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=sampler is None,
            # a last batch of one film breaks batch norm; every rank drops alike (equal shares)
            drop_last=films > self.batch_size,
            num_workers=self.workers,
            persistent_workers=self.workers > 0,
            # Started fresh, not forked: a worker forked from a trainer whose threads (torch's
            # OpenMP pool, ONNX Runtime, thread pools) were busy can hang in its first parallel
            # kernel; one did, in an affine transform, during a full test-suite run.
            multiprocessing_context="spawn" if self.workers > 0 else None,
            pin_memory=self._pin_memory(),
        )

    def val_dataloader(self) -> DataLoader:
        num_replicas, rank = self._ranks()
        return DataLoader(
            self.val_set,
            batch_size=self.batch_size * 2,
            sampler=validation_sampler(len(self.val_set), num_replicas, rank),
            shuffle=False,
            pin_memory=self._pin_memory(),
        )
