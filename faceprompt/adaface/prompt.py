"""Identity tokens as words of the prompt, in any diffusers pipeline.

A text-space identity encoder turns a face into ``N`` token embeddings ``[N, C]`` of the base model's CLIP-L text
encoder (``C`` its input width). They enter the pipeline the way a word does: for the duration of a call,
:func:`placeholder_tokens` gives the pipeline's tokenizer ``N`` new tokens per placeholder word, lets the text
encoder's *input* token embedding map those token ids to the vectors, and rewrites prompts so that the placeholder
word (``z`` in ``"a photo of z"``) becomes its tokens. The pipeline's own ``encode_prompt`` and UNet calls then run
unchanged, which is why every pipeline (txt2img, img2img, inpaint, ControlNet, AnimateDiff) takes it as it is.
:func:`encode_prompt` does the same for callers that drive a plain pipeline with ``prompt_embeds=``.

SDXL: only ``tokenizer`` / ``text_encoder`` (CLIP-L) see identity tokens; the second encoder, and with it the pooled
embedding, reads the plain prompt (the placeholders removed), passed as ``prompt_2``.

Placeholders are checked before any model runs (:func:`check_placeholders`): each must occur in the prompt as a
word, be a single token of the tokenizer and not a common word; a single-letter word other than ``a`` / ``i`` that
no identity declares is refused, because a forgotten identity would otherwise silently become text.
"""

from __future__ import annotations

import copy
import re
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import nn

from ..errors import AdaFaceError

PromptMode = Literal["auto", "append", "in_place"]
#: One identity's tokens: a tensor ``[N, C]``, or one tensor per encoder branch of a joint encoder (appended once
#: each, after a copy of the prompt of its own, in ``"append"`` mode).
IdentityTokens = torch.Tensor | Sequence[torch.Tensor]

#: CLIP's vocabulary numbers its tokens in BPE merge order, that is by frequency: after the 512 single characters
#: (with and without the end-of-word mark) come the most frequent merges. A whole-word token with a smaller id than
#: this is one of the commonest words (``man``, ``photo``, ``dog``) and is refused as a placeholder.
COMMON_WORD_TOKEN_IDS = 10_000
#: Single-letter words that are English words, never placeholders.
SINGLE_LETTER_WORDS = frozenset({"a", "i"})

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# A word starts after no word character and no apostrophe (the "s" of "z's" and the "t" of "don't" are not words)
# and ends before no word character; hyphenated words ("t-shirt", "x-ray") are one word.
_WORD_START = r"(?<![A-Za-z0-9_'\u2019-])"
_WORD_END = r"(?![A-Za-z0-9_-])"
_SINGLE_LETTER = re.compile(_WORD_START + r"([A-Za-z])" + _WORD_END)
_TOKEN_FORMAT = "<|faceprompt_identity_{}_{}_{}|>"


def _word(name: str) -> re.Pattern[str]:
    return re.compile(_WORD_START + re.escape(name) + _WORD_END)


def _as_list(prompt: str | Sequence[str]) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(text, str) for text in prompts):
        raise AdaFaceError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}")
    return prompts


# --------------------------------------------------------------------------------------------------------------------
# Placeholder rules
# --------------------------------------------------------------------------------------------------------------------


