"""What machine a benchmark ran on (shared by the benchmark scripts)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run_child(module: str, arguments: list[str]) -> dict | str:
    """Run ``python -m module *arguments`` in a fresh process (offline) and return the JSON object it printed last,
    or its last error line: each memory measurement needs its own process for a clean peak (``VmHWM``)."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", module, *arguments], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return (done.stderr.strip().splitlines() or ["no output"])[-1]
    return json.loads(lines[-1])
