"""Distributed training for real: `pneumoscan train --devices 2 --strategy ddp` starts two CPU
processes (gloo) the way a user's command does, on a small patient subset of the real data.

Both runs that train (about 45 s each on 2 CPU cores shared with a training job) are part of the
default suite, beside the sampler and flag checks.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pneumoscan.cli import app
from pneumoscan.training.fit import fit, with_overrides
from pneumoscan.training.loaders import training_sampler, validation_sampler
from pneumoscan.training.model_file import load_model_file

# How far the DDP run's validation scores may fall from the one-process run's at the same global
# batch, where only the order in which films reach the head and the dropout draws differ. ROC AUC
# (threshold-free) within 0.02; accuracy, which also moves with the threshold chosen on the same
# 61 films, inside the other run's 95% patient-bootstrap interval.
ROC_AUC_TOLERANCE = 0.02


def _train_command(real_data, tmp_path, out, *overrides, devices=2):
    return [
        sys.executable,
        "-m",
        "pneumoscan",
        "train",
        "--data",
        str(real_data),
        "--out",
        str(out),
        "--devices",
        str(devices),
        "--strategy",
        "ddp",
        f"data.cache_dir={tmp_path / 'cache'}",
        "train.threads=1",
        *overrides,
    ]


def _run(command):
    finished = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return finished


def _val_epochs(run_dir):
    with (run_dir / "phase-1" / "logs" / "metrics.csv").open() as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle) if row.get("val/auroc")]


# --- samplers: each rank its own films, none twice --------------------------------------------


def test_ranks_share_the_training_films_without_duplicates():
    size, seed = 101, 7
    for epoch in (0, 1):
        shares = []
        for rank in (0, 1):
            sampler = training_sampler(size, None, seed, num_replicas=2, rank=rank)
            sampler.set_epoch(epoch)
            shares.append(list(sampler))
        assert len(shares[0]) == len(shares[1]) == 50  # equal steps on both ranks
        assert not set(shares[0]) & set(shares[1])
        assert len(set(shares[0]) | set(shares[1])) == 100  # one film left out, none repeated
    assert training_sampler(size, None, seed) is None  # one process: plain shuffling


def test_class_balanced_draw_is_dealt_out_across_ranks():
    targets = np.array([0] * 30 + [1] * 90)  # pneumonia outnumbers normal 3:1
    weights = np.where(targets == 0, 3.0, 1.0)
    whole = list(training_sampler(len(targets), weights, seed=3))  # the one-process draw
    shares = [
        list(training_sampler(len(targets), weights, seed=3, num_replicas=2, rank=rank))
        for rank in (0, 1)
    ]
    assert shares[0] == whole[0::2] and shares[1] == whole[1::2]  # one draw, dealt out
    drawn = targets[shares[0] + shares[1]]
    assert 0.35 < drawn.mean() < 0.65  # balanced, where the data is 75% pneumonia


def test_each_validation_film_is_scored_on_exactly_one_rank():
    shares = [list(validation_sampler(11, num_replicas=2, rank=rank)) for rank in (0, 1)]
    assert sorted(shares[0] + shares[1]) == list(range(11))
    assert validation_sampler(11) is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--devices", "0"], "train.devices 0"),
        (["--num-nodes", "0"], "train.num_nodes must be at least 1"),
        (["--accelerator", "gpu"], "train.accelerator=gpu"),
        (["--strategy", "no-such-strategy"], "train.strategy=no-such-strategy"),
    ],
)
def test_bad_device_flags_fail_before_the_run_folder_exists(tmp_path, flags, message):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--out", str(out), *flags])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and message in result.output
    assert "Traceback" not in result.output and not out.exists()


# --- real DDP runs ---------------------------------------------------------------------------


def test_ddp_training_matches_one_process_at_the_same_global_batch(real_data, tmp_path):
    """Frozen backbone, head on cached features: the comparison isolates what DDP changes."""
    overrides = [
        "data.max_patients=150",
        "model.image_size=64",
        "model.strategy=frozen",
        "train.epochs=6",
        "train.lr=0.003",
        "train.scheduler=none",
    ]
    from pneumoscan.core.config import load_config

    single = load_config(
        None,
        [f"data.root={real_data}", f"data.cache_dir={tmp_path / 'cache'}", *overrides],
    )
    single = with_overrides(single, train={"batch_size": 16, "threads": 2})
    one = tmp_path / "one"
    fit(single, one, progress=False)

    ddp = tmp_path / "ddp"
    _run(_train_command(real_data, tmp_path, ddp, *overrides, "train.batch_size=8"))

    assert sorted(p.name for p in ddp.rglob("model.pt")) == ["model.pt"]
    assert sorted(p.name for p in (ddp / "phase-1").glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]
    assert json.loads((ddp / "timing.json").read_text())["processes"] == 2
    _, info = load_model_file(ddp / "model.pt")
    assert info.config["train"]["devices"] == 2 and info.config["train"]["strategy"] == "ddp"

    # Same global batch, so the same number of optimizer steps: each rank saw half the films.
    last = [torch.load(run / "phase-1" / "last.ckpt", weights_only=False) for run in (one, ddp)]
    assert last[0]["global_step"] == last[1]["global_step"] > 0
    assert last[0]["epoch"] == last[1]["epoch"] == 5  # the final epoch, improved or not
    assert _val_epochs(ddp) == list(range(6))

    alone, shared = (json.loads((run / "val_metrics.json").read_text()) for run in (one, ddp))
    assert alone["n"] == shared["n"]
    assert abs(alone["roc_auc"] - shared["roc_auc"]) <= ROC_AUC_TOLERANCE, (alone, shared)
    assert alone["accuracy_ci"][0] <= shared["accuracy"] <= alone["accuracy_ci"][1]
    assert shared["accuracy_ci"][0] <= alone["accuracy"] <= shared["accuracy_ci"][1]


def test_ddp_run_resumes_after_its_processes_are_killed(real_data, tmp_path):
    """Full fine-tuning on images with the class-balanced sampler, killed (SIGKILL, as a lost
    node) after its first checkpoint, then resumed with the same command plus --resume."""
    run = tmp_path / "run"
    command = _train_command(
        real_data,
        tmp_path,
        run,
        "data.max_patients=30",
        "model.image_size=48",
        "train.epochs=3",
        "train.batch_size=8",
        "train.class_balance=sampler",
    )
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    last = run / "phase-1" / "last.ckpt"
    deadline = time.monotonic() + 600
    while not last.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert last.is_file(), process.communicate()[1].decode()[-3000:]
    os.killpg(process.pid, signal.SIGKILL)  # rank zero and the rank it started
    process.wait()
    killed_at = torch.load(last, weights_only=False)["epoch"]
    assert killed_at < 2 and not (run / "model.pt").exists()
    logged_before = _val_epochs(run) if (run / "phase-1" / "logs" / "metrics.csv").is_file() else []

    _run([*command, "--resume"])
    assert (run / "model.pt").is_file()
    model, info = load_model_file(run / "model.pt")
    assert info.val_metrics["n"] > 0 and 0.0 < info.threshold < 1.0
    # The resumed processes trained only the epochs after the checkpoint, each once.
    assert _val_epochs(run) == sorted(set(logged_before) | set(range(killed_at + 1, 3)))
    assert torch.load(last, weights_only=False)["epoch"] == 2
