"""Which device trains and scores, and the flags that follow from it: the CPU-visible decisions
(a GPU machine runs the same code; `fit` and `ship` tests cover the CPU path end to end)."""

from types import SimpleNamespace

import pytest
import torch
from filelock import SoftFileLock, Timeout
from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator
from torch.utils.data import TensorDataset

from pneumoscan.training.fit import Launch, device_flags
from pneumoscan.training.loaders import ChestXrayDataModule, cache_lock, scoring_batches
from pneumoscan.training.networks import recorded_accelerator, scoring_device


@pytest.mark.parametrize(
    ("accelerator", "cuda", "expected"),
    [
        ("gpu", True, "cuda"),
        ("cuda", True, "cuda"),
        ("auto", True, "cuda"),
        ("cpu", True, "cpu"),  # a CPU recipe scores on the CPU even where a GPU is free
        (None, True, "cpu"),  # a model file that records no config
        ("gpu", False, "cpu"),  # trained on a GPU, shipped or evaluated on a laptop
        ("auto", False, "cpu"),
    ],
)
def test_scoring_device_follows_the_run_and_the_machine(monkeypatch, accelerator, cuda, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert scoring_device(accelerator) == torch.device(expected)


def test_the_recorded_accelerator_comes_from_the_model_files_config():
    assert recorded_accelerator({"train": {"accelerator": "gpu"}}) == "gpu"
    assert recorded_accelerator({"data": {}}) is None and recorded_accelerator(None) is None


@pytest.mark.parametrize(
    ("world_size", "gpu", "flags"),
    [
        (2, True, {"sync_batchnorm": True}),
        (8, True, {"sync_batchnorm": True}),
        (2, False, {}),  # CPU DDP: SyncBatchNorm needs GPUs
        (1, True, {}),  # one GPU: nothing to synchronise
        (1, False, {}),
    ],
)
def test_batch_norm_is_synchronised_only_across_gpu_processes(world_size, gpu, flags):
    assert device_flags(Launch(world_size, 0, world_size, gpu)) == flags


@pytest.mark.parametrize(
    ("accelerator", "pinned"), [(CUDAAccelerator(), True), (CPUAccelerator(), False)]
)
def test_training_loaders_pin_memory_only_for_a_gpu(accelerator, pinned):
    films = TensorDataset(torch.zeros(8, 1, 4, 4), torch.zeros(8, dtype=torch.long))
    module = ChestXrayDataModule(films, films, batch_size=4)
    module.trainer = SimpleNamespace(accelerator=accelerator, world_size=1, global_rank=0)
    assert module.train_dataloader().pin_memory is pinned
    assert module.val_dataloader().pin_memory is pinned


def test_scoring_batches_pin_memory_only_for_a_gpu():
    films = TensorDataset(torch.zeros(3, 1, 4, 4), torch.zeros(3))
    assert scoring_batches(films, torch.device("cuda")).pin_memory is True
    assert scoring_batches(films, torch.device("cpu")).pin_memory is False
    batches = list(scoring_batches(films, torch.device("cpu"), batch_size=2))
    assert [len(images) for images, _ in batches] == [2, 1]  # in order, nothing dropped


def test_cache_lock_is_a_soft_lock_that_excludes_a_second_holder(tmp_path):
    """A lock file created atomically works where flock does not (NFS without its lock manager,
    Lustre without -o flock): multi-node DDP ranks share the decode and feature caches."""
    cache_file = tmp_path / "features-0123.pt"
    lock = cache_lock(cache_file)
    assert isinstance(lock, SoftFileLock)
    assert lock.lock_file == str(tmp_path / "features-0123.pt.lock")
    with lock:
        other = cache_lock(cache_file)
        with pytest.raises(Timeout):
            other.acquire(timeout=0.05)
    released = cache_lock(cache_file)
    released.acquire(timeout=0.05)  # the next process gets it
    assert released.is_locked
    released.release()


def test_an_empty_lock_file_left_by_an_earlier_version_does_not_block(tmp_path):
    """Earlier versions took an OS lock (filelock.FileLock), which leaves an empty lock file after
    every run: a soft lock must not wait on it forever."""
    import os
    import time

    cache_file = tmp_path / "images-160-0123.npz"
    stale = tmp_path / "images-160-0123.npz.lock"
    stale.write_bytes(b"")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    lock = cache_lock(cache_file)
    lock.acquire(timeout=0.05)
    assert lock.is_locked
    lock.release()
    # a fresh empty file may be a holder that has not written its PID yet: it is respected
    stale.write_bytes(b"")
    with pytest.raises(Timeout):
        cache_lock(cache_file).acquire(timeout=0.05)
