"""The prepared training data set on disk: :class:`ShardWriter` writes it, :class:`PreparedDataset` reads it.

Layout (``faceprompt prepare`` writes it; the trainer reads it)::

    DATASET/
      dataset.json                 format, version, face_model, embedding_dim, crops, segmented, options, shards
      summary.json                 seen, kept, rejected (count per reason), elapsed_s
      shards/00000/
        records.jsonl              one JSON object per kept image, in row order
        embeddings.safetensors     "normed" and "raw" float32 [n, d], one row per record
        rejected.jsonl             source, reason, detail for every image left out
        images/<id>-<crop>.jpg     the framings (close-up, half-body, full-body, ...)
        faces/<id>.png             the aligned 224-px face crop (and <id>-seg.png without background)
        _SUCCESS                   written last: a shard without it is incomplete and ignored

Paths inside a record are relative to its shard folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from ..errors import DatasetError

DATASET_FORMAT = "faceprompt-dataset"
DATASET_VERSION = 1
INFO_FILE = "dataset.json"
SUMMARY_FILE = "summary.json"
SHARDS_DIR = "shards"
RECORDS_FILE = "records.jsonl"
EMBEDDINGS_FILE = "embeddings.safetensors"
REJECTED_FILE = "rejected.jsonl"
SUCCESS_FILE = "_SUCCESS"

#: Side of the aligned face crop (``Face.crop(224)``, what FaceID-Plus feeds to CLIP).
FACE_CROP_SIZE = 224
#: JPEG quality of the framing crops.
CROP_JPEG_QUALITY = 95

#: Why an image can be left out; summary.json counts every one of them (zeros included).
REJECTION_REASONS = (
    "no_face",
    "several_faces",
    "image_too_small",
    "face_too_small",
    "blurry",
    "unreadable",
    "duplicate",
)


def record_id(data: bytes) -> str:
    """The stable id of an input image: the first 16 hex digits of the SHA-256 of its file bytes."""
    return hashlib.sha256(data).hexdigest()[:16]


def shard_dir(root: str | os.PathLike, shard: str) -> Path:
    return Path(root) / SHARDS_DIR / shard


def is_finished(root: str | os.PathLike, shard: str) -> bool:
    """Whether ``shard`` was written to the end (its ``_SUCCESS`` marker exists)."""
    return (shard_dir(root, shard) / SUCCESS_FILE).is_file()


# --- write side -----------------------------------------------------------------------------------


class ShardWriter:
    """Writes one shard: images as they are added, then records, embeddings, rejections and ``_SUCCESS``.

    An unfinished shard folder left by an interrupted run is removed first; a finished one is never replaced.
    Used as a context manager, the shard is closed only when the block ends without an exception.

    Args:
        root: the data-set folder.
        shard: the shard name (``"00000"``, ...).
        crops: framing name -> face proportion (the data set's ``crops``); every record has exactly these.
        segmented: whether every record also has a background-free face crop.
        embedding_dim: width of the embeddings; checked on every row and used for the shape of an empty shard.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        shard: str,
        crops: dict[str, float],
        segmented: bool,
        *,
        embedding_dim: int | None = None,
    ):
        self.root = Path(root)
        self.shard = shard
        self.crops = dict(crops)
        self.segmented = segmented
        self.embedding_dim = embedding_dim
        self.folder = shard_dir(self.root, shard)
        if is_finished(self.root, shard):
            raise DatasetError(f"{self.folder}: shard {shard} is already finished; it is never rewritten")
        if self.folder.exists():
            shutil.rmtree(self.folder)  # leftovers of an interrupted run: the shard is redone from scratch
        (self.folder / "images").mkdir(parents=True)
        (self.folder / "faces").mkdir()
        self._records: list[dict[str, Any]] = []
        self._normed: list[np.ndarray] = []
        self._raw: list[np.ndarray] = []
        self._rejected: list[dict[str, str]] = []
        self._closed = False

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()

    def add(
        self,
        *,
        source: str,
        caption: str,
        identity: str,
        width: int,
        height: int,
        bbox,
        det_score: float,
        crops: dict[str, Image.Image],
        face: Image.Image,
        face_segmented: Image.Image | None,
        normed: np.ndarray,
        raw: np.ndarray,
        id: str | None = None,
    ) -> str:
        """Write one kept image's crops and queue its record and embeddings; returns the record id.

        ``id`` defaults to :func:`record_id` of the bytes of the ``source`` file.
        """
        self._check_open()
        if id is None:
            id = self._id_of_file(source)
        normed, raw = self._checked_embeddings(source, normed, raw)
        self._check_images(source, crops, face, face_segmented)
        record: dict[str, Any] = {
            "id": id,
            "source": str(source),
            "caption": caption,
            "identity": identity,
            "width": int(width),
            "height": int(height),
            "bbox": [round(float(value), 2) for value in bbox],
            "det_score": round(float(det_score), 4),
            "crops": {},
            "face": f"faces/{id}.png",
        }
        for name, image in crops.items():
            record["crops"][name] = f"images/{id}-{name}.jpg"
            image.convert("RGB").save(self.folder / record["crops"][name], quality=CROP_JPEG_QUALITY)
        face.convert("RGB").save(self.folder / record["face"])
        if self.segmented:
            record["face_segmented"] = f"faces/{id}-seg.png"
            face_segmented.convert("RGB").save(self.folder / record["face_segmented"])
        self._records.append(record)
        self._normed.append(normed)
        self._raw.append(raw)
        return id

    def reject(self, source, reason: str, detail: str) -> None:
        """Record that ``source`` was left out, ``reason`` being one of :data:`REJECTION_REASONS`."""
        self._check_open()
        if reason not in REJECTION_REASONS:
            raise DatasetError(f"unknown rejection reason {reason!r}; use one of {', '.join(REJECTION_REASONS)}")
        self._rejected.append({"source": str(source), "reason": reason, "detail": detail})

    def close(self) -> None:
        """Write records, embeddings and rejections, then ``_SUCCESS`` (last, so a crash leaves no marker)."""
        self._check_open()
        self._closed = True
        width = self._normed[0].shape[0] if self._normed else (self.embedding_dim or 0)
        normed = np.stack(self._normed) if self._normed else np.zeros((0, width), dtype=np.float32)
        raw = np.stack(self._raw) if self._raw else np.zeros((0, width), dtype=np.float32)
        _write_jsonl(self.folder / RECORDS_FILE, self._records)
        save_file({"normed": normed, "raw": raw}, str(self.folder / EMBEDDINGS_FILE))
        _write_jsonl(self.folder / REJECTED_FILE, self._rejected)
        (self.folder / SUCCESS_FILE).write_text("")

    @property
    def num_records(self) -> int:
        return len(self._records)

    @property
    def num_rejected(self) -> int:
        return len(self._rejected)

    def _check_open(self) -> None:
        if self._closed:
            raise DatasetError(f"{self.folder}: shard {self.shard} is closed; open a new ShardWriter")

    def _id_of_file(self, source: str) -> str:
        try:
            return record_id(Path(source).read_bytes())
        except OSError as error:
            raise DatasetError(f"{source}: cannot read the file to compute its id ({error}); pass id=") from None

    def _checked_embeddings(self, source: str, normed: np.ndarray, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        normed = np.asarray(normed, dtype=np.float32)
        raw = np.asarray(raw, dtype=np.float32)
        expected = self.embedding_dim or (self._normed[0].shape[0] if self._normed else normed.shape[-1])
        for name, vector in (("normed", normed), ("raw", raw)):
            if vector.shape != (expected,):
                raise DatasetError(f"{source}: {name} embedding has shape {list(vector.shape)}, expected [{expected}]")
            if not np.isfinite(vector).all():
                raise DatasetError(f"{source}: {name} embedding contains NaN or infinite values")
        if abs(float(np.linalg.norm(normed)) - 1.0) > 1e-3:
            raise DatasetError(
                f"{source}: the normed embedding has length {np.linalg.norm(normed):.4f}, not 1; pass the "
                "L2-normalised vector as normed= and the unnormalised one as raw="
            )
        return normed, raw

    def _check_images(
        self, source: str, crops: dict[str, Image.Image], face: Image.Image, face_segmented: Image.Image | None
    ) -> None:
        if set(crops) != set(self.crops):
            raise DatasetError(f"{source}: crops {sorted(crops)} given, the data set has {sorted(self.crops)}")
        faces = [("face", face)] + ([("face_segmented", face_segmented)] if self.segmented else [])
        for name, image in faces:
            if image is None:
                raise DatasetError(f"{source}: the data set is segmented, so {name} is required")
            if image.size != (FACE_CROP_SIZE, FACE_CROP_SIZE):
                raise DatasetError(
                    f"{source}: {name} is {image.width}x{image.height}; the aligned face crop must be "
                    f"{FACE_CROP_SIZE}x{FACE_CROP_SIZE} (Face.crop({FACE_CROP_SIZE}))"
                )


def write_dataset_info(
    root: str | os.PathLike,
    *,
    face_model: str,
    crops: dict[str, float],
    segmented: bool,
    options: dict[str, Any],
    shards: list[str],
    embedding_dim: int | None = None,
) -> None:
    """Write ``dataset.json`` (atomically). ``embedding_dim`` defaults to the width found in the finished shards."""
    root = Path(root)
    if embedding_dim is None:
        embedding_dim = _embedding_dim_of_shards(root, shards)
    info = {
        "format": DATASET_FORMAT,
        "version": DATASET_VERSION,
        "face_model": face_model,
        "embedding_dim": int(embedding_dim),
        "crops": {name: float(proportion) for name, proportion in crops.items()},
        "segmented": bool(segmented),
        "options": options,
        "shards": list(shards),
    }
    _write_json_atomically(root / INFO_FILE, info)


def write_summary(root: str | os.PathLike, *, elapsed_s: float) -> dict[str, Any]:
    """Count kept and rejected images over the finished shards, write ``summary.json`` and return it."""
    root = Path(root)
    info = read_dataset_info(root)
    rejected = dict.fromkeys(REJECTION_REASONS, 0)
    kept = 0
    for shard in info["shards"]:
        if not is_finished(root, shard):
            continue
        kept += len(_read_jsonl(shard_dir(root, shard) / RECORDS_FILE))
        for rejection in _read_jsonl(shard_dir(root, shard) / REJECTED_FILE):
            rejected[rejection["reason"]] = rejected.get(rejection["reason"], 0) + 1
    summary = {"seen": kept + sum(rejected.values()), "kept": kept, "rejected": rejected,
               "elapsed_s": round(float(elapsed_s), 3)}
    _write_json_atomically(root / SUMMARY_FILE, summary)
    return summary


# --- read side ------------------------------------------------------------------------------------


def read_dataset_info(root: str | os.PathLike) -> dict[str, Any]:
    """``dataset.json`` of ``root``, checked; :class:`DatasetError` says what is wrong and what to do."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such data-set folder; create one with `faceprompt prepare`")
    path = root / INFO_FILE
    if not path.is_file():
        raise DatasetError(f"{root}: not a faceprompt data set (no {INFO_FILE}); create one with `faceprompt prepare`")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: not valid JSON ({error}); the data set is damaged") from None
    if not isinstance(info, dict) or info.get("format") != DATASET_FORMAT:
        raise DatasetError(f"{path}: not a faceprompt data set (format is not {DATASET_FORMAT!r})")
    version = info.get("version")
    if not isinstance(version, int) or version > DATASET_VERSION:
        raise DatasetError(
            f"{path}: data-set version {version!r} is not supported (this faceprompt reads up to "
            f"{DATASET_VERSION}); upgrade faceprompt"
        )
    missing = [key for key in ("face_model", "embedding_dim", "crops", "segmented", "shards") if key not in info]
    if missing:
        raise DatasetError(f"{path}: missing {', '.join(missing)}; the data set is damaged")
    return info


class PreparedDataset:
    """Read a data set written by ``faceprompt prepare`` (or :class:`ShardWriter`).

    Opening reads ``dataset.json`` and the records of finished shards only; embeddings are read per shard when
    first asked for, images on every call. Indices run over the records of the finished shards, in shard order.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.info: dict[str, Any] = read_dataset_info(self.root)
        self._records: list[dict[str, Any]] = []
        self._rows: list[int] = []
        self._embeddings: dict[str, dict[str, np.ndarray]] = {}
        for shard in self.info["shards"]:
            if not is_finished(self.root, shard):
                continue
            for row, record in enumerate(_read_jsonl(shard_dir(self.root, shard) / RECORDS_FILE)):
                self._records.append({**record, "shard": shard})
                self._rows.append(row)

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return f"PreparedDataset({str(self.root)!r}, {len(self)} records, face_model={self.info['face_model']!r})"

    @property
    def crops(self) -> dict[str, float]:
        return dict(self.info["crops"])

    def record(self, index: int) -> dict[str, Any]:
        """The ``records.jsonl`` object of row ``index``, plus ``"shard"``."""
        return dict(self._records[self._check_index(index)])

    def embedding(self, index: int, normalized: bool = True) -> np.ndarray:
        """The face embedding of row ``index``, ``float32 [d]`` (L2-normalised unless ``normalized=False``)."""
        index = self._check_index(index)
        table = self._shard_embeddings(self._records[index]["shard"])
        return table["normed" if normalized else "raw"][self._rows[index]].copy()

    def embeddings(self, normalized: bool = True) -> np.ndarray:
        """All embeddings in row order, ``float32 [N, d]``."""
        key = "normed" if normalized else "raw"
        shards = list(dict.fromkeys(record["shard"] for record in self._records))
        if not shards:
            return np.zeros((0, self.info["embedding_dim"]), dtype=np.float32)
        return np.concatenate([self._shard_embeddings(shard)[key] for shard in shards])

    def image(self, index: int, crop: str) -> Image.Image:
        """The ``crop`` framing (``"closeup"``, ``"halfbody"``, ...) of row ``index``, RGB at its own size."""
        if crop not in self.info["crops"]:
            raise DatasetError(f"{self.root}: unknown crop {crop!r}; this data set has {', '.join(self.info['crops'])}")
        record = self._records[self._check_index(index)]
        return self._open(record, record["crops"][crop])

    def face(self, index: int, segmented: bool = False) -> Image.Image:
        """The aligned 224-px face crop of row ``index`` (RGB), without background when ``segmented``."""
        if segmented and not self.info["segmented"]:
            raise DatasetError(
                f"{self.root}: the data set was prepared without segmentation; prepare it with segment=True "
                "(--segment) to get background-free faces"
            )
        record = self._records[self._check_index(index)]
        return self._open(record, record["face_segmented" if segmented else "face"])

    def identities(self) -> dict[str, list[int]]:
        """Identity label -> the indices of its records (in row order), labels in order of first appearance."""
        groups: dict[str, list[int]] = {}
        for index, record in enumerate(self._records):
            groups.setdefault(record["identity"], []).append(index)
        return groups

    @property
    def summary(self) -> dict[str, Any]:
        """``summary.json``: images seen, kept, and rejected per reason."""
        path = self.root / SUMMARY_FILE
        if not path.is_file():
            raise DatasetError(f"{path}: not written yet; the preparation did not finish (run it again to resume)")
        return json.loads(path.read_text())

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"record index {index} is out of range for a data set of {len(self)} records")
        return index % len(self)

    def _open(self, record: dict[str, Any], relative: str) -> Image.Image:
        path = shard_dir(self.root, record["shard"]) / relative
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, SyntaxError) as error:
            raise DatasetError(f"{path}: cannot read this image of record {record['id']} ({error})") from None

    def _shard_embeddings(self, shard: str) -> dict[str, np.ndarray]:
        if shard not in self._embeddings:
            self._embeddings[shard] = _read_embeddings(shard_dir(self.root, shard) / EMBEDDINGS_FILE)
        return self._embeddings[shard]


# --- files ----------------------------------------------------------------------------------------


def _read_embeddings(path: Path) -> dict[str, np.ndarray]:
    try:
        with safe_open(str(path), framework="numpy") as handle:
            tables = {key: handle.get_tensor(key) for key in ("normed", "raw")}
    except (SafetensorError, OSError, KeyError) as error:
        raise DatasetError(f"{path}: cannot read the embeddings ({error}); delete the shard's _SUCCESS to redo it") from None
    return tables


def _embedding_dim_of_shards(root: Path, shards: list[str]) -> int:
    for shard in shards:
        if is_finished(root, shard):
            width = _read_embeddings(shard_dir(root, shard) / EMBEDDINGS_FILE)["normed"].shape[1]
            if width:
                return int(width)
    raise DatasetError(f"{root}: no finished shard holds an embedding; pass embedding_dim=")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path}: cannot read ({error}); delete the shard's _SUCCESS to redo it") from None


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _write_json_atomically(path: Path, value: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(json.dumps(value, indent=2) + "\n")
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
