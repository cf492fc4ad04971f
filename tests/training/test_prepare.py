"""Data preparation on real sample photos plus synthetic rejects: filters, crops, embeddings, resume, Ray, CLI."""

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageFilter

from faceprompt.cli import main
from faceprompt.errors import DatasetError
from faceprompt.faces import FaceAnalyzer
from faceprompt.training.prepare import collect_inputs, framing_box, parse_crops, prepare_dataset
from faceprompt.training.dataset import PreparedDataset, record_id

#: Small enough for the 112-px Tom Hanks sample; the thumbnail (96 px) is below it.
OPTIONS = dict(min_resolution=100, min_face_size=60, blur_threshold=40, shard_size=3, backend="dlib", progress=False)

#: relative path -> expected outcome ("kept" or the rejection reason), in sorted (= row) order.
EXPECTED = {
    "alice/astronaut.png": "kept",
    "alice/astronaut_copy.png": "duplicate",
    "alice/blurred.png": "blurry",  # Gaussian blur radius 2: blur score ~20
    "bob/tom_hanks.png": "kept",
    "broken/corrupt.jpg": "unreadable",
    "crowd/two_faces.png": "several_faces",
    "noise/noise.png": "no_face",
    "small/far_away.png": "face_too_small",  # astronaut at 256 px: a 43-px face
    "small/thumbnail.png": "image_too_small",  # 96 x 96
}


@pytest.fixture(scope="module")
def photos(tmp_path_factory, astronaut_path, tom_hanks_path):
    """Two real portraits and one synthetic image per rejection reason."""
    root = tmp_path_factory.mktemp("photos")
    for folder in ("alice", "bob", "broken", "crowd", "noise", "small"):
        (root / folder).mkdir()
    astronaut = Image.open(astronaut_path).convert("RGB")
    tom_hanks = Image.open(tom_hanks_path).convert("RGB")
    shutil.copy(astronaut_path, root / "alice/astronaut.png")
    (root / "alice/astronaut.txt").write_text("an astronaut in front of a flag\n")
    shutil.copy(astronaut_path, root / "alice/astronaut_copy.png")
    astronaut.filter(ImageFilter.GaussianBlur(2)).save(root / "alice/blurred.png")
    shutil.copy(tom_hanks_path, root / "bob/tom_hanks.png")
    astronaut.save(root / "broken/whole.jpg")
    (root / "broken/corrupt.jpg").write_bytes((root / "broken/whole.jpg").read_bytes()[:2000])
    (root / "broken/whole.jpg").unlink()
    two_faces = Image.new("RGB", (768, 512))
    two_faces.paste(astronaut, (0, 0))
    two_faces.paste(tom_hanks.resize((256, 256)), (512, 128))
    two_faces.save(root / "crowd/two_faces.png")
    noise = np.random.default_rng(0).integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "noise/noise.png")
    astronaut.resize((256, 256), Image.LANCZOS).save(root / "small/far_away.png")
    astronaut.resize((96, 96), Image.LANCZOS).save(root / "small/thumbnail.png")
    return root


@pytest.fixture(scope="module")
def prepared(photos, tmp_path_factory) -> PreparedDataset:
    return prepare_dataset([photos], tmp_path_factory.mktemp("prepared") / "dataset", **OPTIONS)


def _rejections(root):
    return [json.loads(line) for path in sorted(root.glob("shards/*/rejected.jsonl"))
            for line in path.read_text().splitlines()]


def test_every_image_kept_or_rejected_for_the_right_reason(prepared, photos):
    outcomes = {record["source"]: "kept" for record in map(prepared.record, range(len(prepared)))}
    for rejection in _rejections(prepared.root):
        outcomes[rejection["source"]] = rejection["reason"]
        assert rejection["detail"]
    assert outcomes == {str(photos / name): outcome for name, outcome in EXPECTED.items()}
    unreadable = next(r for r in _rejections(prepared.root) if r["reason"] == "unreadable")
    assert "corrupt.jpg" in unreadable["detail"] and "truncated or corrupt" in unreadable["detail"]
    summary = prepared.summary
    assert summary["seen"] == 9 and summary["kept"] == 2
    assert summary["rejected"] == {"no_face": 1, "several_faces": 1, "image_too_small": 1, "face_too_small": 1,
                                   "blurry": 1, "unreadable": 1, "duplicate": 1}


