"""FaceAnalyzer: photo -> faces (boxes, five points, embeddings, quality), with face selection and filters."""

from __future__ import annotations

import multiprocessing
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import AnalysisOptionError, BackendError, FaceSelectionError, ImageError, NoFaceFoundError
from ..images import (
    DEFAULT_ANALYSIS_SIDE,
    DEFAULT_MAX_PIXELS,
    ChannelOrder,
    ImageInput,
    LoadedImage,
    downscale_for_analysis,
    load_image,
)
from .align import align_face
from .backends.base import Detection, FaceBackend
from .face import Face, laplacian_blur_score
from .workers import Workers, resolve_workers, share_cores_between_workers

BackendName = Literal["auto", "insightface", "dlib"]

#: How a face is chosen when a photo has several: "largest", "all", "index:N" (or an int N).
Selection = str | int


@dataclass
class QualityFilter:
    """Faces failing any threshold are dropped (and counted, so errors can say why nothing was kept).

    Attributes:
        min_face_size: minimum shorter side of the face box, in original-image pixels.
        min_score: minimum detection score.
        min_blur_score: minimum Laplacian variance of the aligned crop (see :attr:`Face.blur_score`).
        max_faces: keep at most this many faces, largest first.
    """

    min_face_size: float = 0.0
    min_score: float | None = None
    min_blur_score: float | None = None
    max_faces: int | None = None

    def apply(self, faces: list[Face]) -> tuple[list[Face], list[str]]:
        """Return the faces kept (largest first) and one reason per rejected face."""
        kept: list[Face] = []
        rejected: list[str] = []
        for face in faces:
            reason = self._rejection(face)
            if reason:
                rejected.append(reason)
            else:
                kept.append(face)
        if self.max_faces is not None and len(kept) > self.max_faces:
            rejected += [f"beyond max_faces={self.max_faces}"] * (len(kept) - self.max_faces)
            kept = kept[: self.max_faces]
        return kept, rejected

    def _rejection(self, face: Face) -> str | None:
        if face.size < self.min_face_size:
            return f"face {face.size:.0f} px is smaller than min_face_size={self.min_face_size:g}"
        if self.min_score is not None and face.score < self.min_score:
            return f"detection score {face.score:.2f} is below min_score={self.min_score:g}"
        if self.min_blur_score is not None and face.blur_score < self.min_blur_score:
            return f"blur score {face.blur_score:.1f} is below min_blur_score={self.min_blur_score:g} (too blurry)"
        return None


