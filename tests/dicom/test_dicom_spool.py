"""The node's spool and destinations, in process: locking, atomic commits, parsing, secrets."""

from __future__ import annotations

import os
import time

import pytest

from pneumoscan.core.errors import PneumoscanError
from pneumoscan.dicom.delivery import CStoreDestination, StowDestination
from pneumoscan.dicom.node import received_at
from pneumoscan.dicom.spool import Spool


def test_a_spool_serves_one_node_at_a_time(tmp_path):
    first = Spool(tmp_path / "spool")
    with pytest.raises(PneumoscanError, match="another dicom-node is using this spool"):
        Spool(tmp_path / "spool")
    first.close()
    Spool(tmp_path / "spool").close()  # free again once the first lets go


def test_spool_keeps_patient_data_private_without_touching_a_shared_root(tmp_path):
    tmp_path.chmod(0o755)
    spool = Spool(tmp_path)
    assert oct(tmp_path.stat().st_mode & 0o777) == "0o755"
    for folder in (spool.inbox, spool.outbox, spool.failed):
        assert oct(folder.stat().st_mode & 0o777) == "0o700"
    spool.close()


def test_results_are_committed_once_and_the_film_leaves_the_inbox(tmp_path):
    spool = Spool(tmp_path)
    name = spool.new_name()
    film = spool.admit(name, b"film")
    assert spool.films() == [film]
    job = spool.commit(film, [b"sr", b"sc"], {"received": 1.0})
    assert spool.films() == [] and spool.jobs() == [job]
    assert [path.read_bytes() for path in spool.objects(job)] == [b"sr", b"sc"]
    # A film predicted again after a crash (before it left the inbox) keeps the first results.
    again = spool.admit(name, b"film")
    assert spool.commit(again, [b"other"], {}) == job
    assert [path.read_bytes() for path in spool.objects(job)] == [b"sr", b"sc"]
    assert spool.films() == []
    spool.mark_sent(job, "cstore-a")
    assert spool.is_sent(job, "cstore-a") and not spool.is_sent(job, "stow-b")
    spool.close()


def test_half_written_leftovers_are_cleared_at_start(tmp_path):
    spool = Spool(tmp_path)
    (spool.outbox / ".x.staging").mkdir()
    (spool.inbox / ".film.dcm.abc.tmp").write_bytes(b"half")
    spool.close()
    spool = Spool(tmp_path)
    assert list(spool.outbox.iterdir()) == [] and spool.films() == []
    spool.close()


def test_spool_names_sort_by_arrival_and_tell_when(tmp_path):
    spool = Spool(tmp_path)
    before = time.time()
    names = [spool.new_name() for _ in range(3)]
    assert names == sorted(names)
    assert before - 1e-3 <= received_at(names[0]) <= time.time() + 1e-3
    assert str(os.getpid()) in names[0]
    spool.close()


def test_destinations_parse_and_keep_secrets():
    destination = CStoreDestination.parse("pacs.example.org:4242:ORTHANC")
    assert (destination.host, destination.port, destination.ae_title) == (
        "pacs.example.org",
        4242,
        "ORTHANC",
    )
    assert CStoreDestination.parse("[::1]:104:PACS").host == "::1"
    for bad in ("pacs:ORTHANC", "pacs:99999:ORTHANC", "pacs:104:" + "A" * 17):
        with pytest.raises(PneumoscanError, match="give HOST:PORT:AET"):
            CStoreDestination.parse(bad)
    stow = StowDestination("http://pacs:8042/dicom-web", token="s3cret")
    assert "s3cret" not in str(stow) and "s3cret" not in repr(stow) and "s3cret" not in stow.key
    with pytest.raises(PneumoscanError, match="DICOMweb root URL"):
        StowDestination("pacs:8042")


def test_spool_lists_only_its_own_entries(tmp_path):
    spool = Spool(tmp_path)
    film = spool.admit(spool.new_name(), b"film")
    job = spool.commit(spool.admit(spool.new_name(), b"film"), [b"sr"], {})
    (spool.inbox / "notes.dcm").write_bytes(b"stray")  # a film's suffix, not a spool name
    (spool.inbox / "notes.txt").write_text("stray")
    (spool.outbox / "notes.txt").write_text("stray")  # once killed the courier
    (spool.outbox / "backup").mkdir()
    (spool.outbox / f"{job.name}~").write_text("an editor's backup")
    assert spool.films() == [film] and spool.jobs() == [job]
    spool.close()


def test_spool_files_are_private_or_group_readable(tmp_path):
    for group_readable, file_mode, folder_mode in ((False, 0o600, 0o700), (True, 0o640, 0o750)):
        spool = Spool(tmp_path / str(group_readable), group_readable=group_readable)
        film = spool.admit(spool.new_name(), b"film")
        assert film.stat().st_mode & 0o777 == file_mode
        job = spool.commit(film, [b"sr"], {})
        spool.mark_sent(job, "cstore-a")
        assert job.stat().st_mode & 0o777 == folder_mode
        for path in job.iterdir():
            assert path.stat().st_mode & 0o777 == file_mode, path.name
        for folder in (spool.inbox, spool.outbox, spool.failed):
            assert folder.stat().st_mode & 0o777 == folder_mode
        spool.close()


def test_a_film_is_fsynced_with_its_folder_before_admit_returns(tmp_path, monkeypatch):
    spool = Spool(tmp_path)
    synced = []
    real_fsync = os.fsync

    def fsync(handle):
        synced.append(os.readlink(f"/proc/self/fd/{handle}"))
        real_fsync(handle)

    monkeypatch.setattr(os, "fsync", fsync)
    film = spool.admit(spool.new_name(), b"film")
    assert str(spool.inbox) in synced  # the folder, so the rename survives a power cut
    assert any(path.startswith(str(spool.inbox / ".")) for path in synced)  # the file's data
    synced.clear()
    job = spool.commit(film, [b"sr"], {})
    assert str(spool.outbox) in synced and str(spool.inbox) in synced
    synced.clear()
    spool.mark_sent(job, "cstore-a")
    assert str(job) in synced
    spool.close()


def test_failed_items_keep_their_reason(tmp_path):
    spool = Spool(tmp_path)
    film = spool.admit(spool.new_name(), b"film")
    job = spool.commit(spool.admit(spool.new_name(), b"film"), [b"sr"], {})
    failed_film = spool.fail(film, "film x: unreadable")
    failed_job = spool.fail(job, "archive said no")
    assert failed_film.with_name(failed_film.name + ".txt").read_text() == "film x: unreadable\n"
    assert (failed_job / "reason.txt").read_text() == "archive said no\n"
    assert spool.films() == [] and spool.jobs() == []
    spool.close()
