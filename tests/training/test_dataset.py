"""The prepared data-set format: ShardWriter -> PreparedDataset round trip, errors, synthetic data sets."""

import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from faceprompt.errors import DatasetError
from faceprompt.training import PreparedDataset, ShardWriter, write_dataset_info, write_summary
from faceprompt.training.dataset import record_id

CROPS = {"closeup": 2.0, "fullbody": 8.0}
DIM = 16


def _image(rng, width, height):
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def _row(rng, source, identity):
    raw = rng.standard_normal(DIM).astype(np.float32) * 20
    return dict(
        id=record_id(source.encode()),
        source=source,
        caption=f"caption of {source}",
        identity=identity,
        width=300,
        height=200,
        bbox=[10.123, 20.0, 60.5, 80.0],
        det_score=0.98765,
        crops={"closeup": _image(rng, 40, 40), "fullbody": _image(rng, 96, 96)},
        face=_image(rng, 224, 224),
        face_segmented=_image(rng, 224, 224),
        normed=raw / np.linalg.norm(raw),
        raw=raw,
    )


def _jpeg_round_trip(image):
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return np.asarray(Image.open(buffer).convert("RGB"))


@pytest.fixture
def written(tmp_path):
    """Three shards: two finished (2 + 1 records, one rejection), one left unfinished."""
    rng = np.random.default_rng(0)
    rows = [_row(rng, "a/1.jpg", "alice"), _row(rng, "b/1.jpg", "bob"), _row(rng, "a/2.jpg", "alice")]
    with ShardWriter(tmp_path, "00000", CROPS, segmented=True) as writer:
        writer.add(**rows[0])
        writer.add(**rows[1])
        writer.reject("c/1.jpg", "no_face", "no face found")
    with ShardWriter(tmp_path, "00001", CROPS, segmented=True) as writer:
        writer.add(**rows[2])
        writer.reject("c/2.jpg", "blurry", "blur score 3.0 is below 10")
        writer.reject("c/3.jpg", "blurry", "blur score 1.0 is below 10")
    unfinished = ShardWriter(tmp_path, "00002", CROPS, segmented=True)
    unfinished.add(**_row(rng, "d/1.jpg", "dora"))
    write_dataset_info(tmp_path, face_model="test/model", crops=CROPS, segmented=True, options={"shard_size": 2},
                       shards=["00000", "00001", "00002"])
    return tmp_path, rows


def test_round_trip_records_embeddings_and_images(written):
    root, rows = written
    dataset = PreparedDataset(root)
    assert len(dataset) == 3
    assert dataset.info["embedding_dim"] == DIM  # inferred from the finished shards
    assert dataset.info["crops"] == CROPS and dataset.info["segmented"] is True
    for index, (row, shard) in enumerate(zip(rows, ["00000", "00000", "00001"])):
        record = dataset.record(index)
        assert record["shard"] == shard
        assert record["id"] == row["id"] and record["source"] == row["source"]
        assert record["caption"] == row["caption"] and record["identity"] == row["identity"]
        assert (record["width"], record["height"]) == (300, 200)
        assert record["bbox"] == [10.12, 20.0, 60.5, 80.0] and record["det_score"] == 0.9877
        assert record["crops"] == {"closeup": f"images/{row['id']}-closeup.jpg",
                                   "fullbody": f"images/{row['id']}-fullbody.jpg"}
        assert record["face"] == f"faces/{row['id']}.png"
        assert record["face_segmented"] == f"faces/{row['id']}-seg.png"
        np.testing.assert_array_equal(dataset.embedding(index), row["normed"])
        np.testing.assert_array_equal(dataset.embedding(index, normalized=False), row["raw"])
        for crop in CROPS:
            np.testing.assert_array_equal(np.asarray(dataset.image(index, crop)), _jpeg_round_trip(row["crops"][crop]))
        np.testing.assert_array_equal(np.asarray(dataset.face(index)), np.asarray(row["face"]))
        np.testing.assert_array_equal(np.asarray(dataset.face(index, segmented=True)), np.asarray(row["face_segmented"]))
    np.testing.assert_array_equal(dataset.embeddings(), np.stack([row["normed"] for row in rows]))
    np.testing.assert_array_equal(dataset.embeddings(normalized=False), np.stack([row["raw"] for row in rows]))
    assert dataset.embeddings().dtype == np.float32
    assert dataset.image(-1, "fullbody").size == (96, 96)
    assert dataset.identities() == {"alice": [0, 2], "bob": [1]}


def test_shard_files_follow_the_format(written):
    root, rows = written
    shard = root / "shards" / "00001"
    assert sorted(path.name for path in shard.iterdir()) == [
        "_SUCCESS", "embeddings.safetensors", "faces", "images", "records.jsonl", "rejected.jsonl"]
    records = [json.loads(line) for line in (shard / "records.jsonl").read_text().splitlines()]
    assert [record["id"] for record in records] == [rows[2]["id"]]
    rejected = [json.loads(line) for line in (shard / "rejected.jsonl").read_text().splitlines()]
    assert rejected[0] == {"source": "c/2.jpg", "reason": "blurry", "detail": "blur score 3.0 is below 10"}
    assert not (root / "shards" / "00002" / "_SUCCESS").exists()


def test_unfinished_shard_is_ignored_and_redone_from_scratch(written):
    root, rows = written
    assert all(PreparedDataset(root).record(i)["shard"] != "00002" for i in range(3))
    leftover = root / "shards" / "00002" / "images" / "stale.jpg"
    leftover.write_bytes(b"x")
    rng = np.random.default_rng(1)
    with ShardWriter(root, "00002", CROPS, segmented=True) as writer:
        writer.add(**_row(rng, "e/1.jpg", "erin"))
    assert not leftover.exists()
    dataset = PreparedDataset(root)
    assert len(dataset) == 4 and dataset.identities()["erin"] == [3]


