"""``faceprompt prepare``: folders of portraits (or a manifest) -> a sharded training data set.

Per image, as the IP-Adapter-FaceID authors describe their training data: keep only photos with exactly
one face, a short side of at least ``min_resolution`` pixels, a large enough and sharp enough face; cut square
framings at several face proportions (close-up, half-body, full-body) so that models learn varied framings; keep the
ArcFace-aligned 224-px face crop (optionally without background) and the normalised and raw ID embeddings.

Inputs are sorted and split into shards of ``shard_size`` images. Every shard is processed by the same function
(:func:`prepare_shard`) in this process, in a process pool, or as a Ray Data task; a shard is finished when its
``_SUCCESS`` marker exists, so a re-run skips finished shards and redoes interrupted ones. The format is described
in :mod:`faceprompt.training.dataset`.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..errors import DatasetError, ImageError
from ..faces import (
    Face,
    FaceAnalyzer,
    QualityFilter,
    Workers,
    check_workers,
    resolve_workers,
    share_cores_between_workers,
)
from ..images import LoadedImage, list_image_files, load_image
from .dataset import (
    FACE_CROP_SIZE,
    INFO_FILE,
    PreparedDataset,
    ShardWriter,
    is_finished,
    read_dataset_info,
    write_dataset_info,
    write_summary,
)

logger = logging.getLogger(__name__)

Engine = Literal["local", "ray"]

#: Framing name -> side of the square crop in face-box sizes.
DEFAULT_CROPS = {"closeup": 2.0, "halfbody": 4.0, "fullbody": 8.0}
DEFAULT_MIN_RESOLUTION = 1024
#: Shorter side of the face box, px. The aligned crop is 224 px; smaller faces are upscaled more than ~2x into it.
DEFAULT_MIN_FACE_SIZE = 128.0
#: Variance of the Laplacian of the 112-px aligned face (``Face.blur_score``). Sharp portraits score in the
#: hundreds; the astronaut sample blurred with a 2-px Gaussian scores ~20.
DEFAULT_BLUR_THRESHOLD = 40.0
DEFAULT_SHARD_SIZE = 1000
#: Crop proportions, in face-box sizes: at least the face box itself; beyond 32 every crop of a usable photo is its
#: whole shorter side, so larger values only hide a typo.
MIN_CROP_PROPORTION = 1.0
MAX_CROP_PROPORTION = 32.0


@dataclass(frozen=True)
class InputImage:
    """One image to prepare: its path, caption and person label."""

    source: str
    caption: str
    identity: str


class Rejection(NamedTuple):
    """Why an image is left out: a reason of the summary and a human-readable detail."""

    reason: str
    detail: str


@dataclass(frozen=True)
class PrepareSettings:
    """Everything that decides what a shard contains; identical wherever the shard runs."""

    min_resolution: int
    min_face_size: float
    blur_threshold: float
    crops: dict[str, float]
    segment: bool
    backend: str
    model_root: str | None
    embedding_dim: int


@dataclass(frozen=True)
class ShardTask:
    """One shard's work: where to write it, which images, with which settings (JSON-serialisable for Ray)."""

    root: str
    shard: str
    items: list[InputImage]
    settings: PrepareSettings

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ShardTask:
        data = json.loads(text)
        return cls(
            root=data["root"],
            shard=data["shard"],
            items=[InputImage(**item) for item in data["items"]],
            settings=PrepareSettings(**data["settings"]),
        )


# --- entry point ----------------------------------------------------------------------------------


