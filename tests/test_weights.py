"""faceprompt.weights and every loader that uses it: the Hub offline, unreachable or answering; one message for
missing model files; the reachability probe (once per process, bounded).

"No network" is a socket guard that fails every lookup and connection at once and counts them: a retry loop shows
as more than one attempt, however fast each fails.
"""

import threading

import diffusers.loaders.lora_base
import diffusers.utils.hub_utils
import huggingface_hub
import huggingface_hub.constants
import pytest
import torch
from network_guard import refuse_connections
from safetensors.torch import save_file
from transformers import CLIPVisionModelWithProjection

from faceprompt import weights
from faceprompt.adapters.checkpoint import load_checkpoint, save_checkpoint
from faceprompt.adapters.lora import load_separate_lora, lora_state_dict
from faceprompt.adapters.registry import HUB_REPO
from faceprompt.errors import EvaluationError, ModelFilesMissingError, SettingError
from faceprompt.evaluation.clip_scores import ClipScorer
from faceprompt.pipelines.face_pipeline import FacePipeline
from faceprompt.pipelines.fast import FAST_MODES, apply_fast_mode
from faceprompt.pipelines.sources import Source, load_component
from faceprompt.testing import populate_hf_cache, save_tiny_sd15, tiny_sd15_pipeline, tiny_sd15_unet
from faceprompt.testing.adapters import random_faceid_state_dict
from faceprompt.weights import HUB_TIMEOUT_ENV, HubFile

RUN = dict(num_inference_steps=2, guidance_scale=1.0, width=32, height=32, output_type="latent")


@pytest.fixture()
def fresh_probe():
    weights.forget_hub_probe()
    yield
    weights.forget_hub_probe()


