"""Throughput and latency of `pneumoscan dicom-node` on loopback, against a real Orthanc.

    python -m pneumoscan.devtools.dicom_bench --images ../shared/data/chest_xray/train --films 80 \\
        --shorter-side 0 --shorter-side 2000 --out docs/dicom.md

Starts a throwaway Orthanc (the archive) and a real `pneumoscan dicom-node --send-to` it, wraps
the first films of `--images` (JPEG or PNG) into DX objects, one study each (optionally resized
to a full-size film's shorter side), and C-STOREs them to the node as an archive's router would.
Two measures:

- **latency**, films sent one at a time: from the node receiving the film (the C-STORE handler) to
  the archive confirming it stored the SR and SC (its C-STORE response), as the node logs it; and
  from the sender's acknowledgement to both objects being visible in Orthanc's REST API;
- **throughput**, films sent back to back on one association: from the first C-STORE to the last
  result visible in Orthanc, in films per second, with the node's peak resident memory.

Needs the [dicom] extra and Debian's orthanc. Linux only (memory from /proc).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pneumoscan.core.fileio import write_section
from pneumoscan.core.hardware import hardware
from pneumoscan.devtools.dicom_harness import (
    NodeProcess,
    OrthancProcess,
    chest_film,
    jpeg_pixels,
    send_films,
)
from pneumoscan.dicom.settings import default_workers

SECTION = "dicom-node-bench"  # its section of docs/dicom.md (core.fileio.write_section)
RASTER_SUFFIXES = (".jpeg", ".jpg", ".png")


def prepare_films(images: Path, count: int, folder: Path, shorter_side: int) -> list[Path]:
    """`count` DX films from the JPEG/PNG films of `images` (cycled), one study each, resized so
    the shorter side is `shorter_side` pixels (0: as stored), with made-up patient fields."""
    from PIL import Image

    sources = sorted(p for p in images.rglob("*") if p.suffix.lower() in RASTER_SUFFIXES)
    if not sources:
        raise SystemExit(f"--images {images}: no JPEG or PNG films found")
    folder.mkdir(parents=True, exist_ok=True)
    films = []
    for index in range(count):
        pixels = jpeg_pixels(sources[index % len(sources)])
        if shorter_side:
            height, width = pixels.shape
            scale = shorter_side / min(height, width)
            size = (round(width * scale), round(height * scale))
            pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.BICUBIC))
        film = chest_film(
            pixels, patient_id=f"BENCH-{index:04d}", patient_name=f"Bench^Film{index:04d}"
        )
        path = folder / f"film{index:04d}.dcm"
        film.save_as(path, enforce_file_format=True)
        films.append(path)
    return films


class Changes:
    """New instances in Orthanc, read from its /changes feed."""

    def __init__(self, orthanc: OrthancProcess) -> None:
        self.orthanc = orthanc
        self.since = orthanc.rest("/changes?last")["Last"]
        self.seen = 0

    def poll(self) -> int:
        while True:
            page = self.orthanc.rest(f"/changes?since={self.since}&limit=1000")
            self.seen += sum(1 for c in page["Changes"] if c["ChangeType"] == "NewInstance")
            self.since = page["Last"]
            if page["Done"]:
                return self.seen

    def wait_for(self, total: int, timeout: float, interval: float = 0.01) -> float:
        """Wait until `total` new instances are in; the time they were first seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.poll() >= total:
                return time.monotonic()
            time.sleep(interval)
        raise TimeoutError(f"{total} new instances not in Orthanc after {timeout:g} s")


def percentiles(values: list[float]) -> dict[str, float]:
    data = np.asarray(values, dtype=float)
    return {
        "p50": round(float(np.percentile(data, 50)), 3),
        "p95": round(float(np.percentile(data, 95)), 3),
        "max": round(float(data.max()), 3),
    }


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def run(films: list[Path], sequential: int, model: str, workdir: Path) -> dict:
    orthanc = OrthancProcess(workdir / "orthanc").start()
    node = NodeProcess(workdir / "spool", ["--send-to", orthanc.destination, "--model", model])
    try:
        node.start()
        changes = Changes(orthanc)
        # Latency: one film at a time, each waiting for its SR and SC.
        observed = []
        for film in films[:sequential]:
            assert send_films("127.0.0.1", node.port, [film]) == [0]
            acknowledged = time.monotonic()
            stored = changes.wait_for(changes.seen + 2, timeout=120)
            observed.append(stored - acknowledged)
        node_side = [
            float(value)
            for value in re.findall(r"results delivered, ([\d.]+) s after receipt", node.output())
        ]
        # Throughput: the rest back to back on one association (the node's queue pushes back).
        burst = films[sequential:]
        target = changes.seen + 2 * len(burst)
        started = time.monotonic()
        statuses = send_films("127.0.0.1", node.port, burst)
        sent = time.monotonic()
        finished = changes.wait_for(target, timeout=60 + 10 * len(burst), interval=0.05)
        rss = peak_rss_mb(node.process.pid)
        stopped = node.stop()
    finally:
        node.stop()
        orthanc.stop()
    elapsed = finished - started
    return {
        "films": len(films),
        "latency_films": sequential,
        "latency_node_s": percentiles(node_side[:sequential]),
        "latency_observed_s": percentiles(observed),
        "burst_films": len(burst),
        "burst_refused": sum(1 for status in statuses if status != 0),
        "burst_seconds": round(elapsed, 2),
        "burst_send_seconds": round(sent - started, 2),
        "films_per_second": round(len(burst) / elapsed, 2),
        "node_peak_rss_mb": rss,
        "node_exit_code": stopped,
    }


