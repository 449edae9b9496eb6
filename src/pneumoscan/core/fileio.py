"""Atomic writes: a crash mid-write leaves the previous file intact, never half a file, and a
write that has returned survives a power cut (the file and its folder are fsynced); and sections
of a Markdown file that several commands write into."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def user_cache_dir() -> Path:
    """pneumoscan's cache folder: $XDG_CACHE_HOME/pneumoscan, else ~/.cache/pneumoscan (decoded
    films and feature maps of training runs; ONNX Runtime's optimised graphs in onnx/)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pneumoscan"


def atomic_write(
    path: Path, write: Callable[[Path], None], mode: int | None = None, durable: bool = True
) -> None:
    """Call write(tmp_path) on a temporary file beside `path`, fsync it, rename it over `path` and
    fsync the folder, so the new file is on disk once this returns. `mode`: the file's
    permissions (default: 0666 less the umask; patient data passes 0600). `durable=False` skips
    both fsyncs, for outputs made again by rerunning the command (heatmap PNGs): the rename still
    leaves a whole file or none, at about a quarter of the cost of a small file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        # mkstemp makes 0600 files; give the usual permissions unless told otherwise
        os.chmod(tmp, 0o666 & ~_umask() if mode is None else mode)
        if durable:
            fsync_file(tmp)
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str, mode: int | None = None) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text), mode)


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data), mode)


def fsync_file(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def fsync_dir(path: Path) -> None:
    """Make a rename, creation or removal in `path` durable (a no-op where folders cannot be
    opened, as on Windows)."""
    try:
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except (PermissionError, IsADirectoryError):
        return
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def private_modes(group_readable: bool = False) -> tuple[int, int]:
    """(file mode, folder mode) for patient data: the owner only, or also the owner's group."""
    return (0o640, 0o750) if group_readable else (0o600, 0o700)


def make_private_dir(path: Path, mode: int = 0o700) -> Path:
    """`path` and its missing parents created; `path` itself set to `mode` (the parents that
    existed are left as they are: they may be shared)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    os.chmod(path, mode)
    return path


def _umask() -> int:
    """The process umask, read without changing it where Linux allows: `os.umask` can only read
    it by setting it, and another thread creating a file in between would get umask 0."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    current = os.umask(0)
    os.umask(current)
    return current


def write_section(path: Path, section: str, text: str) -> Path:
    """Replace the text between `<!-- section:begin -->` and `<!-- section:end -->` in `path`
    (appending the section when absent), so reports that other commands keep in the same file
    stay as they are."""
    path = Path(path)
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    block = f"{begin}\n{text.strip()}\n{end}"
    current = path.read_text() if path.exists() else ""
    if begin in current and end in current:
        head, rest = current.split(begin, 1)
        updated = head + block + rest.split(end, 1)[1]
    else:
        updated = current.rstrip("\n") + ("\n\n" if current else "") + block + "\n"
    atomic_write_text(path, updated)
    return path


def atomic_write_json(path: Path, document) -> None:
    """Strict JSON (NaN, e.g. an AUC with one class absent, is written as null)."""
    import json
    import math

    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(item) for item in value]
        return value

    atomic_write_text(path, json.dumps(clean(document), indent=2, allow_nan=False))


def shown_path(path: Path | str) -> str:
    """A path as reports and cards show it: relative to the working directory when it lies
    inside it (`models/binary.onnx`), so no machine's folders end up in a committed report."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
