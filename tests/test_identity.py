import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from faceprompt.errors import (
    FaceModelMismatchError,
    FaceSelectionError,
    IdentityError,
    IdentityFileError,
    NoFaceFoundError,
    OutputExistsError,
)
from faceprompt.identity import Identity


@pytest.fixture(scope="module")
def astronaut_identity(dlib_analyzer, astronaut_path):
    return Identity.from_images(astronaut_path, dlib_analyzer, name="eileen")


def _random_identity(n=3, d=8, face_model="test/model", seed=0) -> Identity:
    rng = np.random.default_rng(seed)
    return Identity(embeddings=rng.normal(size=(n, d)).astype(np.float32) * 3, face_model=face_model)


def test_from_images_keeps_embedding_crop_and_provenance(astronaut_identity, astronaut_path, dlib_analyzer):
    face = dlib_analyzer.detect(astronaut_path)[0]
    assert len(astronaut_identity) == 1 and astronaut_identity.embedding_dim == 128
    assert astronaut_identity.face_model == "dlib/resnet_v1"
    assert np.allclose(astronaut_identity.embeddings[0], face.embedding)
    assert np.array_equal(astronaut_identity.crops[0], face.crop(224))
    source = astronaut_identity.sources[0]
    assert source["file"] == "astronaut.png" and source["face_index"] == 0
    import hashlib

    assert source["sha256"] == hashlib.sha256(astronaut_path.read_bytes()).hexdigest()
    # with one photo, norm_mean is exactly the photo's normed embedding (what the model card feeds)
    assert np.allclose(astronaut_identity.embedding(), face.normed_embedding, atol=1e-6)


def test_embedding_methods_against_independent_formulas():
    identity = _random_identity()
    raw = identity.embeddings.astype(np.float64)
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    mean = unit.mean(axis=0)
    assert np.allclose(identity.embedding("mean"), mean, atol=1e-6)
    assert np.allclose(identity.embedding("norm_mean"), mean / np.linalg.norm(mean), atol=1e-6)
    assert np.allclose(identity.embedding("median"), np.median(unit, axis=0), atol=1e-6)
    assert np.allclose(identity.embedding("mean", normalized=False), raw.mean(axis=0), atol=1e-5)
    assert np.allclose(identity.stack(), unit, atol=1e-6)
    assert np.allclose(identity.stack(normalized=False), raw, atol=1e-6)
    with pytest.raises(IdentityError, match="unknown embedding method 'avg'"):
        identity.embedding("avg")


def test_several_photos_and_selection(dlib_analyzer, group_path, astronaut_path):
    identity = Identity.from_images([group_path, astronaut_path], dlib_analyzer, select="index:0")
    assert len(identity) == 2 and identity.stack().shape == (2, 128)
    assert [s["file"] for s in identity.sources] == ["t1.jpg", "astronaut.png"]
    with pytest.raises(FaceSelectionError, match="not 'all'"):
        Identity.from_images([group_path], dlib_analyzer, select="all")


def test_photo_without_face_is_named(dlib_analyzer, tmp_path, astronaut_path):
    from PIL import Image

    blank = tmp_path / "sky.png"
    Image.new("RGB", (200, 200), "skyblue").save(blank)
    with pytest.raises(NoFaceFoundError, match="sky.png: no face found"):
        Identity.from_images([astronaut_path, blank], dlib_analyzer)


def test_save_load_round_trip(astronaut_identity, tmp_path):
    path = astronaut_identity.save(tmp_path / "eileen.safetensors")
    loaded = Identity.load(path)
    assert np.array_equal(loaded.embeddings, astronaut_identity.embeddings)
    assert np.array_equal(loaded.crops, astronaut_identity.crops)
    assert loaded.sources == astronaut_identity.sources
    assert (loaded.name, loaded.face_model) == ("eileen", "dlib/resnet_v1")
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_save_refuses_to_overwrite(tmp_path):
    identity = _random_identity()
    path = identity.save(tmp_path / "a.safetensors")
    before = path.read_bytes()
    with pytest.raises(OutputExistsError, match="already exists"):
        _random_identity(seed=1).save(path)
    assert path.read_bytes() == before
    _random_identity(seed=1).save(path, overwrite=True)
    assert path.read_bytes() != before


