import numpy as np
import pytest

from faceprompt.errors import BackendError, ModelFilesMissingError
from faceprompt.faces import FaceAnalyzer
from faceprompt.faces.backends.insightface_backend import PACK_FILES, find_pack_dir
from faceprompt.testing import write_standin_insightface_pack


@pytest.fixture(scope="module")
def standin_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("insightface-home")
    write_standin_insightface_pack(root, "buffalo_l")
    write_standin_insightface_pack(root, "antelopev2")
    return root


def test_missing_files_fail_at_once_naming_the_folder(tmp_path, no_network):
    with pytest.raises(ModelFilesMissingError) as caught:  # no download attempt: the socket guard would fail it
        FaceAnalyzer("insightface", model_root=tmp_path)
    message = str(caught.value)
    assert str(tmp_path / "models" / "buffalo_l") in message
    assert "det_10g.onnx" in message and "w600k_r50.onnx" in message
    assert "backend='dlib'" in message


def test_a_partial_pack_counts_as_missing(tmp_path):
    folder = tmp_path / "models" / "buffalo_l"
    folder.mkdir(parents=True)
    (folder / "det_10g.onnx").write_bytes(b"")
    assert find_pack_dir("buffalo_l", tmp_path) is None
    with pytest.raises(ModelFilesMissingError, match="w600k_r50.onnx"):
        FaceAnalyzer("insightface", model_root=tmp_path)


def test_corrupt_model_file_gives_a_backend_error(tmp_path):
    folder = tmp_path / "models" / "buffalo_l"
    folder.mkdir(parents=True)
    for name in PACK_FILES["buffalo_l"]:
        (folder / name).write_bytes(b"not an onnx model")
    with pytest.raises(BackendError, match="could not load the 'buffalo_l' files"):
        FaceAnalyzer("insightface", model_root=tmp_path)


def test_unknown_pack_is_refused(tmp_path):
    with pytest.raises(BackendError, match="unknown insightface model pack"):
        FaceAnalyzer("insightface", model_root=tmp_path, pack="buffalo_xxl")


def test_nested_antelopev2_layout_is_found(tmp_path):
    nested_root = tmp_path / "nested"
    pack = write_standin_insightface_pack(tmp_path / "flat", "antelopev2")
    target = nested_root / "models" / "antelopev2" / "antelopev2"
    target.mkdir(parents=True)
    for file in pack.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    assert find_pack_dir("antelopev2", nested_root) == target


def test_auto_prefers_insightface_when_files_exist(standin_root, tmp_path):
    assert FaceAnalyzer("auto", model_root=standin_root).backend_name == "insightface"
    assert FaceAnalyzer("auto", model_root=tmp_path).backend_name == "dlib"


@pytest.mark.parametrize("pack", ["buffalo_l", "antelopev2"])
def test_standin_models_run_through_the_backend(standin_root, tom_hanks_path, pack):
    analyzer = FaceAnalyzer("insightface", model_root=standin_root, pack=pack)
    assert analyzer.face_model == f"insightface/{pack}"
    faces = analyzer.detect(tom_hanks_path)
    assert len(faces) >= 1
    face = faces[0]
    assert face.embedding.shape == (512,)
    assert np.linalg.norm(face.normed_embedding) == pytest.approx(1.0, abs=1e-5)
    assert face.kps.shape == (5, 2)
    # the embedding is the recognizer applied to insightface's own 112 crop (BGR, as ArcFaceONNX expects)
    from insightface.utils import face_align

    bgr = np.ascontiguousarray(face.image.rgb[:, :, ::-1])
    chip = face_align.norm_crop(bgr, landmark=face.kps, image_size=112)
    expected = analyzer.backend._recognizer.get_feat(chip).ravel()
    assert np.allclose(face.embedding, expected, atol=1e-5)


def test_bgr_and_rgb_arrays_give_the_same_faces(standin_root, tom_hanks_path):
    from PIL import Image

    analyzer = FaceAnalyzer("insightface", model_root=standin_root)
    rgb = np.asarray(Image.open(tom_hanks_path).convert("RGB"))
    from_rgb = analyzer.detect(rgb, channels="rgb")[0]
    from_bgr = analyzer.detect(np.ascontiguousarray(rgb[:, :, ::-1]), channels="bgr")[0]
    assert np.array_equal(from_rgb.embedding, from_bgr.embedding)
