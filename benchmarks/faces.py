"""Face-analysis benchmark: per-stage milliseconds and end-to-end images/s, per backend.

Run from the repository root::

    python -m benchmarks.faces              # full run, ~2-3 minutes on 2 cores
    python -m benchmarks.faces --quick      # smoke run, well under a minute
    python -m benchmarks.faces --repeats 7 --format markdown

Backends: dlib (real models from ``face_recognition_models``) and insightface with *stand-in* models (random
weights, written by :func:`faceprompt.testing.write_standin_insightface_pack`; real insightface files are not
redistributable). Stand-in rows measure the insightface code path and ONNX Runtime, not the real networks' cost.

What is measured:

1. stages, per sample photo: decode (:func:`faceprompt.images.load_image`), detect (dlib: HOG boxes and 68-point
   landmarks separately), align (the backend's recognition chip), embed (one batched call for all faces of the
   photo), quality (the blur score's extra 112-px warp), and the whole ``FaceAnalyzer.analyze`` call;
2. end to end: ``FaceAnalyzer.analyze_files`` on a set of 512-px single-portrait photos built from real photos
   (the astronaut portrait and faces cut from the group photo; flips, crops, JPEG re-encodes), with ``workers=1``
   and ``workers=2`` run alternately within each repeat, so their ratio is measured side by side on the same
   machine state; and on copies of the group photo. Pool start-up is included: it is what a caller pays.

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
from faceprompt.faces import FaceAnalyzer, usable_cores
from faceprompt.faces.align import align_face
from faceprompt.faces.face import laplacian_blur_score
from faceprompt.images import downscale_for_analysis, load_image
from faceprompt.samples import sample_photos

PORTRAIT_SIDE = 512
#: The target for the dlib backend on 512-px single portraits with 2 cores.
GOAL_IMAGES_PER_S = 10.0
STANDIN_LABEL = "insightface (stand-in models, random weights)"


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
class Throughput:
    label: str
    files: int
    batch_size: int
    faces: int = 0
    errors: int = 0
    images_per_s: dict[int, list[float]] = field(default_factory=dict)
    cores_busy: dict[int, list[float]] = field(default_factory=dict)
    cpu_ms_per_image: dict[int, list[float]] = field(default_factory=dict)
    ratios: list[float] = field(default_factory=list)


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _timed_run(
    analyzer: FaceAnalyzer, paths: Sequence[Path], workers: int, batch_size: int
) -> tuple[float, float, list]:
    """Wall seconds, cores busy (CPU seconds of this process and its finished workers per wall second), results."""
    cpu, start = _cpu_seconds(), time.perf_counter()
    results = list(analyzer.analyze_files(paths, workers=workers, batch_size=batch_size))
    wall = time.perf_counter() - start
    return wall, (_cpu_seconds() - cpu) / wall, results


def throughput(
    analyzer: FaceAnalyzer, label: str, paths: Sequence[Path], batch_size: int, repeats: int, workers=(1, 2)
) -> Throughput:
    """images/s of ``analyze_files`` for each worker count; the counts alternate within a repeat (ABBA order)."""
    result = Throughput(label, len(paths), batch_size)
    _timed_run(analyzer, paths[: max(2, batch_size)], 1, batch_size)  # warm-up
    for repeat in range(repeats):
        order = workers if repeat % 2 == 0 else tuple(reversed(workers))
        speeds = {}
        for count in order:
            wall, busy, results = _timed_run(analyzer, paths, count, batch_size)
            speeds[count] = len(paths) / wall
            result.images_per_s.setdefault(count, []).append(speeds[count])
            result.cores_busy.setdefault(count, []).append(busy)
            result.cpu_ms_per_image.setdefault(count, []).append(busy * wall * 1000.0 / len(paths))
            result.faces = sum(len(item.faces) for item in results)
            result.errors = sum(not item.ok for item in results)
        result.ratios.append(speeds[workers[-1]] / speeds[workers[0]])
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


def descriptor_batching_ms(analyzer: FaceAnalyzer, path: Path, faces: int, repeats: int) -> tuple[float, float]:
    """dlib descriptor ms per face: ``faces`` chips in one call, and the same chips one call each."""
    backend = analyzer.backend
    rgb = load_image(path).rgb
    chips = [backend.align(rgb, found) for found in backend.detect(rgb)][:1] * faces
    batched, _ = median_ms(lambda: backend.embed(chips), repeats)
    single, _ = median_ms(lambda: [backend.embed([chip]) for chip in chips], repeats)
    return batched / faces, single / faces


#: dlib_face_recognition_resnet_model_v1 (dlib's dnn_face_recognition_ex.cpp): a 7x7/2 stem on the 150-px chip,
#: 3x3 max pool /2, then residual levels of (channels, blocks, first block downsamples) of two 3x3 convolutions.
_DESCRIPTOR_STEM = (3, 32, 7, 72)
_DESCRIPTOR_LEVELS = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))


def descriptor_conv_shapes() -> list[tuple[int, int, int, int]]:
    """(in channels, out channels, kernel, output side) of the descriptor network's 29 convolutions."""
    layers, side, channels = [_DESCRIPTOR_STEM], 35, 32
    for width, blocks, down in _DESCRIPTOR_LEVELS:
        for block in range(blocks):
            if block == 0 and down:
                side = (side - 3) // 2 + 1
            layers += [(channels, width, 3, side), (width, width, 3, side)]
            channels = width
    return layers


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
        [
            "photos",
            "files",
            "batch",
            "faces",
            "workers=1",
            "workers=2",
            "ratio 2/1",
            "cores busy 1 / 2",
            "CPU ms/image 1 / 2",
        ],
        left=1,
    )
    for run in runs:
        busy = " / ".join(f"{statistics.median(run.cores_busy[count]):.2f}" for count in (1, 2))
        cpu = " / ".join(f"{statistics.median(run.cpu_ms_per_image[count]):.0f}" for count in (1, 2))
        table.rows.append(
            [
                run.label,
                str(run.files),
                str(run.batch_size),
                str(run.faces) + (f" ({run.errors} errors)" if run.errors else ""),
                median_and_range(run.images_per_s[1]),
                median_and_range(run.images_per_s[2]),
                median_and_range(run.ratios, 2),
                busy,
                cpu,
            ]
        )
    table.notes.append(
        "workers=1 and workers=2 alternate within each repeat; ratio 2/1 is the median of the per-repeat ratios. "
        "Pool start-up is included. cores busy: CPU seconds of this process and its workers per wall second; "
        "CPU ms/image: the same CPU time per image (barely affected by other load on the machine)."
    )
    for run in runs:
        got = statistics.median(run.cores_busy[2])
        if got < 0.8 * min(2, usable_cores()):
            table.notes.append(
                f"{run.label}: workers=2 kept only {got:.2f} cores busy: something else was using the CPU "
                "or the work was too short to share; rerun on an idle machine."
            )
    return table