def prepare_dataset(
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    manifest: str | os.PathLike | None = None,
    min_resolution: int = DEFAULT_MIN_RESOLUTION,
    min_face_size: float = DEFAULT_MIN_FACE_SIZE,
    blur_threshold: float = DEFAULT_BLUR_THRESHOLD,
    crops: dict[str, float] | None = None,
    segment: bool = False,
    shard_size: int = DEFAULT_SHARD_SIZE,
    backend: str = "auto",
    model_root: str | os.PathLike | None = None,
    engine: Engine = "local",
    workers: Workers = 1,
    progress: bool = True,
) -> PreparedDataset:
    """Prepare (or resume preparing) the data set in ``output`` from image folders and/or a manifest.

    Args:
        inputs: image files and folders (searched recursively); a same-name ``.txt`` beside an image is its caption
            and the image's folder name its identity label.
        output: the data-set folder: new, empty, or a data set started with the same options (it is resumed).
        manifest: a ``.jsonl`` or ``.parquet`` table with a ``path`` column (relative paths are relative to the
            manifest's folder) and optional ``caption`` and ``identity`` columns.
        min_resolution: minimum shorter side of the image, px.
        min_face_size: minimum shorter side of the face box, px.
        blur_threshold: minimum blur score of the face (variance of the Laplacian of the aligned 112-px crop).
        crops: framing name -> side of its square crop in face-box sizes (default close-up 2, half-body 4,
            full-body 8).
        segment: also keep the face crop with its background removed.
        shard_size: images per shard.
        backend: face backend, ``"auto"``, ``"insightface"`` or ``"dlib"``.
        model_root: insightface's model root.
        engine: ``"local"`` (this process, or a pool of ``workers`` processes) or ``"ray"`` (Ray Data tasks, on the
            running Ray cluster or a local one started with ``workers`` CPUs). Both give identical shards.
        workers: processes (local) or concurrent Ray tasks; each builds its own face analyzer. ``"auto"``: one per
            core for dlib, one for insightface (:func:`faceprompt.faces.resolve_workers`).
        progress: show a progress bar on stderr.

    Raises:
        DatasetError: a setting is out of range (checked before any image is read), an input or the manifest is
            unreadable, or ``output`` holds something else.
    """
    started = time.perf_counter()
    crops = _checked_crops(DEFAULT_CROPS if crops is None else crops)
    _check_arguments(min_resolution, min_face_size, blur_threshold, shard_size, engine)
    check_workers(workers)
    root = Path(output)
    items = collect_inputs(inputs, manifest, exclude=root)
    if not items:
        raise DatasetError(f"no images found in {', '.join(map(str, inputs)) or manifest}; nothing to prepare")
    analyzer = FaceAnalyzer(backend, model_root=model_root)
    workers = resolve_workers(workers, analyzer.backend_name)
    settings = PrepareSettings(
        min_resolution=int(min_resolution),
        min_face_size=float(min_face_size),
        blur_threshold=float(blur_threshold),
        crops=crops,
        segment=bool(segment),
        backend=analyzer.backend_name,
        model_root=None if model_root is None else str(model_root),
        embedding_dim=int(analyzer.backend.embedding_dim),
    )
    _ANALYZERS[_analyzer_key(settings)] = analyzer
    tasks = plan_shards(items, root, settings, shard_size)
    options = _dataset_options(inputs, manifest, settings, shard_size, items)
    _open_output(root, analyzer.face_model, settings, options, [task.shard for task in tasks])
    pending = [task for task in tasks if not is_finished(root, task.shard)]
    if len(pending) < len(tasks):
        logger.info("%s: %d of %d shards already finished, skipped", root, len(tasks) - len(pending), len(tasks))
    with _progress_bar(progress) as bar:
        task_id = bar.add_task("preparing", total=sum(len(task.items) for task in pending))
        if engine == "ray":
            _run_with_ray(pending, workers, lambda result: bar.advance(task_id, result["seen"]))
        else:
            _run_locally(pending, workers, lambda count: bar.advance(task_id, count))
    write_summary(root, elapsed_s=time.perf_counter() - started)
    return PreparedDataset(root)


