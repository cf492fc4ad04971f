import numpy as np
import pytest

from faceprompt.faces import LandmarkSegmenter, alignment_matrix, transform_points


def test_landmark_mask_covers_the_face_and_not_the_corners(dlib_analyzer, astronaut_path):
    face = dlib_analyzer.detect(astronaut_path)[0]
    crop = face.crop(224)
    points = transform_points(face.landmarks, alignment_matrix(face.kps, 224))
    mask = LandmarkSegmenter()(crop, points)
    assert mask.shape == (224, 224) and mask.dtype == np.float32
    for x, y in transform_points(face.kps, alignment_matrix(face.kps, 224)):
        assert mask[int(y), int(x)] > 0.95
    assert mask[:10, :10].max() < 0.05 and mask[:10, -10:].max() < 0.05
    assert 0.25 < mask.mean() < 0.75


def test_five_point_mask_is_an_ellipse_around_the_features():
    kps = np.array([[76.6, 103.4], [147.1, 103.0], [112.1, 143.5], [83.1, 184.7], [141.5, 184.4]], np.float32)
    mask = LandmarkSegmenter(feather=0.0)(np.zeros((224, 224, 3), np.uint8), kps)
    assert all(mask[int(y), int(x)] == 1.0 for x, y in kps)
    assert mask[0, 0] == 0.0 and mask[223, 223] == 0.0


def test_segmented_crop_has_the_background_colour_outside_the_face(dlib_analyzer, astronaut_path):
    face = dlib_analyzer.detect(astronaut_path)[0]
    plain = face.crop(224)
    segmented = face.crop(224, segment=True, background=(0, 255, 0))
    assert (segmented[:8, :8] == [0, 255, 0]).all()
    center = (slice(100, 124), slice(100, 124))
    assert np.abs(segmented[center].astype(int) - plain[center]).max() <= 1
    bgr = face.crop(112, color="bgr")
    assert np.array_equal(bgr[:, :, ::-1], face.crop(112))


def test_segmenter_is_pluggable(dlib_analyzer, astronaut_path):
    face = dlib_analyzer.detect(astronaut_path)[0]

    def left_half(crop, landmarks):
        mask = np.zeros(crop.shape[:2], np.float32)
        mask[:, : crop.shape[1] // 2] = 1.0
        return mask

    out = face.crop(224, segment=True, segmenter=left_half, background=(1, 2, 3))
    assert (out[:, 112:] == [1, 2, 3]).all()
    assert np.array_equal(out[:, :112], face.crop(224)[:, :112])


def test_wrong_landmark_count_is_refused():
    with pytest.raises(ValueError, match="68 or 5 landmarks"):
        LandmarkSegmenter()(np.zeros((10, 10, 3), np.uint8), np.zeros((7, 2)))
