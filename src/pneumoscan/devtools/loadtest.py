"""Loopback load benchmark for `pneumoscan serve`: N concurrent clients for a fixed time.

Starts a real server process (`pneumoscan serve` on a free 127.0.0.1 port), drives it with asyncio
httpx clients that upload real films to /v1/predict, samples the server's resident memory every
half second, and reports requests/s, latency percentiles, errors and RSS over the run as Markdown.

    python -m pneumoscan.devtools.loadtest --clients 16 --duration 60 \\
        --images ../shared/data/chest_xray/val --out docs/benchmarks.md

`make bench-serve` runs it on full-size films: 64 validation films upscaled to a 2,000 px
shorter side first (`python -m pneumoscan.research.bench`), as the stored copies are 256 px.

Needs the [serve] extra and httpx (in the [dev] extra). Linux only (RSS from /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pneumoscan.core.fileio import write_section
from pneumoscan.core.images import IMAGE_SUFFIXES
from pneumoscan.devtools.local import free_port

SECTION = "serve-load"  # its section of the benchmarks file (core.fileio.write_section)


class ServerProcess:
    """`pneumoscan serve` in a child process on a free loopback port; stopped on exit. `command`
    replaces `python -m pneumoscan serve` (tests start a server with a deliberately slow model);
    it is given `--port PORT` and `extra_args`."""

    def __init__(
        self,
        extra_args: list[str] | None = None,
        env: dict | None = None,
        command: list[str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [
            *(command or [sys.executable, "-m", "pneumoscan", "serve"]),
            "--port",
            str(self.port),
            *(extra_args or []),
        ]
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        # The server's log goes to an anonymous temporary file: a pipe nobody reads would fill up
        # and stall the server mid-run.
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            self.args, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, text=True
        )
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pneumoscan serve exited early:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"pneumoscan serve not ready after {timeout:g} s")

    def output(self) -> str:
        """What the server has logged so far."""
        self.log.seek(0)
        return self.log.read()

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the server process so far (Linux /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        """Resident memory of the server process (Linux /proc)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def __exit__(self, *exc_info) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@dataclass
class LoadResult:
    clients: int
    duration_s: float
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    exceptions: Counter = field(default_factory=Counter)
    rss_samples: list[tuple[float, int]] = field(default_factory=list)
    server_cpu_s: float | None = None  # the server's CPU time over the run

    @property
    def requests(self) -> int:
        return sum(self.statuses.values()) + sum(self.exceptions.values())

    @property
    def errors(self) -> int:
        return self.requests - self.statuses.get(200, 0)

    def summary(self) -> dict:
        latencies = np.asarray(self.latencies_s) * 1000
        rss = [value for _, value in self.rss_samples]
        window = max(1, len(rss) // 6)  # first and last sixth of the run: is memory flat?
        return {
            "clients": self.clients,
            "duration_s": round(self.duration_s, 1),
            "requests": self.requests,
            "requests_per_s": round(self.requests / self.duration_s, 1),
            "latency_ms": {
                name: round(float(np.percentile(latencies, q)), 1) if len(latencies) else None
                for name, q in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))
            },
            "errors": self.errors,
            # Robust to shared cores, unlike requests/s: what one request costs the server.
            "server_cpu_ms_per_request": round(1000 * self.server_cpu_s / self.requests, 1)
            if self.server_cpu_s is not None and self.requests
            else None,
            "statuses": {str(status): count for status, count in sorted(self.statuses.items())},
            "exceptions": dict(self.exceptions),
            "rss_mb": {
                "start": round(rss[0] / 2**20, 1) if rss else None,
                "first_sixth_median": round(float(np.median(rss[:window])) / 2**20, 1)
                if rss
                else None,
                "last_sixth_median": round(float(np.median(rss[-window:])) / 2**20, 1)
                if rss
                else None,
                "peak": round(max(rss) / 2**20, 1) if rss else None,
                "end": round(rss[-1] / 2**20, 1) if rss else None,
            },
        }