def goal_note(portraits: Throughput) -> str:
    best = max(portraits.images_per_s, key=lambda count: statistics.median(portraits.images_per_s[count]))
    speed = statistics.median(portraits.images_per_s[best])
    verdict = "met" if speed >= GOAL_IMAGES_PER_S else "NOT met"
    return (
        f"Goal >= {GOAL_IMAGES_PER_S:g} images/s on 512-px portraits: {verdict} "
        f"({speed:.1f} images/s with workers={best})."
    )


def dlib_checks(analyzer: FaceAnalyzer, portraits: Sequence[Path], repeats: int) -> list[tuple[str, str]]:
    """(item, value) rows: HOG upsampling, descriptor batching, and what a BLAS build could gain."""
    passes = hog_passes(analyzer, portraits)
    levels = ", ".join(f"upsample {level}: {count}" for level, count in sorted(passes.items()))
    batched, single = descriptor_batching_ms(analyzer, sample_photos()["astronaut"], 8, min(repeats, 3))
    macs = sum(out * inp * k * k * side * side for inp, out, k, side in descriptor_conv_shapes())
    gemm = blas_estimate_ms(max(repeats, 5) * 4)
    return [
        (f"HOG passes over the {len(portraits)} portraits", levels),
        ("descriptor ms/face: 8 chips in one call / one call each", f"{batched:.1f} / {single:.1f}"),
        (
            f"descriptor's 29 convolutions ({macs / 1e6:.0f}M multiply-adds) as numpy BLAS matrix products, "
            "1 thread, ms/face",
            "-" if gemm is None else f"{gemm:.1f}",
        ),
    ]


# --- main ------------------------------------------------------------------------------------------


def _standin_analyzer(folder: Path) -> FaceAnalyzer:
    # Imported here: faceprompt.testing pulls in torch and diffusers, and spawned workers re-import this module.
    from faceprompt.testing import write_standin_insightface_pack

    write_standin_insightface_pack(folder, "buffalo_l")
    return FaceAnalyzer("insightface", model_root=folder)


def run(args: argparse.Namespace) -> list[Table]:
    portraits_count = args.portraits or (16 if args.quick else 48)
    group_copies = 2 if args.quick else 4
    repeats = args.repeats or (2 if args.quick else 5)
    tables: list[Table] = []
    photos = sample_photos()
    with tempfile.TemporaryDirectory(prefix="faceprompt-bench-") as temp:
        folder = Path(temp)
        (folder / "portraits").mkdir()
        dlib_analyzer = FaceAnalyzer("dlib")
        portraits = build_portraits(folder / "portraits", portraits_count, dlib_analyzer)
        faceless = build_faceless(folder)
        group = [photos["group"]] * group_copies
        analyzers: list[tuple[str, FaceAnalyzer]] = []
        if "dlib" in args.backends:
            analyzers.append(("dlib", dlib_analyzer))
        if "insightface" in args.backends:
            analyzers.append((STANDIN_LABEL, _standin_analyzer(folder / "insightface")))
        overheads = Table("overheads and checks", ["backend", "item", "value"], left=2)
        for label, analyzer in analyzers:
            is_dlib = analyzer.backend_name == "dlib"
            samples = [
                stage_times(analyzer, name, path, repeats)
                for name, path in [*photos.items(), ("no-face 512px", faceless)]
            ]
            tables.append(stage_table(label, samples, is_dlib))
            runs = [
                throughput(analyzer, f"{portraits_count} portraits, 512 px", portraits, args.batch_size, repeats),
                throughput(analyzer, f"group photo x{group_copies}", group, 1, repeats),
            ]
            tables.append(throughput_table(label, runs))
            if is_dlib:
                tables[-1].notes.append(goal_note(runs[0]))
                overheads.rows += [[label, item, value] for item, value in dlib_checks(analyzer, portraits, repeats)]
            start_ms = worker_startup_ms(analyzer, repeats)
            method = analyzer.worker_start_method
            overheads.rows.append([label, f"start 2 workers ({method}) and get a reply", f"{_ms(start_ms)} ms"])
            print(f"[{label}: done]", file=sys.stderr)
        overheads.notes.append(
            "Worker start-up is paid once per analyze_files(workers=2) call and included in the images/s above."
        )
        tables.append(overheads)
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
