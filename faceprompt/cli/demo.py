"""The offline demo (``faceprompt demo`` / ``make demo``): the whole path on photos shipped in packages.

It analyses the sample photos, writes aligned (and background-removed) crops and an identity file, generates
images of that identity with the tiny offline pipeline (random weights: the images are noise by design, they
show that the path runs end to end), scores them as `faceprompt eval` does, and writes a contact sheet (PNG +
HTML). Re-running rewrites the demo's own files in that folder.
"""

from __future__ import annotations

import argparse
import html
import json
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from .common import stderr, stdout

if TYPE_CHECKING:  # the face and image libraries load when the demo runs, not with every command
    import numpy as np
    from PIL import Image

    from ..faces import Face, FaceAnalyzer
    from ..identity import Identity

THUMB_HEIGHT = 256
CROP_THUMB = 128
MAX_FACES_SHOWN = 6


def add_parser(subparsers) -> None:
    demo = subparsers.add_parser("demo", help="offline demo on the sample photos shipped in installed packages")
    demo.add_argument("--out", default="demo-output", help="output folder (default demo-output)")
    demo.add_argument("--backend", default="auto", choices=["auto", "insightface", "dlib"])
    demo.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    report = run_demo(Path(args.out), backend=args.backend, console=stderr)
    stdout.print(f"demo written to {report}", highlight=False)
    return 0


