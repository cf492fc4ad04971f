"""Training samples from a prepared data set: images, drops, Portrait references, SDXL sizes, buckets, batches."""

import numpy as np
import pytest
import torch
from PIL import Image

from faceprompt.adapters import clip_pixel_values
from faceprompt.errors import TrainingError
from faceprompt.training.config import config_from_dict
from faceprompt.training.data import (
    BucketBatchSampler,
    FaceTrainingDataset,
    SampleOptions,
    aspect_ratio_buckets,
    nearest_bucket,
    training_image,
)

CROPS = ("closeup", "halfbody", "fullbody")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, synthetic_dataset):
    return synthetic_dataset(tmp_path_factory.mktemp("data") / "set", 12, num_identities=3, size=48)


def options(**changes) -> SampleOptions:
    return SampleOptions(**{"resolution": 32, "crops": CROPS, **changes})


def test_sample_is_the_resized_crop_with_its_caption_and_embedding(prepared):
    dataset = FaceTrainingDataset(prepared, options(drop_text=0.0, drop_id=0.0, drop_both=0.0, random_flip=False))
    sample = dataset[(0, 5)]
    plan = dataset.plan(0, 5)
    expected = np.asarray(prepared.image(5, plan.crop).resize((32, 32), Image.Resampling.BILINEAR), np.float32)
    assert sample["pixel_values"].shape == (3, 32, 32)
    torch.testing.assert_close(sample["pixel_values"], torch.from_numpy(expected / 127.5 - 1.0).permute(2, 0, 1))
    assert sample["caption"] == prepared.record(5)["caption"]
    assert torch.equal(sample["id_embeds"], torch.from_numpy(prepared.embedding(5)))
    assert "clip_pixel_values" not in sample and "time_ids" not in sample


def test_samples_are_a_pure_function_of_seed_epoch_and_index(prepared):
    dataset = FaceTrainingDataset(prepared, options(random_crop=True, random_flip=True, drop_clip=0.5))
    first, again = dataset[(3, 7)], dataset[(3, 7)]
    assert all(torch.equal(first[k], again[k]) for k in first if isinstance(first[k], torch.Tensor))
    plans = [dataset.plan(epoch, 7) for epoch in range(40)]
    assert len({(p.crop, p.flip, p.crop_position) for p in plans}) > 20  # epochs draw fresh augmentations
    assert {p.crop for p in plans} == set(CROPS) and {p.flip for p in plans} == {False, True}
    other_seed = FaceTrainingDataset(prepared, options(random_crop=True, random_flip=True, seed=1))
    assert other_seed.plan(3, 7) != dataset.plan(3, 7)


def test_drop_rates_follow_the_reference_single_draw(prepared):
    dataset = FaceTrainingDataset(prepared, options(drop_id=0.1, drop_text=0.2, drop_both=0.3))
    plans = [dataset.plan(epoch, index) for epoch in range(500) for index in range(12)]
    only_id = np.mean([p.drop_id and not p.drop_text for p in plans])
    only_text = np.mean([p.drop_text and not p.drop_id for p in plans])
    both = np.mean([p.drop_id and p.drop_text for p in plans])
    # 6000 draws: binomial standard deviations are <= 0.006
    assert abs(only_id - 0.1) < 0.025 and abs(only_text - 0.2) < 0.025 and abs(both - 0.3) < 0.025


def test_dropped_id_is_the_inference_unconditional(prepared):
    dataset = FaceTrainingDataset(prepared, options(drop_id=0.0, drop_text=0.0, drop_both=1.0, clip_faces=True))
    sample = dataset[(0, 2)]
    assert sample["caption"] == ""
    assert torch.count_nonzero(sample["id_embeds"]) == 0
    assert torch.count_nonzero(sample["clip_pixel_values"]) == 0  # zero pixel values, as inference's uncond
    assert sample["clip_keep"].item() == 1.0  # the unconditional keeps the full PlusV2 projection
    kept = FaceTrainingDataset(prepared, options(drop_id=0.0, drop_text=0.0, drop_both=0.0, clip_faces=True))[(0, 2)]
    torch.testing.assert_close(kept["clip_pixel_values"], clip_pixel_values([prepared.face(2)])[0])


def test_plusv2_clip_branch_is_dropped_for_the_requested_share(prepared):
    dataset = FaceTrainingDataset(prepared, options(drop_id=0.0, drop_text=0.0, drop_both=0.0, drop_clip=0.5))
    kept = np.mean([dataset.plan(epoch, index).keep_clip for epoch in range(300) for index in range(12)])
    assert abs(kept - 0.5) < 0.03


