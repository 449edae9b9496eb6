"""The node's disk spool: nothing acknowledged is lost, whatever stops the node or its archive.

    SPOOL/inbox/<film>.dcm          received films, acknowledged to the sender, not yet predicted
    SPOOL/outbox/<film>/            one film's results waiting for delivery:
                   0.dcm, 1.dcm       the SR and the heatmap Secondary Capture
                   job.json           when the film arrived (seconds since the epoch) and its outcome
                   sent-<key>         one marker per destination that has stored them (but
                                      the last: once every destination has, the folder goes)
    SPOOL/failed/<film>[.dcm]       what a destination refused for good, or a film that broke
                                    the predictor, with a reason.txt; kept for a person to look at

A film is written to the inbox (atomically, the file and its folder fsynced) before its C-STORE
is answered with success; its results are committed to the outbox by renaming a finished, fsynced
temporary folder, and only then is the film removed from the inbox; a result folder is removed
only when every destination has stored it (each `sent-` mark is fsynced too; a crash between a
store and its mark sends the results again, under the same UIDs). A crash or power
cut at any point leaves either the film or its results on disk, and the next start picks them up
(`films`, `jobs`). Names are arrival times plus a counter: they sort in arrival order and hold
nothing from the film; anything else in the spool's folders (a stray `notes.txt`, an editor's
backup) is not the spool's and is left alone. The spool holds patient data (films and results):
its folders are 0700 and its files 0600 (0750 and 0640 with `group_readable`). A lock file keeps
a second node off a spool in use.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

from pneumoscan.core.errors import PneumoscanError
from pneumoscan.core.fileio import (
    atomic_write_bytes,
    atomic_write_text,
    fsync_dir,
    private_modes,
)

FILM_SUFFIX = ".dcm"
JOB_FILE = "job.json"
REASON_FILE = "reason.txt"
# The spool's own names (`new_name`): arrival time, process id, counter.
NAME_PATTERN = re.compile(r"\d{8}T\d{6}\.\d{6}-\d+-\d{6}")


def is_spool_name(name: str) -> bool:
    return NAME_PATTERN.fullmatch(name) is not None


class Spool:
    """The spool folder, locked for one node process at a time (`SpoolInUseError` otherwise)."""

    def __init__(self, root: Path, group_readable: bool = False) -> None:
        self.root = Path(root)
        self.inbox = self.root / "inbox"
        self.outbox = self.root / "outbox"
        self.failed = self.root / "failed"
        self.file_mode, self.folder_mode = private_modes(group_readable)
        try:
            if not self.root.exists():
                self.root.mkdir(parents=True, mode=self.folder_mode)
            for folder in (self.inbox, self.outbox, self.failed):
                folder.mkdir(exist_ok=True)
                os.chmod(folder, self.folder_mode)  # its own folders only: the root may be shared
            self._lock_file = self._take_lock()
        except OSError as error:
            raise PneumoscanError(
                f"--spool {self.root}: cannot use this folder ({error.strerror or error}); "
                "give a folder this user can write."
            ) from None
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._remove_temporaries()

    def _take_lock(self):
        """Two nodes on one spool would predict and send the same films twice."""
        import fcntl

        handle = open(self.root / "lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise PneumoscanError(
                f"--spool {self.root}: another dicom-node is using this spool; stop it, or give "
                "each node its own --spool."
            ) from None
        return handle

    def close(self) -> None:
        """Release the spool for another process (the lock also goes when the process ends)."""
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _remove_temporaries(self) -> None:
        """Half-written files and folders of a previous run (never acknowledged or committed)."""
        for folder in (self.inbox, self.outbox):
            for leftover in folder.glob(".*"):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)

    # --- films ---------------------------------------------------------------------------

    def new_name(self) -> str:
        with self._lock:
            count = next(self._counter)
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
        return f"{stamp}.{int(now % 1 * 1e6):06d}-{os.getpid()}-{count:06d}"

    def admit(self, name: str, data: bytes) -> Path:
        """A received film, on disk before its C-STORE is answered."""
        path = self.inbox / f"{name}{FILM_SUFFIX}"
        atomic_write_bytes(path, data, self.file_mode)  # fsynced, with the inbox
        return path

    def films(self) -> list[Path]:
        """Films waiting for prediction, oldest first (the spool's own names only)."""
        return sorted(
            path
            for path in self.inbox.glob(f"*{FILM_SUFFIX}")
            if is_spool_name(path.name.removesuffix(FILM_SUFFIX)) and path.is_file()
        )

    # --- results -------------------------------------------------------------------------

    def commit(self, film: Path, objects: list[bytes], record: dict) -> Path:
        """The film's results into the outbox in one rename, then the film out of the inbox."""
        name = film.name.removesuffix(FILM_SUFFIX)
        job = self.outbox / name
        if not job.exists():  # a film predicted before a crash, not yet removed: keep the first
            staging = self.outbox / f".{name}.staging"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(mode=self.folder_mode)
            # The staging folder becomes the job in one rename: its files need no renames of
            # their own, only their data and the folder's entries on disk before it (one fsync
            # each, and one of the folder: 5 fewer than a rename per file).
            files = {f"{index}{FILM_SUFFIX}": data for index, data in enumerate(objects)}
            files[JOB_FILE] = json.dumps(record).encode()
            for file_name, data in files.items():
                _write_synced(staging / file_name, data, self.file_mode)
            fsync_dir(staging)
            os.rename(staging, job)
            fsync_dir(self.outbox)  # the results are on disk before the film goes
        film.unlink(missing_ok=True)
        fsync_dir(self.inbox)
        return job

    def jobs(self) -> list[Path]:
        """Result folders waiting for delivery, oldest first (the spool's own names only)."""
        return sorted(
            path for path in self.outbox.iterdir() if is_spool_name(path.name) and path.is_dir()
        )

    @staticmethod
    def objects(job: Path) -> list[Path]:
        return sorted(job.glob(f"*{FILM_SUFFIX}"))

    @staticmethod
    def record(job: Path) -> dict:
        try:
            return json.loads((job / JOB_FILE).read_text())
        except (OSError, ValueError):
            return {}

    @staticmethod
    def is_sent(job: Path, key: str) -> bool:
        return (job / f"sent-{key}").exists()

    def mark_sent(self, job: Path, key: str) -> None:
        """`key` has stored the job (the courier skips this for the job's last destination and
        finishes it instead: a crash before either re-sends it, with the same UIDs)."""
        atomic_write_text(job / f"sent-{key}", f"{time.time():.3f}\n", self.file_mode)

    def finish(self, job: Path) -> None:
        shutil.rmtree(job, ignore_errors=True)
        fsync_dir(self.outbox)

    def fail(self, item: Path, reason: str) -> Path:
        """Move a job (or a film) aside for good, with the reason next to it: `failed/<job>/
        reason.txt`, or `failed/<film>.dcm.txt`. The reason is written first, so a crash between
        the two leaves the item where it was (retried), never in failed/ without its reason."""
        target = self.failed / item.name
        if target.exists():
            target = self.failed / f"{item.name}.{time.time_ns()}"
        if item.is_dir():
            atomic_write_text(item / REASON_FILE, reason + "\n", self.file_mode)
            os.rename(item, target)
        else:
            note = target.with_name(target.name + ".txt")
            atomic_write_text(note, reason + "\n", self.file_mode)
            os.rename(item, target)
        fsync_dir(self.failed)
        fsync_dir(item.parent)
        return target


def _write_synced(path: Path, data: bytes, mode: int) -> None:
    """A new file with `mode`, its data on disk when this returns (its folder's entry is not)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
