"""GenerateRequest: one validated request type. Round trips, every rule, and a property test over drawn requests."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faceprompt.errors import FacepromptError, RequestError
from faceprompt.identity import Identity
from faceprompt.pipelines import GenerateRequest, IdentityRef, ModelOptions, Region
from faceprompt.pipelines.request import DEFAULT_MAX_PIXELS, MAX_OUTPUTS, MAX_SEED, SCALE_RANGE, S_SCALE_RANGE


@pytest.fixture()
def identity_file(tmp_path):
    person = Identity(embeddings=np.random.default_rng(0).normal(size=(1, 512)).astype(np.float32),
                      face_model="insightface/buffalo_l", name="p")
    return str(person.save(tmp_path / "p.safetensors"))


@pytest.fixture()
def photo(tmp_path, astronaut_path):
    return str(astronaut_path)


def test_round_trip_through_json(identity_file, photo, tmp_path):
    request = GenerateRequest(
        prompt=["a photo of a person", "a painting"], negative_prompt="blurry", width=512, height=768, steps=20,
        guidance=5.5, scale=0.8, s_scale=1.5, shortcut=True, start=0.1, end=0.9, seed=42, num_images=2,
        scheduler="euler", image=photo, strength=0.6, style_image=photo, style_scale=0.5,
        identity={"file": identity_file},
    )
    record = json.loads(json.dumps(request.to_dict()))
    again = GenerateRequest.from_dict(record)
    assert again == request and again.to_dict() == record
    assert record["identity"] == {"file": identity_file, "backend": "auto", "min_face_size": 64.0}
    assert "mask_image" not in record and "regions" not in record  # unset options stay out of the record
    assert (again.resolved_task, again.num_outputs, again.prompts) == ("img2img", 4, ["a photo of a person", "a painting"])


def test_regions_and_photos_round_trip(identity_file, photo):
    request = GenerateRequest(
        prompt="two people", regions=[Region(photo, identity=identity_file, scale=0.5),
                                      Region(mask=photo, identity={"photos": [photo], "backend": "dlib"})],
    )
    again = GenerateRequest.from_dict(json.loads(json.dumps(request.to_dict())))
    assert again == request
    assert isinstance(again.regions[1].identity, IdentityRef) and again.regions[1].identity.backend == "dlib"


def test_from_dict_refuses_unknown_keys_and_non_objects(identity_file):
    with pytest.raises(RequestError, match="scael=1.0: extra inputs are not permitted"):
        GenerateRequest.from_dict({"prompt": "x", "identity": identity_file, "scael": 1.0})
    with pytest.raises(RequestError, match="must be a JSON object, got list"):
        GenerateRequest.from_dict(["x"])


def test_in_memory_inputs_are_recorded_by_content(astronaut_rgb):
    from PIL import Image

    person = Identity(embeddings=np.ones((1, 8), np.float32), face_model="test")
    request = GenerateRequest(prompt="x", identity=person, image=Image.fromarray(astronaut_rgb))
    record = request.to_dict()
    assert record["identity"].startswith("<Identity ") and "test" in record["identity"]
    assert record["image"].startswith(f"<image {astronaut_rgb.shape[1]}x{astronaut_rgb.shape[0]} sha256:")
    with pytest.raises(RequestError) as caught:
        GenerateRequest.from_dict(record)  # a record of in-memory inputs says so instead of guessing
    assert "stands for an in-memory image of the original call" in str(caught.value)
    assert "stands for an in-memory Identity of the original call" in str(caught.value)


@pytest.mark.parametrize("options, message", [
    (dict(steps=0), "steps=0: input should be greater than or equal to 1"),
    (dict(steps=True), "steps=True: give a number, not true/false"),
    (dict(max_pixels=100), "max_pixels=100: input should be greater than or equal to 4096"),
    (dict(steps=1001), "steps=1001: input should be less than or equal to 1000"),
    (dict(guidance=float("nan")), "guidance=nan: input should be a finite number"),
    (dict(guidance=-1.0), "guidance=-1.0: input should be greater than or equal to 0"),
    (dict(scale=float("inf")), "scale=inf: input should be a finite number"),
    (dict(scale=3.5), "scale=3.5: must lie within [-1.0, 3.0]"),
    (dict(s_scale=-2.0), "s_scale=-2.0: must lie within [-1.0, 5.0]"),
    (dict(width=100), "width=100: input should be a multiple of 8"),
    (dict(height=0), "height=0: input should be greater than 0"),
    (dict(width=8192, height=8192), "8192x8192 is over the pixel budget of 4194304 pixels per image (max_pixels)"),
    (dict(width=65536, height=8), "65536x8 is over the pixel budget"),
    (dict(num_images=0), "num_images=0: input should be greater than or equal to 1"),
    (dict(num_images=300), "num_images=300: input should be less than or equal to 256"),
    (dict(prompt=["x"] * 100, num_images=3), "100 prompts x num_images=3 = 300 outputs, over the limit of 256"),
    (dict(num_frames=0), "num_frames=0: input should be greater than or equal to 1"),
    (dict(fps=float("nan")), "fps=nan: input should be a finite number"),
    (dict(start=0.8, end=0.2), "end=0.2 is out of range: it is before start=0.8"),
    (dict(seed=-1), "seed=-1: input should be greater than or equal to 0"),
    (dict(seed=MAX_SEED, num_images=2), "passes the largest seed 2**64-1"),
    (dict(scheduler="fastest"), "scheduler='fastest': unknown scheduler"),
    (dict(fast="turbo"), "fast='turbo': unknown fast mode"),
    (dict(task="upscale"), "task='upscale': input should be 'txt2img'"),
    (dict(task="inpaint", image="PHOTO"), "task inpaint needs mask_image"),
    (dict(task="controlnet"), "task controlnet needs control_image"),
    (dict(mask_image="PHOTO"), "task inpaint needs image"),
    (dict(strength=0.5), "strength is for img2img and inpaint, not txt2img"),
    (dict(strength=0.0, image="PHOTO"), "strength=0.0: input should be greater than 0"),
    (dict(strength=0.4, steps=2, image="PHOTO"), "strength=0.4 x steps=2 leaves no denoising step"),
    (dict(num_frames=8, task="txt2img"), "num_frames is for the video task, not txt2img"),
    (dict(image="nowhere.png"), "nowhere.png is not a file; give the path of an image"),
    (dict(prompt=[]), "prompt=[]: give at least one prompt"),
    (dict(negative_prompt=["a", "b"]), "2 negative prompts for 1 prompts"),
    (dict(identity=None), "no identity given"),
    (dict(identity={"file": "missing.safetensors"}), "identity file missing.safetensors does not exist"),
    (dict(identity={"photos": ["missing.jpg"]}), "photo missing.jpg is not a file"),
    (dict(identity={"file": "FILE", "photos": ["PHOTO"]}), "give exactly one of file, photos or id"),
    (dict(identity=42), "expected an Identity, an identity file"),
    (dict(identities={"z": "FILE"}), "placeholder 'z' does not appear in the prompt"),
    (dict(identities={"two words": "FILE"}, prompt="two words"), "must be one word"),
    (dict(regions=[]), "an empty list of regions"),
    (dict(identity=None, faceid_embeds=[]), "face embeddings must be [d], [B, d] or [B, n, d] with d > 0"),
    (dict(identity=None, faceid_embeds="abc"), "expected an array of face embeddings, got str"),
    (dict(identity=None, faceid_embeds=[[1.0, float("nan")]]), "face embeddings hold NaN or infinite values"),
])
def test_each_rule_names_the_value_and_the_fix(identity_file, photo, options, message):
    substitutes = {"PHOTO": photo, "FILE": identity_file}

    def substitute(value):
        if isinstance(value, str):
            return substitutes.get(value, value)
        if isinstance(value, dict):
            return {key: substitute(item) for key, item in value.items()}
        if isinstance(value, list):
            return [substitute(item) for item in value]
        return value

    fields = {"prompt": "a photo", "identity": identity_file, **{k: substitute(v) for k, v in options.items()}}
    if "identities" in options:
        fields.pop("identity")
    if "regions" in options:
        fields.pop("identity")
    with pytest.raises(RequestError) as caught:
        GenerateRequest(**fields)
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError) and caught.value.errors  # a ValueError, with the problems listed


def test_assignments_and_records_are_checked_the_same_way(identity_file):
    request = GenerateRequest(prompt="x", identity=identity_file)
    with pytest.raises(RequestError, match="steps=0: input should be greater than or equal to 1"):
        request.steps = 0
    request.steps = 12
    assert request.steps == 12
    with pytest.raises(RequestError):
        GenerateRequest.from_dict({1: 2, "prompt": "x", "identity": identity_file})


@pytest.mark.parametrize("options, message", [
    (dict(image=np.zeros((0, 0, 3), np.uint8)), "not empty"),
    (dict(image=[]), "an empty list of images"),
    (dict(identity=None, faceid_embeds=np.zeros((1, 512))), "a face embedding is all zeros"),
    (dict(fast="lcm-lora", scheduler="euler"), "fast=lcm-lora brings its own scheduler"),
    (dict(fps=0.05), "fps=0.05: input should be greater than or equal to 0.1"),
])
def test_in_memory_inputs_are_checked(identity_file, options, message):
    with pytest.raises(RequestError) as caught:
        GenerateRequest(**{"prompt": "x", "identity": identity_file, **options})
    assert message in str(caught.value)


def test_lists_of_images_as_diffusers_takes_them(identity_file, astronaut_rgb):
    from PIL import Image

    image = Image.fromarray(astronaut_rgb)
    request = GenerateRequest(prompt=["a", "b"], identity=identity_file, image=[image, image], strength=0.5)
    assert len(request.image) == 2 and request.resolved_task == "img2img"


def test_placeholders_in_the_prompt(identity_file):
    request = GenerateRequest(prompt="a z hugging a y", identities={"z": identity_file, "y": identity_file})
    assert sorted(request.identities) == ["y", "z"]


def test_json_schema_for_the_service():
    schema = GenerateRequest.model_json_schema()
    assert schema["additionalProperties"] is False
    assert schema["properties"]["steps"]["description"].startswith("denoising steps")
    assert schema["properties"]["image"]["type"] == "string"


@pytest.mark.parametrize("options, message", [
    (dict(adapter="no-such-name", model="tiny"), "adapter='no-such-name': not a registry name"),
    (dict(variant="faceid-v9"), "variant='faceid-v9': unknown variant"),
    (dict(device="cuda"), "this machine's torch has no cuda device"),
    (dict(device="toaster"), "not a device name"),
    (dict(offload=True), "offload moves models between the CPU and a GPU"),
    (dict(fast="lightning"), "fast mode lightning has no LoRA for sd15 models"),
    (dict(video=True, adapter="faceid-sdxl"), "the video task runs AnimateDiff, which is for SD1.5 bases"),
    (dict(model="tiny", base="x/y"), "model=tiny builds its own random models; drop base"),
    (dict(dtype="float8"), "dtype='float8': input should be 'float32'"),
])
def test_model_options_are_checked_before_loading(options, message):
    with pytest.raises(RequestError, match=None) as caught:
        ModelOptions(**options)
    assert message in str(caught.value)


def test_model_options_round_trip():
    options = ModelOptions(adapter="faceid-sdxl", fast="lightning", scheduler="euler", vae_tiling=True)
    assert ModelOptions.from_dict(json.loads(json.dumps(options.to_dict()))) == options
    assert options.family == "sdxl" and options.known_variant.name == "faceid-sdxl"


# --- property test: any drawn request validates or fails with a FacepromptError and a message ---------------------

_numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 8, 64, 512, 0.5, 1.0, 3.0]),
)
_values = st.one_of(
    st.none(), st.booleans(), _numbers, st.text(max_size=12), st.lists(st.text(max_size=6), max_size=3),
    st.dictionaries(st.sampled_from(["file", "photos", "id", "backend", "bogus"]), st.text(max_size=6), max_size=2),
)
#: Every field a JSON body can hold (faceid_embeds and face_image are in-memory Python inputs), and two wrong names.
_field_names = st.sampled_from(
    [*(name for name in GenerateRequest.model_fields if name not in ("faceid_embeds", "face_image")), "bogus",
     "num_inference_steps"]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=st.dictionaries(_field_names, _values, max_size=8), with_identity=st.booleans())
def test_any_request_validates_or_fails_with_a_message(identity_file, fields, with_identity):
    record = {"prompt": "a photo", **({"identity": identity_file} if with_identity else {}), **fields}
    try:
        request = GenerateRequest.from_dict(record)
    except FacepromptError as error:
        assert isinstance(error, RequestError) and str(error).strip()
        return
    # accepted: the request is internally consistent
    assert request.num_outputs <= MAX_OUTPUTS and request.prompts
    assert SCALE_RANGE[0] <= request.scale <= SCALE_RANGE[1] and S_SCALE_RANGE[0] <= request.s_scale <= S_SCALE_RANGE[1]
    assert (request.width or 0) * (request.height or 0) <= request.max_pixels
    assert all(math.isfinite(value) for value in (request.scale, request.s_scale, request.fps, request.start, request.end))
    assert GenerateRequest.from_dict(json.loads(json.dumps(request.to_dict()))) == request


def test_default_pixel_budget_is_2048_squared():
    assert DEFAULT_MAX_PIXELS == 2048 * 2048
