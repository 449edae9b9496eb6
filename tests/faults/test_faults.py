"""Fault injection: real `pneumoscan dicom-node` processes and a real Orthanc on loopback.

The invariant every scenario checks: each film the node answered 0x0000 gets its results into
the archive exactly once (one SR in its study, counted through Orthanc's REST API), whatever
broke on the way: stray and corrupt spool entries, kill -9 at each stage of the pipeline
(received, predicted, partly delivered), the archive down and back, a full disk.
Run with `pytest -q -m slow tests/faults` (`.ci/run` does).
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from faults.conftest import (
    NODE_FLAGS,
    assert_each_delivered_once,
    kill9,
    send_each,
    sr_counts,
    wait_until,
)
from pneumoscan.devtools.dicom_harness import NodeProcess, OrthancProcess, free_port
from pneumoscan.dicom.spool import Spool

pytestmark = pytest.mark.slow


def _stages(spool: Spool, key: str | None = None) -> set[str]:
    """Which pipeline stages the spool holds films at, read at the moment of a kill."""
    stages = set()
    if spool.films():
        stages.add("received")
    for job in spool.jobs():
        stages.add("partly delivered" if key and spool.is_sent(job, key) else "predicted")
    return stages


def _peek(root) -> Spool:
    """The spool's folders, read without locking it (the node holds the lock)."""
    spool = Spool.__new__(Spool)
    spool.root = root
    spool.inbox, spool.outbox, spool.failed = root / "inbox", root / "outbox", root / "failed"
    return spool


def test_stray_and_corrupt_spool_entries(orthanc_factory, make_films, tmp_path):
    orthanc = orthanc_factory("pacs")
    root = tmp_path / "spool"
    spool = Spool(root)
    corrupt = spool.commit(spool.admit(spool.new_name(), b"film"), [b"not DICOM"], {})
    for folder in (spool.inbox, spool.outbox, spool.failed):
        (folder / "notes.txt").write_text("a person's note")  # once killed the courier
    (spool.inbox / "scan.dcm").write_bytes(b"not one of the spool's names")
    spool.close()
    films = make_films(4)
    with NodeProcess(root, ["--send-to", orthanc.destination, *NODE_FLAGS]) as node:
        assert send_each(node, films) == [0] * 4
        assert_each_delivered_once(orthanc, films, node)
        assert node.process.poll() is None  # still serving
        assert send_each(node, make_films(1)) == [0]
    reason = (root / "failed" / corrupt.name / "reason.txt").read_text()
    assert "cannot be read" in reason
    assert (root / "outbox" / "notes.txt").exists()  # not the spool's: left alone


def test_kill_9_at_each_stage_of_the_pipeline(orthanc_factory, make_films, tmp_path):
    first = orthanc_factory("first")
    second = OrthancProcess(tmp_path / "second")  # down for now: deliveries stay partial
    root = tmp_path / "spool"
    args = ["--send-to", first.destination, "--send-to", second.destination, *NODE_FLAGS]
    films = make_films(4)
    key = "cstore-127.0.0.1-{}-{}".format(*first.destination.split(":")[1:])
    seen: set[str] = set()
    try:
        node = NodeProcess(root, args).start()
        assert send_each(node, films[:2]) == [0, 0]
        seen |= _stages(_peek(root), key)
        kill9(node)  # at once: films still received, perhaps predicted
        node = NodeProcess(root, args).start()
        assert send_each(node, films[2:]) == [0, 0]
        assert wait_until(lambda: sr_counts(first, films) == [1] * 4)
        assert wait_until(lambda: len(_peek(root).jobs()) == 4)
        seen |= _stages(_peek(root), key)
        kill9(node)  # every film delivered to the first archive, none to the second
        second.start()
        node = NodeProcess(root, args).start()
        assert_each_delivered_once(second, films, node)
        assert_each_delivered_once(first, films, node)
        assert node.stop() == 0
    finally:
        second.stop(kill=True)
    assert {"received", "partly delivered"} <= seen, seen


def test_archive_down_and_back(make_films, tmp_path):
    from dicom.conftest import require_orthanc

    require_orthanc()
    archive = OrthancProcess(tmp_path / "pacs", dicom_port=free_port())
    root = tmp_path / "spool"
    films = make_films(4)
    out = tmp_path / "out"
    args = ["--send-to", archive.destination, "--out", str(out), *NODE_FLAGS]
    try:
        with NodeProcess(root, args) as node:
            assert send_each(node, films) == [0] * 4
            assert wait_until(lambda: len(_peek(root).jobs()) == 4)  # waiting on disk
            for job in _peek(root).jobs():  # patient data: the owner's only
                assert job.stat().st_mode & 0o777 == 0o700
                assert {path.stat().st_mode & 0o777 for path in job.iterdir()} == {0o600}
            assert out.stat().st_mode & 0o777 == 0o700
            assert {path.stat().st_mode & 0o777 for path in out.iterdir()} == {0o600}
            archive.start()
            assert_each_delivered_once(archive, films, node)
            archive.stop()  # down again, then back: nothing is sent twice
            archive.start()
            more = make_films(2)
            assert send_each(node, more) == [0, 0]
            assert_each_delivered_once(archive, films + more, node)
        assert list((root / "failed").iterdir()) == []
    finally:
        archive.stop(kill=True)


def test_full_disk(orthanc_factory, make_films, tmp_path):
    root = tmp_path / "spool"
    root.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(root)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs spool (needs root): {mounted.stderr.decode()}")
    try:
        orthanc = orthanc_factory("pacs")
        filler = root / "filler"
        with open(filler, "wb") as handle:  # leave room for a few films only
            try:
                handle.write(b"\0" * (1900 * 1024))
            except OSError as error:
                assert error.errno == errno.ENOSPC
        films = make_films(8)
        with NodeProcess(root, ["--send-to", orthanc.destination, *NODE_FLAGS]) as node:
            statuses = send_each(node, films)
            assert set(statuses) <= {0, 0xA700}, statuses  # full: refused, never lost
            assert 0xA700 in statuses, "the disk never filled up"
            acknowledged = [film for film, code in zip(films, statuses) if code == 0]
            filler.unlink()
            os.sync()
            assert_each_delivered_once(orthanc, acknowledged, node)
            assert node.process.poll() is None
            late = make_films(2)
            assert send_each(node, late) == [0, 0]  # room again
            assert_each_delivered_once(orthanc, acknowledged + late, node)
    finally:
        subprocess.run(["umount", "-l", str(root)], capture_output=True)