def run_demo(out: Path, backend: str = "auto", console: Console | None = None) -> Path:
    """Run the demo into ``out`` and return the path of its HTML report."""
    from PIL import Image

    from ..faces import FaceAnalyzer
    from ..identity import Identity
    from ..samples import sample_photos

    console = console or Console(stderr=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "crops").mkdir(exist_ok=True)
    analyzer = FaceAnalyzer(backend)
    console.print(f"face backend: [bold]{analyzer.backend_name}[/] ({analyzer.face_model})", highlight=False)

    rows: list[tuple[str, Path, list[Face]]] = []
    for name, path in sample_photos().items():
        faces = analyzer.detect(path)
        console.print(f"{name}: {len(faces)} face(s) in {path.name}", highlight=False)
        for face in faces[:MAX_FACES_SHOWN]:
            Image.fromarray(face.crop(224)).save(out / "crops" / f"{name}_face{face.index}.png")
            Image.fromarray(face.crop(224, segment=True)).save(out / "crops" / f"{name}_face{face.index}_segmented.png")
        rows.append((name, path, faces))

    identity = Identity.from_images([sample_photos()["astronaut"]], analyzer, name="astronaut (sample photo)")
    identity_path = identity.save(out / "identity.safetensors", overwrite=True)
    console.print(f"identity: {identity_path} ({identity.face_model}, {identity.embedding_dim}-d)", highlight=False)

    generated = _generate_with_tiny_models(identity, out / "generated", console)
    evaluation = _evaluate(generated, sample_photos()["astronaut"], analyzer, out / "evaluation.json", console)
    sheet = contact_sheet(rows, generated)
    sheet.save(out / "contact_sheet.png")
    summary = {
        "backend": analyzer.backend_name,
        "face_model": analyzer.face_model,
        "photos": {name: {"file": str(path), "faces": [f.to_dict() for f in faces]} for name, path, faces in rows},
        "identity": str(identity_path),
        "generated": [str(path) for path in generated],
        "generated_notice": TINY_NOTICE,
        "evaluation": evaluation,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    report = out / "index.html"
    report.write_text(_html_report(summary))
    return report


TINY_NOTICE = "generated with faceprompt's tiny random test models: noise by design, not a picture of anyone"
DEMO_PROMPTS = ("a photo of the astronaut on the moon", "an oil painting of the astronaut")


def _generate_with_tiny_models(identity: Identity, folder: Path, console: Console) -> list[Path]:
    """Identity -> tiny FaceID pipeline -> PNGs with their parameters (one seed per image)."""
    from ..pipelines import FacePipeline
    from ..pipelines.outputs import save_image

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("demo-*"):
        old.unlink()  # the demo's own files from a previous run
    face = FacePipeline.tiny(id_embeddings_dim=identity.embedding_dim)
    face.pipeline.set_progress_bar_config(disable=True)
    result = face(list(DEMO_PROMPTS), identity=identity, num_images=2, seed=2023, num_inference_steps=4,
                  width=64, height=64)
    paths = []
    for index, (image, record) in enumerate(zip(result.images, result.metadata)):
        png, _ = save_image(image, record, folder / f"demo-{index}.png")
        paths.append(png)
    console.print(f"generated {len(paths)} images with the tiny offline pipeline ({TINY_NOTICE})", highlight=False)
    return paths


def _evaluate(images: list[Path], reference: Path, analyzer: FaceAnalyzer, report_path: Path, console: Console) -> dict:
    """Score the generated images as `faceprompt eval` does (tiny random CLIP: the path runs, the numbers mean
    nothing; noise images have no faces)."""
    from ..evaluation import ClipScorer, IdentityScorer, evaluate_images
    from ..testing import tiny_clip_model, tiny_clip_processor

    report = evaluate_images(
        images,
        identity=IdentityScorer.from_photos([reference], analyzer),
        clip=ClipScorer(tiny_clip_model(), tiny_clip_processor()),
    )
    report.evaluator["notice"] = "tiny random CLIP model and noise images: the scores show the path, not quality"
    report.save(report_path, overwrite=True)  # the demo's own file from a previous run
    summary = report.summary
    console.print(f"evaluation: {report_path} (faces found in {summary['face_detection_rate']:.0%} of the images)",
                  highlight=False)
    return summary


def annotate(face_image: np.ndarray, faces: list[Face]) -> np.ndarray:
    """Copy of the photo with every face's box, index and five points drawn."""
    import cv2

    canvas = face_image.copy()
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    for face in faces:
        x1, y1, x2, y2 = (int(round(v)) for v in face.bbox)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), (0, 200, 0), thickness)
        cv2.putText(canvas, str(face.index), (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * thickness,
                    (0, 200, 0), thickness)
        for x, y in face.kps:
            cv2.circle(canvas, (int(round(x)), int(round(y))), thickness + 1, (230, 30, 30), -1)
    return canvas


def contact_sheet(rows: list[tuple[str, Path, list[Face]]], generated: list[Path] = ()) -> Image.Image:
    """One row per photo (the annotated photo, then each face's aligned and segmented crops), then a row of the
    images generated from the identity."""
    from PIL import Image, ImageDraw

    from ..samples import SAMPLE_PHOTOS

    rendered = []
    for name, _, faces in rows:
        photo = faces[0].image.rgb if faces else None
        if photo is None:
            continue
        annotated = Image.fromarray(annotate(photo, faces))
        width = round(annotated.width * THUMB_HEIGHT / annotated.height)
        tiles = [annotated.resize((width, THUMB_HEIGHT))]
        for face in faces[:MAX_FACES_SHOWN]:
            for segment in (False, True):
                tiles.append(Image.fromarray(face.crop(224, segment=segment)).resize((CROP_THUMB, CROP_THUMB)))
        rendered.append((f"{name}: {len(faces)} face(s) - {SAMPLE_PHOTOS[name][2]}", tiles))
    if generated:
        tiles = [Image.open(path).convert("RGB").resize((CROP_THUMB, CROP_THUMB), Image.Resampling.NEAREST) for path in generated]
        rendered.append((f"generated from the astronaut identity - {TINY_NOTICE}", tiles))
    sheet_width = max(sum(t.width for t in tiles) + 8 * len(tiles) for _, tiles in rendered)
    sheet = Image.new("RGB", (sheet_width, len(rendered) * (THUMB_HEIGHT + 24) + 8), "white")
    draw = ImageDraw.Draw(sheet)
    y = 4
    for label, tiles in rendered:
        draw.text((4, y), label, fill="black")
        x = 4
        for tile in tiles:
            sheet.paste(tile, (x, y + 16))
            x += tile.width + 8
        y += THUMB_HEIGHT + 24
    return sheet


def _html_report(summary: dict) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{len(photo['faces'])}</td>"
        f"<td>{html.escape(', '.join(str(round(f['size'])) + ' px' for f in photo['faces']))}</td></tr>"
        for name, photo in summary["photos"].items()
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>faceprompt demo</title></head>
<body style="font-family: sans-serif">
<h1>faceprompt demo</h1>
<p>Face backend: <b>{html.escape(summary['backend'])}</b> ({html.escape(summary['face_model'])}).
Sample photos ship with the installed insightface and scikit-image packages.</p>
<table border="1" cellpadding="4"><tr><th>photo</th><th>faces</th><th>face sizes</th></tr>{rows}</table>
<p>Identity file: {html.escape(summary['identity'])}</p>
<p>Generated images ({len(summary['generated'])}): {html.escape(summary['generated_notice'])}.</p>
<img src="contact_sheet.png" alt="contact sheet" style="max-width: 100%">
</body></html>
"""
