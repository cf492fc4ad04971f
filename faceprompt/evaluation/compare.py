"""Several methods through one protocol: the same people, prompts and seeds through each method, one report.

Each method's images are scored with one evaluator face model for all of them (best one that none of the methods is
conditioned on), CLIP-T against the protocol's prompts, and CLIP-I against the base model's image of the same prompt
and seed, made once for every method (the identity-free reference). Seconds per image are the median over a
method's generation calls, after one untimed one-step image, so that one-off costs (kernel choice, caches) do not
count.

Output: ``OUT/baseline/*.png``, ``OUT/<NN-method>/<person>/*.png``, ``OUT/comparison.json`` and
``OUT/comparison.html`` (the table, and per prompt an image grid: methods side by side, people as rows).
"""

from __future__ import annotations

import html
import json
import os
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch

from ..errors import EvaluationError, OutputExistsError
from ..identity import Identity
from ..pipelines.face_pipeline import FacePipeline, FaceResult
from ..pipelines.request import DEFAULT_GUIDANCE_SCALE, DEFAULT_STEPS
from ..testing.diffusion import tiny_model_notice
from .clip_scores import ClipScorer
from .identity_similarity import IdentityScorer
from .methods import PLACEHOLDER, MethodInfo
from .protocol import ProtocolSettings, generate_all, protocol_folders
from .report import EvaluationReport, ImageScores, evaluate_images

REPORT_NAME = "comparison.json"
BASELINE_FOLDER = "baseline"
#: The columns of the comparison table: (key, heading).
COLUMNS = (
    ("face_similarity", "face sim."),
    ("face_detection_rate", "faces found"),
    ("clip_t", "CLIP-T"),
    ("clip_i", "CLIP-I"),
    ("seconds_per_image", "s/image"),
)


class MethodLoader(Protocol):
    """Builds each method's pipeline in turn (:class:`~faceprompt.evaluation.methods.MethodPipelines`)."""

    def load(self, method: Any) -> FacePipeline: ...

    def release(self, face: FacePipeline) -> None: ...


@dataclass
class MethodResult:
    """One method's images and scores.

    Attributes:
        conditioned_on: the face model whose embeddings it read (the people's), or ``None`` when it reads none
            (adapters fed face crops).
    """

    label: str
    kind: str
    folder: Path
    reports: dict[str, EvaluationReport]  # per person
    seconds_per_image: float | None
    conditioned_on: str | None = None

    @property
    def images(self) -> list[ImageScores]:
        return [row for report in self.reports.values() for row in report.images]

    def summary(self, face_prompt: str | None) -> dict[str, Any]:
        """The row of the comparison table: face similarity on the face prompt's images (on every image without
        one), CLIP-T and CLIP-I on the other prompts' images (on every image when there are none), face detection
        rate on every image."""
        rows = self.images
        portraits = [row for row in rows if row.prompt == face_prompt] or rows
        others = [row for row in rows if row.prompt != face_prompt] or rows
        summary: dict[str, Any] = {"method": self.label, "kind": self.kind, "images": len(rows)}
        summary["face_similarity"] = _mean(row.face_similarity for row in portraits)
        summary["face_similarity_all_prompts"] = _mean(row.face_similarity for row in rows)
        faces = [row.faces for row in rows if row.faces is not None]
        summary["face_detection_rate"] = sum(count > 0 for count in faces) / len(faces) if faces else None
        summary["clip_t"] = _mean(row.clip_t for row in others)
        summary["clip_i"] = _mean(row.clip_i for row in others)
        summary["seconds_per_image"] = self.seconds_per_image
        summary["conditioned_on"] = self.conditioned_on
        return summary


