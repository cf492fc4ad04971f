"""Face-analysis benchmark: per-stage milliseconds and end-to-end images/s, per backend.

Run from the repository root::

    python -m benchmarks.faces              # full run, ~2-3 minutes on 2 cores
    python -m benchmarks.faces --quick      # smoke run, well under a minute
    python -m benchmarks.faces --repeats 7 --format markdown

Backends: dlib (real models from ``face_recognition_models``) and insightface with *stand-in* models (random
weights, written by :func:`faceprompt.testing.write_standin_insightface_pack`; real insightface files are not
redistributable). Stand-in rows measure the insightface code path and ONNX Runtime, not the real networks' cost.

What is measured:

1. stages, per sample photo and per dlib descriptor (torch, dlib's own): decode, detect (dlib: HOG boxes and
   68-point landmarks separately), align, embed (one batched call for all faces of the photo), quality, and the whole
   ``FaceAnalyzer.analyze`` call;
2. end to end: ``FaceAnalyzer.analyze_files`` on 512-px single-portrait photos built from real photos, each setup
   (descriptor x ``workers`` 1 and ``"auto"``) run once per repeat in a rotating order, so that their ratios are
   measured side by side; pool start-up included;
3. the descriptor's ms/face against the floor of its convolutions as BLAS products, ``prepare`` images/s (local and
   Ray Data), and what the real insightface ``buffalo_l`` costs, from its shapes.

Every figure is the median over ``--repeats`` runs (with min-max for throughput); one warm-up call precedes every
timed series.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from benchmarks._harness import (
    Table,
    cpu_busy_fraction,
    key_value_table,
    machine_info,
    median_and_range,
    print_tables,
    time_repeats,
)
from faceprompt.faces import FaceAnalyzer, Workers, resolve_workers, usable_cores
from faceprompt.faces.align import align_face
from faceprompt.faces.face import laplacian_blur_score
from faceprompt.images import downscale_for_analysis, load_image
from faceprompt.samples import sample_photos

PORTRAIT_SIDE = 512
#: The target for the CLI default (dlib backend, torch descriptor, workers="auto") on 512-px portraits, 2 cores.
GOAL_IMAGES_PER_S = 30.0
STANDIN_LABEL = "insightface (stand-in models, random weights)"
#: prepare's thresholds for the 512-px portraits (its defaults, 1024 px and 128-px faces, would reject them all).
PREPARE_MIN_RESOLUTION, PREPARE_MIN_FACE_SIZE = 400, 64


# --- timing helpers --------------------------------------------------------------------------------


def median_ms(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of ``fn`` in milliseconds (after one untimed warm-up call) and its result."""
    result = fn()
    return statistics.median(time_repeats(fn, repeats)) * 1000.0, result


# --- the portrait set ------------------------------------------------------------------------------


def _fit_longer_side(rgb: np.ndarray, side: int = PORTRAIT_SIDE) -> np.ndarray:
    height, width = rgb.shape[:2]
    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(rgb, size, interpolation=interpolation)


def _portrait_sources(analyzer: FaceAnalyzer) -> list[tuple[str, np.ndarray]]:
    """The astronaut portrait plus each group-photo face cut out with its head and shoulders, 512 px."""
    photos = sample_photos()
    sources = [("astronaut", load_image(photos["astronaut"]).rgb)]
    group = load_image(photos["group"]).rgb
    faces = sorted(analyzer.detect(photos["group"]), key=lambda face: face.bbox[0])
    for number, face in enumerate(faces):
        x1, y1, x2, y2 = face.bbox
        centre_x, centre_y, side = (x1 + x2) / 2, (y1 + y2) / 2, face.size * 2.8
        left, top = int(max(0, centre_x - side / 2)), int(max(0, centre_y - side * 0.45))
        crop = group[top : int(min(group.shape[0], top + side)), left : int(min(group.shape[1], left + side))]
        sources.append((f"group-face{number}", _fit_longer_side(crop)))
    return sources