def test_records_dataset_info_and_shards(prepared, photos, astronaut_path):
    info = prepared.info
    assert info["format"] == "faceprompt-dataset" and info["version"] == 1
    assert info["face_model"] == "dlib/resnet_v1" and info["embedding_dim"] == 128
    assert info["crops"] == {"closeup": 2.0, "halfbody": 4.0, "fullbody": 8.0} and info["segmented"] is False
    assert info["shards"] == ["00000", "00001", "00002"]
    assert info["options"]["min_resolution"] == 100 and info["options"]["images"] == 9
    astronaut, tom_hanks = prepared.record(0), prepared.record(1)
    assert astronaut["id"] == record_id(astronaut_path.read_bytes())
    assert astronaut["caption"] == "an astronaut in front of a flag" and tom_hanks["caption"] == ""
    assert astronaut["identity"] == "alice" and tom_hanks["identity"] == "bob"
    assert (astronaut["width"], astronaut["height"], tom_hanks["width"]) == (512, 512, 112)
    assert (astronaut["shard"], tom_hanks["shard"]) == ("00000", "00001")
    assert "face_segmented" not in astronaut
    assert prepared.identities() == {"alice": [0], "bob": [1]}


def test_embeddings_and_face_crop_equal_the_analyzer_on_the_same_photo(prepared, dlib_analyzer, astronaut_path,
                                                                        tom_hanks_path):
    for index, path in enumerate([astronaut_path, tom_hanks_path]):
        face = dlib_analyzer.get_face(path)
        np.testing.assert_array_equal(prepared.embedding(index, normalized=False), face.embedding)
        np.testing.assert_array_equal(prepared.embedding(index), face.normed_embedding)
        np.testing.assert_array_equal(np.asarray(prepared.face(index)), face.crop(224))
        assert prepared.record(index)["bbox"] == [round(float(v), 2) for v in face.bbox]
    np.testing.assert_allclose(np.linalg.norm(prepared.embeddings(), axis=1), 1.0, rtol=1e-6)


def test_crops_frame_the_face_at_each_proportion(prepared, astronaut_rgb):
    x1, y1, x2, y2 = prepared.record(0)["bbox"]  # astronaut: 87 x 87 face box, centre near (222, 126)
    box, centre_x, centre_y = max(x2 - x1, y2 - y1), (x1 + x2) / 2, (y1 + y2) / 2
    closeup = np.asarray(prepared.image(0, "closeup"), dtype=float)
    assert closeup.shape == (round(2 * box), round(2 * box), 3)
    left, top = round(centre_x - box), round(centre_y - box)  # centred: fits inside the image
    region = astronaut_rgb[top : top + closeup.shape[0], left : left + closeup.shape[1]]
    assert np.abs(closeup - region).mean() < 2.5  # JPEG quality 95
    assert np.abs(closeup - np.roll(region, 4, axis=1)).mean() > 10  # a 4-px shift is clearly told apart
    halfbody = np.asarray(prepared.image(0, "halfbody"), dtype=float)
    side = round(4 * box)
    assert halfbody.shape == (side, side, 3) and centre_y - side / 2 < 0  # would leave the image at the top
    region = astronaut_rgb[0:side, round(centre_x - side / 2) : round(centre_x - side / 2) + side]
    assert np.abs(halfbody - region).mean() < 2.5  # shifted down to start at row 0
    fullbody = np.asarray(prepared.image(0, "fullbody"), dtype=float)
    assert fullbody.shape == (512, 512, 3)  # 8 x 87 > 512: the whole (square) image
    assert np.abs(fullbody - astronaut_rgb).mean() < 2.5


def test_framing_box_centres_shifts_and_clamps():
    assert framing_box([70, 20, 90, 40], 2.0, 100, 80) == (60, 10, 40)  # centred on (80, 30)
    assert framing_box([70, 20, 90, 40], 3.0, 100, 80) == (40, 0, 60)  # 50 + 60 > 100: shifted left to 40
    assert framing_box([90, 30, 100, 40], 4.0, 100, 80) == (60, 15, 40)  # right edge: shifted left
    assert framing_box([10, 10, 30, 50], 2.0, 100, 80) == (0, 0, 80)  # 2 x 40 = 80 = the shorter side
    assert framing_box([10, 10, 30, 50], 8.0, 100, 80) == (0, 0, 80)  # 320 clamped to the shorter side


def test_rerun_skips_finished_shards_and_redoes_only_unfinished_ones(photos, tmp_path, monkeypatch):
    root = tmp_path / "dataset"
    prepare_dataset([photos], root, **OPTIONS)
    files = sorted(path for path in (root / "shards").rglob("*") if path.is_file())
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in files}
    calls = []
    original = FaceAnalyzer.analyze
    monkeypatch.setattr(FaceAnalyzer, "analyze", lambda self, image, **kw: calls.append(image) or original(self, image, **kw))

    prepare_dataset([photos], root, **OPTIONS)
    assert calls == []
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in files} == before

    (root / "shards/00001/_SUCCESS").unlink()
    (root / "shards/00001/records.jsonl").write_text("half-written")
    dataset = prepare_dataset([photos], root, **OPTIONS)
    assert sorted(call.source for call in calls) == [str(photos / "bob/tom_hanks.png"),
                                                      str(photos / "crowd/two_faces.png")]
    after = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in files}
    for path in files:
        assert after[path][0] == before[path][0], path  # byte-identical content
        redone = path.is_relative_to(root / "shards/00001")
        assert (after[path][1] != before[path][1]) == redone, path
    assert len(dataset) == 2 and dataset.summary["seen"] == 9


