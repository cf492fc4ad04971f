"""An identity-evaluation protocol: generate every person x prompt x seed with the identity and, for CLIP-I, the
same prompt and seed without it, then score everything.

The shape follows what the field reports (PuLID, PhotoMaker, ConsistentID): face similarity on one fixed portrait
prompt, prompt alignment (CLIP-T) over a list of prompts that ask for clothing, accessories, actions, attributes,
views, backgrounds, styles and combinations, CLIP-I against the identity-free image of the same seed, and a few
seeds per person and prompt, the same for every method compared. The prompts are this project's own.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EvaluationError, OutputExistsError
from ..identity import Identity
from ..pipelines.face_pipeline import FacePipeline, FaceResult
from ..pipelines.outputs import save_image
from .clip_scores import ClipScorer
from .identity_similarity import IdentityScorer
from .report import EvaluationReport, evaluate_images

FACE_PROMPT = "a close-up portrait photo of a person in a garden, soft light, detailed face"

DEFAULT_PROMPTS: tuple[str, ...] = (
    "a photo of a person wearing a red raincoat",  # clothing
    "a photo of a person in a black suit and tie",
    "a photo of a person wearing round glasses",  # accessories
    "a photo of a person wearing a wide straw hat",
    "a photo of a person riding a bicycle",  # actions
    "a photo of a person playing the guitar",
    "a photo of a person reading a book in a cafe",
    "a photo of a smiling person with curly hair",  # attributes
    "a photo of an elderly person",
    "a side view photo of a person",  # views
    "a full-body photo of a person walking",
    "a photo of a person on a snowy mountain",  # backgrounds
    "a photo of a person on a beach at sunset",
    "a photo of a person in a busy city street at night",
    "an oil painting of a person",  # styles
    "a watercolor illustration of a person",
    "a pencil sketch of a person",
    "a person as an astronaut on the moon, digital art",  # combinations
    "a person cooking pasta in a sunny kitchen, wearing an apron",
    "a person in a knight's armour holding a sword, in a castle courtyard",
)


@dataclass
class ProtocolSettings:
    """What to generate: ``face_prompt`` (face similarity) and ``prompts`` (CLIP-T, CLIP-I), each with every seed."""

    prompts: Sequence[str] = DEFAULT_PROMPTS
    face_prompt: str | None = FACE_PROMPT
    seeds: Sequence[int] = (0, 1, 2, 3)
    baseline: bool = True  # also generate without the identity (CLIP-I)
    batch_size: int = 4  # consecutive seeds of a prompt generated together, at most this many per call
    generation: dict[str, Any] = field(default_factory=dict)  # steps, guidance, size, scale, ... for every call

    def all_prompts(self) -> list[str]:
        """The face-similarity prompt (if any), then the others."""
        return ([self.face_prompt] if self.face_prompt else []) + list(self.prompts)

    def jobs(self) -> list[tuple[str, int]]:
        if not self.all_prompts() or not self.seeds:
            raise EvaluationError("the protocol needs at least one prompt and one seed")
        return [(prompt, seed) for prompt in self.all_prompts() for seed in self.seeds]


@dataclass
class ProtocolResult:
    reports: dict[str, EvaluationReport]  # per person
    out_dir: Path
    face_prompt: str | None = None

    @property
    def summary(self) -> dict[str, dict[str, Any]]:
        """Per person: the summary over all images, and that of the face-similarity prompt's images (the figure
        papers report as face similarity)."""
        summary = {}
        for person, report in self.reports.items():
            summary[person] = dict(report.summary)
            if self.face_prompt in report.by_prompt:
                summary[person]["face_prompt"] = report.by_prompt[self.face_prompt]
        return summary


def run_protocol(
    face: FacePipeline,
    people: Mapping[str, Identity],
    out_dir: str | Path,
    settings: ProtocolSettings | None = None,
    *,
    scorers: Mapping[str, IdentityScorer] | None = None,
    clip: ClipScorer | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> ProtocolResult:
    """Generate and score the protocol for each person; writes ``OUT/<person>/{identity,baseline}/*.png`` and
    ``OUT/<person>/report.json``.

    Args:
        face: the pipeline under test (any adapter, base model and options).
        people: the identities to generate, by name.
        scorers: per person, an :class:`IdentityScorer` with the evaluator's face model (default: no face scores).
        clip: CLIP-T and CLIP-I (default: none).
        progress: called before each generation call with a description and its number of images.
    """
    settings = settings or ProtocolSettings()
    out_dir = Path(out_dir)
    jobs = settings.jobs()
    folders = protocol_folders(out_dir, list(people))
    unscored = [person for person in people if person not in (scorers or {})]
    if clip is None and unscored:
        raise EvaluationError(f"nothing to score for {unscored[0]}: give its scorer (face similarity) or a CLIP model")
    names = [f"{index:04d}-seed{seed}.png" for index, (_, seed) in enumerate(jobs)]
    reports = {}
    for person, identity in people.items():
        folder = folders[person]
        with_identity = _generate_all(face, identity, settings, folder / "identity", names, person, progress)
        baselines = []
        if settings.baseline:
            # one LoRA round trip per person: un- and re-fusing rounds half-precision weights a little each time
            with face.without_lora():
                baselines = _generate_all(face, identity, settings, folder / "baseline", names,
                                          f"{person} (baseline)", progress, scale=0.0)
        report = evaluate_images(
            with_identity,
            identity=(scorers or {}).get(person),
            clip=clip,
            baselines=baselines if baselines and clip is not None else None,
        )
        report.evaluator["person"] = person
        report.save(folder / "report.json")
        reports[person] = report
    return ProtocolResult(reports, out_dir, settings.face_prompt)


def protocol_folders(out_dir: Path, people: list[str]) -> dict[str, Path]:
    """``OUT/<person>`` per person; refuses before any work when a folder is in use or two names share one."""
    if not people:
        raise EvaluationError("the protocol needs at least one person")
    for path in (out_dir, *out_dir.parents):
        if path.exists() and not path.is_dir():
            raise EvaluationError(f"{path}: is a file; the protocol writes the folder {out_dir}")
    folders = {person: out_dir / _folder_name(person) for person in people}
    for person, folder in folders.items():
        if folder.name.lower() == "summary.json":
            raise EvaluationError(f"person name {person!r} is the name of the summary file; rename the person")
        if folder.exists() and not folder.is_dir():
            raise EvaluationError(f"{folder}: is a file; the protocol writes {person!r}'s images in a folder there")
        if folder.is_symlink():
            raise EvaluationError(f"{folder}: is a symbolic link; the protocol writes {person!r}'s images in a real "
                                  "folder there (never through links): choose another output folder")
    by_folder: dict[Path, list[str]] = {}
    for person, folder in folders.items():
        by_folder.setdefault(folder, []).append(person)
    shared = [names for names in by_folder.values() if len(names) > 1]
    if shared:
        raise EvaluationError(f"people {shared[0]} would share the folder {folders[shared[0][0]]}; rename one")
    taken = [str(folder) for folder in folders.values() if folder.exists() and any(folder.iterdir())]
    if taken:
        raise OutputExistsError(
            f"{', '.join(taken)} already exist; choose another output folder (nothing is overwritten)"
        )
    return folders


#: One generation call of the protocol: (prompt, first seed, number of images) -> the images and their records.
Generate = Callable[[str, int, int], FaceResult]


def _generate_all(face: FacePipeline, identity: Identity, settings: ProtocolSettings, folder: Path, names: list[str],
                  label: str, progress: Callable[[str, int], None] | None, **overrides: Any) -> list[Path]:
    """Every prompt x seed of ``identity`` through ``face``, with the protocol's generation settings."""
    def generate(prompt: str, seed: int, count: int) -> FaceResult:
        return face(prompt, identity=identity, seed=seed, num_images=count, **{**settings.generation, **overrides})

    return generate_all(generate, settings, folder, names, label, progress)


def generate_all(generate: Generate, settings: ProtocolSettings, folder: Path, names: list[str], label: str,
                 progress: Callable[[str, int], None] | None, seconds: list[float] | None = None) -> list[Path]:
    """Every prompt x seed; consecutive seeds go in calls of up to ``batch_size`` images (image k of a call uses
    seed + k: the images of one call per seed, up to float rounding, batched on the device). ``seconds`` gets each
    call's generation time per image (saving excluded)."""
    seeds = list(settings.seeds)
    consecutive = seeds == list(range(seeds[0], seeds[0] + len(seeds)))
    size = max(1, settings.batch_size) if consecutive else 1
    groups = [seeds[start : start + size] for start in range(0, len(seeds), size)]
    calls = [(prompt, group) for prompt in settings.all_prompts() for group in groups]
    written, names = [], iter(names)
    for prompt, call_seeds in calls:
        if progress:
            progress(f"{label}: {prompt!r}, seed{'s' if len(call_seeds) > 1 else ''} "
                     f"{', '.join(map(str, call_seeds))}", len(call_seeds))
        started = time.perf_counter()
        result = generate(prompt, call_seeds[0], len(call_seeds))
        if seconds is not None:
            seconds.append((time.perf_counter() - started) / len(call_seeds))
        for image, record in zip(result.images, result.metadata):
            written.append(save_image(image, record, folder / next(names))[0])
    return written


def _folder_name(person: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", person).strip("._")
    if not name:
        raise EvaluationError(f"person name {person!r} has no letters or digits to name its folder")
    return name
