"""Where the models shipped with pneumoscan live, how `--model binary` finds them, and their
provenance: models/SHA256SUMS records each shipped file's digest, a shipped name is checked
against it on load, and each card states it. Torch-free.

    python -m pneumoscan.core.shipped   # after a re-ship: rewrite SHA256SUMS and the cards' digests
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from pneumoscan.core.errors import ModelFileError

SHIPPED_MODELS = ("binary", "three-class", "binary-fast")
# Shipped as an ONNX graph only (int8 ensembles: their fp16 model files are too large for the
# size budget); torch-side work (`train --init`, adapt's fine-tuning) starts from the single
# network shipped beside them with its model file, where there is one.
TORCH_TWIN = {"binary": "binary-fast"}
DIGESTS_FILE = "SHA256SUMS"  # `sha256sum -c` reads it too
PROVENANCE_BEGIN, PROVENANCE_END = "<!-- provenance:begin -->", "<!-- provenance:end -->"


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


def shipped_name(reference: str | Path) -> str | None:
    """The shipped model `reference` names (`three_class` reads as `three-class`), or None for
    anything else, a file of that name included."""
    name = str(reference).replace("_", "-")
    return name if name in SHIPPED_MODELS and not Path(str(reference)).exists() else None


def resolve_model(reference: str | Path, suffix: str = ".pt") -> Path:
    """A path as given, or a shipped model name (`binary`, `three-class`, `binary-fast`)
    resolved to its file."""
    text = str(reference)
    name = shipped_name(reference)
    if name is not None:
        path = models_dir() / f"{name}{suffix}"
        if not path.is_file() and suffix == ".pt" and (path.with_suffix(".onnx")).is_file():
            twin = f"{TORCH_TWIN[name]!r} or " if name in TORCH_TWIN else ""
            raise ModelFileError(
                f"shipped model {name!r} is an ONNX graph only (an int8 ensemble), with no torch "
                f"model file; for torch-side work (train --init, fine-tuning) use {twin}a "
                "model file (.pt) such as a training run's model.pt."
            )
        if not path.is_file():
            raise ModelFileError(
                f"shipped model {text!r} not found at {path}; install pneumoscan from a full "
                "checkout of the repository, or set PNEUMOSCAN_MODELS_DIR to the folder holding it."
            )
        check_digest(path)
        return path
    path = Path(text).expanduser()
    if not path.is_file():
        raise ModelFileError(
            f"{path}: model file not found; give a model file path or one of {', '.join(SHIPPED_MODELS)}."
        )
    return path


def onnx_only(reference: str | Path) -> bool:
    """Whether `reference` is a shipped name shipped as an ONNX graph alone (no torch model
    file beside it): it is evaluated, stressed and recalibrated through ONNX Runtime."""
    name = shipped_name(reference)
    return name is not None and not (models_dir() / f"{name}.pt").is_file()


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def recorded_digests(folder: Path) -> dict[str, str]:
    """File name -> sha256 from FOLDER/SHA256SUMS; empty when there is none."""
    try:
        lines = (Path(folder) / DIGESTS_FILE).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return {}
    pairs = (line.split(maxsplit=1) for line in lines if line.strip())
    return {name.strip().lstrip("*"): digest for digest, name in pairs}


def check_digest(path: Path) -> None:
    """A shipped file must be the one its SHA256SUMS records (a folder without one is not
    checked: a user's own PNEUMOSCAN_MODELS_DIR)."""
    recorded = recorded_digests(path.parent).get(path.name)
    if recorded is None:
        return
    actual = file_sha256(path)
    if actual != recorded:
        raise ModelFileError(
            f"{path}: sha256 {actual[:16]}... is not the {recorded[:16]}... that "
            f"{path.parent / DIGESTS_FILE} records: the file is damaged or was replaced. "
            "Reinstall pneumoscan, or after shipping a new model on purpose run "
            "`python -m pneumoscan.core.shipped`."
        )


def provenance_section(folder: Path, name: str) -> str:
    """The card's Provenance section: the digest of each of the model's files."""
    files = sorted(p for p in Path(folder).glob(f"{name}.*") if p.suffix in (".onnx", ".pt"))
    rows = [f"- `models/{p.name}`: sha256 `{file_sha256(p)}`" for p in files]
    return "\n".join(
        [
            PROVENANCE_BEGIN,
            "## Provenance",
            "",
            f"The shipped files, as `models/{DIGESTS_FILE}` records them; loading a shipped name "
            "checks the file against it.",
            "",
            *rows,
            PROVENANCE_END,
        ]
    )


def write_provenance(folder: Path) -> None:
    """Rewrite FOLDER/SHA256SUMS and each card's Provenance section (after the rest of it)."""
    from pneumoscan.core.fileio import atomic_write_text

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix in (".onnx", ".pt"))
    atomic_write_text(
        folder / DIGESTS_FILE, "".join(f"{file_sha256(p)}  {p.name}\n" for p in files)
    )
    for card in sorted(folder.glob("*.md")):
        text = card.read_text(encoding="utf-8")
        if PROVENANCE_BEGIN in text:
            head, rest = text.split(PROVENANCE_BEGIN, 1)
            text = head.rstrip("\n") + "\n" + rest.split(PROVENANCE_END, 1)[1].lstrip("\n")
        section = provenance_section(folder, card.stem)
        atomic_write_text(card, text.rstrip("\n") + "\n\n" + section + "\n")


if __name__ == "__main__":
    write_provenance(models_dir())
    print(f"wrote {models_dir() / DIGESTS_FILE} and the cards' Provenance sections")
