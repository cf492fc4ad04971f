import json
import struct
from pathlib import Path

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
    with pytest.raises(IdentityFileError, match=r"tensor is \[2, 4\] but the metadata says \[3, 4\]"):
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


def test_similarity_separates_people(dlib_analyzer, astronaut_identity, astronaut_path, group_path):
    from PIL import Image

    flipped = np.ascontiguousarray(np.asarray(Image.open(astronaut_path).convert("RGB"))[:, ::-1])
    same = Identity.from_images([flipped], dlib_analyzer, channels="rgb")
    other = Identity.from_images([group_path], dlib_analyzer)
    assert astronaut_identity.similarity(same) > astronaut_identity.similarity(other)
    summary = Identity.concat([astronaut_identity, other]).summary()
    assert summary["count"] == 2 and summary["pairwise_similarity_min"] < 0.95


# --- arrays, names and records handed in -------------------------------------------------------------------------

ROW = np.linspace(-1.0, 1.0, 8)  # a usable embedding: length about 1.9


@pytest.mark.parametrize(
    "embeddings, message",
    [
        (np.zeros((0, 8)), r"shape \[n >= 1, d >= 1\] \(one row per photo\), got \[0, 8\]"),
        (ROW, r"got \[8\]"),
        (ROW[None, None], r"got \[1, 1, 8\]"),
        ([[1.0, 2.0], [3.0]], "must be a numeric array"),
        (np.array([["a", "b"]]), "must be real numbers .*dtype <U1"),
        (ROW[None].astype(complex), "must be real numbers .*complex128"),
        (ROW[None] > 0, "must be real numbers .*bool"),
        (np.stack([ROW, np.full(8, np.nan)]), r"NaN or infinite values \(row 1\)"),
        (np.stack([ROW, ROW, np.full(8, -np.inf)]), r"NaN or infinite values \(row 2\)"),
        (np.stack([ROW, np.zeros(8)]), "row 1 is all zeros: a face embedding has a direction and this one has none"),
        (np.full((1, 8), 1e-9), "row 0 is of length 2.83e-09"),
        (np.full((1, 8), 1e300), "row 0 has length inf; face models give lengths of about 0.5 to 30"),
        (np.full((1, 8), 1e39), "row 0 has length 2.83e\\+39"),  # finite in float64, inf in float32
        (np.full((2, 8), 1e5, np.float32), "row 0, 1 has length 2.83e\\+05"),
    ],
)
def test_unusable_embeddings_are_refused(embeddings, message):
    with pytest.raises(IdentityError, match=message):
        Identity(embeddings=embeddings, face_model="test/model")


def test_embeddings_of_other_real_dtypes_become_float32():
    for dtype in (np.float16, np.float64, np.int64):
        identity = Identity(embeddings=(ROW[None] * 4).astype(dtype), face_model="test/model")
        assert identity.embeddings.dtype == np.float32
        assert np.allclose(identity.embeddings, (ROW[None] * 4).astype(dtype), rtol=1e-3)


@pytest.mark.parametrize(
    "crops, message",
    [
        (np.zeros((1, 10, 10, 3), np.uint8), r"crops must be uint8 \[1, 224, 224, 3\] .*got uint8 \[1, 10, 10, 3\]"),
        (np.zeros((1, 224, 224, 3), np.float32), r"got float32 \[1, 224, 224, 3\]"),
        (np.zeros((224, 224, 3), np.uint8), r"got uint8 \[224, 224, 3\]"),
        (np.zeros((2, 224, 224, 3), np.uint8), r"2 crops for 1 embeddings; crops must be uint8 \[1, 224, 224, 3\]"),
    ],
)
def test_mismatched_crops_are_refused(crops, message):
    with pytest.raises(IdentityError, match=message):
        Identity(embeddings=ROW[None], face_model="test/model", crops=crops)


@pytest.mark.parametrize(
    "sources, message",
    [
        ({"file": "a.jpg"}, "sources must be a list with one dict per photo, got dict"),
        (["a.jpg"], "sources must be a list with one dict per photo"),
        ([{"file": "a.jpg"}, {"file": "b.jpg"}], "2 source records for 1 embeddings"),
        ([{"file": 7}], "source 0: 'file' must be a file name"),
        ([{"face_index": -1}], "source 0: 'face_index' must be a whole number >= 0, got int -1"),
        ([{"face_index": True}], "'face_index' must be a whole number"),
        ([{"bbox": [0, 0, 10]}], r"'bbox' must be 4 finite numbers \[x1, y1, x2, y2\]"),
        ([{"bbox": [0, 0, 10, float("nan")]}], "'bbox' must be 4 finite numbers"),
        ([{"file": "a.jpg", "note": object()}], "sources must hold JSON values only"),
    ],
)
def test_malformed_source_records_are_refused(sources, message):
    with pytest.raises(IdentityError, match=message):
        Identity(embeddings=ROW[None], face_model="test/model", sources=sources)


