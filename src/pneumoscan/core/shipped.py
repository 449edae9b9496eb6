"""Where the models shipped with pneumoscan live, and how `--model binary` finds them. Torch-free."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pneumoscan.core.errors import ModelFileError

SHIPPED_MODELS = ("binary", "three-class")


def models_dir() -> Path:
    """$PNEUMOSCAN_MODELS_DIR, else the repository's models/ folder (a checkout or editable
    install), else <prefix>/share/pneumoscan/models (a wheel install)."""
    override = os.environ.get("PNEUMOSCAN_MODELS_DIR")
    if override:
        return Path(override)
    checkout = Path(__file__).resolve().parents[3] / "models"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "pneumoscan" / "models"


def resolve_model(reference: str | Path, suffix: str = ".pt") -> Path:
    """A path as given, or a shipped model name (`binary`, `three-class`) resolved to its file."""
    text = str(reference)
    if text.replace("_", "-") in SHIPPED_MODELS and not Path(text).exists():
        path = models_dir() / f"{text.replace('_', '-')}{suffix}"
        if not path.is_file():
            raise ModelFileError(
                f"shipped model {text!r} not found at {path}; install pneumoscan from a full "
                "checkout of the repository, or set PNEUMOSCAN_MODELS_DIR to the folder holding it."
            )
        return path
    path = Path(text).expanduser()
    if not path.is_file():
        raise ModelFileError(
            f"{path}: model file not found; give a model file path or one of {', '.join(SHIPPED_MODELS)}."
        )
    return path
