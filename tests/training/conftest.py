"""Synthetic prepared data sets for fast trainer tests: no photos, no face detection.

The ``synthetic_dataset`` fixture gives the writer function (session-scoped, so module-scoped fixtures can use it).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceprompt.errors import DatasetError
from faceprompt.training.dataset import (
    FACE_CROP_SIZE,
    PreparedDataset,
    ShardWriter,
    record_id,
    write_dataset_info,
    write_summary,
)

SYNTHETIC_FACE_MODEL = "synthetic/random"
SYNTHETIC_CROPS = {"closeup": 2.0, "halfbody": 4.0, "fullbody": 8.0}


def write_synthetic_dataset(
    root: str | os.PathLike,
    num_records: int = 8,
    *,
    num_identities: int = 2,
    size: int = 128,
    seed: int = 0,
    embedding_dim: int = 512,
    face_model: str = SYNTHETIC_FACE_MODEL,
    segmented: bool = False,
    shard_size: int = 1000,
) -> PreparedDataset:
    """Write a data set of random coloured images and random embeddings through :class:`ShardWriter`.

    Record ``i`` belongs to identity ``person-{i % num_identities}``. Each identity has its own colour and its own
    random unit direction; a record's images are that colour plus pixel noise and its embedding is that direction
    plus a little noise (renormalised), so images and embeddings of one identity belong together. Raw embeddings
    are the normed ones times a random length in [15, 30], like ArcFace's. Crops are ``size`` x ``size``; faces
    are 224 x 224.
    """
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise DatasetError(f"{root}: the folder is not empty; pick a new folder for the synthetic data set")
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(num_identities, 3))
    directions = rng.standard_normal((num_identities, embedding_dim))
    shards = [f"{index:05d}" for index in range(-(-num_records // shard_size))]
    for shard_index, shard in enumerate(shards):
        with ShardWriter(root, shard, SYNTHETIC_CROPS, segmented, embedding_dim=embedding_dim) as writer:
            for index in range(shard_index * shard_size, min(num_records, (shard_index + 1) * shard_size)):
                person = index % num_identities
                vector = directions[person] + 0.1 * rng.standard_normal(embedding_dim)
                normed = (vector / np.linalg.norm(vector)).astype(np.float32)
                face = _noisy_image(rng, colours[person], FACE_CROP_SIZE)
                writer.add(
                    id=record_id(f"synthetic-{seed}-{index}".encode()),
                    source=f"synthetic/person-{person}/{index:05d}.png",
                    caption=f"a photo of person {person}",
                    identity=f"person-{person}",
                    width=size,
                    height=size,
                    bbox=[size * 0.375, size * 0.375, size * 0.625, size * 0.625],
                    det_score=1.0,
                    crops={name: _noisy_image(rng, colours[person], size) for name in SYNTHETIC_CROPS},
                    face=face,
                    face_segmented=face if segmented else None,
                    normed=normed,
                    raw=normed * np.float32(rng.uniform(15.0, 30.0)),
                )
    write_dataset_info(
        root,
        face_model=face_model,
        crops=SYNTHETIC_CROPS,
        segmented=segmented,
        options={"synthetic": True, "seed": seed, "num_identities": num_identities, "size": size},
        shards=shards,
        embedding_dim=embedding_dim,
    )
    write_summary(root, elapsed_s=0.0)
    return PreparedDataset(root)


def _noisy_image(rng: np.random.Generator, colour: np.ndarray, size: int) -> Image.Image:
    pixels = colour[None, None, :] + rng.integers(-20, 21, size=(size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture(scope="session")
def synthetic_dataset():
    """:func:`write_synthetic_dataset`, for tests and fixtures of any scope."""
    return write_synthetic_dataset


@pytest.fixture()
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test (a socket guard, not a timing)."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError(f"the test tried to reach the network: {args[1:] or args}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