@dataclass
class ComparisonReport:
    """Every method's results on one protocol, with the base model's images they are compared with."""

    methods: list[MethodResult]
    settings: ProtocolSettings
    people: list[str]
    baselines: list[Path]  # in the protocol's prompt x seed order
    evaluator: dict[str, Any] = field(default_factory=dict)

    @property
    def table(self) -> list[dict[str, Any]]:
        return [method.summary(self.settings.face_prompt) for method in self.methods]

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "evaluator": self.evaluator,
            "protocol": {
                "face_prompt": self.settings.face_prompt,
                "prompts": list(self.settings.prompts),
                "seeds": list(self.settings.seeds),
                "people": self.people,
                "generation": self.settings.generation,
            },
            "baselines": [str(path) for path in self.baselines],
            "methods": [
                {
                    "method": method.label,
                    "kind": method.kind,
                    "folder": str(method.folder),
                    "by_person": {person: report.summary for person, report in method.reports.items()},
                    "by_prompt": EvaluationReport(method.images).by_prompt,
                    "images": {
                        person: [asdict(row) for row in report.images] for person, report in method.reports.items()
                    },
                }
                for method in self.methods
            ],
        }

    def save(self, folder: str | Path) -> Path:
        """``comparison.json`` and ``comparison.html`` in ``folder`` (never overwritten)."""
        from ..files import write_text_file

        path = Path(folder) / REPORT_NAME
        write_text_file(path, json.dumps(self.to_dict(), indent=2))
        write_text_file(path.with_suffix(".html"), self.to_html(path.parent))
        return path

    def to_html(self, folder: str | Path) -> str:
        """A self-contained page for ``folder``: the table, then per prompt the images, methods side by side."""
        headings = "".join(f"<th>{html.escape(title)}</th>" for _, title in COLUMNS)
        rows = "".join(
            f"<tr><td>{html.escape(summary['method'])}</td>"
            + "".join(_cell(summary[key]) for key, _ in COLUMNS)
            + f"<td>{html.escape(summary['conditioned_on'] or 'face crops')}</td></tr>"
            for summary in self.table
        )
        notes = "".join(
            f"<p>{html.escape(f'{key}: {value}')}</p>"
            for key, value in self.evaluator.items()
            if value and key != "warnings"
        )
        notes += "".join(f"<p><b>warning:</b> {html.escape(text)}</p>" for text in self.evaluator.get("warnings", []))
        grids = "".join(self._grid(prompt, Path(folder)) for prompt in self.settings.all_prompts())
        return (
            "<!doctype html><meta charset='utf-8'><title>faceprompt comparison</title>"
            "<style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:left;vertical-align:top}"
            "img{margin:1px}</style>"
            f"<h1>Comparison</h1>{notes}<table><tr><th>method</th>{headings}<th>conditioned on</th></tr>{rows}</table>"
            f"{grids}"
        )

    def _grid(self, prompt: str, folder: Path) -> str:
        seeds = list(self.settings.seeds)
        jobs = self.settings.jobs()
        baseline = (
            [self.baselines[index] for index, (text, _) in enumerate(jobs) if text == prompt] if self.baselines else []
        )
        heading = "".join(f"<th>{html.escape(method.label)}</th>" for method in self.methods)
        base_heading = "<th>base model (no identity)</th>" if baseline else ""
        rows = ""
        for person in self.people:
            cells = _images(baseline, folder, "base model") if baseline else ""
            for method in self.methods:
                paths = [Path(row.path) for row in method.reports[person].images if row.prompt == prompt]
                cells += _images(paths, folder, method.label)
            rows += f"<tr><th>{html.escape(person)}</th>{cells}</tr>"
        return (
            f"<h2>{html.escape(prompt)}</h2><p>seeds {', '.join(map(str, seeds))}</p>"
            f"<table><tr><th>person</th>{base_heading}{heading}</tr>{rows}</table>"
        )