async def _drive(
    url: str, films: list[tuple[str, bytes]], clients: int, duration: float, form: dict, result
):
    import httpx

    deadline = time.monotonic() + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits) as client:

        async def one_client(offset: int) -> None:
            index = offset
            while time.monotonic() < deadline:
                name, content = films[index % len(films)]
                index += clients
                started = time.perf_counter()
                try:
                    response = await client.post(
                        "/v1/predict", files={"file": (name, content)}, data=form
                    )
                    result.statuses[response.status_code] += 1
                    if response.status_code == 200:
                        result.latencies_s.append(time.perf_counter() - started)
                except httpx.HTTPError as error:
                    result.exceptions[type(error).__name__] += 1

        await asyncio.gather(*(one_client(offset) for offset in range(clients)))


def run_load(
    films: list[Path],
    clients: int = 16,
    duration: float = 60.0,
    model: str = "binary",
    heatmap: bool = False,
    server_args: list[str] | None = None,
    warmup_requests: int = 20,
) -> tuple[LoadResult, list[str]]:
    """Start a server, warm it up, then run `clients` concurrent uploaders for `duration` s. All
    clients share the loopback address, so the server admits `clients` requests at once from
    one address (its default is 4 per client) unless `server_args` say otherwise."""
    loaded = [(f"film{index}{path.suffix}", path.read_bytes()) for index, path in enumerate(films)]
    form = {"model": model, "heatmap": "true" if heatmap else "false"}
    admission = [f"--max-per-client={clients}", f"--max-in-flight={max(clients, 32)}"]
    # The server loads the model the uploads ask for, and only that one.
    with ServerProcess([*admission, f"--model={model}", *(server_args or [])]) as server:
        warm = LoadResult(clients=1, duration_s=1.0)
        asyncio.run(_drive(server.url, loaded[:warmup_requests], 1, 2.0, form, warm))
        result = LoadResult(clients=clients, duration_s=duration)
        stop = threading.Event()

        def sample() -> None:
            started = time.monotonic()
            while not stop.is_set():
                result.rss_samples.append((time.monotonic() - started, server.rss_bytes()))
                stop.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started, cpu_before = time.monotonic(), server.cpu_seconds()
        asyncio.run(_drive(server.url, loaded, clients, duration, form, result))
        result.duration_s = time.monotonic() - started
        result.server_cpu_s = server.cpu_seconds() - cpu_before
        stop.set()
        sampler.join()
        return result, server.args


def hardware_line() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    training = subprocess.run(
        ["pgrep", "-af", "pneumoscan train"], capture_output=True, text=True
    ).stdout
    shared = any("pgrep" not in line for line in training.splitlines())
    sharing = (
        "a model training job was running on the same cores"
        if shared
        else "no training job was running"
    )
    return (
        f"{model}, {os.cpu_count()} CPU cores, {platform.system()} {platform.machine()}; {sharing}"
    )


def describe_films(films: list[Path]) -> str:
    """How many films, their median size in pixels and bytes (the load depends on both)."""
    from PIL import Image

    sizes = []
    for path in films:
        try:
            with Image.open(path) as image:
                sizes.append(image.size)
        except OSError:  # DICOM: not opened by Pillow, counted by bytes only
            pass
    median_bytes = float(np.median([path.stat().st_size for path in films])) / 1024
    text = f"{len(films)} films, median {median_bytes:.0f} KB"
    if sizes:
        width, height = np.median(np.asarray(sizes), axis=0)
        text += f", median {width:.0f}x{height:.0f} px"
    return text


# Issue 27's goals for full-size uploads beside 256 px ones, 16 clients on 2 idle cores.
GOAL_SHARE, GOAL_RATE, GOAL_P95_MS = 0.5, 60.0, 400.0