def _checked_crops(crops: dict[str, float]) -> dict[str, float]:
    """Framing names (used in file names) must be words, proportions numbers in the allowed range; as floats."""
    if not crops:
        raise DatasetError("crops is empty; give at least one framing, e.g. closeup=2")
    checked = {}
    for name, proportion in crops.items():
        if not (isinstance(name, str) and name.isidentifier()):
            raise DatasetError(f"crop name {name!r} must be a word (letters, digits, '_'; it names the image files), "
                               "e.g. closeup=2")
        try:
            checked[name] = float(proportion)
        except (TypeError, ValueError):
            checked[name] = math.nan
        if not MIN_CROP_PROPORTION <= checked[name] <= MAX_CROP_PROPORTION:
            raise DatasetError(
                f"crop {name}={proportion!r}: the proportion (crop side in face-box sizes) must be a number within "
                f"[{MIN_CROP_PROPORTION:g}, {MAX_CROP_PROPORTION:g}]; use e.g. closeup=2,halfbody=4,fullbody=8"
            )
    return checked


def _check_arguments(
    min_resolution: int, min_face_size: float, blur_threshold: float, shard_size: int, engine: str
) -> None:
    """Every number of the settings in range (NaN fails every comparison, so it is refused too)."""
    for name, value, default in (("min_resolution", min_resolution, DEFAULT_MIN_RESOLUTION),
                                 ("shard_size", shard_size, DEFAULT_SHARD_SIZE)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DatasetError(f"{name} must be a whole number >= 1, got {value!r}; the default is {default}")
    for name, value, default in (("min_face_size", min_face_size, DEFAULT_MIN_FACE_SIZE),
                                 ("blur_threshold", blur_threshold, DEFAULT_BLUR_THRESHOLD)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise DatasetError(f"{name} must be a finite number >= 0, got {value!r}; the default is {default:g} "
                               "(0 keeps every face)")
    if engine not in ("local", "ray"):
        raise DatasetError(f"unknown engine {engine!r}; choose 'local' or 'ray'")


def parse_crops(text: str) -> dict[str, float]:
    """``"closeup=2,halfbody=4,fullbody=8"`` -> ``{"closeup": 2.0, ...}`` (the ``--crops`` syntax)."""
    crops: dict[str, float] = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        name, equals, value = part.partition("=")
        try:
            crops[name.strip()] = float(value)
        except ValueError:
            equals = ""
        if not equals:
            raise DatasetError(f"--crops: {part!r} is not NAME=PROPORTION (e.g. closeup=2,halfbody=4,fullbody=8)")
    return crops


# --- inputs and shards ----------------------------------------------------------------------------


def collect_inputs(
    inputs: Sequence[str | os.PathLike],
    manifest: str | os.PathLike | None = None,
    *,
    exclude: str | os.PathLike | None = None,
) -> list[InputImage]:
    """The images to prepare, one per path, sorted by path. Folders under ``exclude`` (the output) are skipped."""
    found: dict[str, InputImage] = {}
    for path in map(Path, inputs):
        if not path.exists():
            raise DatasetError(f"{path}: input not found; give image files, folders of images or --manifest")
        files = _image_files_under(path, exclude) if path.is_dir() else [path]
        for file in files:
            found[str(file)] = InputImage(str(file), _caption_beside(file), _folder_label(file))
    if manifest is not None:
        for item in read_manifest(manifest):
            found[item.source] = item
    return sorted(found.values(), key=lambda item: item.source)


def read_manifest(path: str | os.PathLike) -> list[InputImage]:
    """Rows of a ``.jsonl`` or ``.parquet`` manifest: ``path`` (required), ``caption``, ``identity``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: manifest not found")
    if path.suffix.lower() == ".jsonl":
        rows = _read_jsonl_manifest(path)
    elif path.suffix.lower() == ".parquet":
        rows = _read_parquet_manifest(path)
    else:
        raise DatasetError(f"{path}: a manifest must be a .jsonl or .parquet file with a 'path' column")
    items = []
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not isinstance(row.get("path"), str) or not row["path"]:
            raise DatasetError(f"{path}: row {number} has no 'path' (every row needs the image's path)")
        source = Path(row["path"]) if Path(row["path"]).is_absolute() else path.parent / row["path"]
        caption = row.get("caption")
        items.append(InputImage(
            source=str(source),
            caption=_caption_beside(source) if caption is None else str(caption),
            identity=str(row.get("identity") or _folder_label(source)),
        ))
    return items


def _read_jsonl_manifest(path: Path) -> list[Any]:
    """One JSON object per line of UTF-8 text (a leading byte-order mark is allowed)."""
    rows = []
    content = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    for number, raw in enumerate(content.splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DatasetError(
                f"{path}: line {number} is not UTF-8 text (byte {raw[error.start]:#04x} at column {error.start + 1}); "
                "save the manifest as UTF-8"
            ) from None
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise DatasetError(f"{path}: line {number} is not valid JSON ({error})") from None
    return rows


def _read_parquet_manifest(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise DatasetError(f"{path}: reading Parquet manifests needs pyarrow: pip install 'faceprompt[ray]'") from None
    try:
        return parquet.read_table(path).to_pylist()
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid derives from ValueError
        raise DatasetError(f"{path}: not a readable Parquet file ({error})") from None


def _image_files_under(folder: Path, exclude: str | os.PathLike | None) -> list[Path]:
    """Image files in ``folder`` and its subfolders (not hidden ones, not the output folder)."""
    excluded = Path(exclude).resolve() if exclude is not None else None
    folders = [folder] + sorted(
        path for path in folder.rglob("*")
        if path.is_dir() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )
    if excluded is not None:
        folders = [path for path in folders if excluded != path.resolve() and excluded not in path.resolve().parents]
    return list_image_files(folders)


def _caption_beside(image: Path) -> str:
    caption = image.with_suffix(".txt")
    return caption.read_text(encoding="utf-8", errors="replace").strip() if caption.is_file() else ""


def _folder_label(image: Path) -> str:
    return image.absolute().parent.name


def plan_shards(items: list[InputImage], root: Path, settings: PrepareSettings, shard_size: int) -> list[ShardTask]:
    """Consecutive runs of ``shard_size`` items, named ``00000``, ``00001``, ..."""
    return [
        ShardTask(str(root), f"{index:05d}", items[start : start + shard_size], settings)
        for index, start in enumerate(range(0, len(items), shard_size))
    ]


def _dataset_options(
    inputs: Sequence[str | os.PathLike],
    manifest: str | os.PathLike | None,
    settings: PrepareSettings,
    shard_size: int,
    items: list[InputImage],
) -> dict[str, Any]:
    """What ``dataset.json`` records: every option that changes the output, and a digest of the input list."""
    listing = hashlib.sha256("".join(f"{i.source}\0{i.caption}\0{i.identity}\n" for i in items).encode())
    return {
        "inputs": [str(Path(path)) for path in inputs],
        "manifest": None if manifest is None else str(Path(manifest)),
        "min_resolution": settings.min_resolution,
        "min_face_size": settings.min_face_size,
        "blur_threshold": settings.blur_threshold,
        "crops": settings.crops,
        "segment": settings.segment,
        "shard_size": shard_size,
        "backend": settings.backend,
        "images": len(items),
        "images_sha256": listing.hexdigest(),
    }


def _open_output(root: Path, face_model: str, settings: PrepareSettings, options: dict[str, Any],
                 shards: list[str]) -> None:
    """Start a new data set in ``root``, or check that the one there was started with the same options."""
    if root.exists() and not root.is_dir():
        raise DatasetError(f"{root}: exists and is not a folder; pick a new folder for the data set")
    expected = {"face_model": face_model, "embedding_dim": settings.embedding_dim, "crops": settings.crops,
                "segmented": settings.segment, "options": options, "shards": shards}
    if (root / INFO_FILE).is_file():
        existing = read_dataset_info(root)
        expected = json.loads(json.dumps(expected))  # compare as the JSON values that were written
        different = _differences(existing, expected)
        if different:
            raise DatasetError(
                f"{root}: holds a data set prepared with different options ({'; '.join(different)}); pass the same "
                "options to resume it, or pick a new folder"
            )
        return
    if root.exists() and any(root.iterdir()):
        raise DatasetError(f"{root}: the folder is not empty and not a faceprompt data set; pick a new folder")
    write_dataset_info(root, face_model=face_model, crops=settings.crops, segmented=settings.segment,
                       options=options, shards=shards, embedding_dim=settings.embedding_dim)


def _differences(existing: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    different = []
    for key, value in expected.items():
        if key == "options":
            for option, wanted in value.items():
                if existing["options"].get(option) != wanted:
                    different.append(f"{option}: {existing['options'].get(option)!r} there, {wanted!r} now")
        elif existing.get(key) != value:
            different.append(f"{key}: {existing.get(key)!r} there, {value!r} now")
    return different


# --- one shard ------------------------------------------------------------------------------------

#: One analyzer per process and backend, built on first use (each worker process builds its own).
_ANALYZERS: dict[tuple[str, str | None], FaceAnalyzer] = {}


def _analyzer_key(settings: PrepareSettings) -> tuple[str, str | None]:
    return settings.backend, settings.model_root


def _analyzer_for(settings: PrepareSettings) -> FaceAnalyzer:
    key = _analyzer_key(settings)
    if key not in _ANALYZERS:
        _ANALYZERS[key] = FaceAnalyzer(settings.backend, model_root=settings.model_root)
    return _ANALYZERS[key]


def prepare_shard(task: ShardTask, on_image: Callable[[], None] | None = None) -> dict[str, Any]:
    """Prepare one shard from scratch and mark it finished; returns its counts (``shard``, ``seen``, ``kept``)."""
    analyzer = _analyzer_for(task.settings)
    first_source_of: dict[str, str] = {}
    settings = task.settings
    with ShardWriter(task.root, task.shard, settings.crops, settings.segment,
                     embedding_dim=settings.embedding_dim) as writer:
        for item in task.items:
            _prepare_image(item, analyzer, settings, writer, first_source_of)
            if on_image is not None:
                on_image()
    return {"shard": task.shard, "seen": len(task.items), "kept": writer.num_records}


def _prepare_image(
    item: InputImage,
    analyzer: FaceAnalyzer,
    settings: PrepareSettings,
    writer: ShardWriter,
    first_source_of: dict[str, str],
) -> None:
    """Keep ``item`` in ``writer`` or record why not."""
    try:
        image = load_image(item.source, max_pixels=analyzer.max_pixels)
    except ImageError as error:
        logger.warning("unreadable, skipped: %s", error)
        writer.reject(item.source, "unreadable", str(error))
        return
    face = _the_one_face(image, item, analyzer, settings, first_source_of)
    if isinstance(face, Rejection):
        writer.reject(item.source, face.reason, face.detail)
        return
    writer.add(
        id=image.sha256[:16],
        source=item.source,
        caption=item.caption,
        identity=item.identity,
        width=image.width,
        height=image.height,
        bbox=face.bbox,
        det_score=face.score,
        crops={name: crop_framing(image.rgb, face.bbox, proportion) for name, proportion in settings.crops.items()},
        face=Image.fromarray(face.crop(FACE_CROP_SIZE)),
        face_segmented=Image.fromarray(face.crop(FACE_CROP_SIZE, segment=True)) if settings.segment else None,
        normed=face.normed_embedding,
        raw=face.embedding,
    )


def _the_one_face(
    image: LoadedImage,
    item: InputImage,
    analyzer: FaceAnalyzer,
    settings: PrepareSettings,
    first_source_of: dict[str, str],
) -> Face | Rejection:
    """The image's one face when it passes every filter, else why the image is left out."""
    record_id = image.sha256[:16]
    if record_id in first_source_of:
        return Rejection("duplicate", f"same file content as {first_source_of[record_id]}")
    first_source_of[record_id] = item.source
    if min(image.width, image.height) < settings.min_resolution:
        return Rejection(
            "image_too_small",
            f"{image.width}x{image.height}: the shorter side is below min_resolution={settings.min_resolution}",
        )
    faces = analyzer.analyze(image).faces
    if not faces:
        return Rejection("no_face", "no face detected")
    if len(faces) > 1:
        return Rejection("several_faces", f"{len(faces)} faces detected; only photos of exactly one person are kept")
    # The analyzer's QualityFilter phrases each threshold's verdict; we only sort them into the summary's reasons.
    for reason, rule in (("face_too_small", QualityFilter(min_face_size=settings.min_face_size)),
                         ("blurry", QualityFilter(min_blur_score=settings.blur_threshold))):
        _, why = rule.apply(faces)
        if why:
            return Rejection(reason, why[0])
    return faces[0]


def framing_box(bbox: Sequence[float], proportion: float, width: int, height: int) -> tuple[int, int, int]:
    """``(left, top, side)`` of the square framing: ``proportion`` x the face box's longer side, centred on the face,
    shifted to lie inside the image and no larger than its shorter side."""
    x1, y1, x2, y2 = (float(value) for value in bbox)
    side = min(round(proportion * max(x2 - x1, y2 - y1)), width, height)
    side = max(side, 1)
    left = min(max(round((x1 + x2) / 2 - side / 2), 0), width - side)
    top = min(max(round((y1 + y2) / 2 - side / 2), 0), height - side)
    return left, top, side


def crop_framing(rgb: np.ndarray, bbox: Sequence[float], proportion: float) -> Image.Image:
    """The square framing of :func:`framing_box` cut from ``rgb`` at its own resolution (the trainer resizes)."""
    left, top, side = framing_box(bbox, proportion, rgb.shape[1], rgb.shape[0])
    return Image.fromarray(rgb[top : top + side, left : left + side])


# --- engines --------------------------------------------------------------------------------------


def _run_locally(tasks: list[ShardTask], workers: int, advance: Callable[[int], None]) -> None:
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            prepare_shard(task, on_image=lambda: advance(1))
        return
    # Shards are large units of work, so the seconds a fresh interpreter takes to start do not matter; spawn is safe
    # with every backend (ONNX Runtime's threads do not survive fork).
    context = multiprocessing.get_context("spawn")
    processes = min(workers, len(tasks))
    with ProcessPoolExecutor(
        max_workers=processes, mp_context=context, initializer=share_cores_between_workers, initargs=(processes,)
    ) as pool:
        futures = [pool.submit(prepare_shard, task) for task in tasks]
        for future in as_completed(futures):
            advance(future.result()["seen"])


def _prepare_row(row: dict[str, str]) -> dict[str, Any]:
    return prepare_shard(ShardTask.from_json(row["task"]))


def _run_with_ray(tasks: list[ShardTask], workers: int, on_shard: Callable[[dict[str, Any]], None]) -> None:
    """Run :func:`prepare_shard` on every task as Ray Data map tasks (one block per shard)."""
    if not tasks:
        return
    try:
        import ray
        import ray.data
    except ImportError:
        raise DatasetError("engine='ray' needs Ray Data: pip install 'faceprompt[ray]' (ray[data])") from None
    start_ray = not ray.is_initialized()
    if start_ray:
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False  # ours is the rich bar
        rows = ray.data.from_items([{"task": task.to_json()} for task in tasks], override_num_blocks=len(tasks))
        shards_done = rows.map(_prepare_row, num_cpus=1, compute=ray.data.TaskPoolStrategy(size=workers))
        for result in shards_done.iter_rows():
            on_shard(result)
    finally:
        if start_ray:
            ray.shutdown()


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("images"),
        TimeElapsedColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), disable=not enabled,
    )
