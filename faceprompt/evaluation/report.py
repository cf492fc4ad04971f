"""Evaluate a set of generated images: identity similarity, face detection rate, CLIP-T and CLIP-I, one row per
image plus a summary, written as JSON (and printed as a table by the CLI)."""

from __future__ import annotations

import html
import json
import os
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EvaluationError, OutputExistsError
from ..faces import Workers, check_workers
from ..images import list_image_files
from ..pipelines.outputs import METADATA_KEY
from .clip_scores import ClipScorer, clip_i, clip_t
from .identity_similarity import IdentityScorer


@dataclass
class ImageScores:
    """The scores of one generated image (``None``: not measured, or no face found)."""

    path: str
    prompt: str | None = None
    seed: int | None = None
    faces: int | None = None
    face_similarity: float | None = None
    clip_t: float | None = None
    clip_i: float | None = None


@dataclass
class EvaluationReport:
    images: list[ImageScores]
    evaluator: dict[str, Any] = field(default_factory=dict)  # face model, CLIP model, warnings

    @property
    def summary(self) -> dict[str, Any]:
        """Means and medians over all images (face similarity over the images where a face was found)."""
        return _summarize(self.images)

    @property
    def by_prompt(self) -> dict[str, dict[str, Any]]:
        """The summary of each prompt's images: which prompts keep the identity, which the prompt."""
        prompts = dict.fromkeys(row.prompt for row in self.images if row.prompt is not None)
        return {prompt: _summarize([row for row in self.images if row.prompt == prompt]) for prompt in prompts}

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "by_prompt": self.by_prompt, "evaluator": self.evaluator,
                "images": [asdict(row) for row in self.images]}

    @staticmethod
    def check_free(path: str | Path) -> None:
        """Refuse (before any work) a report path whose JSON or web page already exists, is a folder or a link."""
        from ..files import check_output_file

        for target in (Path(path), Path(path).with_suffix(".html")):
            try:
                check_output_file(target, option="report")
            except OutputExistsError:
                raise OutputExistsError(
                    f"{target} exists; choose another --out (reports are never overwritten)"
                ) from None

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """The report as JSON at ``path`` and as a web page (thumbnails and scores) beside it (``.html``), each
        written in one step (never through a symbolic link)."""
        from ..files import write_text_file

        path = Path(path)
        page = path.with_suffix(".html")
        if not overwrite:
            self.check_free(path)
        write_text_file(path, json.dumps(self.to_dict(), indent=2), overwrite=overwrite)
        write_text_file(page, self.to_html(page.parent), overwrite=overwrite)
        return path

    def to_html(self, folder: str | Path) -> str:
        """A self-contained page for ``folder`` (images linked relative to it): summary, per prompt, per image."""
        def cell(value: Any) -> str:
            text = "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)
            return f"<td>{html.escape(text)}</td>"

        summary_rows = "".join(f"<tr><th>{html.escape(key)}</th>{cell(value)}</tr>" for key, value in self.summary.items())
        columns = ["images", "face_detection_rate", "face_similarity_mean", "clip_t_mean", "clip_i_mean"]
        prompt_rows = "".join(
            f"<tr><td>{html.escape(prompt)}</td>{''.join(cell(scores.get(key)) for key in columns)}</tr>"
            for prompt, scores in self.by_prompt.items()
        )
        image_rows = "".join(
            f'<tr><td><img src="{html.escape(Path(os.path.relpath(row.path, folder)).as_posix())}" width="128"></td>'
            f"<td>{html.escape(row.prompt or '-')}</td>{cell(row.seed)}{cell(row.faces)}{cell(row.face_similarity)}"
            f"{cell(row.clip_t)}{cell(row.clip_i)}</tr>"
            for row in self.images
        )
        notes = "".join(f"<p>{html.escape(f'{key}: {value}')}</p>" for key, value in self.evaluator.items() if value)
        return (
            "<!doctype html><meta charset='utf-8'><title>faceprompt evaluation</title>"
            "<style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:left}</style>"
            f"<h1>Evaluation</h1>{notes}<h2>Summary</h2><table>{summary_rows}</table>"
            f"<h2>Per prompt</h2><table><tr><th>prompt</th>{''.join(f'<th>{c}</th>' for c in columns)}</tr>"
            f"{prompt_rows}</table><h2>Images</h2><table><tr><th>image</th><th>prompt</th><th>seed</th><th>faces</th>"
            f"<th>face similarity</th><th>CLIP-T</th><th>CLIP-I</th></tr>{image_rows}</table>"
        )


