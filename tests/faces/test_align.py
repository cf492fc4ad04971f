import numpy as np
import pytest
from insightface.utils import face_align

from faceprompt.faces import ARCFACE_TEMPLATE_112, align_face, alignment_matrix, arcface_template, transform_points


def test_template_scales_with_crop_size():
    assert np.allclose(arcface_template(224), ARCFACE_TEMPLATE_112 * 2)
    with pytest.raises(ValueError, match="112, 224"):
        arcface_template(160)


def test_similarity_transform_is_exact_for_a_scaled_rotated_template():
    angle, scale, shift = np.deg2rad(20), 2.5, np.array([300.0, 120.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    kps = (ARCFACE_TEMPLATE_112 @ rotation.T) * scale + shift
    for size in (112, 224):
        mapped = transform_points(kps, alignment_matrix(kps, size))
        assert np.abs(mapped - arcface_template(size)).max() < 1e-3


@pytest.mark.parametrize("size", [112, 224])
def test_crops_match_insightface_norm_crop(astronaut_rgb, dlib_analyzer, size):
    face = dlib_analyzer.detect(astronaut_rgb, channels="rgb")[0]
    ours = align_face(astronaut_rgb, face.kps, size)
    reference = face_align.norm_crop(astronaut_rgb, landmark=face.kps, image_size=size)
    assert ours.shape == (size, size, 3)
    assert np.array_equal(ours, reference)


@pytest.mark.parametrize("photo", ["astronaut", "group", "tom_hanks"])
def test_aligned_crop_puts_the_points_where_the_transform_says(dlib_analyzer, photo, request):
    """Re-detect the five points on each aligned 224 crop: they agree with the transformed points."""
    path = request.getfixturevalue(f"{photo}_path")
    for face in dlib_analyzer.detect(path):
        expected = transform_points(face.kps, alignment_matrix(face.kps, 224))
        redetected = dlib_analyzer.detect(face.crop(224), channels="rgb")
        assert redetected, f"face {face.index} of {photo} not found again on its aligned crop"
        assert np.linalg.norm(redetected[0].kps - expected, axis=1).max() < 10.0  # 5 px at 112 scale


@pytest.mark.parametrize("photo, index", [("astronaut", 0), ("tom_hanks", 0), ("group", 1)])
def test_frontal_faces_land_within_a_few_pixels_of_the_template(dlib_analyzer, photo, index, request):
    """Residual of the least-squares similarity fit, in 112-px crop pixels (turned heads fit less well)."""
    face = dlib_analyzer.detect(request.getfixturevalue(f"{photo}_path"))[index]
    residual = np.linalg.norm(transform_points(face.kps, alignment_matrix(face.kps, 112)) - ARCFACE_TEMPLATE_112, axis=1)
    assert residual[:2].max() < 4.0, residual  # eyes
    assert residual.mean() < 5.0, residual
    assert residual.max() < 10.0, residual