def test_summary_counts_finished_shards(written):
    root, _ = written
    summary = write_summary(root, elapsed_s=1.23456)
    assert summary["seen"] == 6 and summary["kept"] == 3
    assert summary["rejected"]["no_face"] == 1 and summary["rejected"]["blurry"] == 2
    assert sum(summary["rejected"].values()) == 3
    assert PreparedDataset(root).summary == {**summary, "elapsed_s": 1.235}


def test_finished_shard_is_never_rewritten(written):
    root, _ = written
    with pytest.raises(DatasetError, match="already finished"):
        ShardWriter(root, "00000", CROPS, segmented=True)


def test_unknown_crop_and_missing_segmentation(written, tmp_path_factory, synthetic_dataset):
    root, _ = written
    dataset = PreparedDataset(root)
    with pytest.raises(DatasetError, match="unknown crop 'halfbody'.*closeup, fullbody"):
        dataset.image(0, "halfbody")
    with pytest.raises(IndexError, match="out of range"):
        dataset.record(3)
    plain = synthetic_dataset(tmp_path_factory.mktemp("plain") / "ds", 2)
    with pytest.raises(DatasetError, match="without segmentation"):
        plain.face(0, segmented=True)


def test_bad_folders_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="no such data-set folder"):
        PreparedDataset(tmp_path / "missing")
    with pytest.raises(DatasetError, match="not a faceprompt data set"):
        PreparedDataset(tmp_path)
    (tmp_path / "dataset.json").write_text('{"format": "something-else"}')
    with pytest.raises(DatasetError, match="not a faceprompt data set"):
        PreparedDataset(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        PreparedDataset(tmp_path)
    (tmp_path / "dataset.json").write_text('{"format": "faceprompt-dataset", "version": 99}')
    with pytest.raises(DatasetError, match="version 99 is not supported"):
        PreparedDataset(tmp_path)
    write_dataset_info(tmp_path, face_model="m", crops=CROPS, segmented=False, options={}, shards=[], embedding_dim=8)
    empty = PreparedDataset(tmp_path)
    assert len(empty) == 0 and empty.embeddings().shape == (0, 8)
    with pytest.raises(DatasetError, match="summary.json: not written yet"):
        empty.summary


def test_writer_rejects_inconsistent_rows(tmp_path):
    rng = np.random.default_rng(2)
    writer = ShardWriter(tmp_path, "00000", CROPS, segmented=False)
    row = _row(rng, "a.jpg", "a")
    with pytest.raises(DatasetError, match=r"crops \['closeup'\] given"):
        writer.add(**{**row, "crops": {"closeup": row["crops"]["closeup"]}})
    with pytest.raises(DatasetError, match="length .* not 1"):
        writer.add(**{**row, "normed": row["raw"]})
    with pytest.raises(DatasetError, match="face is 100x100"):
        writer.add(**{**row, "face": _image(rng, 100, 100)})
    with pytest.raises(DatasetError, match="unknown rejection reason"):
        writer.reject("a.jpg", "ugly", "")
    writer.add(**row)
    with pytest.raises(DatasetError, match=r"shape \[8\], expected \[16\]"):
        writer.add(**{**row, "normed": np.ones(8) / np.sqrt(8), "raw": np.ones(8)})
    writer.close()
    with pytest.raises(DatasetError, match="closed"):
        writer.add(**row)


def test_writer_ids_default_to_the_file_digest(tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"some image bytes")
    rng = np.random.default_rng(3)
    row = {**_row(rng, str(photo), "p"), "id": None}
    with ShardWriter(tmp_path / "ds", "00000", CROPS, segmented=False) as writer:
        assert writer.add(**row) == hashlib.sha256(b"some image bytes").hexdigest()[:16]


def test_synthetic_dataset(tmp_path, synthetic_dataset):
    dataset = synthetic_dataset(tmp_path / "ds", 7, num_identities=3, size=64, seed=1, shard_size=3)
    assert len(dataset) == 7
    assert dataset.info["shards"] == ["00000", "00001", "00002"]
    assert dataset.identities() == {"person-0": [0, 3, 6], "person-1": [1, 4], "person-2": [2, 5]}
    normed, raw = dataset.embeddings(), dataset.embeddings(normalized=False)
    assert normed.shape == (7, 512) and raw.shape == (7, 512)
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), normed, atol=1e-6)
    assert np.all((np.linalg.norm(raw, axis=1) >= 15) & (np.linalg.norm(raw, axis=1) <= 30))
    similarity = normed @ normed.T
    assert similarity[0, 3] > 0.9 > abs(similarity[0, 1])  # same identity close, different identities not
    assert dataset.image(0, "halfbody").size == (64, 64) and dataset.face(0).size == (224, 224)
    colours = [np.asarray(dataset.image(i, "closeup"), dtype=float).mean(axis=(0, 1)) for i in (0, 3, 1)]
    assert np.abs(colours[0] - colours[1]).max() < 5 < np.abs(colours[0] - colours[2]).max()
    assert dataset.summary["kept"] == 7
    again = synthetic_dataset(tmp_path / "again", 7, num_identities=3, size=64, seed=1, shard_size=3)
    np.testing.assert_array_equal(again.embeddings(), normed)
    with pytest.raises(DatasetError, match="not empty"):
        synthetic_dataset(tmp_path / "ds")
