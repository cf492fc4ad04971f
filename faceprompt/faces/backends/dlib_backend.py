"""dlib backend: the embedded default, with real models shipped on PyPI by ``face_recognition_models``.

HOG (or CNN) face detector, 68-point shape predictor reduced to the five ArcFace points, and dlib's ResNet
128-d face descriptor, run by default in torch with the weights of dlib's file (same values, several times faster
than the ``dlib-bin`` wheel, which has no BLAS). The dlib models are free for commercial use, unlike insightface's
model files.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import dlib
import numpy as np

from ...devices import check_device
from ...errors import BackendError, ModelFilesMissingError
from .base import Detection

if TYPE_CHECKING:
    from .dlib_resnet import DlibTorchDescriptor

FACE_MODEL = "dlib/resnet_v1"

MODEL_FILES = {
    "landmarks": "shape_predictor_68_face_landmarks.dat",
    "descriptor": "dlib_face_recognition_resnet_model_v1.dat",
    "cnn_detector": "mmod_human_face_detector.dat",
}

#: 68-point indices of the parts that give the five ArcFace points.
RIGHT_EYE_OF_PICTURE = slice(42, 48)
LEFT_EYE_OF_PICTURE = slice(36, 42)
NOSE_TIP = 30
MOUTH_LEFT, MOUTH_RIGHT = 48, 54

#: dlib's descriptor network takes 150-px chips cut with 25% padding around the landmarks.
CHIP_SIZE, CHIP_PADDING = 150, 0.25

#: What runs the descriptor network: ``"torch"`` (default) or dlib's own implementation.
DescriptorEngine = Literal["torch", "dlib"]


def dlib_model_dir() -> Path:
    """Folder of the ``face_recognition_models`` files, found without importing the package.

    Its ``__init__`` imports ``pkg_resources``, which setuptools >= 81 no longer has.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFilesMissingError(
            "the dlib backend needs the 'face_recognition_models' package: pip install face-recognition-models"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def _model_file(key: str, model_dir: Path) -> str:
    path = model_dir / MODEL_FILES[key]
    if not path.is_file():
        raise ModelFilesMissingError(
            f"dlib model file missing: {path}. Reinstall it with: pip install --force-reinstall face-recognition-models"
        )
    return str(path)


@cache
def _load_models(model_dir: str, detector: str) -> tuple:
    """Models are loaded once per process and shared by every analyzer (they are read-only)."""
    folder = Path(model_dir)
    if detector == "cnn":
        face_detector = dlib.cnn_face_detection_model_v1(_model_file("cnn_detector", folder))
    else:
        face_detector = dlib.get_frontal_face_detector()
    shape_predictor = dlib.shape_predictor(_model_file("landmarks", folder))
    return face_detector, shape_predictor


@cache
def _load_dlib_descriptor(model_dir: str) -> dlib.face_recognition_model_v1:
    return dlib.face_recognition_model_v1(_model_file("descriptor", Path(model_dir)))


@cache
def _load_torch_descriptor(model_dir: str, device: str) -> DlibTorchDescriptor:
    from .dlib_resnet import DlibTorchDescriptor  # torch is imported only when this descriptor is used

    return DlibTorchDescriptor(_model_file("descriptor", Path(model_dir)), device=device)


class DlibBackend:
    """dlib detection, landmarks and 128-d descriptors.

    Args:
        model_dir: folder with the dlib ``.dat`` files (default: the installed ``face_recognition_models``).
        detector: ``"hog"`` (fast, CPU) or ``"cnn"`` (MMOD; more robust to pose, slow without a GPU).
        upsample: how many times to upsample the image before detecting. ``None`` (default) tries 0 and retries
            with 1 and 2 only when nothing was found, so faces down to ~30 px are found without paying the 4x/16x
            cost on ordinary photos.
        max_upsampled_pixels: never upsample beyond this many pixels (bounds time and memory on large photos).
        hog_threshold: minimum HOG detection score (SVM margin). dlib's own default, 0, lets through clothing
            patterns with margins below 0.1 that can be larger than the real face.
        descriptor: what computes the 128-d descriptors: ``"torch"`` (default; dlib's network and weights in
            torch, batched, cosine similarity >= 0.99999 to dlib's own values) or ``"dlib"`` (dlib's
            ``compute_face_descriptor``).
        device: torch device of the ``"torch"`` descriptor (``"cpu"`` by default; ``"cuda"`` runs it in float16).

    Attributes:
        detector_passes: how many detector passes this backend has run at each upsample level (a diagnostic: it
            tells how many photos paid for upsampling); clear it to start counting afresh.
    """

    name = "dlib"
    face_model = FACE_MODEL
    embedding_dim = 128

    def __init__(
        self,
        model_dir: str | Path | None = None,
        detector: Literal["hog", "cnn"] = "hog",
        upsample: int | None = None,
        max_upsampled_pixels: int = 2048 * 2048,
        hog_threshold: float = 0.15,
        descriptor: DescriptorEngine = "torch",
        device: str | None = None,
    ):
        if detector not in ("hog", "cnn"):
            raise BackendError(f"dlib detector must be 'hog' or 'cnn', got {detector!r}")
        if descriptor not in ("torch", "dlib"):
            raise BackendError(f"dlib descriptor must be 'torch' or 'dlib', got {descriptor!r}")
        if device not in (None, "cpu") and descriptor != "torch":
            raise BackendError(f"device={device!r} needs descriptor='torch'; dlib's own descriptor runs on the CPU")
        if device is not None:
            try:
                check_device(device)
            except ValueError as error:
                raise BackendError(f"device={device!r}: {error}") from None
        self.detector_kind = detector
        self.upsample = upsample
        self.max_upsampled_pixels = max_upsampled_pixels
        self.hog_threshold = hog_threshold
        self.detector_passes: Counter[int] = Counter()
        folder = Path(model_dir) if model_dir is not None else dlib_model_dir()
        self.descriptor = descriptor
        self.device = device or "cpu"
        self._detector, self._shape_predictor = _load_models(str(folder), detector)
        self._model_dir = str(folder)
        if descriptor == "torch":  # loaded now so that forked workers share it
            _load_torch_descriptor(self._model_dir, self.device)
        else:
            _load_dlib_descriptor(self._model_dir)

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        boxes = self.detect_boxes(rgb)
        return [self.landmarks(rgb, rect, score) for rect, score in boxes]

    def detect_boxes(self, rgb: np.ndarray) -> list[tuple[dlib.rectangle, float]]:
        """Face rectangles with their scores, upsampling only as far as needed (see ``upsample``)."""
        levels = [self.upsample] if self.upsample is not None else [0, 1, 2]
        pixels = rgb.shape[0] * rgb.shape[1]
        boxes: list[tuple[dlib.rectangle, float]] = []
        for level in levels:
            if level > 0 and pixels * 4**level > self.max_upsampled_pixels and self.upsample is None:
                break
            boxes = self._run_detector(rgb, level)
            if boxes:
                break
        return boxes

    def _run_detector(self, rgb: np.ndarray, upsample: int) -> list[tuple[dlib.rectangle, float]]:
        self.detector_passes[upsample] += 1
        if self.detector_kind == "cnn":
            return [(found.rect, float(found.confidence)) for found in self._detector(rgb, upsample)]
        rects, scores, _ = self._detector.run(rgb, upsample, self.hog_threshold)
        return list(zip(rects, map(float, scores)))

    def landmarks(self, rgb: np.ndarray, rect: dlib.rectangle, score: float) -> Detection:
        """68-point landmarks for one rectangle, reduced to the five ArcFace points."""
        shape = self._shape_predictor(rgb, rect)
        points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
        bbox = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], dtype=np.float32)
        return Detection(bbox=bbox, score=score, kps=five_points_from_68(points), landmarks=points, native=shape)

    def align(self, rgb: np.ndarray, detection: Detection) -> np.ndarray:
        """dlib's own 150-px chip (its descriptor was trained on this alignment, not on ArcFace's)."""
        return dlib.get_face_chip(rgb, detection.native, size=CHIP_SIZE, padding=CHIP_PADDING)

    def embed(self, chips: list[np.ndarray]) -> np.ndarray:
        if not chips:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        if self.descriptor == "torch":
            return _load_torch_descriptor(self._model_dir, self.device)(chips)
        return np.array(_load_dlib_descriptor(self._model_dir).compute_face_descriptor(chips), dtype=np.float32)


def five_points_from_68(points: np.ndarray) -> np.ndarray:
    """Reduce 68 iBUG landmarks to the ArcFace five: eye centres (mean of each eye's six points), nose tip,
    mouth corners, ordered left-of-picture first like insightface's ``kps``."""
    return np.stack(
        [
            points[LEFT_EYE_OF_PICTURE].mean(axis=0),
            points[RIGHT_EYE_OF_PICTURE].mean(axis=0),
            points[NOSE_TIP],
            points[MOUTH_LEFT],
            points[MOUTH_RIGHT],
        ]
    ).astype(np.float32)