def test_without_crops(tmp_path):
    identity = _random_identity()
    loaded = Identity.load(identity.save(tmp_path / "x.safetensors"))
    assert loaded.crops is None and loaded.name is None


def test_foreign_corrupt_and_future_files_are_refused(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(IdentityFileError, match="nope.safetensors: identity file not found"):
        Identity.load(missing)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    with pytest.raises(IdentityFileError, match="not a readable .safetensors file"):
        Identity.load(text)
    good = _random_identity().save(tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-20])
    with pytest.raises(IdentityFileError, match="truncated.safetensors"):
        Identity.load(truncated)
    foreign = tmp_path / "adapter.safetensors"
    save_file({"image_proj.proj.0.weight": np.zeros((4, 4), np.float32)}, foreign)
    with pytest.raises(IdentityFileError, match="not a faceprompt identity file"):
        Identity.load(foreign)
    future = tmp_path / "future.safetensors"
    save_file({"embeddings": np.ones((1, 4), np.float32)}, future,
              metadata={"format": "faceprompt.identity", "format_version": "99", "face_model": "x"})
    with pytest.raises(IdentityFileError, match="version '99' is not supported"):
        Identity.load(future)
    lying = tmp_path / "lying.safetensors"
    save_file({"embeddings": np.ones((2, 4), np.float32)}, lying, metadata={
        "format": "faceprompt.identity", "format_version": "1", "face_model": "x", "count": "3",
        "embedding_dim": "4", "sources": json.dumps([])})
    with pytest.raises(IdentityFileError, match="disagree with the metadata"):
        Identity.load(lying)
    nan = tmp_path / "nan.safetensors"
    save_file({"embeddings": np.full((1, 4), np.nan, np.float32)}, nan, metadata={
        "format": "faceprompt.identity", "format_version": "1", "face_model": "x", "count": "1", "embedding_dim": "4"})
    with pytest.raises(IdentityFileError, match="NaN"):
        Identity.load(nan)


def test_mixing_face_models_raises():
    a = _random_identity(face_model="insightface/buffalo_l", d=512)
    b = _random_identity(face_model="dlib/resnet_v1", d=128)
    with pytest.raises(FaceModelMismatchError, match="different face models"):
        Identity.concat([a, b])
    with pytest.raises(FaceModelMismatchError, match="re-create it"):
        b.check_face_model("insightface/buffalo_l")
    with pytest.raises(FaceModelMismatchError):
        a.similarity(b)
    joined = Identity.concat([a, _random_identity(face_model="insightface/buffalo_l", d=512, seed=5)])
    assert len(joined) == 6


def test_invalid_construction():
    with pytest.raises(IdentityError, match=r"shape \[n >= 1, d\]"):
        Identity(embeddings=np.zeros((0, 4)), face_model="x")
    with pytest.raises(IdentityError, match="crops must be uint8"):
        Identity(embeddings=np.ones((1, 4)), face_model="x", crops=np.zeros((1, 10, 10, 3), np.uint8))


def test_similarity_separates_people(dlib_analyzer, astronaut_identity, astronaut_path, group_path):
    from PIL import Image

    flipped = np.ascontiguousarray(np.asarray(Image.open(astronaut_path).convert("RGB"))[:, ::-1])
    same = Identity.from_images([flipped], dlib_analyzer, channels="rgb")
    other = Identity.from_images([group_path], dlib_analyzer)
    assert astronaut_identity.similarity(same) > astronaut_identity.similarity(other)
    summary = Identity.concat([astronaut_identity, other]).summary()
    assert summary["count"] == 2 and summary["pairwise_similarity_min"] < 0.95
