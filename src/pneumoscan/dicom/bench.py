"""Throughput and latency of `pneumoscan dicom-node` on loopback, against a real Orthanc.

    python -m pneumoscan.dicom.bench --images ../shared/data/chest_xray/val --films 80 \\
        --out docs/dicom.md

Starts a throwaway Orthanc (the archive) and a real `pneumoscan dicom-node --send-to` it, wraps
the first films of `--images` (JPEG or PNG) into DX objects, one study each, and C-STOREs them to
the node as an archive's router would. Two measures:

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

from pneumoscan.core.fileio import atomic_write_text
from pneumoscan.core.hardware import hardware
from pneumoscan.dicom.harness import (
    NodeProcess,
    OrthancProcess,
    chest_film,
    jpeg_pixels,
    send_films,
)

SECTION_BEGIN = "<!-- dicom-node-bench:begin -->"
SECTION_END = "<!-- dicom-node-bench:end -->"
RASTER_SUFFIXES = (".jpeg", ".jpg", ".png")


def prepare_films(images: Path, count: int, folder: Path, longest: int | None) -> list[Path]:
    sources = sorted(p for p in images.rglob("*") if p.suffix.lower() in RASTER_SUFFIXES)
    if not sources:
        raise SystemExit(f"--images {images}: no JPEG or PNG films found")
    films = []
    for index in range(count):
        source = sources[index % len(sources)]
        film = chest_film(
            jpeg_pixels(source, longest),
            patient_id=f"BENCH-{index:04d}",
            patient_name=f"Bench^Film{index:04d}",
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

    sizes = [pydicom.dcmread(path, stop_before_pixels=True) for path in films]
    width = np.median([ds.Columns for ds in sizes])
    height = np.median([ds.Rows for ds in sizes])
    megabytes = np.median([path.stat().st_size for path in films]) / 1e6
    return f"median {width:.0f}x{height:.0f} px, {megabytes:.2f} MB each (8-bit DX)"


def markdown(summary: dict, command: str, images: str, films: str) -> str:
    node, observed = summary["latency_node_s"], summary["latency_observed_s"]
    return "\n".join(
        [
            SECTION_BEGIN,
            "### Throughput and latency (`python -m pneumoscan.dicom.bench`)",
            "",
            f"`{command}`: {summary['films']} films from `{images}` ({films}) wrapped into DX "
            "objects, one study each, C-STOREd over loopback to `pneumoscan dicom-node --send-to` "
            "a real Orthanc 1.10 on the same machine, binary model, one prediction worker. "
            f"Hardware: {hardware()}; {sharing_note()}. Orthanc, the node and the sender all run "
            "on these two cores.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| latency, film received by the node -> SR and SC stored in Orthanc (node's log; "
            f"{summary['latency_films']} films one at a time) | p50 {node['p50']:g} s, p95 "
            f"{node['p95']:g} s, max {node['max']:g} s |",
            f"| latency, sender's C-STORE acknowledged -> both visible in Orthanc's REST API "
            f"(polled every 10 ms) | p50 {observed['p50']:g} s, p95 {observed['p95']:g} s, max "
            f"{observed['max']:g} s |",
            f"| throughput, {summary['burst_films']} films back to back on one association, "
            f"first C-STORE -> last result in Orthanc | {summary['films_per_second']:g} films/s "
            f"({summary['burst_seconds']:g} s) |",
            f"| films refused (queue full) | {summary['burst_refused']} |",
            f"| node peak resident memory | {summary['node_peak_rss_mb']:g} MB |",
            "",
            "Rerun with the command above; it starts and stops its own Orthanc and node.",
            SECTION_END,
        ]
    )


def write_section(text: str, out: Path) -> None:
    """Replace the benchmark section of `out` (or append it), leaving the rest of the file."""
    current = out.read_text() if out.exists() else ""
    if SECTION_BEGIN in current and SECTION_END in current:
        head, rest = current.split(SECTION_BEGIN, 1)
        updated = head + text + rest.split(SECTION_END, 1)[1]
    else:
        updated = current.rstrip("\n") + ("\n\n" if current else "") + text + "\n"
    atomic_write_text(out, updated)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=Path("examples"), help="JPEG/PNG films")
    parser.add_argument("--films", type=int, default=80, help="films in all")
    parser.add_argument("--sequential", type=int, default=20, help="of which sent one at a time")
    parser.add_argument("--longest", type=int, default=None, help="shrink films to this size")
    parser.add_argument("--model", default="binary")
    parser.add_argument("--out", type=Path, help="Markdown file whose benchmark section to write")
    args = parser.parse_args(argv)
    if not 0 < args.sequential < args.films:
        parser.error("--sequential: give a number between 1 and --films - 1")
    from pneumoscan.dicom import quiet_libraries

    quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="pneumoscan-bench-") as folder:
        work = Path(folder)
        films = prepare_films(args.images, args.films, work, args.longest)
        summary = run(films, args.sequential, args.model, work)
        described = describe(films)
    print(json.dumps(summary, indent=2))
    if args.out:
        command = "python -m pneumoscan.dicom.bench " + " ".join(argv or sys.argv[1:])
        write_section(markdown(summary, command, str(args.images), described), args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