def markdown(runs: list[dict], command: str, server_command: list[str], note: str = "") -> str:
    """The report: one column per film folder (`runs`: images, films, summary), and the goals
    for the last folder against the first when there are two or more."""
    server = " ".join(["pneumoscan", *server_command[3:]])
    first = runs[0]["summary"]

    def row(name, value):
        return f"| {name} | " + " | ".join(value(run["summary"]) for run in runs) + " |"

    def latency(s):
        q = s["latency_ms"]
        return f"{q['p50']:g} / {q['p95']:g} / {q['p99']:g} ({q['max']:g})"

    def rss(s):
        r = s["rss_mb"]
        return f"{r['start']:g} / {r['peak']:g} / {r['end']:g}"

    lines = [
        "## Serving under load: `pneumoscan serve`",
        "",
        f"`{command}`: {first['clients']} concurrent clients over loopback for "
        f"{first['duration_s']:g} s per folder, each uploading films to `/v1/predict` (multipart) "
        f"one after another{'; ' + note if note else ''}. Server started anew for each folder as "
        f"`{server}` (port chosen free). Hardware: {hardware_line()}. The clients run on the "
        "same cores as the server.",
        "",
        "| measure | " + " | ".join(f"`{run['images']}`" for run in runs) + " |",
        "|---|" + "---|" * len(runs),
        "| films | " + " | ".join(run["films"] for run in runs) + " |",
        row("requests", lambda s: f"{s['requests']:,}"),
        row("throughput", lambda s: f"{s['requests_per_s']:g} requests/s"),
        row("latency p50 / p95 / p99 (max), ms", latency),
        row("errors (non-200 or connection errors)", lambda s: str(s["errors"])),
        row("server CPU time per request", lambda s: f"{s['server_cpu_ms_per_request']} ms"),
        row("status codes", lambda s: ", ".join(f"{k}: {v:,}" for k, v in s["statuses"].items())),
        row("server RSS at start / peak / end, MB", rss),
        row(
            "server RSS median, first vs last sixth, MB",
            lambda s: (
                f"{s['rss_mb']['first_sixth_median']:g} vs {s['rss_mb']['last_sixth_median']:g}"
            ),
        ),
        "",
    ]
    if len(runs) > 1:
        last = runs[-1]["summary"]
        share = last["requests_per_s"] / first["requests_per_s"]
        p95 = last["latency_ms"]["p95"]
        goals = [
            (
                f"at least {GOAL_SHARE}x the first folder's rate",
                f"{share:.2f}x",
                share >= GOAL_SHARE,
            ),
            (
                f"at least {GOAL_RATE:.0f} requests/s",
                f"{last['requests_per_s']:g}",
                last["requests_per_s"] >= GOAL_RATE,
            ),
            (f"p95 at most {GOAL_P95_MS:.0f} ms", f"{p95:g} ms", p95 <= GOAL_P95_MS),
            ("no errors", str(last["errors"]), last["errors"] == 0),
        ]
        lines += [
            f"Goals for `{runs[-1]['images']}` beside `{runs[0]['images']}` (issue 27, "
            f"{first['clients']} clients, 2 cores):",
            "",
            "| goal | measured | reached |",
            "|---|---|---|",
            *[f"| {goal} | {value} | {'yes' if ok else 'no'} |" for goal, value, ok in goals],
            "",
        ]
    statuses = sum(run["summary"]["statuses"].get("503", 0) for run in runs)
    lines.append(
        "Requests beyond the server's admission limit get 503 with Retry-After rather than "
        f"queueing without bound; {statuses} did here. Rerun with `make bench-serve` or the "
        "command above."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load per folder")
    parser.add_argument(
        "--images",
        type=Path,
        action="append",
        help="film folder (repeat: one run each, side by side; default examples/)",
    )
    parser.add_argument("--limit", type=int, default=64, help="at most this many films a folder")
    parser.add_argument("--films-note", default="", help="what the films are, for the report")
    parser.add_argument("--model", default="binary", help="the model served and asked for")
    parser.add_argument("--heatmap", action="store_true", help="ask for heatmaps too")
    parser.add_argument("--out", type=Path, help="Markdown file whose serve-load section to write")
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra `pneumoscan serve` argument"
    )
    args = parser.parse_args(argv)
    runs, errors = [], 0
    for images in args.images or [Path("examples")]:
        films = sorted(path for path in images.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)[
            : args.limit
        ]
        if not films:
            parser.error(f"--images {images}: no films found")
        result, server_command = run_load(
            films, args.clients, args.duration, args.model, args.heatmap, args.server_arg
        )
        summary = result.summary()
        print(json.dumps({"images": str(images), **summary}, indent=2))
        runs.append({"images": str(images), "films": describe_films(films), "summary": summary})
        errors += result.errors
    if args.out:
        command = "python -m pneumoscan.devtools.loadtest " + shlex.join(argv or sys.argv[1:])
        text = markdown(runs, command, server_command, args.films_note)
        write_section(args.out, SECTION, text)
        print(f"wrote {args.out}")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
