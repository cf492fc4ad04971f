"""insightface backend: the face models IP-Adapter-FaceID was trained with (``buffalo_l``; ``antelopev2``).

The model files are non-commercial and cannot be bundled: they are read from
``<model_root>/models/<pack>/`` (insightface's own layout, ``~/.insightface`` by default). faceprompt never lets
insightface download them: missing files raise :class:`ModelFilesMissingError` at once, naming the folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import BackendError, ModelFilesMissingError
from ..align import align_face
from .base import Detection

#: The files each pack needs for detection and recognition (the packs ship more; we load only these).
PACK_FILES: dict[str, tuple[str, str]] = {
    "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx"),
    "antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
}

DETECTION_SIZE = (640, 640)
RECOGNITION_INPUT = 112


def default_model_root() -> Path:
    """insightface's default root (``$INSIGHTFACE_HOME`` if set, else ``~/.insightface``)."""
    return Path(os.environ.get("INSIGHTFACE_HOME", "~/.insightface")).expanduser()


def find_pack_dir(pack: str, model_root: str | Path | None = None) -> Path | None:
    """The folder holding ``pack``'s files, or ``None``.

    Also accepts the nested ``antelopev2/antelopev2/`` layout its zip archive unpacks to.
    """
    if pack not in PACK_FILES:
        raise BackendError(f"unknown insightface model pack {pack!r}; choose one of {sorted(PACK_FILES)}")
    root = Path(model_root).expanduser() if model_root is not None else default_model_root()
    for folder in (root / "models" / pack, root / "models" / pack / pack):
        if all((folder / name).is_file() for name in PACK_FILES[pack]):
            return folder
    return None


def missing_pack_message(pack: str, model_root: str | Path | None = None) -> str:
    root = Path(model_root).expanduser() if model_root is not None else default_model_root()
    folder = root / "models" / pack
    files = ", ".join(PACK_FILES[pack])
    return (
        f"insightface model files for '{pack}' not found: expected {files} in {folder}. "
        f"Download the '{pack}' pack from the insightface model zoo (non-commercial licence) and unzip it there, "
        "or pass model_root=... / --model-root to the folder that contains models/. "
        "Without them, use backend='dlib' (embedded, commercial-friendly)."
    )


class InsightFaceBackend:
    """SCRFD detection with five keypoints and ArcFace 512-d embeddings through insightface's ``FaceAnalysis``.

    Args:
        pack: ``"buffalo_l"`` (IP-Adapter-FaceID, PhotoMaker v2) or ``"antelopev2"`` (InstantID, PuLID, Arc2Face).
        model_root: the folder containing ``models/<pack>/``.
        providers: ONNX Runtime execution providers (default: CPU).
        det_thresh: detection score threshold.
    """

    name = "insightface"
    embedding_dim = 512

    def __init__(
        self,
        pack: str = "buffalo_l",
        model_root: str | Path | None = None,
        providers: list[str] | None = None,
        det_thresh: float = 0.5,
    ):
        folder = find_pack_dir(pack, model_root)
        if folder is None:
            raise ModelFilesMissingError(missing_pack_message(pack, model_root))
        from insightface.app import FaceAnalysis

        self.pack = pack
        self.face_model = f"insightface/{pack}"
        self.model_dir = folder
        try:
            # A folder path as `name` makes insightface load it directly, with no download attempt.
            self._app = FaceAnalysis(
                name=str(folder),
                allowed_modules=["detection", "recognition"],
                providers=providers or ["CPUExecutionProvider"],
            )
            self._app.prepare(ctx_id=-1, det_thresh=det_thresh, det_size=DETECTION_SIZE)
        except Exception as error:  # onnxruntime raises its own classes for corrupt or incompatible files
            raise BackendError(f"insightface could not load the '{pack}' files in {folder}: {error}") from None
        if "recognition" not in self._app.models:
            raise ModelFilesMissingError(f"no recognition model was recognised in {folder}: {missing_pack_message(pack, model_root)}")
        self._recognizer = self._app.models["recognition"]

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        boxes, keypoints = self._app.det_model.detect(bgr, max_num=0, metric="default")
        return [
            Detection(bbox=box[:4].astype(np.float32), score=float(box[4]), kps=kps.astype(np.float32))
            for box, kps in zip(boxes, keypoints)
        ]

    def align(self, rgb: np.ndarray, detection: Detection) -> np.ndarray:
        """The 112-px ArcFace crop, in BGR as insightface's recognizer expects."""
        return np.ascontiguousarray(align_face(rgb, detection.kps, RECOGNITION_INPUT)[:, :, ::-1])

    def embed(self, chips: list[np.ndarray]) -> np.ndarray:
        if not chips:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        return np.asarray(self._recognizer.get_feat(chips), dtype=np.float32).reshape(len(chips), -1)