@dataclass
class FileAnalysis:
    """The result for one input file: its faces, or the error that made it unreadable."""

    path: str
    faces: list[Face] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    error: ImageError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class FaceAnalyzer:
    """Detect, align, embed and assess faces with one backend.

    Args:
        backend: ``"insightface"`` (the models IP-Adapter-FaceID was trained with; files needed in ``model_root``),
            ``"dlib"`` (embedded default, real models from ``face_recognition_models``), or ``"auto"``:
            insightface when its files are present, else dlib. :attr:`backend_name` tells which one ran.
        model_root: insightface's model root (the folder containing ``models/<pack>/``).
        pack: insightface model pack, ``"buffalo_l"`` or ``"antelopev2"``.
        dlib_detector: ``"hog"`` or ``"cnn"`` for the dlib backend.
        dlib_descriptor: what computes the dlib backend's descriptors: ``"torch"`` (default, fast, batched) or
            ``"dlib"`` (dlib's own implementation; same values to a cosine similarity of 0.99999).
        device: torch device of the dlib backend's ``"torch"`` descriptor (default: the CPU).
        quality: filters applied to every detection (see :class:`QualityFilter`).
        analysis_side: images whose longer side exceeds this are analysed on a downscaled copy; coordinates are
            mapped back to the original image and crops are cut from the original.
        max_pixels: refuse larger images (decompression-bomb protection).
        providers: ONNX Runtime providers for insightface.
    """

    def __init__(
        self,
        backend: BackendName = "auto",
        model_root: str | Path | None = None,
        *,
        pack: str = "buffalo_l",
        dlib_detector: Literal["hog", "cnn"] = "hog",
        dlib_descriptor: Literal["torch", "dlib"] = "torch",
        device: str | None = None,
        quality: QualityFilter | None = None,
        analysis_side: int = DEFAULT_ANALYSIS_SIDE,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        providers: list[str] | None = None,
    ):
        self._config: dict[str, Any] = dict(
            backend=backend,
            model_root=model_root,
            pack=pack,
            dlib_detector=dlib_detector,
            dlib_descriptor=dlib_descriptor,
            device=device,
            quality=quality,
            analysis_side=analysis_side,
            max_pixels=max_pixels,
            providers=providers,
        )
        self.backend: FaceBackend = create_backend(
            backend, model_root, pack, dlib_detector, providers, dlib_descriptor=dlib_descriptor, device=device
        )
        self.quality = quality or QualityFilter()
        self.analysis_side = analysis_side
        self.max_pixels = max_pixels

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def face_model(self) -> str:
        return self.backend.face_model

    # --- single images ----------------------------------------------------------------------------

    def detect(self, image: ImageInput | LoadedImage, *, channels: ChannelOrder | None = None) -> list[Face]:
        """All faces in ``image`` that pass the quality filter, largest first, with embeddings.

        ``image`` is a path, a PIL image or a numpy array (``channels="rgb"`` or ``"bgr"`` required for colour
        arrays). A photo without a face gives an empty list.
        """
        return self.analyze(image, channels=channels).faces

    def analyze(self, image: ImageInput | LoadedImage, *, channels: ChannelOrder | None = None) -> FileAnalysis:
        """Like :meth:`detect`, also reporting why faces were rejected by the quality filter."""
        return self.analyze_batch([load_image(image, channels=channels, max_pixels=self.max_pixels)])[0]

    def get_face(
        self,
        image: ImageInput | LoadedImage,
        select: Selection = "largest",
        *,
        channels: ChannelOrder | None = None,
    ) -> Face:
        """Exactly one face (``select``: ``"largest"`` or ``"index:N"``); raises if there is none."""
        analysis = self.analyze(image, channels=channels)
        faces = select_faces(analysis.faces, select, source=analysis.path, rejected=analysis.rejected)
        if len(faces) != 1:
            raise FaceSelectionError(f"{analysis.path}: selection {select!r} gave {len(faces)} faces, expected one")
        return faces[0]

    # --- many images ------------------------------------------------------------------------------

    def analyze_batch(self, images: Sequence[LoadedImage]) -> list[FileAnalysis]:
        """Analyse already loaded images, running the embedding network once for all their faces."""
        per_image: list[tuple[LoadedImage, float, list[Detection]]] = []
        chips: list[np.ndarray] = []
        for image in images:
            working, scale = downscale_for_analysis(image.rgb, self.analysis_side)
            detections = self.backend.detect(working)
            chips += [self.backend.align(working, detection) for detection in detections]
            per_image.append((image, scale, detections))
        embeddings = iter(self.backend.embed(chips))
        results = []
        for image, scale, detections in per_image:
            faces = [self._to_face(image, scale, detection, next(embeddings)) for detection in detections]
            faces.sort(key=lambda face: face.area, reverse=True)
            for index, face in enumerate(faces):
                face.index = index
            kept, rejected = self.quality.apply(faces)
            results.append(FileAnalysis(path=image.source or image.name, faces=kept, rejected=rejected))
        return results

    def analyze_files(
        self, paths: Sequence[str | Path], *, workers: Workers = 1, batch_size: int = 8
    ) -> Iterator[FileAnalysis]:
        """Analyse image files in order; an unreadable file yields a result with ``error`` set, never raises.

        ``workers`` processes share the files (``"auto"``: as many as help with this backend, see
        :func:`~faceprompt.faces.workers.resolve_workers`). With several, batches of at most ``batch_size`` files are
        evened out so that every worker gets the same number of files (20 files, 2 workers: four batches of 5, not
        8 + 8 + 4); with dlib, whose workers start by fork in tens of milliseconds, even files that fit in one batch
        are shared out. Results do not depend on how files are batched.

        Raises:
            AnalysisOptionError: ``workers`` or ``batch_size`` cannot work (raised by this call, before any file is
                read).
        """
        count = resolve_workers(workers, self.backend_name)
        cheap_start = count > 1 and self.worker_start_method == "fork"
        batches = _plan_file_batches(paths, batch_size, count, split_single_batch=cheap_start)
        return self._analyze_batches(batches, count)

    def _analyze_batches(self, batches: list[list[str]], workers: int) -> Iterator[FileAnalysis]:
        if workers <= 1 or len(batches) <= 1:
            for batch in batches:
                yield from self._analyze_file_batch(batch)
            return
        with self.worker_pool(workers) as pool:
            for results in pool.map(_analyze_in_worker, batches):
                yield from results

    @property
    def worker_start_method(self) -> str:
        """How :meth:`worker_pool` starts processes: ``"fork"`` for dlib (it holds no threads, so its loaded
        models are shared and a worker starts in tens of milliseconds), ``"spawn"`` otherwise (ONNX Runtime's
        thread pools do not survive fork, so an insightface worker starts a fresh interpreter: about a second; nor
        does CUDA, so a dlib backend with its descriptor on a GPU spawns too)."""
        on_cpu = getattr(self.backend, "device", "cpu") == "cpu"
        if self.backend_name == "dlib" and on_cpu and "fork" in multiprocessing.get_all_start_methods():
            return "fork"
        return "spawn"

    def worker_pool(self, workers: int) -> ProcessPoolExecutor:
        """A pool of ``workers`` processes, each holding its own analyzer built with this one's settings: what
        :meth:`analyze_files` runs its batches on when it uses several workers. Public so that the start-up cost
        can be measured on its own; use it as a context manager."""
        return ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context(self.worker_start_method),
            initializer=_init_worker,
            initargs=(self._config, workers),
        )

    def _analyze_file_batch(self, paths: list[str]) -> list[FileAnalysis]:
        loaded: list[LoadedImage] = []
        results: dict[int, FileAnalysis] = {}
        for position, path in enumerate(paths):
            try:
                loaded.append(load_image(path, max_pixels=self.max_pixels))
            except ImageError as error:
                results[position] = FileAnalysis(path=path, error=error)
        analysed = iter(self.analyze_batch(loaded))
        return [results[i] if i in results else next(analysed) for i in range(len(paths))]

    def _to_face(self, image: LoadedImage, scale: float, detection: Detection, embedding: np.ndarray) -> Face:
        kps = detection.kps * scale
        return Face(
            bbox=detection.bbox * scale,
            score=detection.score,
            kps=kps,
            embedding=np.asarray(embedding, dtype=np.float32),
            face_model=self.backend.face_model,
            blur_score=laplacian_blur_score(align_face(image.rgb, kps, 112)),
            image=image,
            landmarks=None if detection.landmarks is None else detection.landmarks * scale,
        )


