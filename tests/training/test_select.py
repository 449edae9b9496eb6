"""`train.select` and what the model file records of the weights it ships: real three-epoch runs
on generated films, with the validation score each epoch reports fixed by a callback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_layout
from lightning.pytorch.callbacks import Callback

from pneumoscan.core.config import load_config
from pneumoscan.training.fit import fit
from pneumoscan.training.model_file import ModelInfo, load_model_file

REPO = Path(__file__).resolve().parents[2]

# Validation ROC AUC per epoch: the second epoch is the best, the last one drops.
SCORES = (0.70, 0.90, 0.10)


class ScriptedScores(Callback):
    """Replaces the epoch's validation ROC AUC before the checkpoint callbacks read it (Lightning
    runs them after every other callback), so the best epoch does not depend on what 12 generated
    films teach a network."""

    def on_validation_end(self, trainer, pl_module):
        trainer.callback_metrics["val/auroc"] = torch.tensor(SCORES[trainer.current_epoch])


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_layout(tmp_path_factory.mktemp("select") / "data", splits=("train",), per_class=6)


def _run(tiny_data, tmp_path, select: str):
    config = load_config(
        None,
        [
            f"data.root={tiny_data}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.val_fraction=0.34",
            "model.image_size=64",
            "model.strategy=frozen",  # cached features: three epochs in seconds
            f"train.epochs={len(SCORES)}",
            "train.batch_size=8",
            "train.threads=2",
            f"train.select={select}",
        ],
    )
    run = tmp_path / select
    model_path = fit(config, run, callbacks=[ScriptedScores()], progress=False)
    return run, *load_model_file(model_path)


def _checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _same_weights(model, checkpoint) -> bool:
    state = _checkpoint(checkpoint)["state_dict"]
    return all(
        torch.equal(value, state[f"model.{key}"]) for key, value in model.state_dict().items()
    )


def test_select_last_ships_the_last_epoch_even_when_its_score_dropped(tiny_data, tmp_path):
    run, model, info = _run(tiny_data, tmp_path, "last")
    best, last = run / "phase-1" / "best.ckpt", run / "phase-1" / "last.ckpt"
    assert (info.phase, info.epoch) == ("phase-1", 3)
    assert _same_weights(model, last) and not _same_weights(model, best)
    assert info.global_step == _checkpoint(last)["global_step"] > _checkpoint(best)["global_step"]


def test_select_best_ships_the_best_epoch_and_says_which(tiny_data, tmp_path):
    run, model, info = _run(tiny_data, tmp_path, "best")
    best, last = run / "phase-1" / "best.ckpt", run / "phase-1" / "last.ckpt"
    assert (info.phase, info.epoch) == ("phase-1", 2)
    assert _same_weights(model, best) and not _same_weights(model, last)
    assert (
        0 < info.global_step == _checkpoint(best)["global_step"] < _checkpoint(last)["global_step"]
    )


def test_model_files_written_before_the_epoch_was_recorded_still_load():
    _, info = load_model_file(REPO / "models" / "binary-fast.pt")
    assert (info.phase, info.epoch, info.global_step) == (None, None, None)
    old = info.to_dict()
    for key in ("phase", "epoch", "global_step"):
        del old[key]
    restored = ModelInfo.from_dict(old)
    assert (restored.phase, restored.epoch, restored.global_step) == (None, None, None)
    assert restored.class_names == info.class_names


def test_card_says_which_epoch_was_shipped():
    from pneumoscan.training.ship import render_card

    _, info = load_model_file(REPO / "models" / "binary-fast.pt")
    info.phase, info.epoch, info.global_step = "phase-2", 4, 1234
    card = render_card("binary-fast", info, None, None)
    assert "the weights after epoch 4 of the full-resolution finish (global step 1234)." in card
