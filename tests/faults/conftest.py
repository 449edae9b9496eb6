"""Fixtures for the fault-injection suite: the DICOM tests' Orthanc and films, and helpers that
send small films, break the node, and count what reached the archive."""

from __future__ import annotations

import time

import pytest
from dicom.conftest import orthanc_factory, require_orthanc  # noqa: F401  (fixtures reused)
from dicom.films import NORMAL_JPEG, PNEUMONIA_JPEG, chest_film, jpeg_pixels

from pneumoscan.devtools.dicom_harness import NodeProcess, send_films

# Quick retries, so a scenario's archive coming back is noticed within seconds.
NODE_FLAGS = ["--retry-max", "1", "-v"]


@pytest.fixture(scope="session")
def small_pixels():
    """256 px films: the invariant does not need big ones, and the suite must stay short."""
    return [jpeg_pixels(PNEUMONIA_JPEG, 256), jpeg_pixels(NORMAL_JPEG, 256)]


@pytest.fixture
def make_films(small_pixels):
    """`make_films(n)`: n films, each in its own study (so SRs are counted per film)."""
    return lambda count: [chest_film(small_pixels[index % 2]) for index in range(count)]


def send_each(node: NodeProcess, films) -> list[int]:
    """C-STORE each film on its own association; its status (-1: no answer)."""
    return [send_films("127.0.0.1", node.port, [film])[0] for film in films]


def sr_counts(orthanc, films) -> list[int]:
    """How many SRs the archive holds in each film's study."""
    counts = []
    for film in films:
        instances = orthanc.study_instances(str(film.StudyInstanceUID))
        counts.append(sum(orthanc.modality_of(item) == "SR" for item in instances))
    return counts


def wait_until(condition, timeout: float = 90.0, every: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return False


def assert_each_delivered_once(orthanc, films, node=None, timeout: float = 90.0) -> None:
    """The invariant: every acknowledged film has exactly one SR in the archive."""
    wait_until(lambda: min(sr_counts(orthanc, films), default=1) >= 1, timeout)
    time.sleep(1.0)  # a duplicate would arrive right after
    counts = sr_counts(orthanc, films)
    detail = "" if node is None else f"\nnode log:\n{node.output()[-4000:]}"
    assert counts == [1] * len(films), f"SRs per acknowledged film: {counts}{detail}"


def kill9(node: NodeProcess) -> None:
    """SIGKILL: no drain, no cleanup, as a power cut or the OOM killer would stop it."""
    node.process.kill()
    node.process.wait()
    node.process = None
