"""How many processes face analysis should use: ``workers=N`` or ``workers="auto"``."""

from __future__ import annotations

import os
import sys
from typing import Literal

from ..errors import AnalysisOptionError

#: A process count, or ``"auto"``: as many as help on this machine with the backend in use (see
#: :func:`resolve_workers`).
Workers = int | Literal["auto"]

#: Backends whose models run single-threaded, so that one process per core is what uses the machine. Any other
#: backend (insightface on ONNX Runtime) already spreads one image over every core by itself.
SINGLE_THREADED_BACKENDS = frozenset({"dlib"})


def usable_cores() -> int:
    """Cores this process may run on: the CPU affinity mask (which honours ``taskset`` and container CPU sets),
    or the machine's core count where the platform has no affinity call."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def check_workers(workers: Workers) -> Workers:
    """``workers`` itself when it is an integer ``>= 1`` or ``"auto"``; lets a caller refuse a bad value before it
    loads any model.

    Raises:
        AnalysisOptionError: ``workers`` is anything else.
    """
    if workers != "auto" and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise AnalysisOptionError(
            f"workers must be an integer >= 1 or 'auto', got {workers!r}; use 'auto' to let faceprompt choose "
            "for this machine and face backend"
        )
    return workers


def resolve_workers(workers: Workers, backend_name: str) -> int:
    """The number of face-analysis processes to start for ``workers`` with the backend named ``backend_name``.

    An integer ``>= 1`` is used as given. ``"auto"`` means as many processes as make analysis faster, a rule taken
    from the face benchmark's side-by-side runs rather than a timing probe at first use (a probe of a few photos on a
    shared machine measures the neighbours' load as much as the choice): one per usable core for dlib, whose HOG
    detector, landmarks and torch descriptor each run on one core per process; one for insightface, because ONNX Runtime
    already threads each model over all cores, and extra processes only compete for them (on 2 cores, 2
    insightface workers measured 3x slower than 1) and pay about a second each to start.

    Raises:
        AnalysisOptionError: ``workers`` is neither an integer ``>= 1`` nor ``"auto"``.
    """
    if check_workers(workers) == "auto":
        return usable_cores() if backend_name in SINGLE_THREADED_BACKENDS else 1
    return workers


def share_cores_between_workers(workers: int) -> int:
    """Give this worker process its share of the usable cores for OpenMP and torch's intra-op threads, so that
    ``workers`` processes together run at most one thread per core (more only make them compete); returns the share.

    Call it in a worker before it builds its models: ``OMP_NUM_THREADS`` covers a torch imported later (spawned
    workers), ``torch.set_num_threads`` one already imported (forked workers). torch is not imported here, so that
    a worker of a backend without torch does not pay for it.
    """
    share = max(1, usable_cores() // max(1, workers))
    os.environ["OMP_NUM_THREADS"] = str(share)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(share)
    return share