@pytest.fixture()
def unreachable_hub(monkeypatch, fresh_probe) -> list[str]:
    """A machine without network where HF_HUB_OFFLINE is not set: what a user on a train or behind a firewall has.

    Returns the list of connection attempts.
    """
    # huggingface_hub asks the Hub for its list of agent harnesses once per process (with its own timeout, no
    # retries) when it first builds request headers; settle that while still offline so the count is faceprompt's.
    huggingface_hub.utils.build_hf_headers()
    attempts = refuse_connections(monkeypatch)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    # diffusers copies the flag at import: a stale True there would make these tests pass for the wrong reason.
    monkeypatch.setattr(diffusers.loaders.lora_base, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(diffusers.utils.hub_utils, "HF_HUB_OFFLINE", False)
    return attempts


def listed(message: str) -> list[str]:
    return [line.removeprefix("  - ") for line in message.splitlines() if line.startswith("  - ")]


def unreachable_words() -> str:
    return f"the Hugging Face Hub ({huggingface_hub.constants.ENDPOINT}) could not be reached"


# --------------------------------------------------------------------------------------------------------------------
# An unreachable Hub: one probe, then one message listing everything
# --------------------------------------------------------------------------------------------------------------------


def test_every_model_of_a_generation_is_listed_after_one_probe(unreachable_hub, tmp_path):
    cache = tmp_path / "hub"
    with pytest.raises(ModelFilesMissingError) as raised:
        FacePipeline.from_pretrained(
            adapter="faceid-plusv2-sd15", controlnet="lllyasviel/control_v11p_sd15_openpose", fast="lcm-lora",
            cache_dir=str(cache),
        )  # fmt: skip
    message = str(raised.value)
    assert listed(message) == [
        "base model: SG161222/Realistic_Vision_V4.0_noVAE/model_index.json",
        "VAE: stabilityai/sd-vae-ft-mse/config.json",
        "CLIP image encoder: h94/IP-Adapter/models/image_encoder/config.json",
        "ControlNet: lllyasviel/control_v11p_sd15_openpose/config.json",
        f"adapter: {HUB_REPO}/ip-adapter-faceid-plusv2_sd15.bin",
        "lcm-lora LoRA: latent-consistency/lcm-lora-sdv1-5/pytorch_lora_weights.safetensors",
    ]
    assert f"not in the Hugging Face cache ({cache}) and {unreachable_words()} (no answer within 3 s)" in message
    for command in (
        "hf download SG161222/Realistic_Vision_V4.0_noVAE",
        "hf download h94/IP-Adapter --include 'models/image_encoder/*'",
        f"hf download {HUB_REPO} ip-adapter-faceid-plusv2_sd15.bin",
        "hf download latent-consistency/lcm-lora-sdv1-5 pytorch_lora_weights.safetensors",
    ):
        assert f"\n  {command} --cache-dir {cache}\n" in message
    assert "connect to the network" in message and f"{HUB_TIMEOUT_ENV}=<seconds>" in message
    assert "set HF_HUB_OFFLINE=1 to work from the cache" in message
    assert raised.value.__cause__ is None
    assert len(unreachable_hub) == 1  # the probe; nothing retried

    with pytest.raises(ModelFilesMissingError) as raised:
        FacePipeline.from_pretrained(
            adapter="faceid-sd15", motion_adapter="guoyww/animatediff-motion-adapter-v1-5-2", cache_dir=str(cache)
        )
    assert "motion adapter: guoyww/animatediff-motion-adapter-v1-5-2/config.json" in listed(str(raised.value))
    assert len(unreachable_hub) == 1  # the probe's answer is kept for the process


def test_cached_models_load_with_the_hub_unreachable_without_asking_it(unreachable_hub, tmp_path):
    cache = tmp_path / "hub"
    populate_hf_cache("faceprompt-test/tiny-sd15", save_tiny_sd15(tmp_path / "base"), cache)
    adapter_folder = tmp_path / "adapter"
    adapter_state = random_faceid_state_dict(tiny_sd15_unet(), "mlp", lora_rank=4)
    save_checkpoint(load_checkpoint(adapter_state), adapter_folder / "trained.safetensors")
    populate_hf_cache("someone/trained-adapter", adapter_folder, cache)

    adapter = load_checkpoint("someone/trained-adapter/trained.safetensors", cache_dir=cache)
    face = FacePipeline.from_pretrained("faceprompt-test/tiny-sd15", adapter.state_dict(), cache_dir=str(cache))

    assert face("a photo", faceid_embeds=torch.randn(1, 512), seed=0, **RUN).images.shape == (1, 4, 4, 4)
    assert len(unreachable_hub) == 1  # the probe only: the cached files were read without asking the Hub


def test_components_fast_loras_and_the_evaluation_clip_with_the_hub_unreachable(unreachable_hub, tmp_path):
    cache = tmp_path / "hub"
    encoder = Source("h94/IP-Adapter", "CLIP image encoder", "models/image_encoder")
    with pytest.raises(ModelFilesMissingError) as raised:
        load_component(CLIPVisionModelWithProjection, encoder, torch_dtype=None, cache_dir=str(cache),
                       local_files_only=None)  # fmt: skip
    assert listed(str(raised.value)) == ["CLIP image encoder: h94/IP-Adapter/models/image_encoder/config.json"]

    with pytest.raises(ModelFilesMissingError) as raised:
        apply_fast_mode(tiny_sd15_pipeline(), FAST_MODES["hyper-sd"], cache_dir=str(cache))
    assert listed(str(raised.value)) == ["hyper-sd LoRA: ByteDance/Hyper-SD/Hyper-SD15-8steps-lora.safetensors"]

    with pytest.raises(EvaluationError) as raised:
        ClipScorer.from_pretrained(cache_dir=cache)
    message = str(raised.value)
    assert message.startswith("CLIP model openai/clip-vit-large-patch14: could not be loaded; without it, skip CLIP")
    assert listed(message) == ["CLIP model: openai/clip-vit-large-patch14/config.json"]
    assert (
        unreachable_words() in message and f"hf download openai/clip-vit-large-patch14 --cache-dir {cache}" in message
    )
    assert len(unreachable_hub) == 1


def test_a_separate_lora_from_the_hub_cache_with_the_hub_unreachable(unreachable_hub, tmp_path, monkeypatch):
    pipe = tiny_sd15_pipeline()
    folder = tmp_path / "lora"
    folder.mkdir()
    adapter = random_faceid_state_dict(pipe.unet, "mlp", lora_rank=4)
    save_file(lora_state_dict(adapter, pipe.unet), folder / "tiny_lora.safetensors")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    populate_hf_cache("someone/tiny-lora", folder, tmp_path / "hub")

    load_separate_lora(pipe, "someone/tiny-lora/tiny_lora.safetensors", fuse=False)
    assert pipe.get_list_adapters()["unet"] == ["faceid_lora"]

    with pytest.raises(ModelFilesMissingError) as raised:
        load_separate_lora(pipe, "someone/other-lora/other_lora.safetensors", adapter_name="other")
    assert listed(str(raised.value)) == ["FaceID LoRA: someone/other-lora/other_lora.safetensors"]
    assert len(unreachable_hub) == 1


# --------------------------------------------------------------------------------------------------------------------
# The probe
# --------------------------------------------------------------------------------------------------------------------


def test_the_probe_runs_once_per_process_until_forgotten(unreachable_hub):
    assert weights.hub_reachable() is False
    assert weights.hub_reachable() is False
    assert len(unreachable_hub) == 1
    weights.forget_hub_probe()
    assert weights.hub_reachable() is False
    assert len(unreachable_hub) == 2


def test_offline_settings_decide_without_a_probe(monkeypatch, fresh_probe):
    attempts = refuse_connections(monkeypatch)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert weights.offline_reason() == "downloading is switched off (HF_HUB_OFFLINE=1)"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert weights.offline_reason(local_files_only=True) == "downloading is switched off (local_files_only)"
    assert weights.local_files_only_now(True) is True
    assert attempts == []


class AnsweringSession:
    """huggingface_hub's session, answering every request (any HTTP answer means the Hub is there)."""

    def __init__(self):
        self.requests = []

    def head(self, url, timeout):
        self.requests.append((url, timeout))
        return object()


def test_an_answering_hub_leaves_downloading_to_the_libraries(monkeypatch, fresh_probe, tmp_path):
    session = AnsweringSession()
    monkeypatch.setattr(huggingface_hub, "get_session", lambda: session)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv(HUB_TIMEOUT_ENV, "1.5")

    assert weights.offline_reason() is None
    assert weights.local_files_only_now(None) is None and weights.local_files_only_now(False) is False
    not_cached = HubFile("owner/repo", "adapter.bin", "adapter")
    assert weights.require_hub_files([not_cached], cache_dir=tmp_path, local_files_only=None) is None
    assert session.requests == [(huggingface_hub.constants.ENDPOINT, 1.5)]


def test_a_hanging_connection_does_not_hang_the_probe(monkeypatch, fresh_probe):
    release, finished = threading.Event(), threading.Event()

    class HangingSession:
        def head(self, url, timeout):
            release.wait(30)  # a resolver that does not answer (the HTTP client's timeout does not cover it)
            finished.set()
            raise OSError("no answer")

    monkeypatch.setattr(huggingface_hub, "get_session", HangingSession)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv(HUB_TIMEOUT_ENV, "0.05")
    try:
        assert weights.hub_reachable() is False
        assert not finished.is_set()  # it gave up while the request was still waiting
    finally:
        release.set()


def test_the_timeout_setting(monkeypatch):
    monkeypatch.delenv(HUB_TIMEOUT_ENV, raising=False)
    assert weights.hub_timeout() == weights.DEFAULT_HUB_TIMEOUT == 3.0
    monkeypatch.setenv(HUB_TIMEOUT_ENV, " 0.5 ")
    assert weights.hub_timeout() == 0.5
    for bad in ("0", "-2", "nan", "inf", "soon"):
        monkeypatch.setenv(HUB_TIMEOUT_ENV, bad)
        with pytest.raises(SettingError, match=rf"^FACEPROMPT_HUB_TIMEOUT='{bad}': must be a positive number"):
            weights.hub_timeout()


# --------------------------------------------------------------------------------------------------------------------
# The message
# --------------------------------------------------------------------------------------------------------------------


def test_download_commands_fetch_what_the_loader_reads():
    assert HubFile("o/r", "a/b.bin", "adapter").download_command() == "hf download o/r a/b.bin"
    assert HubFile("o/r", "enc/config.json", "CLIP", scope="folder").download_command("/c") == (
        "hf download o/r --include 'enc/*' --cache-dir /c"
    )
    assert HubFile("o/r", "model_index.json", "base", scope="repo").download_command() == "hf download o/r"


def test_local_paths_alone_are_listed_without_hub_advice(tmp_path):
    with pytest.raises(ModelFilesMissingError) as raised:
        weights.require_hub_files([], local_problems=[f"VAE: {tmp_path}/vae (no such file or folder)"])
    message = str(raised.value)
    assert message.splitlines() == [
        "1 model file is missing:",
        f"  - VAE: {tmp_path}/vae (no such file or folder)",
        "To fix it: pass local files/folders instead.",
    ]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("owner/repo/adapter.bin", ("owner/repo", "adapter.bin")),
        ("owner/repo/sub/dir/adapter.safetensors", ("owner/repo", "sub/dir/adapter.safetensors")),
        ("./owner/repo/adapter.bin", None),
        ("/owner/repo/adapter.bin", None),
        ("owner/repo/adapter.txt", None),
        ("owner/adapter.bin", None),
        ("owner//adapter.bin", None),
        ("owner/repo/../adapter.bin", None),
        ("own er/repo/adapter.bin", None),
    ],
)
def test_hub_file_names(source, expected):
    assert weights.split_hub_file(source) == expected
