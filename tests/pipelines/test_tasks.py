"""FacePipeline tasks on the tiny offline models: every task is conditioned on the identity."""

import numpy as np
import pytest
import torch
from PIL import Image

from faceprompt import FacePipeline
from faceprompt.errors import AdapterError
from faceprompt.testing import tiny_sd15_pipeline
from faceprompt.testing.adapters import random_faceid_state_dict, random_id_embeds

RUN = dict(num_inference_steps=2, output_type="np")


@pytest.fixture()
def face():
    pipe = tiny_sd15_pipeline()
    return FacePipeline(pipe, random_faceid_state_dict(pipe.unet, "mlp", lora_rank=4, seed=1))


def _photo(seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8))


def test_task_errors(face):
    embeds = random_id_embeds(1)
    with pytest.raises(AdapterError, match="task inpaint needs mask_image"):
        face("x", faceid_embeds=embeds, task="inpaint", image=_photo(), **RUN)
    with pytest.raises(AdapterError, match="mask_image is 32x32 but image is 64x64"):
        face("x", faceid_embeds=embeds, image=_photo(), mask_image=Image.new("L", (32, 32), 255), **RUN)
    with pytest.raises(AdapterError, match="strength=1.5: input should be less than or equal to 1"):
        face("x", faceid_embeds=embeds, image=_photo(), strength=1.5, **RUN)
    with pytest.raises(AdapterError, match="task='upscale': input should be 'txt2img', 'img2img'"):
        face("x", faceid_embeds=embeds, task="upscale", **RUN)
    with pytest.raises(AdapterError, match="does not take colour"):
        face("x", faceid_embeds=embeds, colour="red", **RUN)


def _half_mask(side="right"):
    mask = np.zeros((64, 64), np.uint8)
    if side == "right":
        mask[:, 32:] = 255
    else:
        mask[:32, :] = 255
    return Image.fromarray(mask)


#: Each image task's inputs, and changes of them that diffusers answers with another image.
TASK_INPUTS = {
    "txt2img": (dict(width=64, height=64), []),
    "img2img": (dict(image=_photo(), strength=0.7), [dict(strength=0.4), dict(image=_photo(7))]),
    "inpaint": (
        dict(image=_photo(), mask_image=_half_mask(), strength=0.9, width=64, height=64),
        [dict(mask_image=_half_mask("top")), dict(image=_photo(7)), dict(strength=0.5)],
    ),
    "controlnet": (dict(control_image=_photo(3), width=64, height=64), [dict(control_image=_photo(8))]),
}


class _Family:
    """A FacePipeline and two plain diffusers pipelines of one family, all over the same tiny weights: ``reference``
    with the adapter file loaded by diffusers' ``load_ip_adapter`` (LoRA through peft), ``plain`` without it."""

    def __init__(self, family, folder):
        from faceprompt.testing import tiny_controlnet, tiny_sdxl_controlnet, tiny_sdxl_pipeline

        make_pipeline = tiny_sd15_pipeline if family == "sd15" else tiny_sdxl_pipeline
        make_controlnet = tiny_controlnet if family == "sd15" else tiny_sdxl_controlnet
        pipeline = make_pipeline(0)
        state = random_faceid_state_dict(pipeline.unet, "mlp", lora_rank=4, seed=1)
        adapter_file = folder / f"tiny-faceid-{family}.bin"
        torch.save(state, adapter_file)
        self.face = FacePipeline(pipeline, str(adapter_file))
        self.face.controlnet = make_controlnet(make_pipeline(0).unet, seed=0)
        self.reference = make_pipeline(0)
        self.reference.load_ip_adapter(str(folder), subfolder="", weight_name=adapter_file.name, image_encoder_folder=None)
        self.reference.set_ip_adapter_scale(SCALE)
        self.plain = make_pipeline(0)
        self.controlnet = make_controlnet(make_pipeline(0).unet, seed=0)
        self.family = family
        for pipe in (self.face.pipeline, self.reference, self.plain):
            pipe.set_progress_bar_config(disable=True)

    def diffusers_run(self, base, task, embeds=None, **inputs):
        """The task run by diffusers' own task pipeline over ``base``'s components."""
        import diffusers

        inputs = dict(inputs)
        classes = {
            "txt2img": "StableDiffusion{}Pipeline", "img2img": "StableDiffusion{}Img2ImgPipeline",
            "inpaint": "StableDiffusion{}InpaintPipeline", "controlnet": "StableDiffusion{}ControlNetPipeline",
        }
        pipeline_class = getattr(diffusers, classes[task].format("XL" if self.family == "sdxl" else ""))
        extra = {}
        if task == "controlnet":
            extra["controlnet"] = self.controlnet
            inputs["image"] = inputs.pop("control_image")
        pipe = pipeline_class.from_pipe(base, **extra)
        if embeds is not None:
            inputs["ip_adapter_image_embeds"] = [torch.cat([torch.zeros_like(embeds), embeds])[:, None]]
        return pipe("a photo", guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(0), **inputs, **TASK_RUN).images