def _variants(rgb: np.ndarray) -> list[tuple[str, np.ndarray, str, int]]:
    """(name, pixels, format, JPEG quality) variants of one 512-px photo, all 512 px on the longer side."""
    height, width = rgb.shape[:2]
    flipped = np.ascontiguousarray(rgb[:, ::-1])
    shifted = _fit_longer_side(rgb[int(height * 0.06) :, : int(width * 0.92)])  # crop 6% top, 8% right
    shifted_flip = _fit_longer_side(flipped[: int(height * 0.93), int(width * 0.05) :])
    wide = rgb[: int(height * 0.8)] if height >= width else rgb  # a 512x409 landscape-ish crop
    return [
        ("orig", rgb, "png", 0),
        ("jpeg90", rgb, "jpeg", 90),
        ("flip", flipped, "jpeg", 95),
        ("shift", shifted, "jpeg", 88),
        ("jpeg60", rgb, "jpeg", 60),
        ("shift-flip", shifted_flip, "jpeg", 80),
        ("crop-wide", _fit_longer_side(wide), "jpeg", 92),
        ("jpeg40", flipped, "jpeg", 40),
    ]


def build_portraits(folder: Path, count: int, analyzer: FaceAnalyzer) -> list[Path]:
    """Write ``count`` real single-portrait photos, 512 px on the longer side, into ``folder``.

    Sources are interleaved so that every batch of files mixes faces, sizes and formats.
    """
    per_source = [
        [(f"{name}-{variant}", pixels, fmt, quality) for variant, pixels, fmt, quality in _variants(rgb)]
        for name, rgb in _portrait_sources(analyzer)
    ]
    ordered = [item for group in zip(*per_source) for item in group]
    paths = []
    for index, (name, pixels, fmt, quality) in enumerate(ordered[:count]):
        path = folder / f"{index:03d}-{name}.{'png' if fmt == 'png' else 'jpg'}"
        image = Image.fromarray(pixels)
        if fmt == "png":
            image.save(path)
        else:
            image.save(path, format="JPEG", quality=quality)
        paths.append(path)
    if len(paths) < count:
        raise ValueError(f"at most {len(ordered)} portraits can be built, {count} asked for")
    return paths


def build_faceless(folder: Path) -> Path:
    """A real 512-px photo without a face (the flag and shuttle half of the astronaut photo)."""
    rgb = load_image(sample_photos()["astronaut"]).rgb
    path = folder / "no-face.jpg"
    Image.fromarray(_fit_longer_side(rgb[:, 300:])).save(path, format="JPEG", quality=90)
    return path


# --- stage timings ---------------------------------------------------------------------------------


@dataclass
class StageTimes:
    photo: str
    size: str
    faces: int
    ms: dict[str, float] = field(default_factory=dict)


def stage_times(analyzer: FaceAnalyzer, photo: str, path: Path, repeats: int) -> StageTimes:
    """Median milliseconds of each stage of ``analyzer.analyze`` on one photo, each stage timed on its own."""
    backend = analyzer.backend
    ms: dict[str, float] = {}
    ms["decode"], image = median_ms(lambda: load_image(path, max_pixels=analyzer.max_pixels), repeats)
    working, scale = downscale_for_analysis(image.rgb, analyzer.analysis_side)
    if backend.name == "dlib":
        ms["detect boxes"], boxes = median_ms(lambda: backend.detect_boxes(working), repeats)
        ms["landmarks"], detections = median_ms(
            lambda: [backend.landmarks(working, rect, score) for rect, score in boxes], repeats
        )
        ms["detect"] = ms["detect boxes"] + ms["landmarks"]
    else:
        ms["detect"], detections = median_ms(lambda: backend.detect(working), repeats)
    ms["align"], chips = median_ms(lambda: [backend.align(working, found) for found in detections], repeats)
    ms["embed"], _ = median_ms(lambda: backend.embed(chips), repeats)
    ms["embed/face"] = ms["embed"] / len(chips) if chips else float("nan")
    ms["quality"], _ = median_ms(
        lambda: [laplacian_blur_score(align_face(image.rgb, found.kps * scale, 112)) for found in detections], repeats
    )
    ms["sum"] = ms["decode"] + ms["detect"] + ms["align"] + ms["embed"] + ms["quality"]
    ms["analyze()"], _ = median_ms(lambda: analyzer.analyze(path), repeats)
    return StageTimes(photo, f"{image.width}x{image.height}", len(detections), ms)


# --- end to end ------------------------------------------------------------------------------------


