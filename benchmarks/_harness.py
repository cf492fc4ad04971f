"""What every benchmark script shares: the machine's description and load, timing and memory helpers, fresh
subprocesses for clean memory peaks, and result tables printed as plain text, Markdown or rich."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faceprompt.faces import usable_cores

REPOSITORY = Path(__file__).resolve().parents[1]


# --- the machine -----------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _library_version(name: str) -> str:
    """One library's version, with the build facts that change its speed (threads, SIMD, BLAS)."""
    if name == "torch":
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
        return f"{torch.__version__} ({torch.get_num_threads()} threads, {capability})"
    if name == "dlib":
        import dlib

        return (
            f"{dlib.__version__} (DLIB_USE_BLAS={dlib.DLIB_USE_BLAS}, DLIB_USE_LAPACK={dlib.DLIB_USE_LAPACK}, "
            f"USE_AVX_INSTRUCTIONS={dlib.USE_AVX_INSTRUCTIONS})"
        )
    if name == "opencv":
        import cv2

        return f"{cv2.__version__} ({cv2.getNumThreads()} threads)"
    module = __import__(name)
    return module.__version__


def machine_info(libraries: Iterable[str] = ()) -> dict[str, str]:
    """Date, CPU, Python and the version of each of ``libraries`` (``"torch"``, ``"dlib"``, ``"opencv"`` or any
    importable module with a ``__version__``), in that order."""
    info = {
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": f"{cpu_model()}, {usable_cores()} usable cores",
        "python": platform.python_version(),
    }
    info.update({name: _library_version(name) for name in libraries})
    return info


class CpuShare:
    """Share of the machine's CPU time taken by *other* processes between ``start()`` and ``stop()`` (from
    /proc/stat, less this process and its finished children; ``None`` where /proc is missing)."""

    def __init__(self) -> None:
        self._start: tuple[float, float, float] | None = None

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        except (OSError, ValueError, IndexError):
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        own = sum(os.times()[:4])  # this process and its finished children, seconds
        return sum(values) / ticks, (values[3] + values[4]) / ticks, own  # total, idle + iowait, own

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> float | None:
        end = self._sample()
        if self._start is None or end is None:
            return None
        total = end[0] - self._start[0]
        busy = total - (end[1] - self._start[1])
        own = end[2] - self._start[2]
        return max(0.0, (busy - own) / total) if total > 0 else None


def cpu_busy_fraction(seconds: float = 2.0) -> float | None:
    """Share of the machine's CPU that other processes use over the next ``seconds`` while this one sleeps."""
    share = CpuShare()
    share.start()
    time.sleep(seconds)
    return share.stop()


def rss_mib() -> dict[str, float]:
    """``VmRSS`` and ``VmHWM`` (peak) of this process in MiB, from /proc/self/status."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) / 1024.0
    return found


def quiet_libraries() -> None:
    """Offline, and no warnings or info logs from the HF libraries between the benchmark's own lines."""
    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    for name in ("diffusers", "transformers", "peft", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import diffusers.utils.logging as diffusers_logging
        import transformers.utils.logging as transformers_logging

        diffusers_logging.set_verbosity_error()
        transformers_logging.set_verbosity_error()
    except ImportError:
        pass


def progress_log(started: float | None = None) -> Callable[[str], None]:
    """A ``log(message)`` that prints to stderr with the seconds since ``started`` (default: now)."""
    origin = time.perf_counter() if started is None else started

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - origin:6.0f} s] {message}", file=sys.stderr, flush=True)

    return log


# --- timing ----------------------------------------------------------------------------------------


def time_repeats(work: Callable[[], Any], repeats: int) -> list[float]:
    """Wall seconds of each of ``repeats`` calls of ``work``."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - start)
    return seconds


def min_max(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    """``"min-max"`` of ``values`` (``"-"`` when there are none)."""
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}" if values else "-"


def median_and_range(values: Sequence[float], digits: int = 1) -> str:
    """``"median (min-max)"``, or the single value."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    fmt = f"{{:.{digits}f}}"
    return f"{statistics.median(values):.{digits}f} ({min_max(values, fmt)})"