def test_portrait_samples_stack_other_photos_of_the_same_person(prepared):
    dataset = FaceTrainingDataset(
        prepared, options(multi_face=True, faces_per_sample=5, normalized=False, drop_id=0.0, drop_both=0.0)
    )
    sample = dataset[(0, 4)]
    plan = dataset.plan(0, 4)
    person = prepared.record(4)["identity"]
    assert sample["id_embeds"].shape == (5, 512)
    assert all(prepared.record(i)["identity"] == person and i != 4 for i in plan.references)
    expected = np.stack([prepared.embedding(i, normalized=False) for i in plan.references])
    assert torch.equal(sample["id_embeds"], torch.from_numpy(expected))
    assert sample["id_embeds"].norm(dim=-1).min() > 10  # raw ArcFace-like lengths for the "unnorm" variant


def test_training_image_geometry_and_sdxl_time_ids(prepared):
    image = Image.fromarray(np.arange(60 * 40 * 3, dtype=np.uint8).reshape(40, 60, 3) % 251)
    pixels, original, top_left = training_image(image, (32, 32), (1.0, 0.0), flip=False)
    # 60x40 -> covers 32x32 at 48x32; the crop at x = 1.0 is the right-most window
    assert pixels.shape == (3, 32, 32) and original == (40, 60) and top_left == (0, 16)
    resized = np.asarray(image.resize((48, 32), Image.Resampling.BILINEAR), np.float32)
    torch.testing.assert_close(pixels, torch.from_numpy(resized[:, 16:] / 127.5 - 1).permute(2, 0, 1))
    flipped, _, flipped_top_left = training_image(image, (32, 32), (1.0, 0.0), flip=True)
    assert torch.equal(flipped, pixels.flip(-1)) and flipped_top_left == (0, 0)

    sdxl = FaceTrainingDataset(prepared, options(sdxl=True, random_flip=False))
    assert sdxl[(0, 1)]["time_ids"].tolist() == [48.0, 48.0, 0.0, 0.0, 32.0, 32.0]


def test_aspect_ratio_buckets_and_the_bucket_batch_sampler():
    buckets = aspect_ratio_buckets(128, 32, 2.0)
    assert buckets == [(96, 160), (128, 128), (160, 96)]
    assert all(abs(w * h - 128 * 128) <= 128 * 32 for w, h in buckets)
    assert [nearest_bucket(w, h, buckets) for w, h in [(600, 1000), (512, 500), (1920, 1080)]] == [0, 1, 2]

    bucket_of = [0] * 5 + [1] * 7 + [2] * 2
    sampler = BucketBatchSampler(bucket_of, batch_size=2, seed=3)
    stream = iter(sampler)
    first_epoch = [next(stream) for _ in range(len(sampler))]
    assert len(sampler) == 2 + 3 + 1  # full batches per bucket
    assert all(len({bucket_of[i] for _, i in batch}) == 1 for batch in first_epoch)
    indices = [i for batch in first_epoch for _, i in batch]
    assert len(indices) == len(set(indices)) and {e for batch in first_epoch for e, _ in batch} == {0}
    second_epoch = next(stream)
    assert second_epoch[0][0] == 1  # the stream goes on into epoch 1
    assert sampler.epoch_batches(0) == BucketBatchSampler(bucket_of, 2, seed=3).epoch_batches(0)
    assert sampler.epoch_batches(0) != sampler.epoch_batches(1)
    with pytest.raises(TrainingError, match="batch_size 8 is larger than every aspect-ratio bucket"):
        BucketBatchSampler(bucket_of, batch_size=8)


def test_unknown_crop_is_refused(prepared):
    with pytest.raises(TrainingError, match=r"crops \['portrait'\] are not in the data set"):
        FaceTrainingDataset(prepared, options(crops=("portrait",)))


@pytest.mark.parametrize(
    "variant, expected",
    [
        ("faceid-sd15", dict(drop_clip=0.0, faces_per_sample=1, multi_face=False, normalized=True, clip_faces=False,
                             sdxl=False)),
        ("faceid-plusv2-sdxl", dict(drop_clip=0.5, faces_per_sample=1, multi_face=False, normalized=True,
                                    clip_faces=True, sdxl=True)),
        ("faceid-portrait-unnorm-sdxl", dict(drop_clip=0.0, faces_per_sample=3, multi_face=True, normalized=False,
                                             clip_faces=False, sdxl=True)),
    ],
)
def test_sample_options_come_from_the_config_and_the_variant(prepared, variant, expected):
    config = config_from_dict(dict(variant=variant, base_model="tiny", data="d", output_dir="o", resolution=48,
                                   random_crop=True, random_flip=False, drop_text=0.1, drop_id=0.2, drop_both=0.3,
                                   num_faces=3, seed=5))
    options = SampleOptions.from_config(config, prepared, config.adapter_variant)
    assert options == SampleOptions(resolution=48, crops=CROPS, random_crop=True, random_flip=False, drop_text=0.1,
                                    drop_id=0.2, drop_both=0.3, seed=5, **expected)
    chosen = config_from_dict(dict(variant=variant, base_model="tiny", data="d", output_dir="o", crops=["closeup"]))
    assert SampleOptions.from_config(chosen, prepared, chosen.adapter_variant).crops == ("closeup",)
