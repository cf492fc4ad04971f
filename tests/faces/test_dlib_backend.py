import io

import cv2
import numpy as np
import pytest
from PIL import Image

from faceprompt.faces import FaceAnalyzer
from faceprompt.faces.backends.dlib_backend import DlibBackend, dlib_model_dir, five_points_from_68


def test_model_files_come_from_face_recognition_models():
    names = {p.name for p in dlib_model_dir().iterdir()}
    assert {"shape_predictor_68_face_landmarks.dat", "dlib_face_recognition_resnet_model_v1.dat"} <= names


def test_five_points_from_68_uses_eye_centres_nose_tip_and_mouth_corners():
    points = np.arange(136, dtype=np.float32).reshape(68, 2)
    kps = five_points_from_68(points)
    assert np.allclose(kps[0], points[36:42].mean(axis=0))
    assert np.allclose(kps[1], points[42:48].mean(axis=0))
    assert np.allclose(kps[2], points[30])
    assert np.allclose(kps[3], points[48]) and np.allclose(kps[4], points[54])


@pytest.mark.parametrize("photo, count", [("group", 6), ("tom_hanks", 1), ("astronaut", 1)])
def test_face_counts_on_sample_photos(dlib_analyzer, photo, count, request):
    faces = dlib_analyzer.detect(request.getfixturevalue(f"{photo}_path"))
    assert len(faces) == count
    areas = [face.area for face in faces]
    assert areas == sorted(areas, reverse=True)
    assert [face.index for face in faces] == list(range(count))
    for face in faces:
        assert face.face_model == "dlib/resnet_v1"
        assert face.embedding.shape == (128,)
        assert np.linalg.norm(face.normed_embedding) == pytest.approx(1.0, abs=1e-5)
        x1, y1, x2, y2 = face.bbox
        assert face.kps.shape == (5, 2)
        # eyes above the mouth, left-of-picture eye first
        assert face.kps[0, 1] < face.kps[3, 1] and face.kps[1, 1] < face.kps[4, 1]
        assert face.kps[0, 0] < face.kps[1, 0]
        assert (x1 - 10 <= face.kps[:, 0]).all() and (face.kps[:, 0] <= x2 + 10).all()


def test_face_of_about_30_px_is_found_by_upsampling(astronaut_rgb):
    analyzer = FaceAnalyzer("dlib")
    small = cv2.resize(astronaut_rgb, (176, 176), interpolation=cv2.INTER_AREA)  # face ~30 px wide
    faces = analyzer.detect(small, channels="rgb")
    assert len(faces) == 1
    assert 24 <= faces[0].size <= 40
    no_retry = FaceAnalyzer("dlib")
    no_retry.backend = DlibBackend(upsample=0)
    assert no_retry.detect(small, channels="rgb") == []


def test_same_photo_flipped_or_recompressed_is_closer_than_another_person(dlib_analyzer, astronaut_rgb, group_path):
    reference = dlib_analyzer.detect(astronaut_rgb, channels="rgb")[0].normed_embedding
    flipped = dlib_analyzer.detect(np.ascontiguousarray(astronaut_rgb[:, ::-1]), channels="rgb")[0].normed_embedding
    buffer = io.BytesIO()
    Image.fromarray(astronaut_rgb).save(buffer, format="JPEG", quality=40)
    recompressed = dlib_analyzer.detect(Image.open(buffer))[0].normed_embedding
    others = [face.normed_embedding for face in dlib_analyzer.detect(group_path)]
    same = [float(reference @ flipped), float(reference @ recompressed)]
    different = [float(reference @ other) for other in others]
    assert min(same) > max(different)


def test_large_images_are_analysed_downscaled_with_coordinates_mapped_back(astronaut_rgb, dlib_analyzer):
    big = cv2.resize(astronaut_rgb, (2048, 2048), interpolation=cv2.INTER_CUBIC)
    analyzer = FaceAnalyzer("dlib", analysis_side=512)
    face = analyzer.detect(big, channels="rgb")[0]
    original = dlib_analyzer.detect(astronaut_rgb, channels="rgb")[0]
    assert np.abs(face.bbox - original.bbox * 4).max() < 8
    assert np.abs(face.kps - original.kps * 4).max() < 8
    assert face.image.rgb.shape == (2048, 2048, 3)  # crops come from the full-resolution photo
    assert float(face.normed_embedding @ original.normed_embedding) > 0.98


def _iou(box_a, box_b):
    left, top = np.maximum(box_a[:2], box_b[:2])
    right, bottom = np.minimum(box_a[2:], box_b[2:])
    inter = max(0.0, right - left) * max(0.0, bottom - top)
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])  # noqa: E731
    return inter / (area(box_a) + area(box_b) - inter)


def test_cnn_detector_is_optional_and_finds_the_face(astronaut_rgb, dlib_analyzer):
    """The CNN detector finds the face the HOG detector finds: same box (IoU > 0.5) and nearby keypoints."""
    analyzer = FaceAnalyzer("dlib", dlib_detector="cnn")
    small = cv2.resize(astronaut_rgb, (256, 256))
    faces = analyzer.detect(small, channels="rgb")
    hog = dlib_analyzer.detect(small, channels="rgb")
    assert len(faces) == 1 and len(hog) == 1 and 0.0 < faces[0].score
    assert _iou(faces[0].bbox, hog[0].bbox) > 0.5
    assert np.abs(faces[0].kps - hog[0].kps).max() < 0.1 * (hog[0].bbox[2] - hog[0].bbox[0])