def sharing_note() -> str:
    training = subprocess.run(
        ["pgrep", "-af", "pneumoscan train"], capture_output=True, text=True
    ).stdout
    if any("pgrep" not in line for line in training.splitlines()):
        return "shared with a model training job that kept both cores busy"
    return "no training job running"


def describe(films: list[Path]) -> str:
    import pydicom

    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in films]
    width = np.median([ds.Columns for ds in headers])
    height = np.median([ds.Rows for ds in headers])
    megabytes = np.median([path.stat().st_size for path in films]) / 1e6
    return f"films of median {width:.0f}x{height:.0f} px ({megabytes:.2f} MB)"


def markdown(summaries: list[dict], command: str, images: str, model: str = "binary") -> str:
    header = "| measure | " + " | ".join(s["described"] for s in summaries) + " |"
    rows = [header, "|---|" + "---|" * len(summaries)]

    def row(name: str, cell) -> None:
        rows.append(f"| {name} | " + " | ".join(cell(s) for s in summaries) + " |")

    def spread(values: dict) -> str:
        return f"p50 {values['p50']:g} s, p95 {values['p95']:g} s, max {values['max']:g} s"

    first = summaries[0]
    row(
        f"latency: film received by the node -> SR and SC stored in Orthanc (the node's log; "
        f"{first['latency_films']} films one at a time)",
        lambda s: spread(s["latency_node_s"]),
    )
    row(
        "latency: sender's C-STORE acknowledged -> both objects visible in Orthanc's REST API "
        "(polled every 10 ms)",
        lambda s: spread(s["latency_observed_s"]),
    )
    row(
        f"throughput: {first['burst_films']} films back to back on one association, first "
        "C-STORE -> last result in Orthanc",
        lambda s: f"**{s['films_per_second']:g} films/s** ({s['burst_seconds']:g} s)",
    )
    row("films refused in the burst (queue full)", lambda s: str(s["burst_refused"]))
    row("node's peak resident memory", lambda s: f"{s['node_peak_rss_mb']:g} MB")
    return "\n".join(
        [
            "### Throughput and latency (`python -m pneumoscan.devtools.dicom_bench`)",
            "",
            f"`{command}`: films from `{images}` wrapped into 8-bit DX objects (one study each, "
            "made-up patients), C-STOREd over loopback to `pneumoscan dicom-node --send-to` a "
            "real Orthanc 1.10 on the same machine (started with TCP_NODELAY=1, see above); "
            f"model `{model}`, the node's default prediction "
            f"workers ({default_workers()} here), batch and queue. Hardware: {hardware()}; "
            f"{sharing_note()}. Orthanc, the node and the sender "
            "all run on these cores.",
            "",
            *rows,
            "",
            "Rerun with the command above; it starts and stops its own Orthanc and node.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=Path("examples"), help="JPEG/PNG films")
    parser.add_argument("--films", type=int, default=80, help="films per run")
    parser.add_argument("--sequential", type=int, default=20, help="of which sent one at a time")
    parser.add_argument(
        "--shorter-side",
        type=int,
        action="append",
        help="resize films to this shorter side, 0 for as stored (repeat: one run each)",
    )
    parser.add_argument("--model", default="binary")
    parser.add_argument("--out", type=Path, help="Markdown file whose benchmark section to write")
    args = parser.parse_args(argv)
    if not 0 < args.sequential < args.films:
        parser.error("--sequential: give a number between 1 and --films - 1")
    from pneumoscan.dicom import quiet_libraries

    quiet_libraries()
    summaries = []
    for side in args.shorter_side or [0]:
        with tempfile.TemporaryDirectory(prefix="pneumoscan-bench-") as folder:
            work = Path(folder)
            films = prepare_films(args.images, args.films, work / "films", side)
            summary = run(films, args.sequential, args.model, work)
            summary["described"] = describe(films)
        print(json.dumps(summary, indent=2), flush=True)
        summaries.append(summary)
    if args.out:
        command = "python -m pneumoscan.devtools.dicom_bench " + " ".join(argv or sys.argv[1:])
        text = markdown(summaries, command, str(args.images), args.model)
        write_section(args.out, SECTION, text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