def create_backend(
    backend: BackendName,
    model_root: str | Path | None = None,
    pack: str = "buffalo_l",
    dlib_detector: Literal["hog", "cnn"] = "hog",
    providers: list[str] | None = None,
    *,
    dlib_descriptor: Literal["torch", "dlib"] = "torch",
    device: str | None = None,
) -> FaceBackend:
    """Instantiate a backend by name; ``"auto"`` picks insightface when its files are on disk, else dlib.
    ``dlib_descriptor`` and ``device`` apply to the dlib backend only (insightface refuses a device other than the
    CPU rather than ignore it)."""
    from .backends.insightface_backend import InsightFaceBackend, find_pack_dir

    if backend == "auto":
        backend = "insightface" if find_pack_dir(pack, model_root) is not None else "dlib"
    if backend == "insightface" and device not in (None, "cpu"):
        raise BackendError(
            f"device={device!r} is for the dlib backend's torch descriptor; the insightface backend runs on ONNX "
            "Runtime, whose providers= (e.g. 'CUDAExecutionProvider') pick the device: leave the device out"
        )
    if backend == "insightface":
        return InsightFaceBackend(pack=pack, model_root=model_root, providers=providers)
    if backend == "dlib":
        from .backends.dlib_backend import DlibBackend

        return DlibBackend(detector=dlib_detector, descriptor=dlib_descriptor, device=device)
    raise BackendError(f"unknown face backend {backend!r}; choose 'auto', 'insightface' or 'dlib'")


