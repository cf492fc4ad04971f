"""AdaFace benchmark: what a face as words of the prompt costs per call and per denoising step, on full-size SD1.5.

Run from the repository root::

    python -m benchmarks.adaface                    # 512 px steps, 30 + 5 repeats
    python -m benchmarks.adaface --quick            # 256 px steps, 10 + 3 repeats: ~2 minutes on 2 idle cores
    python -m benchmarks.adaface --format markdown

Everything runs on the CPU in float32 with random weights; nothing is downloaded. Full size:

- the AdaFace encoder of the released sizes, built through :mod:`faceprompt.adaface`'s own classes: an Arc2Face
  text encoder (CLIP ViT-L/14 text model: 768 wide, 12 layers, 77 positions) and a prompt translator of the same
  size whose key/value projections are widened (``--kv-multipliers``, default x4 on all 12 layers: the training
  recipe widens them x4 in its second stage-1 round; the released values are not readable here), 16 tokens per
  identity, 512-d identity vectors;
- the SD1.5 text encoder (CLIP ViT-L/14 text model, 123M) and UNet (860M);
- a CLIP tokenizer of CLIP-L's size and layout (49408 tokens: 512 byte tokens, 48894 merges, start and end
  tokens), generated here because the real one cannot be downloaded: the template and prompt words are whole
  tokens as in CLIP-L (so ``id`` sits at position 4 of the Arc2Face template and the translator's slots start at 4),
  the other merges join non-ASCII byte characters. Its size matters: each AdaFace call copies the tokenizer.

Not full size: the VAE (the tiny one of :func:`faceprompt.testing.tiny_sd15_pipeline`; it is never called).

Measured, each in its own interleaved loop (every repeat runs every row once, in an order rotated from repeat to
repeat, after one warm-up call each; ratios are medians of per-repeat ratios to the reference row):

1. encoding one identity: the Arc2Face step, the translator, and the whole ``AdaFaceEncoder`` call (also with
   plain CLIP-L keys/values, x1, for comparison), against the pipeline's own prompt encoding;
2. prompt encoding (prompt and negative, as under classifier-free guidance): the pipeline's ``encode_prompt`` on a
   plain prompt vs :func:`faceprompt.adaface.encode_prompt` with one and two identities, and the cost of
   :func:`faceprompt.adaface.placeholder_tokens` entering and leaving alone;
3. one denoising step (one UNet call, batch 2): a plain prompt's embeddings vs an AdaFace prompt's (the same UNet,
   the same call) vs FaceID (a random full-size FaceID SD1.5 checkpoint, LoRA rank 128 fused, attached by
   :func:`faceprompt.adapters.attach_adapter` to a UNet sharing the other weights).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import pre_tokenizers
from torch import nn

from benchmarks._harness import (
    CpuShare,
    Table,
    key_value_table,
    machine_info,
    min_max,
    progress_log,
    quiet_libraries,
    render,
)
from benchmarks._models import SD15_TEXT_ENCODER, random_model, random_unet, sharing_copy

NUM_TOKENS = 16  # AdaFace tokens per identity (the Arc2Face-only release)
RELEASE_KV_MULTIPLIER = 4
LAYER_WEIGHTS_INIT = (1.0, 2.0, 4.0)  # the translator's last-3-layer weights at initialisation
TIMESTEP = 500
BATCH = 2  # classifier-free guidance: [negative; positive]

PROMPT_ONE = "a photo of z in a red coat on a city street at night, high quality"
PROMPT_TWO = "a photo of z hugging y in a park at sunset, high quality"
PROMPT_PLAIN = "a photo of a woman in a red coat on a city street at night, high quality"
NEGATIVE = "blurry, low quality"

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
CLIP_VOCAB_SIZE = 49408
CLIP_MAX_LENGTH = 77


# --- a CLIP-L-sized tokenizer ---------------------------------------------------------------------------------------


def _words() -> list[str]:
    """Words that are whole tokens: the AdaFace templates' and the benchmark prompts'."""
    from faceprompt.adaface.encoder import ARC2FACE_TEMPLATE, TRANSLATOR_PREFIX

    texts = (ARC2FACE_TEMPLATE, TRANSLATOR_PREFIX, PROMPT_ONE, PROMPT_TWO, PROMPT_PLAIN, NEGATIVE)
    words = {word.strip(",.") for text in texts for word in text.split()}
    return sorted(word for word in words if len(word) > 1)


def clip_sized_vocabulary() -> tuple[dict[str, int], list[str]]:
    """CLIP-L's layout: byte tokens, byte tokens + ``</w>``, one token per merge, the start and end tokens."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + [char + "</w>" for char in alphabet]
    known = set(tokens)
    merges: list[str] = []

    def merge(left: str, right: str) -> None:
        if left + right not in known:
            known.add(left + right)
            tokens.append(left + right)
            merges.append(f"{left} {right}")

    # Whole words first (the lowest ranks, as common words have in CLIP-L), longest first, so that no shorter
    # word's merge applies inside a longer word before the longer word's own merges.
    for word in sorted(_words(), key=len, reverse=True):
        symbols = [*word[:-1], word[-1] + "</w>"]
        for end in range(1, len(symbols)):
            merge("".join(symbols[:end]), symbols[end])
    wanted = CLIP_VOCAB_SIZE - 2 - len(alphabet) * 2
    filler = [char for char in alphabet if not ("!" <= char <= "~")]  # never occur in ASCII prompts
    pairs = ((left, right + suffix) for suffix in ("", "</w>") for left in filler for right in filler)
    for left, right in pairs:
        if len(merges) == wanted:
            break
        merge(left, right)
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: index for index, token in enumerate(tokens)}, merges