def _name_problem(name: str, tokenizer: Any) -> str | None:
    """Why ``name`` cannot be a placeholder of ``tokenizer`` (``None`` when it can)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return f"placeholder {name!r} must be one word of letters, digits or '_' starting with a letter (e.g. 'z')"
    pieces = tokenizer.tokenize(name)
    if len(pieces) != 1:
        return (
            f"placeholder {name!r} is {len(pieces)} tokens of the tokenizer ({' '.join(pieces)}), so it cannot stand "
            "for one identity; use a word that is one token, such as a rare single letter ('z', 'y')"
        )
    if name.lower() in SINGLE_LETTER_WORDS:
        return f"placeholder {name!r} is an English word; use another single letter ('z', 'y')"
    token_id = tokenizer.convert_tokens_to_ids(pieces[0])
    if len(name) > 1 and token_id < COMMON_WORD_TOKEN_IDS:
        return (
            f"placeholder {name!r} is a common word (token {token_id} among the tokenizer's {COMMON_WORD_TOKEN_IDS} "
            "most frequent), so the prompt could not use it as a word; use a rare single letter ('z', 'y')"
        )
    return None


def check_placeholders(prompts: str | Sequence[str], names: Iterable[str], tokenizer: Any) -> None:
    """Refuse placeholders that cannot work, before any model runs; every problem is named in one AdaFaceError.

    - each name occurs as a word in at least one of ``prompts`` (``"z's"`` counts, ``"z-like"`` does not);
    - each name is one token of ``tokenizer`` (a CLIP tokenizer) and not a common word: not ``a`` / ``i``, and not a
      whole-word token among the :data:`COMMON_WORD_TOKEN_IDS` most frequent;
    - no prompt holds a single-letter word other than ``a`` / ``i`` that is not a declared name (a forgotten identity
      would otherwise become plain text). Letters after an apostrophe (``don't``, ``z's``) are not words.
    """
    prompts = _as_list(prompts)
    names = list(names)
    problems = [problem for name in names if (problem := _name_problem(name, tokenizer))]
    for name in names:
        if isinstance(name, str) and _NAME.fullmatch(name) and not any(_word(name).search(p) for p in prompts):
            problems.append(
                f"placeholder {name!r} does not appear in the prompt as a word; write it where the person belongs, "
                f"e.g. 'a photo of {name}'"
            )
    declared = set(names)
    strays = sorted(
        {letter for text in prompts for letter in _SINGLE_LETTER.findall(text)}
        - declared
        - {letter for letter in "aAiI"}
    )
    for letter in strays:
        problems.append(
            f"the single-letter word {letter!r} in the prompt is not a declared placeholder; give it an identity "
            f"({letter}=...) or write the word out, or it would silently become plain text"
        )
    if problems:
        raise AdaFaceError("; ".join(problems))


# --------------------------------------------------------------------------------------------------------------------
# Prompt rewriting
# --------------------------------------------------------------------------------------------------------------------


def _removal(name: str) -> re.Pattern[str]:
    """``name`` as a word, with a possessive after it and an article (a, an, the) right before it."""
    return re.compile(
        r"(?:(?<![A-Za-z0-9_])(?i:an?|the)\s+)?" + _WORD_START + re.escape(name) + r"(?:['\u2019]s)?" + _WORD_END
    )


def _tidy(text: str) -> str:
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    text = re.sub(r"([,;])(?:\s*[,;])+", r"\1", text)
    return re.sub(r"\s{2,}", " ", text).strip(" ,;")


def plain_prompt(prompt: str, names: Iterable[str]) -> str:
    """``prompt`` without the placeholder words (and an article right before each): the text an encoder that sees
    no identity tokens reads (SDXL's second encoder) and the part of the prompt "append" mode repeats."""
    for name in names:
        prompt = _removal(name).sub(" ", prompt)
    return _tidy(prompt)


def rewrite_prompt(prompt: str, token_strings: Mapping[str, Sequence[Sequence[str]]], mode: PromptMode = "auto") -> str:
    """``prompt`` with each placeholder word turned into its identity tokens.

    ``token_strings`` maps each placeholder to its tokens, one list per encoder branch. The two ways of the
    original AdaFace code:

    - ``"in_place"``: each occurrence of the placeholder becomes all its tokens, where it stands.
    - ``"append"``: the placeholder (with an article right before it) is removed, and the prompt is written once
      per encoder branch, each copy followed by that branch's tokens: ``"<P> t0 t1 t2 t3, <P> t4 ... t19"``.

    ``"auto"`` (the default) appends when the prompt holds one placeholder, and works in place when it holds
    several. Appending is the later of the authors' two ways, chosen because identity tokens ahead of the rest
    of the prompt hurt compositional prompts: CLIP's attention is causal, so words *after* 16 strong identity
    tokens are encoded under their influence, while words before them are encoded exactly as in the plain
    prompt; with the tokens at the end, every word of the composition keeps its plain meaning and the identity
    tokens read the whole scene. With several people the roles ("z hugging y") exist only through the
    placeholders' places in the sentence, so each placeholder stays where it stands. ``"append"`` with several
    placeholders in one prompt is refused for that reason.

    A prompt without any placeholder is returned as it is.
    """
    present = sorted(
        (match.start(), name) for name in token_strings if (match := _word(name).search(prompt)) is not None
    )
    if not present:
        return prompt
    names = [name for _, name in present]
    if mode == "auto":
        mode = "append" if len(names) == 1 else "in_place"
    if mode == "in_place":
        for name in names:
            tokens = " ".join(token for group in token_strings[name] for token in group)
            prompt = _word(name).sub(lambda _, tokens=tokens: tokens, prompt)
        return prompt
    if mode != "append":
        raise AdaFaceError(f"prompt mode {mode!r} is not one of {', '.join(map(repr, get_args(PromptMode)))}")
    if len(names) > 1:
        raise AdaFaceError(
            f"append mode puts one person's tokens after the prompt, but {prompt!r} holds {', '.join(names)}: who "
            "does what would be lost; use mode='in_place' (or 'auto') for several people in one prompt"
        )
    base = plain_prompt(prompt, names)
    return ", ".join(f"{base} {' '.join(group)}".strip() for group in token_strings[names[0]])


# --------------------------------------------------------------------------------------------------------------------
# Token embedding with the identity rows
# --------------------------------------------------------------------------------------------------------------------


class IdentityTokenEmbedding(nn.Module):
    """A text encoder's input token embedding with rows for the identity tokens after ``first_id``.

    It wraps the original embedding instead of growing a copy of it, so entering and leaving a call costs no copy of
    the vocabulary matrix (49408 x 768 for SD1.5) and the original module, weight and config are never touched. Ids
    from ``first_id`` on read ``rows``; all others go to the original embedding. Gradients reach ``rows`` when the
    vectors given require them.
    """

    def __init__(self, base: nn.Module, first_id: int, rows: torch.Tensor):
        super().__init__()
        self.base = base
        self.first_id = first_id
        self.register_buffer("rows", rows, persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        is_identity = input_ids >= self.first_id
        embeds = self.base(input_ids.masked_fill(is_identity, 0))
        rows = self.rows.to(device=embeds.device, dtype=embeds.dtype)
        identity = nn.functional.embedding((input_ids - self.first_id).clamp(min=0), rows)
        return torch.where(is_identity.unsqueeze(-1), identity, embeds)


def _clip_l(pipe: Any) -> tuple[Any, nn.Module]:
    tokenizer, text_encoder = getattr(pipe, "tokenizer", None), getattr(pipe, "text_encoder", None)
    if tokenizer is None or text_encoder is None or not hasattr(text_encoder, "get_input_embeddings"):
        raise AdaFaceError(
            f"{type(pipe).__name__} has no CLIP tokenizer and text encoder (pipe.tokenizer, pipe.text_encoder) to "
            "put identity tokens into; use a Stable Diffusion 1.5 or SDXL pipeline"
        )
    return tokenizer, text_encoder


def _token_groups(name: str, tokens: IdentityTokens, width: int) -> list[torch.Tensor]:
    """``tokens`` as a list of ``[N, width]`` float tensors, one per encoder branch, or a clear error."""
    groups = [tokens] if isinstance(tokens, torch.Tensor) else list(tokens) if isinstance(tokens, Sequence) else None
    if not groups or not all(isinstance(group, torch.Tensor) for group in groups):
        raise AdaFaceError(
            f"identity tokens for {name!r} must be a tensor [N, C] or a list of such tensors (one per encoder "
            f"branch), got {type(tokens).__name__}"
        )
    for group in groups:
        if group.ndim != 2 or group.shape[0] == 0 or not group.is_floating_point():
            raise AdaFaceError(
                f"identity tokens for {name!r} must be float tensors of shape [N, C] with N >= 1, got "
                f"{group.dtype} {list(group.shape)}"
            )
        if group.shape[1] != width:
            raise AdaFaceError(
                f"identity tokens for {name!r} are {group.shape[1]} wide, but the pipeline's text encoder takes "
                f"{width}-wide token embeddings: the encoder was made for another base model"
            )
        if not torch.isfinite(group).all():
            raise AdaFaceError(f"identity tokens for {name!r} contain NaN or infinite values")
    return groups


@dataclass(frozen=True)
class IdentityPrompts:
    """What :func:`placeholder_tokens` yields: rewrites prompts for the pipeline it patched.

    Call it on a prompt (or a list) to get the text for ``prompt=``; :meth:`pipeline_kwargs` gives ``prompt`` and,
    for pipelines with a second text encoder (SDXL), ``prompt_2`` with the placeholders removed. Every call checks
    the placeholders (:func:`check_placeholders`) and the length (:meth:`check_length`) first.
    """

    tokenizer: Any
    token_strings: Mapping[str, Sequence[Sequence[str]]]
    mode: PromptMode = "auto"
    second_encoder: bool = False

    def __call__(self, prompt: str | Sequence[str]) -> str | list[str]:
        prompts = _as_list(prompt)
        check_placeholders(prompts, self.token_strings, self.tokenizer)
        rewritten = [rewrite_prompt(text, self.token_strings, self.mode) for text in prompts]
        for original, text in zip(prompts, rewritten, strict=True):
            self.check_length(original, text)
        return rewritten[0] if isinstance(prompt, str) else rewritten

    def plain(self, prompt: str | Sequence[str]) -> str | list[str]:
        """The prompt(s) without placeholder words, for an encoder that sees no identity tokens."""
        plain = [plain_prompt(text, self.token_strings) for text in _as_list(prompt)]
        return plain[0] if isinstance(prompt, str) else plain

    def pipeline_kwargs(self, prompt: str | Sequence[str]) -> dict[str, str | list[str]]:
        """``prompt`` (rewritten) and, with a second text encoder, ``prompt_2`` (plain) for the pipeline call."""
        kwargs = {"prompt": self(prompt)}
        if self.second_encoder:
            kwargs["prompt_2"] = self.plain(prompt)
        return kwargs

    def check_length(self, original: str, rewritten: str) -> None:
        """Refuse a prompt whose identity tokens would be cut off.

        The pipelines read ``tokenizer.model_max_length`` tokens (77 for CLIP: the start token, 75 tokens, the end
        token) and drop the rest with a warning. Plain words past the cut are dropped as always, but an identity
        token past it is refused, since the person would silently vanish or be half there.
        """
        ids = self.tokenizer(rewritten, truncation=False, verbose=False).input_ids
        last_kept = self.tokenizer.model_max_length - 2
        owner = {
            self.tokenizer.convert_tokens_to_ids(token): name
            for name, groups in self.token_strings.items()
            for group in groups
            for token in group
        }
        cut = [(position, owner[token_id]) for position, token_id in enumerate(ids) if token_id in owner]
        cut = [(position, name) for position, name in cut if position > last_kept]
        if cut:
            names = ", ".join(dict.fromkeys(name for _, name in cut))
            raise AdaFaceError(
                f"the prompt {original!r} is {len(ids) - 2} tokens once its placeholders become identity tokens, but "
                f"the text encoder reads {last_kept}: the tokens of {names} would be cut off; shorten the prompt by "
                f"at least {cut[-1][0] - last_kept} tokens"
            )


@contextmanager
def placeholder_tokens(
    pipe: Any, identities: Mapping[str, IdentityTokens], mode: PromptMode = "auto"
) -> Iterator[IdentityPrompts]:
    """Let ``pipe`` read each placeholder word of ``identities`` as that identity's tokens, for one call.

    ``identities`` maps placeholder words to token embeddings ``[N, C]`` (``C`` the width of the text encoder's
    input embedding), or to one such tensor per encoder branch. Inside the block, ``pipe.tokenizer`` is a copy that
    knows ``N`` new tokens per placeholder (tokenizers of transformers 5 cannot remove added tokens, so the
    original is never changed) and ``pipe.text_encoder``'s input embedding maps them to the vectors
    (:class:`IdentityTokenEmbedding`). On leaving, even through an exception, the original tokenizer and embedding
    module are put back: nothing leaks into the next plain call and nothing grows per call. SDXL's ``tokenizer_2``
    and ``text_encoder_2`` are not touched. The pipeline is changed for the duration, so do not share it between
    threads meanwhile, and call the pipeline the block was entered for (a pipeline made with ``from_pipe`` has its
    own tokenizer attribute).

    Yields an :class:`IdentityPrompts` that rewrites prompts (see :func:`rewrite_prompt` for ``mode``)::

        with placeholder_tokens(pipe, {"z": tokens_z, "y": tokens_y}) as rewrite:
            image = pipe(**rewrite.pipeline_kwargs("a z hugging a y"), negative_prompt="blurry").images[0]

    The names are checked (one token, not a common word) before anything changes.
    """
    if mode not in get_args(PromptMode):
        raise AdaFaceError(f"prompt mode {mode!r} is not one of {', '.join(map(repr, get_args(PromptMode)))}")
    tokenizer, text_encoder = _clip_l(pipe)
    original_embedding = text_encoder.get_input_embeddings()
    if isinstance(original_embedding, IdentityTokenEmbedding):
        raise AdaFaceError(
            "placeholder_tokens is already active on this pipeline; give all identities to one placeholder_tokens call"
        )
    if not identities:
        raise AdaFaceError("no identities given; map each placeholder word to its tokens, e.g. {'z': tokens}")
    problems = [problem for name in identities if (problem := _name_problem(name, tokenizer))]
    if problems:
        raise AdaFaceError("; ".join(problems))
    width = original_embedding.weight.shape[1]
    groups = {name: _token_groups(name, tokens, width) for name, tokens in identities.items()}

    token_strings = {
        name: [[_TOKEN_FORMAT.format(i, g, k) for k in range(len(group))] for g, group in enumerate(name_groups)]
        for i, (name, name_groups) in enumerate(groups.items())
    }
    first_id = len(tokenizer)
    flat_strings = [token for strings in token_strings.values() for group in strings for token in group]
    patched = _patched_tokenizer(tokenizer, flat_strings)
    if patched.convert_tokens_to_ids(flat_strings) != list(range(first_id, first_id + len(flat_strings))):
        raise AdaFaceError("the tokenizer did not give the identity tokens consecutive new ids; it cannot take them")
    weight = original_embedding.weight
    rows = torch.cat([group for name_groups in groups.values() for group in name_groups]).to(weight.dtype)
    if weight.device.type != "meta":  # under sequential offload the weights live elsewhere until the forward
        rows = rows.to(weight.device)
    embedding = IdentityTokenEmbedding(original_embedding, first_id, rows)

    pipe.tokenizer = patched
    text_encoder.set_input_embeddings(embedding)
    try:
        yield IdentityPrompts(patched, token_strings, mode, second_encoder=_has_second_encoder(pipe))
    finally:
        text_encoder.set_input_embeddings(original_embedding)
        pipe.tokenizer = tokenizer


#: Copies of each tokenizer that know a set of identity tokens. Copying a full CLIP tokenizer takes ~0.1 s, about a
#: prompt encoding; the token strings depend only on how many placeholders and tokens a call has, so calls reuse them.
_PATCHED_TOKENIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _patched_tokenizer(tokenizer: Any, token_strings: list[str]) -> Any:
    """A copy of ``tokenizer`` that also knows ``token_strings`` (made once per tokenizer, size and token set)."""
    copies = _PATCHED_TOKENIZERS.setdefault(tokenizer, {})
    key = (len(tokenizer), tuple(token_strings))
    if key not in copies:
        patched = copy.deepcopy(tokenizer)
        patched.add_tokens(token_strings)
        copies[key] = patched
    return copies[key]


def _has_second_encoder(pipe: Any) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None and getattr(pipe, "tokenizer_2", None) is not None


# --------------------------------------------------------------------------------------------------------------------
# Prompt embeddings for a plain pipeline
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def encode_prompt(
    pipe: Any,
    prompt: str | Sequence[str],
    identities: Mapping[str, IdentityTokens],
    negative_prompt: str | Sequence[str] | None = None,
    *,
    mode: PromptMode = "auto",
    device: torch.device | str | None = None,
    do_classifier_free_guidance: bool = True,
    clip_skip: int | None = None,
    lora_scale: float | None = None,
) -> dict[str, torch.Tensor]:
    """The pipeline's own ``encode_prompt`` for a prompt with identity words, as keyword arguments of its call.

    Returns ``prompt_embeds`` and ``negative_prompt_embeds`` (with classifier-free guidance), and for SDXL also
    ``pooled_prompt_embeds`` and ``negative_pooled_prompt_embeds``, one row per prompt: pass them with
    ``pipe(**embeds, num_images_per_prompt=...)``. The negative prompt stays plain text (no identity tokens), and
    SDXL's second encoder reads the prompt without its placeholders. See :func:`placeholder_tokens` for
    ``identities`` and :func:`rewrite_prompt` for ``mode``.
    """
    with placeholder_tokens(pipe, identities, mode=mode) as rewrite:
        kwargs = rewrite.pipeline_kwargs(prompt)
        common = {
            "device": device or pipe._execution_device,
            "num_images_per_prompt": 1,
            "do_classifier_free_guidance": do_classifier_free_guidance,
            "negative_prompt": negative_prompt,
            "lora_scale": lora_scale,
            "clip_skip": clip_skip,
        }
        embeds = pipe.encode_prompt(**kwargs, **common)
    names = ["prompt_embeds", "negative_prompt_embeds"]
    if rewrite.second_encoder:
        names += ["pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
    return {name: tensor for name, tensor in zip(names, embeds, strict=True) if tensor is not None}
