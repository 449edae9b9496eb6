"""The node's loops under faults, in process: stray and corrupt spool entries, a disk that fails
a write, a delivery error nobody foresaw, and a thread that dies anyway (the watchdog)."""

from __future__ import annotations

import errno
import threading
import time

import pytest

from dicom.films import example_film
from pneumoscan.devtools.dicom_harness import free_port, send_films
from pneumoscan.dicom import node as node_module
from pneumoscan.dicom.delivery import FolderDestination
from pneumoscan.dicom.node import (
    OUT_OF_RESOURCES,
    SUCCESS,
    Counts,
    Courier,
    DicomNode,
    NodeSettings,
)
from pneumoscan.dicom.spool import Spool


class Recorder:
    """A destination that keeps what it was sent, or raises `error` while it is set."""

    key = "recorder"
    error: Exception | None = None

    def __init__(self) -> None:
        self.sent: list[list[str]] = []

    def send(self, paths) -> None:
        if self.error is not None:
            raise self.error
        self.sent.append([path.parent.name for path in paths])


def _job(spool: Spool, film, corrupt: bool = False):
    data = b"not DICOM at all" if corrupt else film.read_bytes()
    return spool.commit(spool.admit(spool.new_name(), b"film"), [data], {})


def _courier(spool, destination, **settings):
    options = {"retry_base_s": 0.01, **settings}
    return Courier(spool, [destination], NodeSettings(spool.root, **options), Counts())


def test_a_corrupt_result_ahead_of_good_ones_fails_at_once(films, tmp_path):
    spool = Spool(tmp_path / "spool")
    corrupt = _job(spool, films["normal"], corrupt=True)
    good = [_job(spool, films["normal"]) for _ in range(2)]
    (spool.outbox / "notes.txt").write_text("stray")  # once killed the courier
    destination = Recorder()
    courier = _courier(spool, destination)
    courier._deliver_due()
    assert destination.sent == [[job.name] for job in good]  # the others kept flowing
    reason = (spool.failed / corrupt.name / "reason.txt").read_text()
    assert "0.dcm cannot be read" in reason
    assert spool.jobs() == [] and courier.counts.failed == 1 and courier.counts.delivered == 2
    spool.close()


def test_an_unforeseen_delivery_error_is_retried_then_capped(films, tmp_path):
    spool = Spool(tmp_path / "spool")
    job = _job(spool, films["normal"])
    destination = Recorder()
    destination.error = RuntimeError("a library's surprise")
    courier = _courier(spool, destination, max_attempts=3)
    for _ in range(2):
        courier._retry_at[destination.key] = 0.0
        courier._deliver_due()
        assert spool.jobs() == [job]  # retried, not yet given up
    courier._retry_at[destination.key] = 0.0
    courier._deliver_due()
    assert spool.jobs() == []
    assert "RuntimeError, 3 times" in (spool.failed / job.name / "reason.txt").read_text()
    spool.close()


def test_no_exception_ends_the_courier(films, tmp_path, monkeypatch):
    spool = Spool(tmp_path / "spool")
    _job(spool, films["normal"])
    destination = Recorder()
    courier = _courier(spool, destination)
    calls = []

    def broken_disk(job):  # a job's only destination took it: the job is removed at once
        calls.append(job)
        if len(calls) == 1:
            raise OSError(errno.EIO, "I/O error")
        Spool.finish(spool, job)

    monkeypatch.setattr(spool, "finish", broken_disk)
    courier.start()
    deadline = time.monotonic() + 30
    while spool.jobs() and time.monotonic() < deadline:
        courier.notify()
        time.sleep(0.05)
    assert courier.is_alive() and spool.jobs() == [] and len(calls) == 2
    courier.stop()
    spool.close()


def test_an_unreadable_outbox_does_not_end_the_courier(films, tmp_path, monkeypatch):
    spool = Spool(tmp_path / "spool")
    _job(spool, films["normal"])
    destination = Recorder()
    courier = _courier(spool, destination)
    listings = []

    def flaky_listing():
        listings.append(1)
        if len(listings) <= 2:
            raise OSError(errno.EIO, "I/O error")
        return Spool.jobs(spool)

    monkeypatch.setattr(spool, "jobs", flaky_listing)
    courier.start()
    assert _wait(lambda: len(destination.sent) == 1, 30)
    assert courier.is_alive()
    courier.stop()
    spool.close()