def clip_sized_tokenizer(folder: Path) -> Any:
    """A ``CLIPTokenizer`` loaded from the files of :func:`clip_sized_vocabulary`, written to ``folder``."""
    from transformers import CLIPTokenizer

    vocabulary, merges = clip_sized_vocabulary()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocabulary, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": CLIP_MAX_LENGTH, "do_lower_case": True,
              "bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": EOS_TOKEN}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    if len(tokenizer) != CLIP_VOCAB_SIZE:
        raise RuntimeError(f"the generated tokenizer has {len(tokenizer)} tokens, not {CLIP_VOCAB_SIZE}")
    split = [word for word in _words() if len(tokenizer.tokenize(word)) != 1]
    if split:
        raise RuntimeError(f"the generated tokenizer splits {split}")
    return tokenizer


# --- models --------------------------------------------------------------------------------------------------------


@dataclass
class Models:
    pipe: Any  # StableDiffusionPipeline: full-size UNet, text encoder and tokenizer
    encoder: Any  # AdaFaceEncoder, --kv-multipliers
    encoder_plain_kv: Any  # the same Arc2Face module and a translator with x1 keys/values
    faceid_unet: nn.Module
    faceid_conditioning: Callable[[], contextlib.AbstractContextManager]
    tokenizer: Any  # the pipeline's tokenizer and input token embedding before any AdaFace call
    token_embedding: nn.Module


def _text_config() -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(**SD15_TEXT_ENCODER)


def full_size_encoder(tokenizer: Any, kv_multipliers: Sequence[int], arc2face: nn.Module | None = None,
                      seed: int = 10) -> Any:  # fmt: skip
    """An AdaFace encoder of the released sizes with random weights (``arc2face``: reuse that Arc2Face module)."""
    from faceprompt.adaface import AdaFaceEncoder, Templates
    from faceprompt.adaface.clip import InjectableCLIPText
    from faceprompt.adaface.encoder import RELEASE_FACE_MODEL, RELEASE_ID_EMBEDDINGS_DIM

    config = _text_config()
    if arc2face is None:
        arc2face = random_model(lambda: InjectableCLIPText(config), seed)
    translator = random_model(lambda: InjectableCLIPText(config, kv_multipliers), seed + 1)
    templates = Templates.from_tokenizer(tokenizer, NUM_TOKENS, config.max_position_embeddings)
    layer_weights = torch.tensor(LAYER_WEIGHTS_INIT)[:, None]
    encoder = AdaFaceEncoder(arc2face, translator, layer_weights, templates, NUM_TOKENS, RELEASE_ID_EMBEDDINGS_DIM,
                             RELEASE_FACE_MODEL)  # fmt: skip
    return encoder.eval().requires_grad_(False)


