import numpy as np
import pytest
from PIL import Image

from faceprompt.errors import BackendError, FaceSelectionError, NoFaceFoundError
from faceprompt.faces import FaceAnalyzer, QualityFilter, parse_selection, select_faces


def test_unknown_backend_is_refused():
    with pytest.raises(BackendError, match="unknown face backend 'opencv'"):
        FaceAnalyzer("opencv")


def test_auto_falls_back_to_dlib_without_insightface_files(tmp_path):
    assert FaceAnalyzer("auto", model_root=tmp_path).backend_name == "dlib"


@pytest.mark.parametrize(
    "text, expected", [("largest", "largest"), ("all", "all"), ("index:3", 3), (2, 2)]
)
def test_parse_selection(text, expected):
    assert parse_selection(text) == expected


@pytest.mark.parametrize("text", ["biggest", "index:x", "index:-1", -1, "index:"])
def test_bad_selection_is_refused(text):
    with pytest.raises(FaceSelectionError):
        parse_selection(text)


def test_selection_on_the_group_photo(dlib_analyzer, group_path):
    faces = dlib_analyzer.detect(group_path)
    assert select_faces(faces, "largest") == [faces[0]]
    assert select_faces(faces, "index:4") == [faces[4]]
    assert select_faces(faces, "all") == faces
    with pytest.raises(FaceSelectionError, match=r"index 9 asked for, but only 6 face\(s\).*index:0 .. index:5"):
        select_faces(faces, "index:9", source="t1.jpg")
    assert dlib_analyzer.get_face(group_path, "index:2").index == 2


def test_no_face_is_an_empty_result_and_get_face_explains(dlib_analyzer, tmp_path):
    blank = tmp_path / "wall.png"
    Image.new("RGB", (256, 256), (200, 190, 180)).save(blank)
    assert dlib_analyzer.detect(blank) == []
    with pytest.raises(NoFaceFoundError, match="wall.png: no face found"):
        dlib_analyzer.get_face(blank)


def test_quality_filter_reports_why_faces_were_dropped(group_path, dlib_analyzer):
    """The filter keeps the detections of at least ``min_face_size`` and names each one it drops with its size."""
    sizes = [round(face.size) for face in dlib_analyzer.detect(group_path)]  # largest first
    threshold = 100
    kept, dropped = [s for s in sizes if s >= threshold], [s for s in sizes if s < threshold]
    assert kept and dropped  # the threshold splits this photo's faces, so the test can tell a filter from none
    analysis = FaceAnalyzer("dlib", quality=QualityFilter(min_face_size=threshold)).analyze(group_path)
    assert [round(face.size) for face in analysis.faces] == kept
    assert analysis.rejected == [f"face {size} px is smaller than min_face_size={threshold}" for size in dropped]
    too_strict = FaceAnalyzer("dlib", quality=QualityFilter(min_face_size=500))
    with pytest.raises(NoFaceFoundError, match=rf"{len(sizes)} rejected: face {sizes[0]} px is smaller than min_face_size=500"):
        too_strict.get_face(group_path)


def test_max_faces_keeps_the_largest(group_path, dlib_analyzer):
    every = dlib_analyzer.detect(group_path)
    two = FaceAnalyzer("dlib", quality=QualityFilter(max_faces=2)).detect(group_path)
    assert [face.index for face in two] == [0, 1]
    assert np.allclose(two[1].bbox, every[1].bbox)


def test_blur_filter_rejects_a_blurred_face(astronaut_rgb):
    import cv2

    blurred = cv2.GaussianBlur(astronaut_rgb, (0, 0), sigmaX=2.5)
    analyzer = FaceAnalyzer("dlib", quality=QualityFilter(min_blur_score=100))
    sharp = analyzer.analyze(astronaut_rgb, channels="rgb")
    soft = analyzer.analyze(blurred, channels="rgb")
    assert len(sharp.faces) == 1
    assert soft.faces == [] and "too blurry" in soft.rejected[0]


def test_analyze_files_keeps_order_and_reports_bad_files(dlib_analyzer, astronaut_path, group_path, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")
    paths = [astronaut_path, broken, group_path, tmp_path / "missing.png"]
    for workers in (1, 2):
        results = list(dlib_analyzer.analyze_files(paths, workers=workers, batch_size=1))
        assert [r.path for r in results] == [str(p) for p in paths]
        assert [len(r.faces) for r in results] == [1, 0, 6, 0]
        assert [r.ok for r in results] == [True, False, True, False]
        assert "broken.jpg" in str(results[1].error) and "missing.png: file not found" in str(results[3].error)
    one = list(dlib_analyzer.analyze_files([group_path], workers=1))[0]
    two = list(dlib_analyzer.analyze_files([astronaut_path, group_path], workers=2, batch_size=1))[1]
    assert np.allclose(one.faces[0].embedding, two.faces[0].embedding, atol=1e-6)


@pytest.mark.parametrize(
    "count, batch_size, workers, split, sizes",
    [
        (0, 8, 2, True, []),
        (1, 8, 2, True, [1]),
        (8, 8, 1, False, [8]),
        (8, 8, 2, False, [8]),
        (8, 8, 2, True, [4, 4]),
        (20, 8, 2, False, [5, 5, 5, 5]),
        (10, 8, 1, False, [8, 2]),
    ],
)
def test_file_batches_are_even_across_workers(count, batch_size, workers, split, sizes):
    from faceprompt.faces.analyzer import _plan_file_batches

    paths = [f"{i}.png" for i in range(count)]
    batches = _plan_file_batches(paths, batch_size, workers, split_single_batch=split)
    assert [len(batch) for batch in batches] == sizes
    assert [p for batch in batches for p in batch] == paths  # order kept