def _node(model, tmp_path, **settings) -> DicomNode:
    settings = NodeSettings(
        tmp_path / "spool", port=free_port(), retry_base_s=0.05, queue_wait_s=0.5, **settings
    )
    return DicomNode(model, [FolderDestination(tmp_path / "out")], settings)


def _film(tmp_path, index: int = 0):
    return example_film(tmp_path / f"film{index}.dcm", "normal")


def _wait(condition, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_full_disk_keeps_the_film_for_a_retry(binary_model, tmp_path, monkeypatch):
    node = _node(binary_model, tmp_path)
    commit = node.spool.commit
    tries = []

    def full_disk(film, objects, record):
        tries.append(film)
        if len(tries) < 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return commit(film, objects, record)

    monkeypatch.setattr(node.spool, "commit", full_disk)
    node.start()
    try:
        assert send_films("127.0.0.1", node.settings.port, [_film(tmp_path)]) == [SUCCESS]
        assert _wait(lambda: len(list((tmp_path / "out").glob("*.dcm"))) == 2)
        assert len(tries) == 3 and list(node.spool.failed.iterdir()) == []
        assert all(thread.is_alive() for thread in node._workers)
    finally:
        node.stop()


def test_an_error_moving_a_film_to_failed_does_not_kill_the_worker(
    binary_model, tmp_path, monkeypatch
):
    node = _node(binary_model, tmp_path)
    fail = node.spool.fail
    tries = []

    def broken_disk(item, reason):
        tries.append(item)
        if len(tries) == 1:
            raise OSError(errno.EIO, "I/O error")
        return fail(item, reason)

    monkeypatch.setattr(node.spool, "fail", broken_disk)
    predict_films = node_module.predict_films
    films = iter(["breaks", "breaks", "fine"])  # the first film twice, then the next

    def predictor(*args):
        if next(films) == "breaks":
            raise ValueError("a film that breaks the predictor")
        return predict_films(*args)

    monkeypatch.setattr(node_module, "predict_films", predictor)
    node.start()
    try:
        statuses = send_films("127.0.0.1", node.settings.port, [_film(tmp_path)])
        assert statuses == [SUCCESS]
        assert _wait(lambda: len(tries) == 2)  # kept in the inbox, then moved on the retry
        assert _wait(lambda: len(list(node.spool.failed.glob("*.dcm"))) == 1)
        assert all(thread.is_alive() for thread in node._workers)
        assert node.check_threads() == []
        good = send_films("127.0.0.1", node.settings.port, [_film(tmp_path, 1)])
        assert good == [SUCCESS]
        assert _wait(lambda: len(list((tmp_path / "out").glob("*.dcm"))) == 2)
    finally:
        node.stop()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_worker_makes_the_node_refuse_films_and_exit_non_zero(
    binary_model, tmp_path, monkeypatch
):
    node = _node(binary_model, tmp_path)

    def die(films):
        raise SystemExit  # a thread that dies anyway: no `except Exception` catches this

    monkeypatch.setattr(node, "_predict", die)
    codes = []

    def send():
        _wait(lambda: node._server is not None)
        codes.append(send_films("127.0.0.1", node.settings.port, [_film(tmp_path)]))
        _wait(lambda: node._broken.is_set(), 10)
        codes.append(send_films("127.0.0.1", node.settings.port, [_film(tmp_path, 1)]))

    sender = threading.Thread(target=send)
    sender.start()
    # The watchdog checks every 1 s; the second film comes in between (while it drains).
    monkeypatch.setattr(node, "check_threads", _slow(node.check_threads, codes))
    assert node.serve_forever(watch_s=0.05) == 1
    sender.join()
    assert codes == [[SUCCESS], [OUT_OF_RESOURCES]]
    assert len(node.spool.films()) == 1  # the acknowledged film waits for the next start


def _slow(check, codes):
    """The watchdog, holding the node open until the second film has had its answer."""

    def watch():
        dead = check()
        if dead:
            _wait(lambda: len(codes) == 2, 30)
        return dead

    return watch