def sd15_pipeline(unet: nn.Module, tokenizer: Any, seed: int = 0) -> Any:
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    from faceprompt.testing import tiny_sd15_pipeline

    tiny = tiny_sd15_pipeline(seed=seed)
    text_encoder = random_model(lambda: CLIPTextModel(_text_config()), seed + 1)
    pipe = StableDiffusionPipeline(vae=tiny.vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=tiny.scheduler, safety_checker=None, feature_extractor=None,
                                   image_encoder=None, requires_safety_checker=False)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def attach_faceid(base: nn.Module) -> tuple[nn.Module, Callable[[], contextlib.AbstractContextManager]]:
    """A UNet sharing ``base``'s weights with a random FaceID SD1.5 checkpoint attached (LoRA rank 128, fused), and
    the context that makes one identity's tokens active (``[negative; positive]`` rows, as under guidance)."""
    from faceprompt.adapters import ImagePrompt, attach_adapter, get_runtime, identity_tokens
    from faceprompt.testing.adapters import random_faceid_state_dict, random_id_embeds

    unet = sharing_copy(base, private_attention=True)  # the fused LoRA changes the attention projections
    state = random_faceid_state_dict(unet, "mlp", num_tokens=4, lora_rank=128, id_embeddings_dim=512, std=0.02,
                                     seed=1)  # fmt: skip
    adapter = attach_adapter(unet, state, lora="fused")
    cond, uncond = identity_tokens(adapter, random_id_embeds(1, seed=3))
    runtime = get_runtime(unet)
    return unet, lambda: runtime.conditioning({adapter.name: [ImagePrompt(cond, uncond)]}, True)


def build_models(kv_multipliers: Sequence[int], folder: Path, log: Callable[[str], None]) -> Models:
    log("generating a CLIP-L-sized tokenizer")
    tokenizer = clip_sized_tokenizer(folder / "tokenizer")
    log("building the SD1.5 UNet and text encoder")
    unet = random_unet()
    pipe = sd15_pipeline(unet, tokenizer)
    log(f"building the AdaFace encoder (K/V x{','.join(map(str, kv_multipliers))}) and one with x1 keys/values")
    encoder = full_size_encoder(tokenizer, kv_multipliers)
    plain_kv = full_size_encoder(tokenizer, [1] * len(kv_multipliers), arc2face=encoder.arc2face)
    log("attaching a random FaceID checkpoint")
    faceid_unet, conditioning = attach_faceid(unet)
    return Models(pipe, encoder, plain_kv, faceid_unet, conditioning, pipe.tokenizer,
                  pipe.text_encoder.get_input_embeddings())  # fmt: skip


# --- timing --------------------------------------------------------------------------------------------------------


@dataclass
class Timings:
    title: str
    reference: str
    rows: dict[str, Callable[[], Any]]
    seconds: dict[str, list[float]]
    ratios: dict[str, list[float]]
    repeats: int


def interleaved(title: str, rows: dict[str, Callable[[], Any]], repeats: int, log: Callable[[str], None]) -> Timings:
    """Time every row once per repeat, in an order rotated from repeat to repeat, after one warm-up call each; the
    first row is the reference of the ratios."""
    reference = next(iter(rows))
    for work in rows.values():
        work()
    seconds: dict[str, list[float]] = {label: [] for label in rows}
    ratios: dict[str, list[float]] = {label: [] for label in rows}
    labels = list(rows)
    for repeat in range(repeats):
        shift = repeat % len(labels)
        this_round = {}
        for label in labels[shift:] + labels[:shift]:
            start = time.perf_counter()
            rows[label]()
            this_round[label] = time.perf_counter() - start
        for label, value in this_round.items():
            seconds[label].append(value)
            ratios[label].append(value / this_round[reference])
        if repeats <= 10 or (repeat + 1) % 10 == 0:
            log(f"  {title}: repeat {repeat + 1}/{repeats}")
    return Timings(title, reference, rows, seconds, ratios, repeats)