def _summarize(rows: Sequence[ImageScores]) -> dict[str, Any]:
    faces = [row.faces for row in rows if row.faces is not None]
    summary: dict[str, Any] = {"images": len(rows)}
    if faces:
        summary["face_detection_rate"] = sum(count > 0 for count in faces) / len(faces)
    for name, values in (
        ("face_similarity", [row.face_similarity for row in rows if row.face_similarity is not None]),
        ("clip_t", [row.clip_t for row in rows if row.clip_t is not None]),
        ("clip_i", [row.clip_i for row in rows if row.clip_i is not None]),
    ):
        if values:
            summary[f"{name}_mean"] = statistics.fmean(values)
            summary[f"{name}_median"] = statistics.median(values)
    return summary


def evaluate_images(
    images: Sequence[str | Path],
    *,
    prompts: Sequence[str] | None = None,
    identity: IdentityScorer | None = None,
    clip: ClipScorer | None = None,
    baselines: Sequence[str | Path] | None = None,
    workers: Workers = 1,
) -> EvaluationReport:
    """Score image files.

    Args:
        images: the generated images.
        prompts: one per image; default: the prompt recorded in each image by ``faceprompt generate``.
        identity: scores faces against the person's reference photos (face similarity, detection rate).
        clip: computes CLIP-T with the prompts, and CLIP-I against ``baselines``.
        baselines: one image per image, generated with the same prompt and seed without the identity.
        workers: processes for the face analysis (2 uses both cores of a 2-core machine; ``"auto"``: one per core
            for dlib, one for insightface, see :func:`faceprompt.faces.resolve_workers`).
    """
    paths = [Path(image) for image in images]
    records = check_evaluation_inputs(paths, prompts=prompts, baselines=baselines, workers=workers,
                                      face_similarity=identity is not None, clip=clip is not None)
    rows = [
        ImageScores(str(path), prompt=prompts[index] if prompts is not None else records[index].get("prompt"),
                    seed=records[index].get("seed"))
        for index, path in enumerate(paths)
    ]
    evaluator: dict[str, Any] = {"warnings": []}
    if identity is not None:
        evaluator["face_model"] = identity.face_model
        if any(identity.face_model in _conditioning_face_models(record) for record in records):
            evaluator["warnings"].append(
                f"the images were conditioned on {identity.face_model} embeddings and are scored with the same face "
                "model, which favours them; score with another face model for numbers comparable to papers"
            )
        for row, score in zip(rows, identity.score_files(paths, workers=workers)):
            row.faces, row.face_similarity = score.faces, score.similarity
    if clip is not None:
        evaluator["clip_model"] = getattr(clip.model, "name_or_path", "") or type(clip.model).__name__
        image_embeddings = clip.image_embeddings(paths)  # once for CLIP-T and CLIP-I
        for row, value in zip(rows, clip_t(image_embeddings, clip.text_embeddings([row.prompt for row in rows]))):
            row.clip_t = value
        if baselines is not None:
            for row, value in zip(rows, clip_i(image_embeddings, clip.image_embeddings([Path(b) for b in baselines]))):
                row.clip_i = value
    return EvaluationReport(rows, evaluator)