@pytest.mark.parametrize(
    "face_model, name, message",
    [
        ("", None, "face_model must be the face-recognition model's name, got ''"),
        (512, None, "face_model must be the face-recognition model's name, got int 512"),
        ("test/model", 42, "name must be text, got int 42"),
        ("test/model", "x" * 201, "name is 201 characters long; the limit is 200"),
        ("test/model", "\x1b[31mred\x1b[0m", r"contains control characters or broken Unicode \('\\x1b'\)"),
        ("test/model", "two\nlines", "use plain text on one line"),
        ("test/model", "bad \udc80 bytes", "broken Unicode"),
        ("test\tmodel", None, r"face_model 'test.{2}model' contains control characters"),
    ],
)
def test_unprintable_or_huge_labels_are_refused(face_model, name, message):
    with pytest.raises(IdentityError, match=message):
        Identity(embeddings=ROW[None], face_model=face_model, name=name)


def test_names_with_markup_and_any_script_round_trip(tmp_path):
    name = "[bold]Zoë[/] 山田 [/] \\[x]"
    path = Identity(embeddings=ROW[None], face_model="test/model", name=name).save(tmp_path / "odd.safetensors")
    assert Identity.load(path).name == name


def test_similarity_refuses_vectors_it_cannot_compare():
    identity = Identity(embeddings=ROW[None], face_model="test/model")
    assert identity.similarity(ROW * 3) == pytest.approx(1.0)
    with pytest.raises(IdentityError, match=r"shape \[4\]; this identity's embeddings have 8 values"):
        identity.similarity(np.ones(4))
    with pytest.raises(IdentityError, match="all zeros"):
        identity.similarity(np.zeros(8))


def test_concat_refuses_what_is_not_an_identity():
    with pytest.raises(IdentityError, match="only identities can be concatenated, got ndarray, str"):
        Identity.concat([Identity(embeddings=ROW[None], face_model="m"), "me.safetensors", ROW[None]])


def test_save_into_a_folder_is_refused(tmp_path):
    with pytest.raises(OutputExistsError, match="is a folder; give the identity a file name"):
        Identity(embeddings=ROW[None], face_model="m").save(tmp_path, overwrite=True)


# --- crafted identity files ----------------------------------------------------------------------------------------

METADATA = {"format": "faceprompt.identity", "format_version": "1", "face_model": "test/model", "count": "1",
            "embedding_dim": "8"}
RECREATE = "recreate it with `faceprompt identity create PHOTOS -o FILE`"


def _crafted(tmp_path, tensors=None, **metadata) -> Path:
    path = tmp_path / "crafted.safetensors"
    tensors = {"embeddings": ROW[None].astype(np.float32)} if tensors is None else tensors
    save_file(tensors, path, metadata={key: value for key, value in {**METADATA, **metadata}.items()
                                       if value is not None})
    return path


def _raw_safetensors(tmp_path, header: bytes, data: bytes = b"") -> Path:
    path = tmp_path / "raw.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


@pytest.mark.parametrize(
    "tensors, message",
    [
        ({"embeddings": np.zeros((1, 8), np.float32)}, "row 0 is all zeros"),
        ({"embeddings": np.full((1, 8), np.inf, np.float32)}, "NaN or infinite"),
        ({"embeddings": np.full((1, 8), 1e300)}, "row 0 has length inf"),
        ({"embeddings": np.full((1, 8), 1e30, np.float32)}, "row 0 has length 2.83e\\+30"),
        ({"embeddings": np.ones((1, 8), np.int8)},
         "the 'embeddings' tensor is I8, but an identity stores F16 or F32 or F64"),
        ({"embeddings": ROW.astype(np.float32)}, r"shape \[n >= 1, d >= 1\] .*got \[8\]"),
        ({"embeddings": ROW[None, None].astype(np.float32)}, r"got \[1, 1, 8\]"),
        ({"embeddings": ROW[None].astype(np.float32), "crops": np.zeros((1, 224, 224, 3), np.float32)},
         "the 'crops' tensor is F32, but an identity stores U8"),
        ({"embeddings": ROW[None].astype(np.float32), "crops": np.zeros((2, 224, 224, 3), np.uint8)},
         "2 crops for 1 embeddings"),
        ({"embeddings": ROW[None].astype(np.float32), "crops": np.zeros((1, 112, 112, 3), np.uint8)},
         r"crops must be uint8 \[1, 224, 224, 3\]"),
        ({"crops": np.zeros((1, 224, 224, 3), np.uint8)}, "the 'embeddings' tensor is missing"),
    ],
    ids=["zeros", "inf", "float64-huge", "float32-huge", "int8", "rank-1", "rank-3", "crops-float", "crops-count",
         "crops-size", "no-embeddings"],
)
def test_crafted_tensors_are_refused_naming_the_file_and_the_fix(tmp_path, tensors, message):
    path = _crafted(tmp_path, tensors)
    with pytest.raises(IdentityFileError, match=message) as raised:
        Identity.load(path)
    assert str(raised.value).startswith(f"{path}: ") and RECREATE in str(raised.value)


