"""The stand-in insightface packs load and run through insightface's own code."""

from __future__ import annotations

import socket
import time
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from insightface.app import FaceAnalysis
from insightface.model_zoo import SCRFD, ArcFaceONNX

from faceprompt.testing.insightface_models import STANDIN_NOTICE, write_standin_insightface_pack

PACK_FILES = {
    "buffalo_l": {"detection": "det_10g.onnx", "recognition": "w600k_r50.onnx"},
    "antelopev2": {"detection": "scrfd_10g_bnkps.onnx", "recognition": "glintr100.onnx"},
}


def _sample_image(name: str) -> np.ndarray:
    """A BGR sample photo shipped inside the insightface wheel."""
    with resources.as_file(resources.files("insightface") / "data" / "images" / name) as path:
        image = cv2.imread(str(path))
    assert image is not None, f"insightface sample image {name} is missing"
    return image


def _load(pack_dir: Path) -> FaceAnalysis:
    """Load a pack exactly as faceprompt's insightface backend does."""
    app = FaceAnalysis(
        name=str(pack_dir), allowed_modules=["detection", "recognition"], providers=["CPUExecutionProvider"]
    )
    app.prepare(ctx_id=-1, det_size=(640, 640))
    return app


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("insightface_root")
    for name in PACK_FILES:
        write_standin_insightface_pack(root, name)
    return root


@pytest.fixture(scope="module")
def app(model_root: Path) -> FaceAnalysis:
    return _load(model_root / "models" / "buffalo_l")


@pytest.fixture(scope="module")
def tom_hanks() -> np.ndarray:
    return _sample_image("Tom_Hanks_54745.png")


def _best_face(app: FaceAnalysis, image: np.ndarray):
    faces = app.get(image)
    assert faces, "the stand-in detector found no face"
    return max(faces, key=lambda face: face.det_score)


@pytest.mark.parametrize("name", sorted(PACK_FILES))
def test_pack_has_the_real_file_names(model_root: Path, name: str) -> None:
    pack_dir = model_root / "models" / name
    assert write_standin_insightface_pack(model_root, name) == pack_dir
    assert sorted(path.name for path in pack_dir.iterdir()) == sorted(PACK_FILES[name].values())
    assert "\n" not in STANDIN_NOTICE and "stand-in" in STANDIN_NOTICE.lower() and "tests only" in STANDIN_NOTICE
    for path in pack_dir.iterdir():
        assert path.stat().st_size < 1_000_000
        assert onnx.load(str(path)).doc_string == STANDIN_NOTICE  # every file says what it is, in one line


@pytest.mark.parametrize("name", sorted(PACK_FILES))
def test_face_analysis_routes_detector_and_recognizer(
    model_root: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("loading a local pack must not touch the network")

    monkeypatch.setattr(socket, "getaddrinfo", refuse_network)
    monkeypatch.setattr(socket.socket, "connect", refuse_network)
    pack_dir = model_root / "models" / name

    started = time.perf_counter()
    app = _load(pack_dir)
    print(f"{name}: FaceAnalysis load + prepare took {time.perf_counter() - started:.3f} s")

    assert sorted(app.models) == ["detection", "recognition"]
    detector, recognizer = app.models["detection"], app.models["recognition"]
    assert isinstance(detector, SCRFD) and detector.taskname == "detection"
    assert isinstance(recognizer, ArcFaceONNX) and recognizer.taskname == "recognition"
    assert Path(detector.model_file).name == PACK_FILES[name]["detection"]
    assert Path(recognizer.model_file).name == PACK_FILES[name]["recognition"]
    # The SCRFD-10G-with-keypoints layout insightface derives from 9 outputs.
    assert (detector.fmc, detector._feat_stride_fpn, detector._num_anchors) == (3, [8, 16, 32], 2)
    assert detector.use_kps and not detector.batched
    assert (detector.input_mean, detector.input_std) == (127.5, 128.0)
    assert recognizer.input_size == (112, 112)
    assert (recognizer.input_mean, recognizer.input_std) == (127.5, 127.5)
    assert app.get(_sample_image("Tom_Hanks_54745.png"))


def test_pack_name_under_root_loads_the_existing_folder(
    model_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = FaceAnalysis(
        name="antelopev2", root=str(model_root), allowed_modules=["detection"], providers=["CPUExecutionProvider"]
    )
    assert Path(app.model_dir) == model_root / "models" / "antelopev2"
    assert "download" not in capsys.readouterr().out


def test_sample_photo_yields_a_plausible_face(app: FaceAnalysis, tom_hanks: np.ndarray) -> None:
    height, width = tom_hanks.shape[:2]
    faces = app.get(tom_hanks)
    assert len(faces) >= 1
    for face in faces:
        x1, y1, x2, y2 = face.bbox
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert face.det_score >= 0.5
        assert face.kps.shape == (5, 2)
        assert np.all((face.kps[:, 0] > x1) & (face.kps[:, 0] < x2))
        assert np.all((face.kps[:, 1] > y1) & (face.kps[:, 1] < y2))
        assert face.embedding.shape == (512,)
        assert np.all(np.isfinite(face.embedding))
        assert np.linalg.norm(face.normed_embedding) == pytest.approx(1.0, abs=1e-5)


def test_embeddings_are_deterministic_and_image_dependent(app: FaceAnalysis, tom_hanks: np.ndarray) -> None:
    first = _best_face(app, tom_hanks)
    again = _best_face(app, tom_hanks.copy())
    np.testing.assert_array_equal(first.bbox, again.bbox)
    np.testing.assert_array_equal(first.embedding, again.embedding)

    for other in (_sample_image("t1.jpg"), np.ascontiguousarray(tom_hanks[10:100, 20:110])):
        different = _best_face(app, other)
        assert np.dot(first.normed_embedding, different.normed_embedding) < 0.99


def test_blank_image_has_no_face(app: FaceAnalysis) -> None:
    assert app.get(np.full((240, 320, 3), 128, dtype=np.uint8)) == []


def test_files_are_reproducible_per_seed(tmp_path: Path) -> None:
    first = write_standin_insightface_pack(tmp_path / "a", seed=3)
    same = write_standin_insightface_pack(tmp_path / "b", seed=3)
    other = write_standin_insightface_pack(tmp_path / "c", seed=4)
    for file_name in PACK_FILES["buffalo_l"].values():
        assert (first / file_name).read_bytes() == (same / file_name).read_bytes()
    assert (first / "det_10g.onnx").read_bytes() == (other / "det_10g.onnx").read_bytes()
    assert (first / "w600k_r50.onnx").read_bytes() != (other / "w600k_r50.onnx").read_bytes()


def test_unknown_pack_name_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown insightface pack"):
        write_standin_insightface_pack(tmp_path, "buffalo_s")
    assert not (tmp_path / "models").exists()