@dataclass
class Setup:
    """One way of running ``analyze_files``: an analyzer (its descriptor) and a worker count."""

    label: str
    analyzer: FaceAnalyzer
    workers: Workers


@dataclass
class Throughput:
    label: str
    files: int
    batch_size: int
    faces: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    images_per_s: dict[str, list[float]] = field(default_factory=dict)
    cores_busy: dict[str, list[float]] = field(default_factory=dict)
    cpu_ms_per_image: dict[str, list[float]] = field(default_factory=dict)
    ratios: dict[str, list[float]] = field(default_factory=dict)


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _timed_run(
    analyzer: FaceAnalyzer, paths: Sequence[Path], workers: Workers, batch_size: int
) -> tuple[float, float, list]:
    """Wall seconds, cores busy (CPU seconds of this process and its finished workers per wall second), results."""
    cpu, start = _cpu_seconds(), time.perf_counter()
    results = list(analyzer.analyze_files(paths, workers=workers, batch_size=batch_size))
    wall = time.perf_counter() - start
    return wall, (_cpu_seconds() - cpu) / wall, results


def throughput(setups: Sequence[Setup], label: str, paths: Sequence[Path], batch_size: int, repeats: int) -> Throughput:
    """images/s of ``analyze_files`` for each setup, all setups run once per repeat in a rotating order (so that
    their ratios are measured side by side); ratios are to the first setup, repeat by repeat."""
    result = Throughput(label, len(paths), batch_size)
    for setup in setups:
        _timed_run(setup.analyzer, paths[: max(2, batch_size)], 1, batch_size)  # warm-up
    for repeat in range(repeats):
        shift = repeat % len(setups)
        order = [*setups[shift:], *setups[:shift]]
        speeds = {}
        for setup in order if repeat % 2 == 0 else reversed(order):
            wall, busy, results = _timed_run(setup.analyzer, paths, setup.workers, batch_size)
            speeds[setup.label] = len(paths) / wall
            result.images_per_s.setdefault(setup.label, []).append(speeds[setup.label])
            result.cores_busy.setdefault(setup.label, []).append(busy)
            result.cpu_ms_per_image.setdefault(setup.label, []).append(busy * wall * 1000.0 / len(paths))
            result.faces[setup.label] = sum(len(item.faces) for item in results)
            result.errors[setup.label] = sum(not item.ok for item in results)
        for setup in setups:
            result.ratios.setdefault(setup.label, []).append(speeds[setup.label] / speeds[setups[0].label])
    return result


def worker_startup_ms(analyzer: FaceAnalyzer, repeats: int, workers: int = 2) -> float:
    """Median time to start ``analyze_files``' worker pool and get one trivial answer from each worker."""

    def start() -> None:
        with analyzer.worker_pool(workers) as pool:
            list(pool.map(abs, range(workers)))

    return median_ms(start, repeats)[0]


def hog_passes(analyzer: FaceAnalyzer, paths: Sequence[Path]) -> dict[int, int]:
    """How many HOG passes ``analyze_files`` runs at each upsample level over ``paths`` (dlib only)."""
    analyzer.backend.detector_passes.clear()
    list(analyzer.analyze_files(paths, workers=1))
    return dict(analyzer.backend.detector_passes)


def descriptor_ms(analyzer: FaceAnalyzer, chips: list[np.ndarray], repeats: int) -> tuple[float, float]:
    """Descriptor ms per face on one core: all ``chips`` in one call, and the same chips one call each."""
    import torch

    backend = analyzer.backend
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        batched, _ = median_ms(lambda: backend.embed(chips), repeats)
        single, _ = median_ms(lambda: [backend.embed([chip]) for chip in chips], repeats)
    finally:
        torch.set_num_threads(threads)
    return batched / len(chips), single / len(chips)


def portrait_chips(analyzer: FaceAnalyzer, paths: Sequence[Path]) -> list[np.ndarray]:
    """The descriptor chips of the faces in ``paths``."""
    backend = analyzer.backend
    chips = []
    for path in paths:
        rgb = load_image(path).rgb
        chips += [backend.align(rgb, found) for found in backend.detect(rgb)]
    return chips