def test_refuses_folders_with_other_options_or_other_content(photos, prepared, tmp_path):
    with pytest.raises(DatasetError, match=r"different options \(min_face_size: 60.0 there, 80.0 now\)"):
        prepare_dataset([photos], prepared.root, **{**OPTIONS, "min_face_size": 80})
    with pytest.raises(DatasetError, match="crops"):
        prepare_dataset([photos], prepared.root, **{**OPTIONS, "crops": {"closeup": 2.0}})
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not empty and not a faceprompt data set"):
        prepare_dataset([photos], tmp_path / "mine", **OPTIONS)
    assert (tmp_path / "mine/notes.txt").read_text() == "keep me"
    with pytest.raises(DatasetError, match="input not found"):
        prepare_dataset([tmp_path / "nowhere"], tmp_path / "out", **OPTIONS)
    with pytest.raises(DatasetError, match="no images found"):
        prepare_dataset([tmp_path / "mine"], tmp_path / "out", **OPTIONS)


def test_output_inside_the_input_folder_is_not_read_back(photos, tmp_path):
    inputs = tmp_path / "in"
    shutil.copytree(photos / "bob", inputs / "bob")
    (inputs / "bob/.hidden").mkdir()
    shutil.copy(photos / "bob/tom_hanks.png", inputs / "bob/.hidden/again.png")
    prepare_dataset([inputs], inputs / "dataset", **OPTIONS)
    assert [item.source for item in collect_inputs([inputs], exclude=inputs / "dataset")] == [
        str(inputs / "bob/tom_hanks.png")]


def test_manifests_jsonl_and_parquet_with_segmentation(photos, tmp_path, dlib_analyzer, astronaut_path):
    manifest = tmp_path / "manifest.jsonl"
    rows = [
        {"path": str(photos / "alice/astronaut.png"), "caption": "from the manifest", "identity": "eileen"},
        {"path": "relative/missing.png"},
    ]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    dataset = prepare_dataset([], tmp_path / "from-jsonl", manifest=manifest, segment=True, **OPTIONS)
    record = dataset.record(0)
    assert len(dataset) == 1 and (record["caption"], record["identity"]) == ("from the manifest", "eileen")
    assert record["face_segmented"] == f"faces/{record['id']}-seg.png"
    face = dlib_analyzer.get_face(astronaut_path)
    np.testing.assert_array_equal(np.asarray(dataset.face(0, segmented=True)), face.crop(224, segment=True))
    missing = _rejections(dataset.root)[0]
    assert missing["source"] == str(tmp_path / "relative/missing.png") and missing["reason"] == "unreadable"
    assert "file not found" in missing["detail"]

    parquet = tmp_path / "manifest.parquet"
    pq.write_table(pa.Table.from_pylist([{"path": str(photos / "bob/tom_hanks.png"), "identity": "tom"}]), parquet)
    dataset = prepare_dataset([], tmp_path / "from-parquet", manifest=parquet, **OPTIONS)
    assert (dataset.record(0)["identity"], dataset.record(0)["caption"]) == ("tom", "")

    manifest.write_text('{"caption": "no path"}\n')
    with pytest.raises(DatasetError, match="row 1 has no 'path'"):
        prepare_dataset([], tmp_path / "bad", manifest=manifest, **OPTIONS)


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_engine_writes_identical_shards(photos, prepared, tmp_path, ray_cluster):
    dataset = prepare_dataset([photos], tmp_path / "ray", engine="ray", workers=2, **OPTIONS)
    local_files = sorted(path.relative_to(prepared.root) for path in (prepared.root / "shards").rglob("*"))
    ray_files = sorted(path.relative_to(dataset.root) for path in (dataset.root / "shards").rglob("*"))
    assert ray_files == local_files
    for relative in local_files:
        if (prepared.root / relative).is_file():
            assert (dataset.root / relative).read_bytes() == (prepared.root / relative).read_bytes(), relative
    assert dataset.info == prepared.info
    assert {**dataset.summary, "elapsed_s": 0} == {**prepared.summary, "elapsed_s": 0}


