"""Fixtures for the DICOM tests: generated films, the shipped models, and a real Orthanc.

The Orthanc tests need Debian's `orthanc` and `orthanc-dicomweb` packages (`.ci/run` installs
them with `dicom3tools`); without the `Orthanc` binary they skip and say so. Each Orthanc runs on
free loopback ports with its own temporary configuration and storage folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom.films import example_film

pytest.importorskip("highdicom", reason='the [dicom] extra: pip install ".[dicom]"')
pytest.importorskip("pynetdicom", reason='the [dicom] extra: pip install ".[dicom]"')

from pneumoscan.devtools.dicom_harness import (  # noqa: E402
    NODE_AET,
    OrthancProcess,
    dicomweb_plugin,
    orthanc_binary,
)
from pneumoscan.runtime.model import load_runtime_model  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ROUTING_SCRIPT = REPO / "docs" / "orthanc" / "route-to-pneumoscan.lua"


@pytest.fixture(scope="session")
def binary_model():
    return load_runtime_model("binary")


@pytest.fixture(scope="session")
def three_class_model():
    return load_runtime_model("three-class")


@pytest.fixture(scope="session")
def films(tmp_path_factory) -> dict[str, Path]:
    """The two example films (known labels) as DX objects, each in its own study."""
    folder = tmp_path_factory.mktemp("films")
    return {
        "pneumonia": example_film(folder / "pneumonia.dcm", "pneumonia"),
        "normal": example_film(folder / "normal.dcm", "normal"),
    }


def require_orthanc() -> None:
    if orthanc_binary() is None:
        pytest.skip(
            "Orthanc not installed: apt-get install -y orthanc orthanc-dicomweb dicom3tools "
            "(as .ci/run does) to run the tests against a real archive"
        )


@pytest.fixture
def orthanc_factory(tmp_path):
    """Start Orthancs on demand (`factory(name, node_port=...)`); all stopped at the end."""
    require_orthanc()
    started: list[OrthancProcess] = []

    def start(name: str = "pacs", node_port: int | None = None, routing: bool = False, **options):
        modalities = {"pneumoscan": (NODE_AET, node_port)} if node_port else {}
        process = OrthancProcess(
            tmp_path / name,
            modalities=modalities,
            lua_scripts=[ROUTING_SCRIPT] if routing else None,
            **options,
        )
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop(kill=True)  # throwaway: no need for Orthanc's 3-second shutdown


@pytest.fixture
def dicomweb_orthanc(orthanc_factory):
    if dicomweb_plugin() is None:
        pytest.skip("Orthanc's DICOMweb plugin not installed: apt-get install -y orthanc-dicomweb")
    return orthanc_factory("dicomweb")