def descriptor_conv_shapes() -> list[tuple[int, int, int, int]]:
    """(in channels, out channels, kernel, output side) of the torch descriptor's 29 convolutions."""
    from faceprompt.faces.backends.dlib_backend import dlib_model_dir
    from faceprompt.faces.backends.dlib_resnet import load_dlib_resnet

    return load_dlib_resnet(dlib_model_dir() / "dlib_face_recognition_resnet_model_v1.dat").conv_shapes()


def gemm_ms(repeats: int) -> float:
    """The descriptor's convolutions as im2col matrix products in numpy's BLAS: median ms per face."""
    rng = np.random.default_rng(0)
    products = [
        (rng.random((out, inp * k * k), dtype=np.float32), rng.random((inp * k * k, side * side), dtype=np.float32))
        for inp, out, k, side in descriptor_conv_shapes()
    ]
    return median_ms(lambda: [left @ right for left, right in products], repeats)[0]


def blas_estimate_ms(repeats: int) -> float | None:
    """:func:`gemm_ms` in a fresh interpreter limited to one BLAS thread (what one worker of a BLAS dlib gets)."""
    import subprocess

    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    code = f"from benchmarks.faces import gemm_ms; print(gemm_ms({repeats}))"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True
    )
    return float(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None


# --- tables ----------------------------------------------------------------------------------------


def _ms(value: float) -> str:
    if value != value:  # nan
        return "-"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def stage_table(backend_label: str, rows: list[StageTimes], dlib: bool) -> Table:
    detect = ["detect boxes", "landmarks"] if dlib else ["detect"]
    stages = ["decode", *detect, "align", "embed", "embed/face", "quality", "sum", "analyze()"]
    table = Table(f"{backend_label}: stage medians, ms", ["photo", "size", "faces", *stages], left=1)
    for row in rows:
        table.rows.append([row.photo, row.size, str(row.faces), *(_ms(row.ms[stage]) for stage in stages)])
    table.notes.append(
        "align: the backend's recognition chips; embed: one batched call for all faces of the photo; quality: the "
        "blur score's extra 112-px warp; sum: the stages; analyze(): the whole call (sum plus bookkeeping)."
    )
    return table


def throughput_table(backend_label: str, runs: list[Throughput]) -> Table:
    table = Table(
        f"{backend_label}: analyze_files end to end, images/s (median, min-max)",
        ["photos", "files", "batch", "setup", "faces", "images/s", "ratio to first", "cores busy", "CPU ms/image"],
        left=1,
    )
    for run in runs:
        for label, speeds in run.images_per_s.items():
            errors = run.errors[label]
            table.rows.append(
                [
                    run.label,
                    str(run.files),
                    str(run.batch_size),
                    label,
                    str(run.faces[label]) + (f" ({errors} errors)" if errors else ""),
                    median_and_range(speeds),
                    median_and_range(run.ratios[label], 2),
                    f"{statistics.median(run.cores_busy[label]):.2f}",
                    f"{statistics.median(run.cpu_ms_per_image[label]):.0f}",
                ]
            )
    table.notes.append(
        "All setups of a photo set run once per repeat in a rotating order; 'ratio to first' is the median of the "
        "per-repeat ratios to the set's first setup. Pool start-up is included (model loading is not). cores busy: "
        "CPU seconds of this process and its workers per wall second; CPU ms/image: the same CPU time per image "
        "(barely affected by other load on the machine)."
    )
    for run in runs:
        for label, busy in run.cores_busy.items():
            if "auto" in label and statistics.median(busy) < 0.8 * min(2, usable_cores()):
                table.notes.append(
                    f"{run.label}, {label}: kept only {statistics.median(busy):.2f} cores busy: something else was "
                    "using the CPU; rerun on an idle machine."
                )
    return table


def goal_note(portraits: Throughput, setup: str) -> str:
    speed = statistics.median(portraits.images_per_s[setup])
    verdict = "met" if speed >= GOAL_IMAGES_PER_S else "NOT met"
    return (
        f"Goal >= {GOAL_IMAGES_PER_S:g} images/s on 512-px portraits through the CLI default ({setup}): {verdict} "
        f"({speed:.1f} images/s)."
    )


def dlib_checks(
    fast: FaceAnalyzer, original: FaceAnalyzer, portraits: Sequence[Path], repeats: int
) -> list[tuple[str, str]]:
    """(item, value) rows: HOG upsampling, the descriptors' ms per face against the BLAS-product floor."""
    passes = hog_passes(fast, portraits)
    levels = ", ".join(f"upsample {level}: {count}" for level, count in sorted(passes.items()))
    chips = portrait_chips(fast, portraits[:8])
    fast_batched, fast_single = descriptor_ms(fast, chips, max(repeats, 5))
    original_batched, original_single = descriptor_ms(original, chips, min(repeats, 3))
    macs = dlib_descriptor_macs()
    floor = blas_estimate_ms(max(repeats, 5) * 4)
    floor_text = "-" if floor is None else f"{floor:.1f}"
    ratio = "-" if floor is None else f"{fast_batched / floor:.2f}"
    return [
        (f"HOG passes over the {len(portraits)} portraits", levels),
        (
            f"torch descriptor ms/face, 1 thread: {len(chips)} chips in one call / one call each",
            f"{fast_batched:.1f} / {fast_single:.1f}",
        ),
        (
            f"dlib's own descriptor ms/face: {len(chips)} chips in one call / one call each",
            f"{original_batched:.1f} / {original_single:.1f}",
        ),
        (
            f"floor: the 29 convolutions ({macs / 1e6:.0f}M multiply-adds) as numpy BLAS products, 1 thread, ms/face",
            floor_text,
        ),
        ("torch descriptor (8 chips per call) / floor", ratio),
        ("dlib's own descriptor / torch descriptor, 8 chips per call", f"{original_batched / fast_batched:.1f}"),
    ]


def stage_shares(rows: list[StageTimes], photo: str, stages: Sequence[str]) -> str:
    """Each stage's share of the stages' sum on ``photo``, e.g. "decode 4%, detect boxes 40%, ..."."""
    row = next(row for row in rows if row.photo == photo)
    return ", ".join(f"{stage} {row.ms[stage] / row.ms['sum']:.0%}" for stage in stages)


# --- prepare ---------------------------------------------------------------------------------------


def prepare_images_per_s(folder: Path, output: Path, engine: str, workers: Workers) -> tuple[float, int]:
    """images/s of ``prepare_dataset`` over the photos in ``folder`` (shards of a quarter of them, so that two
    workers share the work), and how many were kept. A Ray cluster started here beforehand is used, so that Ray's
    start-up is not counted; the local engine's process pool is."""
    from faceprompt.training.prepare import prepare_dataset

    count = len(list(folder.iterdir()))
    start = time.perf_counter()
    dataset = prepare_dataset(
        [folder], output, engine=engine, workers=workers, shard_size=max(1, count // 4),
        min_resolution=PREPARE_MIN_RESOLUTION, min_face_size=PREPARE_MIN_FACE_SIZE, progress=False,
    )  # fmt: skip
    wall = time.perf_counter() - start
    return count / wall, len(dataset)


def prepare_rows(folder: Path, output: Path) -> list[tuple[str, str]]:
    """(item, value) rows for ``faceprompt prepare``'s default path on the portraits: local processes and Ray."""
    rows = []
    speed, kept = prepare_images_per_s(folder, output / "in-process", "local", 1)
    rows.append(
        (f"prepare images/s, local engine, workers=1: in this process, no start-up ({kept} kept)", f"{speed:.1f}")
    )
    speed, kept = prepare_images_per_s(folder, output / "local", "local", "auto")
    rows.append((f"prepare images/s, local engine, workers=auto ({kept} kept), pool start-up included", f"{speed:.1f}"))
    try:
        import ray
    except ImportError:
        return [*rows, ("prepare images/s, Ray", "- (ray not installed)")]
    workers = resolve_workers("auto", "dlib")
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        speed, kept = prepare_images_per_s(folder, output / "ray", "ray", workers)
    finally:
        ray.shutdown()
    rows.append((f"prepare images/s, Ray Data, {workers} tasks ({kept} kept), Ray start-up excluded", f"{speed:.1f}"))
    return rows


# --- insightface's real models ---------------------------------------------------------------------

#: IResNet-50 (buffalo_l's w600k_r50.onnx) on a 112-px crop: (blocks, channels) per stage; every stage's first block
#: has stride 2 and a 1x1 stride-2 projection shortcut; each block is two 3x3 convolutions.
_IRESNET50_STAGES = ((3, 64), (4, 128), (14, 256), (3, 512))
#: SCRFD-10GF (det_10g.onnx) is named for its 10 G multiply-adds at VGA (640x480); insightface runs it at 640x640.
_SCRFD_10G_MACS_VGA = 10e9


def iresnet50_macs(side: int = 112) -> float:
    """Multiply-adds of IResNet-50 on one ``side`` px crop, from its layer shapes."""
    macs = 3 * 64 * 9 * side * side  # stem: 3x3 conv, stride 1
    channels = 64
    for blocks, width in _IRESNET50_STAGES:
        out_side = side // 2
        macs += channels * width * 9 * side * side + width * width * 9 * out_side * out_side  # first block
        macs += channels * width * out_side * out_side  # projection shortcut
        macs += (blocks - 1) * 2 * width * width * 9 * out_side * out_side
        channels, side = width, out_side
    return macs + channels * side * side * 512  # the 512-d embedding layer


def dlib_descriptor_macs() -> float:
    return sum(out * inp * k * k * side * side for inp, out, k, side in descriptor_conv_shapes())


def buffalo_l_rows() -> list[tuple[str, str]]:
    """What the real buffalo_l models cost, from their shapes, so that a GPU run can be planned."""
    detector = _SCRFD_10G_MACS_VGA * (640 * 640) / (640 * 480)
    recognizer = iresnet50_macs()
    return [
        ("real buffalo_l detector (SCRFD-10GF at 640x640), GMACs per photo", f"{detector / 1e9:.1f}"),
        ("real buffalo_l recognizer (IResNet-50, 112 px), GMACs per face", f"{recognizer / 1e9:.1f}"),
        (
            "one-face photo: real buffalo_l (detector + recognizer) / dlib's descriptor, multiply-adds",
            f"{(detector + recognizer) / 1e9:.1f} G / {dlib_descriptor_macs() / 1e9:.2f} G (+ HOG on the CPU)",
        ),
    ]


# --- main ------------------------------------------------------------------------------------------


def _standin_analyzer(folder: Path) -> FaceAnalyzer:
    # Imported here: faceprompt.testing pulls in torch and diffusers, and spawned workers re-import this module.
    from faceprompt.testing import write_standin_insightface_pack

    write_standin_insightface_pack(folder, "buffalo_l")
    return FaceAnalyzer("insightface", model_root=folder)


def run_dlib(args: argparse.Namespace, folder: Path, portraits: list[Path], repeats: int) -> list[Table]:
    """The dlib backend: stages and throughput with the torch descriptor (default) and dlib's own, side by side."""
    photos = sample_photos()
    fast, original = FaceAnalyzer("dlib"), FaceAnalyzer("dlib", dlib_descriptor="dlib")
    auto = resolve_workers("auto", "dlib")
    samples = [*photos.items(), ("no-face 512px", build_faceless(folder))]
    stages = {
        label: [
            stage_times(analyzer, name, path, repeats if analyzer is fast else min(repeats, 3))
            for name, path in samples
        ]
        for label, analyzer in (("dlib, torch descriptor", fast), ("dlib, dlib's own descriptor", original))
    }
    tables = [stage_table(label, rows, dlib=True) for label, rows in stages.items()]
    shown = ["decode", "detect boxes", "landmarks", "align", "embed", "quality"]
    tables[0].notes.append(
        "Share of the stages on the 512-px astronaut: "
        + stage_shares(stages["dlib, torch descriptor"], "astronaut", shown)
        + "."
    )
    setups = [
        Setup(f"torch, workers=auto ({auto})", fast, "auto"),
        Setup("torch, workers=1", fast, 1),
        Setup(f"dlib's own, workers=auto ({auto})", original, "auto"),
        Setup("dlib's own, workers=1", original, 1),
    ]
    portrait_run = throughput(
        setups, f"{len(portraits)} portraits, 512 px", portraits, args.batch_size, min(repeats, 3)
    )
    group_copies = 2 if args.quick else 4
    group_run = throughput(setups[:2], f"group photo x{group_copies}", [photos["group"]] * group_copies, 1, repeats)
    tables.append(throughput_table("dlib", [portrait_run, group_run]))
    tables[-1].notes.append(goal_note(portrait_run, setups[0].label))
    checks = Table("dlib: descriptor, start-up and prepare", ["item", "value"], left=1)
    checks.rows += [list(row) for row in dlib_checks(fast, original, portraits, repeats)]
    checks.rows.append(
        [
            f"start {auto} workers ({fast.worker_start_method}) and get a reply",
            f"{_ms(worker_startup_ms(fast, repeats, auto))} ms",
        ]
    )
    if not args.skip_prepare:
        checks.rows += [list(row) for row in prepare_rows(portraits[0].parent, folder / "prepared")]
    tables.append(checks)
    print("[dlib: done]", file=sys.stderr)
    return tables


def run_insightface(args: argparse.Namespace, folder: Path, portraits: list[Path], repeats: int) -> list[Table]:
    photos = sample_photos()
    analyzer = _standin_analyzer(folder / "insightface")
    samples = [*photos.items(), ("no-face 512px", build_faceless(folder))]
    tables = [stage_table(STANDIN_LABEL, [stage_times(analyzer, name, path, repeats) for name, path in samples], False)]
    setups = [Setup("workers=auto (1)", analyzer, "auto"), Setup("workers=2", analyzer, 2)]
    runs = [throughput(setups, f"{len(portraits)} portraits, 512 px", portraits, args.batch_size, min(repeats, 3))]
    tables.append(throughput_table(STANDIN_LABEL, runs))
    checks = Table(f"{STANDIN_LABEL}: start-up, and the real models' cost", ["item", "value"], left=1)
    checks.rows.append(
        [
            f"start 2 workers ({analyzer.worker_start_method}) and get a reply",
            f"{_ms(worker_startup_ms(analyzer, min(repeats, 3)))} ms",
        ]
    )
    checks.rows += [list(row) for row in buffalo_l_rows()]
    tables.append(checks)
    print("[insightface: done]", file=sys.stderr)
    return tables


def run(args: argparse.Namespace) -> list[Table]:
    portraits_count = args.portraits or (16 if args.quick else 48)
    repeats = args.repeats or (2 if args.quick else 5)
    tables: list[Table] = []
    with tempfile.TemporaryDirectory(prefix="faceprompt-bench-") as temp:
        folder = Path(temp)
        (folder / "portraits").mkdir()
        portraits = build_portraits(folder / "portraits", portraits_count, FaceAnalyzer("dlib"))
        if "dlib" in args.backends:
            tables += run_dlib(args, folder, portraits, repeats)
        if "insightface" in args.backends:
            tables += run_insightface(args, folder, portraits, repeats)
    return tables


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faces", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=0, help="timed repeats per figure (default 5; 2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer photos and repeats")
    parser.add_argument(
        "--portraits", type=int, default=0, help="number of 512-px portraits (default 48; 16 with --quick)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="analyze_files batch_size for the portraits")
    parser.add_argument(
        "--backends", default="dlib,insightface", type=lambda text: text.split(","), help="comma-separated"
    )
    parser.add_argument("--skip-prepare", action="store_true", help="leave out the faceprompt prepare timings")
    parser.add_argument("--format", choices=("rich", "plain", "markdown"), default="rich")
    args = parser.parse_args(argv)

    info = machine_info(["dlib", "onnxruntime", "opencv"])
    info["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "unset")
    busy_before = cpu_busy_fraction()
    start = time.perf_counter()
    tables = run(args)
    elapsed = time.perf_counter() - start
    busy_after = cpu_busy_fraction()
    command = "python -m benchmarks.faces " + " ".join(argv if argv is not None else sys.argv[1:])
    header = key_value_table({"command": command.strip(), **info}, title="machine")
    busy = " / ".join("n/a" if value is None else f"{value:.0%}" for value in (busy_before, busy_after))
    header.rows.append(["CPU used by other processes, 2-s samples before / after", busy])
    header.rows.append(["benchmark wall time", f"{elapsed:.0f} s"])
    header.notes.append(
        "If other processes used more than a few percent of the CPU, expect lower, noisier figures; the "
        "'cores busy' column below tells whether workers=2 really had both cores."
    )
    print_tables([header, *tables], args.format)
    return 0


if __name__ == "__main__":
    sys.exit(main())