def timing_table(timings: Timings, title: str, labels: Sequence[str], unit: str = "ms") -> Table:
    scale = 1000.0 if unit == "ms" else 1.0
    fmt = "{:.1f}" if unit == "ms" else "{:.2f}"
    rows = []
    for label in [timings.reference, *labels]:
        values = [value * scale for value in timings.seconds[label]]
        ratios = timings.ratios[label]
        is_reference = label == timings.reference
        rows.append([label, fmt.format(statistics.median(values)), min_max(values, fmt),
                     "1.000" if is_reference else f"{statistics.median(ratios):.3f}",
                     "-" if is_reference else min_max(ratios, "{:.3f}")])  # fmt: skip
    return Table(f"{title}, median of {timings.repeats} interleaved repeats",
                 ["", unit, "min-max", f"x {timings.reference.split(':')[0]}", "min-max"], rows, left=1)  # fmt: skip


# --- the three measurements ----------------------------------------------------------------------------------------

ENCODE_PLAIN = "plain prompt: pipe.encode_prompt"
ENCODE_ONE = "AdaFace prompt, 1 person: adaface.encode_prompt"
ENCODE_TWO = "AdaFace prompt, 2 people (in place): adaface.encode_prompt"
PLACEHOLDERS = "placeholder_tokens() entered and left, 1 person"
ARC2FACE_STEP = "identity: Arc2Face step (encoder.id_prompt)"
TRANSLATOR = "identity: translator (encoder.translate)"
WHOLE = "identity: AdaFaceEncoder(id_embeds), K/V x{}"
WHOLE_PLAIN_KV = "identity: AdaFaceEncoder(id_embeds), K/V x1 (plain CLIP-L)"

STEP_PLAIN = "plain prompt"
STEP_ADAFACE = "AdaFace prompt (1 person)"
STEP_FACEID = 'FaceID, lora="fused" (plain prompt + 4 image tokens)'


def encoding_rows(models: Models, kv_label: str) -> dict[str, Callable[[], Any]]:
    from faceprompt.adaface import encode_prompt, placeholder_tokens
    from faceprompt.testing.adapters import random_id_embeds

    pipe, encoder = models.pipe, models.encoder
    id_embeds = random_id_embeds(2, seed=5)
    tokens = encoder(id_embeds)
    z, y = tokens[0], tokens[1]
    image_prompt = encoder.id_prompt(id_embeds[:1])

    def plain() -> Any:
        return pipe.encode_prompt(PROMPT_PLAIN, "cpu", 1, True, negative_prompt=NEGATIVE)

    def placeholders_only() -> None:
        with placeholder_tokens(pipe, {"z": z}) as rewrite:
            rewrite(PROMPT_ONE)

    return {
        ENCODE_PLAIN: plain,
        ENCODE_ONE: lambda: encode_prompt(pipe, PROMPT_ONE, {"z": z}, NEGATIVE, device="cpu"),
        ENCODE_TWO: lambda: encode_prompt(pipe, PROMPT_TWO, {"z": z, "y": y}, NEGATIVE, device="cpu"),
        PLACEHOLDERS: placeholders_only,
        ARC2FACE_STEP: lambda: encoder.id_prompt(id_embeds[:1]),
        TRANSLATOR: lambda: encoder.translate(image_prompt),
        kv_label: lambda: encoder(id_embeds[:1]),
        WHOLE_PLAIN_KV: lambda: models.encoder_plain_kv(id_embeds[:1]),
    }