SCALE = 0.7
GUIDANCE = 7.5  # FacePipeline's default for both families (SDXL pipelines default to 5.0)
#: 4 steps: strengths 0.4 ... 0.9 start denoising at different steps (with 2 steps, 0.4 would leave no step at all).
TASK_RUN = dict(num_inference_steps=4, output_type="np")


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapters")
    return {family: _Family(family, folder) for family in ("sd15", "sdxl")}


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("task", list(TASK_INPUTS))
def test_every_image_task_equals_the_diffusers_task_pipeline(families, family, task):
    """With the identity: equal to diffusers' own task pipeline with ``load_ip_adapter``, for the task's inputs and
    for each change of them (``image``, ``strength``, ``mask_image``, ``control_image``), each of which changes
    diffusers' image. At scale 0 without the LoRA: equal to the plain diffusers task pipeline."""
    setup = families[family]
    inputs, changes = TASK_INPUTS[task]
    embeds = random_id_embeds(1, seed=1)
    first = None
    for change in [{}] + changes:
        varied = {**inputs, **change}
        ours = setup.face("a photo", faceid_embeds=embeds, scale=SCALE, seed=0, **varied, **TASK_RUN)
        expected = setup.diffusers_run(setup.reference, task, embeds, **varied)
        assert ours.metadata[0]["task"] == task
        np.testing.assert_allclose(ours.images, expected, atol=1e-4, err_msg=f"{task} {change}")
        if first is None:
            first = expected
        else:
            assert np.abs(expected - first).max() > 1e-3, f"{change} leaves diffusers' image as it was"
    with setup.face.without_lora():
        zero = setup.face("a photo", faceid_embeds=embeds, scale=0.0, seed=0, **inputs, **TASK_RUN).images
    np.testing.assert_allclose(zero, setup.diffusers_run(setup.plain, task, **inputs), atol=1e-4)
    assert setup.face.task_pipeline(task).unet is setup.face.pipeline.unet  # shares the adapter-carrying UNet


def test_sdxl_controlnet_through_from_pretrained(tmp_path):
    """Folders loaded by from_pretrained give the latents of the same models built in memory, and the loaded
    ControlNet is the one that conditions (another control image, another result)."""
    from faceprompt.adapters import save_checkpoint
    from faceprompt.adapters.checkpoint import load_checkpoint
    from faceprompt.testing import save_tiny_sdxl, tiny_sdxl_controlnet, tiny_sdxl_pipeline, tiny_sdxl_unet

    base = save_tiny_sdxl(tmp_path / "base")
    controlnet = tmp_path / "controlnet"
    tiny_sdxl_controlnet(seed=0).save_pretrained(controlnet)
    adapter = tmp_path / "adapter.safetensors"
    save_checkpoint(load_checkpoint(random_faceid_state_dict(tiny_sdxl_unet(), "mlp", lora_rank=4)), adapter)
    face = FacePipeline.from_pretrained(str(base), str(adapter), controlnet=str(controlnet))
    assert type(face.pipeline).__name__ == "StableDiffusionXLPipeline"  # the folder names its class

    in_memory = tiny_sdxl_pipeline(0)
    in_memory.scheduler = face.pipeline.scheduler  # the scheduler choice is tested in test_from_pretrained.py
    expected_face = FacePipeline(in_memory, str(adapter))
    expected_face.controlnet = tiny_sdxl_controlnet(seed=0)
    call = dict(faceid_embeds=random_id_embeds(1), width=64, height=64, seed=0, num_inference_steps=2,
                output_type="latent")
    result = face("a photo", control_image=_photo(), **call)
    assert result.metadata[0]["task"] == "controlnet"
    assert type(face.task_pipeline("controlnet")).__name__ == "StableDiffusionXLControlNetPipeline"
    expected = expected_face("a photo", control_image=_photo(), **call).images
    assert torch.allclose(result.images, expected, atol=1e-5), (result.images - expected).abs().max()
    other_control = face("a photo", control_image=_photo(9), **call).images
    assert (other_control - result.images).abs().max() > 1e-3