def test_process_pool_writes_identical_shards(photos, prepared, tmp_path):
    dataset = prepare_dataset([photos], tmp_path / "pool", workers=2, **OPTIONS)
    for path in sorted((prepared.root / "shards").rglob("*")):
        twin = dataset.root / path.relative_to(prepared.root)
        assert twin.exists() and (path.is_dir() or twin.read_bytes() == path.read_bytes()), path
    np.testing.assert_array_equal(dataset.embeddings(normalized=False), prepared.embeddings(normalized=False))


def test_cli_prepare_end_to_end(photos, tmp_path, capsys):
    out = tmp_path / "dataset"
    arguments = ["prepare", str(photos / "alice"), str(photos / "small"), "--out", str(out), "--backend", "dlib",
                 "--min-resolution", "100", "--min-face-size", "60", "--crops", "closeup=2,fullbody=6",
                 "--shard-size", "2"]
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    assert "kept" in printed and "face too small" in printed and str(out) in printed
    dataset = PreparedDataset(out)
    assert dataset.info["crops"] == {"closeup": 2.0, "fullbody": 6.0}
    assert dataset.summary["kept"] == 1 and dataset.summary["seen"] == 5
    x1, y1, x2, y2 = dataset.record(0)["bbox"]
    assert dataset.image(0, "closeup").size == (round(2 * (x2 - x1)),) * 2
    assert dataset.image(0, "fullbody").size == (512, 512)  # 6 x 87 px > 512: the shorter side
    assert main(arguments[:-2] + ["--shard-size", "3"]) == 2
    assert "different options (shard_size: 2 there, 3 now" in capsys.readouterr().err
    assert main(["prepare", "--out", str(tmp_path / "x")]) == 2


def test_parse_crops_and_bad_options(photos, tmp_path):
    assert parse_crops("closeup=2, halfbody=4.5") == {"closeup": 2.0, "halfbody": 4.5}
    for bad in ("closeup", "closeup=x"):
        with pytest.raises(DatasetError, match="NAME=PROPORTION"):
            parse_crops(bad)
    with pytest.raises(DatasetError, match="unknown engine 'spark'"):
        prepare_dataset([photos], tmp_path / "out", **{**OPTIONS, "engine": "spark"})
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"crops": {"closeup": 0}}, r"crop closeup=0: the proportion \(crop side in face-box sizes\) must be a number "
                                    r"within \[1, 32\]; use e\.g\. closeup=2"),
        ({"crops": {"closeup": -2.0}}, r"crop closeup=-2\.0: .* within \[1, 32\]"),
        ({"crops": parse_crops("closeup=nan")}, r"crop closeup=nan: .* within \[1, 32\]"),
        ({"crops": parse_crops("closeup=inf")}, r"crop closeup=inf: .* within \[1, 32\]"),
        ({"crops": {"closeup": 1e6}}, r"crop closeup=1000000\.0: .* within \[1, 32\]"),
        ({"crops": {"close up": 2}}, r"crop name 'close up' must be a word"),
        ({"crops": {}}, r"crops is empty"),
        ({"min_face_size": float("nan")}, r"min_face_size must be a finite number >= 0, got nan; the default is 128"),
        ({"min_face_size": -1.0}, r"min_face_size must be a finite number >= 0, got -1\.0"),
        ({"blur_threshold": float("inf")}, r"blur_threshold must be a finite number >= 0, got inf; the default is 40"),
        ({"min_resolution": -5}, r"min_resolution must be a whole number >= 1, got -5; the default is 1024"),
        ({"min_resolution": float("nan")}, r"min_resolution must be a whole number >= 1, got nan"),
        ({"shard_size": 0}, r"shard_size must be a whole number >= 1, got 0; the default is 1000"),
    ],
)
def test_bad_settings_are_refused_before_any_work(photos, tmp_path, change, message):
    with pytest.raises(DatasetError, match=message):
        prepare_dataset([photos], tmp_path / "out", **{**OPTIONS, **change})
    assert not (tmp_path / "out").exists()


def test_manifest_that_is_not_utf8_names_the_file_and_line(photos, tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    good = json.dumps({"path": str(photos / "alice/astronaut.png")}).encode()
    manifest.write_bytes(good + b"\n" + b'{"path": "caf\xe9.png"}\n')  # Latin-1, not UTF-8
    with pytest.raises(DatasetError, match=r"manifest\.jsonl: line 2 is not UTF-8 text \(byte 0xe9 at column 14\); "
                                           r"save the manifest as UTF-8"):
        prepare_dataset([], tmp_path / "out", manifest=manifest, **OPTIONS)
    assert not (tmp_path / "out").exists()
    # a byte-order mark before the first row is fine
    manifest.write_bytes(b"\xef\xbb\xbf" + good + b"\n")
    assert collect_inputs([], manifest)[0].source == str(photos / "alice/astronaut.png")