def _plan_file_batches(
    paths: Sequence[str | Path], batch_size: int, workers: int = 1, *, split_single_batch: bool = False
) -> list[list[str]]:
    """Split ``paths`` (in order) into batches of at most ``batch_size`` files for ``workers`` processes.

    One worker: consecutive batches of ``batch_size``. Several: the fewest batches that is a multiple of ``workers``,
    of near-equal size, so that no worker finishes a batch alone while the others wait (20 files, ``batch_size=8``,
    2 workers: four batches of 5 rather than 8 + 8 + 4). Files that fit in one batch stay one batch (run in the
    calling process) unless ``split_single_batch``, which :meth:`FaceAnalyzer.analyze_files` sets when workers start
    by fork and so cost tens of milliseconds rather than seconds.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise AnalysisOptionError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    names = list(map(str, paths))
    count = -(-len(names) // batch_size)
    if workers <= 1 or len(names) <= 1 or (count <= 1 and not split_single_batch):
        return [names[start : start + batch_size] for start in range(0, len(names), batch_size)]
    count = min(len(names), -(-count // workers) * workers)
    size, extra = divmod(len(names), count)
    batches, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        batches.append(names[start:end])
        start = end
    return batches


def parse_selection(select: Selection) -> int | Literal["largest", "all"]:
    """``"largest"``, ``"all"``, ``"index:N"`` / ``N`` -> normalised form; anything else raises."""
    if isinstance(select, int) and not isinstance(select, bool):
        index = select
    elif select in ("largest", "all"):
        return select  # type: ignore[return-value]
    elif isinstance(select, str) and re.fullmatch(r"index:-?[0-9]{1,9}", select):
        index = int(select[6:])
    else:
        raise FaceSelectionError(f"unknown face selection {select!r}; use 'largest', 'all' or 'index:N'")
    if index < 0:
        raise FaceSelectionError(f"face index must be >= 0 (index:0 is the largest face), got {index}")
    return index


def select_faces(
    faces: list[Face], select: Selection, *, source: str | None = None, rejected: Sequence[str] = ()
) -> list[Face]:
    """Pick faces from a largest-first list. Raises :class:`NoFaceFoundError` when there are none."""
    choice = parse_selection(select)
    where = f"{source}: " if source else ""
    if not faces:
        why = f" ({len(rejected)} rejected: {'; '.join(rejected)})" if rejected else ""
        raise NoFaceFoundError(f"{where}no face found{why}. Use a photo where the face is clearly visible.")
    if choice == "all":
        return list(faces)
    if choice == "largest":
        return [faces[0]]
    if choice >= len(faces):
        raise FaceSelectionError(
            f"{where}face index {choice} asked for, but only {len(faces)} face(s) were found "
            f"(valid: index:0 .. index:{len(faces) - 1}, largest first)"
        )
    return [faces[choice]]


# --- worker processes -----------------------------------------------------------------------------

_worker_analyzer: FaceAnalyzer | None = None


def _init_worker(config: dict[str, Any], workers: int) -> None:
    global _worker_analyzer
    share_cores_between_workers(workers)
    _worker_analyzer = FaceAnalyzer(**config)


def _analyze_in_worker(paths: list[str]) -> list[FileAnalysis]:
    if _worker_analyzer is None:
        raise BackendError("face-analysis worker was not initialised")
    return _worker_analyzer._analyze_file_batch(paths)