def run_comparison(
    methods: Sequence[MethodInfo],
    pipelines: MethodLoader,
    people: Mapping[str, Identity],
    out_dir: str | Path,
    settings: ProtocolSettings | None = None,
    *,
    scorers: Mapping[str, IdentityScorer] | None = None,
    clip: ClipScorer | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> ComparisonReport:
    """Generate the protocol with every method in turn and score it; writes the images and the report in
    ``out_dir`` (see the module's docstring), refusing before any work when one of its files or folders exists.

    Methods whose base is known run first, so that the first load brings the right base model; the report keeps the
    order given. AdaFace methods get each prompt followed by the person's identity tokens (the placeholder
    :data:`PLACEHOLDER` appended, in the authors' ``append`` mode); CLIP-T is scored against the prompt as written.
    """
    settings = settings or ProtocolSettings()
    out_dir = Path(out_dir)
    jobs = settings.jobs()
    if not methods:
        raise EvaluationError("no methods to compare")
    unscored = [person for person in people if person not in (scorers or {})]
    if clip is None and unscored:
        raise EvaluationError(f"nothing to score for {unscored[0]}: give its scorer (face similarity) or a CLIP model")
    person_folders = comparison_folders(out_dir, methods, list(people))
    names = [f"{index:04d}-seed{seed}.png" for index, (_, seed) in enumerate(jobs)]
    baselines: list[Path] = []
    results: dict[str, MethodResult] = {}
    for info in sorted(methods, key=lambda info: info.family is None):  # a known base loads first
        face = pipelines.load(info.method)
        folders = person_folders[info.label]
        images, seconds = _generate_method(face, info, people, folders, names, settings, progress)
        conditioned_on = _conditioning_face_model(face, info, people)
        pipelines.release(face)
        if settings.baseline and clip is not None and not baselines:  # the bare base model, once
            base = _base_generator(face, settings)
            baselines = generate_all(base, settings, out_dir / BASELINE_FOLDER, names, "base model (no identity)",
                                     progress)  # fmt: skip
        del face
        reports = {
            person: _score(person, paths, [prompt for prompt, _ in jobs], scorers, clip, baselines)
            for person, paths in images.items()
        }
        folder = next(iter(folders.values())).parent
        median = statistics.median(seconds) if seconds else None
        results[info.label] = MethodResult(info.label, info.method.kind, folder, reports, median, conditioned_on)
    evaluator = _evaluator(scorers, clip)
    for result in (results[info.label] for info in methods):
        if result.conditioned_on is not None and result.conditioned_on == evaluator.get("face_model"):
            evaluator.setdefault("warnings", []).append(
                f"{result.label} is conditioned on {result.conditioned_on} embeddings and scored with the same face "
                "model, which favours it; score with another face model (--eval-backend) for a fair comparison"
            )
    report = ComparisonReport([results[info.label] for info in methods], settings, list(people), baselines, evaluator)
    report.save(out_dir)
    return report


def comparison_folders(out_dir: Path, methods: Sequence[MethodInfo], people: list[str]) -> dict[str, dict[str, Path]]:
    """``OUT/<NN-method>/<person>`` per method and person; refuses (before any work) when the report, the baseline
    folder or a method's folder is already there, or when two people would share a folder."""
    for path in (out_dir, *out_dir.parents):
        if path.exists() and not path.is_dir():
            raise EvaluationError(f"{path}: is a file; the comparison writes the folder {out_dir}")
    folders = {
        info.label: out_dir / f"{index:02d}-{_method_folder_name(info)}" for index, info in enumerate(methods, 1)
    }
    report = out_dir / REPORT_NAME
    taken = [
        path
        for path in (report, report.with_suffix(".html"), out_dir / BASELINE_FOLDER, *folders.values())
        if path.exists() or path.is_symlink()
    ]
    if taken:
        raise OutputExistsError(f"{taken[0]} already exists; choose another output folder (nothing is overwritten)")
    return {label: protocol_folders(folder, people) for label, folder in folders.items()}


def _generate_method(
    face: FacePipeline,
    info: MethodInfo,
    people: Mapping[str, Identity],
    folders: Mapping[str, Path],
    names: list[str],
    settings: ProtocolSettings,
    progress: Callable[[str, int], None] | None,
) -> tuple[dict[str, list[Path]], list[float]]:
    """Every person's protocol images through one method, and its seconds per image of each call."""
    _warm_up(face, info, next(iter(people.values())), settings)
    seconds: list[float] = []
    images = {
        person: generate_all(
            _generator(face, info, identity, settings),
            settings,
            folders[person],
            names,
            f"{info.label}, {person}",
            progress,
            seconds,
        )
        for person, identity in people.items()
    }
    return images, seconds


def _score(
    person: str,
    paths: list[Path],
    prompts: list[str],
    scorers: Mapping[str, IdentityScorer] | None,
    clip: ClipScorer | None,
    baselines: list[Path],
) -> EvaluationReport:
    report = evaluate_images(
        paths, prompts=prompts, identity=(scorers or {}).get(person), clip=clip, baselines=baselines or None
    )
    report.evaluator["person"] = person
    return report


def _generator(face: FacePipeline, info: MethodInfo, identity: Identity, settings: ProtocolSettings):
    """One protocol call through the method: the identity through the adapter, or as words of the prompt."""

    def through_adapter(prompt: str, seed: int, count: int) -> FaceResult:
        return face(prompt, identity=identity, seed=seed, num_images=count, **settings.generation)

    def as_words(prompt: str, seed: int, count: int) -> FaceResult:
        return face(
            f"{prompt} {PLACEHOLDER}",
            identities={PLACEHOLDER: identity},
            adaface_prompt="append",
            seed=seed,
            num_images=count,
            **settings.generation,
        )

    return as_words if info.method.kind == "adaface" else through_adapter


def _warm_up(face: FacePipeline, info: MethodInfo, identity: Identity, settings: ProtocolSettings) -> None:
    """One untimed one-step image: a method's first call pays one-off costs (kernel choice, caches, lazy set-up)
    that are not its speed."""
    one_step = replace(settings, generation={**settings.generation, "steps": 1})
    prompt, seed = settings.jobs()[0]
    _generator(face, info, identity, one_step)(prompt, seed, 1)


def _base_generator(face: FacePipeline, settings: ProtocolSettings):
    """The base model's own images (no adapter attached, no identity), as a FacePipeline call would make them."""
    generation = settings.generation
    fast = face.fast_mode
    steps = generation.get("steps") or (fast.num_inference_steps if fast else DEFAULT_STEPS)
    guidance = generation.get("guidance")
    guidance = guidance if guidance is not None else (fast.guidance_scale if fast else DEFAULT_GUIDANCE_SCALE)
    size = {key: generation[key] for key in ("width", "height") if generation.get(key) is not None}

    def generate(prompt: str, seed: int, count: int) -> FaceResult:
        generators = [torch.Generator(device="cpu").manual_seed(seed + index) for index in range(count)]
        output = face.pipeline(
            prompt=[prompt],
            num_images_per_prompt=count,
            generator=generators,
            num_inference_steps=steps,
            guidance_scale=guidance,
            **size,
        )
        base_model = getattr(face.pipeline, "name_or_path", None) or face.pipeline.config.get("_name_or_path")
        records = [
            {
                "prompt": prompt,
                "seed": seed + index,
                "identity": None,
                "num_inference_steps": steps,
                "guidance_scale": guidance,
                **size,
                "base_model": base_model,
                "note": "the base model alone (baseline)",
                **({"notice": notice} if (notice := tiny_model_notice(face.pipeline)) else {}),
            }
            for index in range(count)
        ]
        return FaceResult(output.images, records)

    return generate


def _conditioning_face_model(face: FacePipeline, info: MethodInfo, people: Mapping[str, Identity]) -> str | None:
    """The people's face model when the method reads their face embeddings, else ``None``."""
    reads_embeddings = info.method.kind == "adaface" or (
        face.adapter is not None
        and face.adapter.layout is not None
        and face.adapter.layout.id_embeddings_dim is not None
    )
    return next(iter(people.values())).face_model if reads_embeddings and people else None


def _evaluator(scorers: Mapping[str, IdentityScorer] | None, clip: ClipScorer | None) -> dict[str, Any]:
    evaluator: dict[str, Any] = {}
    if scorers:
        evaluator["face_model"] = next(iter(scorers.values())).face_model
    if clip is not None:
        evaluator["clip_model"] = getattr(clip.model, "name_or_path", "") or type(clip.model).__name__
    return evaluator


def _method_folder_name(info: MethodInfo) -> str:
    """A folder name that says which method it is: the registry name, or the file's name."""
    source = info.method.source
    name = Path(source).name if ("/" in source or "\\" in source) else source
    prefix = "adaface-" if info.method.kind == "adaface" else ""
    return prefix + (re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")[:60] or "method")


def _mean(values: Any) -> float | None:
    values = [value for value in values if value is not None]
    return statistics.fmean(values) if values else None


def _cell(value: Any) -> str:
    text = "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)
    return f"<td>{html.escape(text)}</td>"


def _images(paths: list[Path], folder: Path, label: str) -> str:
    return (
        "<td>"
        + "".join(
            f'<img src="{html.escape(Path(os.path.relpath(path, folder)).as_posix())}" width="96" '
            f'alt="{html.escape(label)}">'
            for path in paths
        )
        + "</td>"
    )
