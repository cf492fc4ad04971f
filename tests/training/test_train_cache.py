"""Cached VAE latents and text embeddings give the loss of computing them at every step, for the same seed."""

import pytest
import torch
from torch.utils.data import default_collate

from faceprompt.training.config import config_from_dict
from faceprompt.training.data import FaceTrainingDataset, SampleOptions, build_latent_cache, build_text_cache
from faceprompt.training.model import AdapterTrainingModel
from faceprompt.training.dataset import PreparedDataset
from faceprompt.training.trainer import load_components, step_generator, train


@pytest.fixture(scope="module")
def data(tmp_path_factory, synthetic_dataset):
    root = tmp_path_factory.mktemp("data") / "set"
    synthetic_dataset(root, 6, num_identities=2, size=64)
    return root


@pytest.mark.parametrize("variant", ["faceid-sd15", "faceid-sdxl"])
def test_cached_batch_gives_the_uncached_loss(variant, data, tmp_path):
    config = config_from_dict(dict(variant=variant, base_model="tiny-sdxl" if "sdxl" in variant else "tiny",
                                   data=str(data), output_dir=str(tmp_path)))
    components = load_components(config, config.adapter_variant)
    model = AdapterTrainingModel.create(components, config.adapter_variant, lora_rank=4, noise_offset=0.1)
    options = SampleOptions(resolution=64, crops=("closeup", "fullbody"), random_flip=True, drop_text=0.5,
                            sdxl=components.is_sdxl)
    uncached = FaceTrainingDataset(PreparedDataset(data), options)
    latents = build_latent_cache(uncached, tmp_path / "latents", lambda p: model.latent_distribution(p).parameters)
    text = build_text_cache(uncached.prepared, tmp_path / "text", model.encode_captions)
    cached = FaceTrainingDataset(PreparedDataset(data), options, latent_cache=latents, text_cache=text)

    keys = [(0, 0), (0, 3), (1, 4), (2, 5)]
    assert {uncached.plan(*key).flip for key in keys} == {False, True}  # both cached flips are used
    assert "" in {uncached[key]["caption"] for key in keys}  # and the dropped caption
    uncached_batch = default_collate([uncached[key] for key in keys])
    cached_batch = default_collate([cached[key] for key in keys])
    assert "pixel_values" not in cached_batch and "caption" not in cached_batch
    if components.is_sdxl:
        assert torch.equal(cached_batch["time_ids"], uncached_batch["time_ids"])
    with torch.no_grad():
        uncached_loss = model(uncached_batch, step_generator(0, 3, 0))
        cached_loss = model(cached_batch, step_generator(0, 3, 0))
        other_seed = model(cached_batch, step_generator(0, 4, 0))
    torch.testing.assert_close(cached_loss, uncached_loss, rtol=1e-5, atol=0)
    assert abs(other_seed.item() - cached_loss.item()) > 1e-4  # the seed matters: the match above is not trivial


def test_training_with_caches_matches_training_without(data, tmp_path):
    settings = dict(variant="faceid-sd15", base_model="tiny", data=str(data), resolution=64, batch_size=2,
                    max_steps=2, lora_rank=4, log_with="none", progress=False, crops=["closeup"])
    plain = train(config_from_dict({**settings, "output_dir": str(tmp_path / "plain")}))
    cached = train(config_from_dict({**settings, "output_dir": str(tmp_path / "cached"), "cache_latents": True,
                                     "cache_text_embeddings": True}))
    assert (tmp_path / "cached" / "cache" / "latents" / "fingerprint.json").is_file()
    assert (tmp_path / "cached" / "cache" / "text" / "captions.json").is_file()
    torch.testing.assert_close(torch.tensor(cached.losses), torch.tensor(plain.losses), rtol=1e-5, atol=0)