def test_bfloat16_embeddings_are_refused_before_reading(tmp_path):
    header = json.dumps({"embeddings": {"dtype": "BF16", "shape": [1, 8], "data_offsets": [0, 16]},
                         "__metadata__": METADATA}).encode()
    path = _raw_safetensors(tmp_path, header, bytes(16))
    with pytest.raises(IdentityFileError, match="the 'embeddings' tensor is BF16"):
        Identity.load(path)


@pytest.mark.parametrize(
    "metadata, message",
    [
        ({"count": None}, "the 'count' metadata is missing"),
        ({"embedding_dim": None}, "the 'embedding_dim' metadata is missing"),
        ({"face_model": None}, "the 'face_model' metadata is missing"),
        ({"count": "one"}, "the 'count' metadata is 'one', not a whole number"),
        ({"count": "-1"}, "not a whole number"),
        ({"count": "²"}, "not a whole number"),
        ({"count": "9" * 5000}, "the 'count' metadata is '99999999999999999999', not a whole number"),
        ({"format_version": "1.5"}, "version '1.5' is not supported"),
        ({"sources": "{not json"}, "the 'sources' metadata is not valid JSON"),
        ({"sources": "[" * 100_000 + "]" * 100_000}, "the 'sources' metadata is not valid JSON"),
        ({"sources": json.dumps({"file": "a.jpg"})}, "sources must be a list with one dict per photo"),
        ({"sources": json.dumps([{"face_index": "zero"}])}, "source 0: 'face_index' must be a whole number"),
        ({"sources": json.dumps([{"bbox": "0,0,1,1"}])}, "source 0: 'bbox' must be 4 finite numbers"),
        ({"name": "x" * 1_000_000}, "name is 1,000,000 characters long; the limit is 200"),
        ({"name": "\x1b]0;pwned\x07"}, "contains control characters"),
        ({"face_model": "y" * 300}, "face_model is 300 characters long"),
    ],
    ids=["no-count", "no-dim", "no-face-model", "count-text", "count-negative", "count-superscript", "count-huge",
         "version-float", "sources-broken", "sources-deep", "sources-dict", "source-index-text", "source-bbox-text",
         "name-huge", "name-escape", "face-model-huge"],
)
def test_odd_metadata_is_refused_naming_the_file(tmp_path, metadata, message):
    path = _crafted(tmp_path, **metadata)
    with pytest.raises(IdentityFileError, match=message) as raised:
        Identity.load(path)
    assert str(raised.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    "metadata, shape",
    [(b'{"count": 1}', b"[1, 8]"), (b'{"name": "\xff"}', b"[1, 8]"), (b'{"name": "\\ud800"}', b"[1, 8]"),
     (b"{}", b"[1000000, 8]")],
    ids=["number-in-metadata", "not-utf8", "lone-surrogate", "claims-more-data"],
)
def test_malformed_headers_are_not_readable_files(tmp_path, metadata, shape):
    end = 4 * int(np.prod(json.loads(shape)))
    header = b'{"embeddings": {"dtype": "F32", "shape": %s, "data_offsets": [0, %d]}, "__metadata__": %s}' % (
        shape, end, metadata)
    path = _raw_safetensors(tmp_path, header, ROW.astype(np.float32).tobytes())
    with pytest.raises(IdentityFileError, match=f"raw.safetensors: not a readable .safetensors file .*{RECREATE}"):
        Identity.load(path)


def test_other_tensors_are_ignored_unread(tmp_path):
    path = _crafted(tmp_path, {"embeddings": ROW[None].astype(np.float32), "extra": np.zeros((4,), np.complex64)})
    assert np.allclose(Identity.load(path).embeddings, ROW[None])


# --- face selection ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "select, message",
    [
        ("index:-1", r"face index must be >= 0 \(index:0 is the largest face\), got -1"),
        ("index:abc", "unknown face selection 'index:abc'; use 'largest', 'all' or 'index:N'"),
        ("index:²", "unknown face selection 'index:²'"),
        ("index:", "unknown face selection 'index:'"),
        ("biggest", "unknown face selection 'biggest'"),
        (True, "unknown face selection True"),
        ("all", "an identity is one person"),
    ],
)
def test_bad_face_selections_are_refused_before_any_model_loads(monkeypatch, astronaut_path, select, message):
    import faceprompt.identity

    monkeypatch.setattr(faceprompt.identity, "FaceAnalyzer", lambda *a, **k: pytest.fail("a face model was loaded"))
    with pytest.raises(FaceSelectionError, match=message):
        Identity.from_images([astronaut_path], select=select)


def test_no_photos_and_bad_names_are_refused_before_any_model_loads(monkeypatch, astronaut_path):
    import faceprompt.identity

    monkeypatch.setattr(faceprompt.identity, "FaceAnalyzer", lambda *a, **k: pytest.fail("a face model was loaded"))
    with pytest.raises(IdentityError, match="no photos given"):
        Identity.from_images([])
    with pytest.raises(IdentityError, match="name is 500 characters long"):
        Identity.from_images([astronaut_path], name="n" * 500)


def test_load_needs_a_path():
    from faceprompt.errors import IdentityFileError

    with pytest.raises(IdentityFileError, match="an identity file is a path"):
        Identity.load(None)
