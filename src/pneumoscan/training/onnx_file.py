"""The pneumoscan metadata inside an ONNX file, replaced with the onnx package alone.

Export writes the metadata of a new graph; `calibrate` writes a copy of an exported graph with a
new operating point. Neither needs torch for that step, and `calibrate` runs in the torch-free
[eval] install, so this module imports only onnx (lazily) and core; the `calibrate-without-torch`
import contract in pyproject.toml keeps it so.
"""

from __future__ import annotations

import json
from pathlib import Path

from pneumoscan.core.decision import METADATA_KEY
from pneumoscan.core.fileio import atomic_write


def set_metadata(proto, metadata: dict) -> None:
    """Replace the pneumoscan entry of a loaded ONNX model's metadata with `metadata` (JSON)."""
    for index in reversed(range(len(proto.metadata_props))):
        if proto.metadata_props[index].key == METADATA_KEY:
            del proto.metadata_props[index]
    entry = proto.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps(metadata)


def write_with_metadata(source: Path, out: Path, metadata: dict) -> Path:
    """A copy of the ONNX file `source` with the graph and weights as they are and `metadata` as
    its pneumoscan metadata, written atomically to `out`."""
    import onnx

    proto = onnx.load(str(source))
    set_metadata(proto, metadata)
    atomic_write(Path(out), lambda tmp: onnx.save(proto, str(tmp)))
    return Path(out)
