"""A one-line description of the machine, stored next to every timing we report. Torch-free."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} CPU cores, {platform.system()} {platform.machine()}"