# --- fresh processes -------------------------------------------------------------------------------


def run_child(module: str, arguments: list[str]) -> dict | str:
    """Run ``python -m module *arguments`` in a fresh process (offline) and return the JSON object it printed last,
    or its last error line: each memory measurement needs its own process for a clean peak (``VmHWM``)."""
    done = subprocess.run([sys.executable, "-m", module, *arguments], cwd=REPOSITORY, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return (done.stderr.strip().splitlines() or ["no output"])[-1]
    return json.loads(lines[-1])


def measure_in_children(
    module: str, runs: dict[str, list[str]], log: Callable[[str], None]
) -> dict[str, dict[str, float] | str]:
    """:func:`run_child` for each ``key -> arguments`` of ``runs``, one after the other, logging each one's time."""
    results: dict[str, dict[str, float] | str] = {}
    for key, arguments in runs.items():
        start = time.perf_counter()
        results[key] = run_child(module, arguments)
        log(f"  memory {key}: {time.perf_counter() - start:.0f} s")
    return results


# --- tables ----------------------------------------------------------------------------------------


@dataclass
class Table:
    """A result table. ``left``: how many leading columns are left-aligned (the rest are numbers, right-aligned);
    ``None``: all of them."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    left: int | None = None

    def _is_left(self, index: int) -> bool:
        return self.left is None or index < self.left


def key_value_table(info: dict[str, str], title: str = "") -> Table:
    """Two columns, one ``key | value`` row per item (the machine description above a benchmark's tables)."""
    return Table(title, ["", ""], [[key, value] for key, value in info.items()])


def _markdown(table: Table) -> list[str]:
    lines = [f"**{table.title}**", ""] if table.title else []
    lines.append("| " + " | ".join(table.columns) + " |")
    lines.append("|" + "|".join("---" if table._is_left(i) else "---:" for i in range(len(table.columns))) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    lines += [f"\n_{note}_" for note in table.notes]
    return lines


def _plain(table: Table) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(table.columns, *table.rows)]
    header = [table.columns, ["-" * width for width in widths]] if any(table.columns) else []
    lines = [table.title] if table.title else []
    for row in [*header, *table.rows]:
        cells = [
            str(cell).ljust(width) if table._is_left(i) else str(cell).rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join(cells).rstrip())
    lines += [f"  ({note})" for note in table.notes]
    return lines


def render(tables: Sequence[Table], fmt: str) -> str:
    """The tables as plain text (aligned columns) or Markdown (ready to paste into benchmarks/README.md)."""
    if fmt not in ("plain", "markdown"):
        raise ValueError(f"unknown table format {fmt!r}; use 'plain' or 'markdown'")
    lines: list[str] = []
    for table in tables:
        if lines:
            lines.append("")
        lines += _markdown(table) if fmt == "markdown" else _plain(table)
    return "\n".join(lines)


def print_tables(tables: Sequence[Table], fmt: str) -> None:
    """Print the tables: ``"rich"`` (boxed, for a terminal), ``"plain"`` or ``"markdown"`` (see :func:`render`)."""
    if fmt != "rich":
        print(render(tables, fmt))
        return
    from rich.console import Console
    from rich.table import Table as RichTable

    console = Console(width=max(160, Console().width))
    for table in tables:
        rich_table = RichTable(title=table.title, title_justify="left", caption_justify="left")
        for index, column in enumerate(table.columns):
            rich_table.add_column(column, justify="left" if table._is_left(index) else "right")
        for row in table.rows:
            rich_table.add_row(*row)
        if table.notes:
            rich_table.caption = "\n".join(table.notes)
        console.print(rich_table)
        console.print()