def check_evaluation_inputs(
    images: Sequence[str | Path],
    *,
    prompts: Sequence[str] | None = None,
    baselines: Sequence[str | Path] | None = None,
    workers: Workers = 1,
    face_similarity: bool,
    clip: bool,
) -> list[dict[str, Any]]:
    """Every check of :func:`evaluate_images` that needs no model, so that a caller can run it before loading any
    (the CLI does, before CLIP). Returns the generation record of each image (empty for other images).

    Raises:
        EvaluationError: no images, prompts or baselines that do not pair with the images, nothing to score,
            an unreadable image, or an image without a recorded prompt when CLIP needs one.
        AnalysisOptionError: ``workers`` is neither an integer >= 1 nor ``"auto"``.
    """
    paths = [Path(image) for image in images]
    if not paths:
        raise EvaluationError("no images to evaluate")
    if prompts is not None and len(prompts) != len(paths):
        raise EvaluationError(f"got {len(prompts)} prompts for {len(paths)} images; give one per image or none")
    if baselines is not None and len(baselines) != len(paths):
        raise EvaluationError(f"got {len(baselines)} baseline images for {len(paths)} images; they pair one to one")
    check_workers(workers)
    if not face_similarity and not clip:
        raise EvaluationError("nothing to score: give reference photos (face similarity) and/or a CLIP model")
    if baselines is not None and not clip:
        raise EvaluationError("baseline images are compared with CLIP (CLIP-I): give a CLIP model too")
    records = [_recorded_parameters(path) for path in paths]
    if baselines is not None:
        _check_pairs(paths, records, [Path(baseline) for baseline in baselines],
                     keys=("seed",) if prompts is not None else ("prompt", "seed"))
    if clip and prompts is None:
        missing = next((path for path, record in zip(paths, records) if record.get("prompt") is None), None)
        if missing is not None:
            raise EvaluationError(f"{missing}: no prompt recorded in the image; pass the prompts for CLIP-T")
    return records


def image_files(folder_or_files: Sequence[str | Path]) -> list[Path]:
    """Image files named directly, or inside the folders named, in sorted order."""
    files = list_image_files(list(folder_or_files))
    missing = [path for path in files if not path.is_file()]
    if missing:
        raise EvaluationError(f"{missing[0]}: no such file or folder")
    return files


def _recorded_parameters(path: Path) -> dict[str, Any]:
    """The generation record in a faceprompt PNG (text chunk) or its JSON sidecar; empty for other images."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            text = getattr(image, "text", {}).get(METADATA_KEY)
    except OSError as error:
        raise EvaluationError(f"{path}: not a readable image ({error})") from error
    if text is None and path.with_suffix(".json").is_file():
        try:
            text = path.with_suffix(".json").read_text(encoding="utf-8")
        except UnicodeDecodeError:
            return {}  # another tool's sidecar
    try:
        record = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}  # another tool's sidecar: no record of ours


def _check_pairs(paths: list[Path], records: list[dict[str, Any]], baselines: list[Path],
                 keys: tuple[str, ...] = ("prompt", "seed")) -> None:
    """Baselines pair with the images by position; where both record their prompt and seed, those must agree (the
    seed only, when the caller gives the prompts: an image's recorded prompt may then carry identity words)."""
    for path, record, baseline in zip(paths, records, baselines):
        other = _recorded_parameters(baseline)
        for key in keys:
            if key in record and key in other and record[key] != other[key]:
                raise EvaluationError(
                    f"{path} and its baseline {baseline} differ in {key} ({record[key]!r} vs {other[key]!r}); "
                    "images and baselines pair in sorted order: give folders made with the same prompts and seeds"
                )


def _conditioning_face_models(record: dict[str, Any]) -> set[str]:
    """The face models of the identities an image was generated with (one identity, or one per region)."""
    described = record.get("identity") or []
    described = [described] if isinstance(described, dict) else described
    return {item.get("face_model") for item in described if isinstance(item, dict)}