def step_inputs(models: Models, size: int) -> dict[str, torch.Tensor]:
    """Latents and the ``[negative; positive]`` text embeddings of a plain and an AdaFace prompt."""
    from faceprompt.adaface import encode_prompt
    from faceprompt.testing.adapters import random_id_embeds

    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(BATCH, 4, size // 8, size // 8, generator=generator)
    positive, negative = models.pipe.encode_prompt(PROMPT_PLAIN, "cpu", 1, True, negative_prompt=NEGATIVE)
    z = models.encoder(random_id_embeds(1, seed=5))[0]
    adaface = encode_prompt(models.pipe, PROMPT_ONE, {"z": z}, NEGATIVE, device="cpu")
    return {
        "latents": latents,
        "plain": torch.cat([negative, positive]),
        "adaface": torch.cat([adaface["negative_prompt_embeds"], adaface["prompt_embeds"]]),
    }


def step_rows(models: Models, inputs: dict[str, torch.Tensor]) -> dict[str, Callable[[], Any]]:
    unet, faceid, latents = models.pipe.unet, models.faceid_unet, inputs["latents"]
    timestep = torch.tensor(TIMESTEP)
    return {
        STEP_PLAIN: lambda: unet(latents, timestep, inputs["plain"]).sample,
        STEP_ADAFACE: lambda: unet(latents, timestep, inputs["adaface"]).sample,
        STEP_FACEID: lambda: faceid(latents, timestep, inputs["plain"]).sample,
    }


def checks_table(models: Models, inputs: dict[str, torch.Tensor], steps: dict[str, Callable[[], Any]]) -> Table:
    """What the timed calls computed: the AdaFace prompt changes the positive embeddings only, the pipeline is left
    as it was, and the UNet output follows the prompt."""
    pipe = models.pipe
    same_tokenizer = pipe.tokenizer is models.tokenizer and len(pipe.tokenizer) == CLIP_VOCAB_SIZE
    same_embedding = pipe.text_encoder.get_input_embeddings() is models.token_embedding
    plain, adaface = inputs["plain"], inputs["adaface"]
    outputs = {label: work() for label, work in steps.items()}

    def difference(first: torch.Tensor, second: torch.Tensor) -> str:
        return f"{float((first - second).abs().max()):.2e}"

    rows = [
        ["prompt embeddings, plain and AdaFace", f"{list(plain.shape)} / {list(adaface.shape)}"],
        ["negative embeddings: max abs difference AdaFace - plain", difference(adaface[:1], plain[:1])],
        ["positive embeddings: max abs difference AdaFace - plain", difference(adaface[1:], plain[1:])],
        ["UNet output: max abs difference AdaFace prompt - plain prompt", difference(outputs[STEP_ADAFACE], outputs[STEP_PLAIN])],
        ["UNet output: max abs difference FaceID - plain prompt", difference(outputs[STEP_FACEID], outputs[STEP_PLAIN])],
        ["after all calls: the pipeline's own tokenizer, still 49408 tokens", "yes" if same_tokenizer else "NO"],
        ["after all calls: the text encoder's own input embedding", "yes" if same_embedding else "NO"],
    ]
    return Table("What the timed calls computed", ["check", "value"], rows)


# --- main ----------------------------------------------------------------------------------------------------------


def _summary(encoding: Timings, steps: Timings, whole: str, size: int) -> Table:
    def ms(label: str) -> float:
        return statistics.median(encoding.seconds[label]) * 1000

    per_call = ms(whole) + ms(ENCODE_ONE) - ms(ENCODE_PLAIN)
    step_ms = statistics.median(steps.seconds[STEP_PLAIN]) * 1000
    rows = [
        ["added per call, 1 person: encoder + (AdaFace - plain prompt encoding)", f"{per_call:.0f} ms"],
        [f"one plain UNet step at {size} px (batch {BATCH})", f"{step_ms:.0f} ms"],
        ["added per call / one step", f"{per_call / step_ms:.2f} steps"],
        ["added per call / 30 steps", f"{per_call / (30 * step_ms):.1%}"],
        ["added per step (AdaFace prompt vs plain prompt, median of per-repeat ratios)",
         f"{(statistics.median(steps.ratios[STEP_ADAFACE]) - 1):+.1%}"],
        ["added per step by FaceID (fused), same loop", f"{(statistics.median(steps.ratios[STEP_FACEID]) - 1):+.1%}"],
    ]  # fmt: skip
    return Table("Summary", ["", ""], rows)


def run(args: argparse.Namespace) -> str:
    quiet_libraries()
    started = time.perf_counter()
    log = progress_log(started)
    share = CpuShare()
    share.start()
    whole = WHOLE.format(",".join(map(str, sorted(set(args.kv_multipliers)))))
    with tempfile.TemporaryDirectory(prefix="faceprompt-bench-") as folder, torch.inference_mode():
        models = build_models(args.kv_multipliers, Path(folder), log)
        log(f"identity and prompt encoding, {args.repeats} repeats")
        encoding = interleaved("encoding", encoding_rows(models, whole), args.repeats, log)
        log(f"UNet steps at {args.size} px, {args.step_repeats} repeats")
        inputs = step_inputs(models, args.size)
        with models.faceid_conditioning():  # open for the whole loop: FaceID's image keys/values computed once
            steps = interleaved("UNet step", step_rows(models, inputs), args.step_repeats, log)
            checks = checks_table(models, inputs, steps.rows)
    others = share.stop()
    info = machine_info(["torch", "diffusers", "transformers"])
    info["command"] = " ".join(["python -m benchmarks.adaface", *args.argv])
    info["other load"] = f"other processes used {others:.0%} of the CPU during the run" if others is not None else "?"
    info["wall time"] = f"{time.perf_counter() - started:.0f} s"
    multipliers = ",".join(map(str, models.encoder.kv_multipliers))
    identity = timing_table(
        encoding,
        f"Encoding one identity (AdaFace encoder: 2 x CLIP-L text, {NUM_TOKENS} tokens, translator K/V "
        f"x{multipliers} per layer), ms",
        [ARC2FACE_STEP, TRANSLATOR, whole, WHOLE_PLAIN_KV],
    )
    identity.notes.append(
        "the reference row is the plain prompt encoding, timed in the same loop; identity rows are batch 1 (one "
        "person); the Arc2Face step runs 22 tokens, the translator 77"
    )
    prompts = timing_table(
        encoding,
        "Prompt encoding with classifier-free guidance (prompt + negative, full-size text encoder, CLIP-L-sized "
        "tokenizer), ms",
        [ENCODE_ONE, ENCODE_TWO, PLACEHOLDERS],
    )
    step = timing_table(
        steps, f"One denoising step (UNet call, batch {BATCH}, {args.size} px), s", [STEP_ADAFACE, STEP_FACEID], "s"
    )
    step.notes.append(
        "the AdaFace and plain rows are the same UNet object and the same call, only the embeddings differ; FaceID's "
        "image keys/values are computed in the warm-up call, as in a pipeline's steps 2..N"
    )
    tables = [key_value_table(info), identity, prompts, step, _summary(encoding, steps, whole, args.size), checks]
    return render(tables, args.format)


def _multipliers(text: str) -> list[int]:
    try:
        values = [int(value) for value in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"K/V multipliers must be integers separated by commas, got {text!r}") from None
    if len(values) == 1:
        values *= SD15_TEXT_ENCODER["num_hidden_layers"]
    if len(values) != SD15_TEXT_ENCODER["num_hidden_layers"] or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"give one multiplier >= 1, or {SD15_TEXT_ENCODER['num_hidden_layers']} (one per layer), got {text!r}"
        )
    return values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.adaface", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 256 px steps, fewer repeats (~2 minutes)")
    parser.add_argument("--repeats", type=int, default=0, help="encoding repeats (default 30; --quick: 10)")
    parser.add_argument("--step-repeats", type=int, default=0, help="UNet step repeats (default 5; --quick: 3)")
    parser.add_argument("--size", type=int, default=0, help="image size for the steps (default 512; --quick: 256)")
    parser.add_argument("--kv-multipliers", type=_multipliers, default=[RELEASE_KV_MULTIPLIER] * 12,
                        help="translator K/V widening: one value or 12 comma-separated (default 4)")  # fmt: skip
    parser.add_argument("--format", choices=("plain", "markdown"), default="plain")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.repeats = args.repeats or (10 if args.quick else 30)
    args.step_repeats = args.step_repeats or (3 if args.quick else 5)
    args.size = args.size or (256 if args.quick else 512)
    print(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
