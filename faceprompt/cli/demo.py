"""The offline demo (``faceprompt demo`` / ``make demo``): the whole path on photos shipped in packages.

It analyses the sample photos, writes aligned (and background-removed) crops and an identity file, generates
images of that identity with the tiny offline pipeline (random weights: the images are noise by design, they
show that the path runs end to end), scores them as `faceprompt eval` does, and writes a contact sheet (PNG +
HTML). Re-running rewrites the demo's own files in that folder, and only those.
"""

from __future__ import annotations

import argparse
import html
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from .common import markup_free, stderr, stdout

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
    stdout.print(f"demo written to {report}", highlight=False, markup=False)
    return 0


def run_demo(out: Path, backend: str = "auto", console: Console | None = None) -> Path:
    """Run the demo into ``out`` and return the path of its HTML report.

    ``out`` must be new, empty, or the output of an earlier demo run: see :class:`DemoFolder`.
    """
    from PIL import Image

    from ..faces import FaceAnalyzer
    from ..identity import Identity
    from ..samples import sample_photos

    console = console or Console(stderr=True)
    folder = DemoFolder(out)
    analyzer = FaceAnalyzer(backend)
    console.print(f"face backend: [bold]{analyzer.backend_name}[/] ({analyzer.face_model})", highlight=False)

    rows: list[tuple[str, Path, list[Face]]] = []
    for name, path in sample_photos().items():
        faces = analyzer.detect(path)
        console.print(f"{name}: {len(faces)} face(s) in {path.name}", highlight=False, markup=False)
        for face in faces[:MAX_FACES_SHOWN]:
            for suffix, segment in (("", False), ("_segmented", True)):
                crop = Image.fromarray(face.crop(224, segment=segment))
                folder.write_image(f"crops/{name}_face{face.index}{suffix}.png", crop)
        rows.append((name, path, faces))

    identity = Identity.from_images([sample_photos()["astronaut"]], analyzer, name="astronaut (sample photo)")
    identity_path = identity.save(folder.claim("identity.safetensors"), overwrite=True)
    console.print(f"identity: {identity_path} ({identity.face_model}, {identity.embedding_dim}-d)", highlight=False,
                  markup=False)

    generated = _generate_with_tiny_models(identity, folder, console)
    evaluation = _evaluate(generated, sample_photos()["astronaut"], analyzer, folder, console)
    folder.write_image("contact_sheet.png", contact_sheet(rows, generated))
    summary = {
        "backend": analyzer.backend_name,
        "face_model": analyzer.face_model,
        "photos": {name: {"file": str(path), "faces": [f.to_dict() for f in faces]} for name, path, faces in rows},
        "identity": str(identity_path),
        "generated": [str(path) for path in generated],
        "generated_notice": TINY_NOTICE,
        "evaluation": evaluation,
    }
    folder.write_text("summary.json", json.dumps(summary, indent=2))
    return folder.write_text("index.html", _html_report(summary))


class DemoFolder:
    """The demo's output folder. It must be new, empty, or written by an earlier demo run, which a marker file
    (``.faceprompt-demo.json``, the list of files the demo wrote) shows. The demo replaces or deletes only files on
    that list: a user's own files in the folder are never touched."""

    MARKER = ".faceprompt-demo.json"

    def __init__(self, root: Path):
        from ..errors import OutputPathError
        from ..files import check_output_folder, create_output_folder

        self.root = check_output_folder(root)
        self.marker = self.root / self.MARKER
        self.previous = self._files_of_earlier_run()
        if self.previous is None:
            if self.root.exists() and any(self.root.iterdir()):
                raise OutputPathError(
                    f"--out {root} holds files the demo did not write (no {self.MARKER}); the demo writes into a new "
                    "or empty folder, or one of its own earlier outputs: choose another --out"
                )
            self.previous = set()
        create_output_folder(self.root)
        self.written: set[str] = set()

    def claim(self, relative: str) -> Path:
        """The path of ``relative`` in the folder, once sure the demo may write there (nothing, or a file of an
        earlier demo run); recorded in the marker before anything is written."""
        from ..errors import OutputExistsError

        target = self.root / relative
        for folder in [*reversed(Path(relative).parents[:-1])]:  # every sub-folder between the root and the file
            if (self.root / folder).is_symlink():
                from ..errors import OutputPathError

                raise OutputPathError(
                    f"{self.root / folder} is a symbolic link; the demo never writes or deletes through links: remove "
                    "it or choose another --out"
                )
        if os.path.lexists(target) and relative not in self.previous:
            raise OutputExistsError(
                f"{target} was not written by the demo and is left as is; move it away or choose another --out"
            )
        self.written.add(relative)
        self._save_marker()
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def remove_earlier(self, prefix: str) -> None:
        """Delete the files an earlier demo run wrote under ``prefix`` (and only those)."""
        for relative in sorted(self.previous):
            if relative.startswith(prefix) and relative not in self.written:
                if any((self.root / folder).is_symlink() for folder in Path(relative).parents[:-1]):
                    continue  # behind a link: not the demo's file any more
                (self.root / relative).unlink(missing_ok=True)

    def write_image(self, relative: str, image: Image.Image) -> Path:
        from ..files import write_file

        return write_file(self.claim(relative), lambda temporary: image.save(temporary, format="PNG"), overwrite=True)

    def write_text(self, relative: str, text: str) -> Path:
        from ..files import write_text_file

        return write_text_file(self.claim(relative), text, overwrite=True)

    def _files_of_earlier_run(self) -> set[str] | None:
        if not self.marker.is_file() or self.marker.is_symlink():
            return None
        try:
            files = json.loads(self.marker.read_text(encoding="utf-8"))["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return {name for name in files if isinstance(name, str) and ".." not in Path(name).parts}

    def _save_marker(self) -> None:
        from ..files import write_text_file

        files = sorted(self.previous | self.written)
        write_text_file(self.marker, json.dumps({"written_by": "faceprompt demo", "files": files}, indent=2),
                        overwrite=True)


TINY_NOTICE = "generated with faceprompt's tiny random test models: noise by design, not a picture of anyone"
DEMO_PROMPTS = ("a photo of the astronaut on the moon", "an oil painting of the astronaut")


def _generate_with_tiny_models(identity: Identity, folder: DemoFolder, console: Console) -> list[Path]:
    """Identity -> tiny FaceID pipeline -> PNGs with their parameters (one seed per image)."""
    from ..pipelines import FacePipeline
    from ..pipelines.outputs import save_image

    folder.remove_earlier("generated/")
    face = FacePipeline.tiny(id_embeddings_dim=identity.embedding_dim)
    face.pipeline.set_progress_bar_config(disable=True)
    result = face(list(DEMO_PROMPTS), identity=identity, num_images=2, seed=2023, num_inference_steps=4,
                  width=64, height=64)
    paths = []
    for index, (image, record) in enumerate(zip(result.images, result.metadata)):
        folder.claim(f"generated/demo-{index}.json")
        png, _ = save_image(image, record, folder.claim(f"generated/demo-{index}.png"))
        paths.append(png)
    console.print(f"generated {len(paths)} images with the tiny offline pipeline ({TINY_NOTICE})", highlight=False)
    return paths


def _evaluate(images: list[Path], reference: Path, analyzer: FaceAnalyzer, folder: DemoFolder, console: Console) -> dict:
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
    folder.claim("evaluation.html")
    report_path = report.save(folder.claim("evaluation.json"), overwrite=True)
    summary = report.summary
    console.print(f"evaluation: {markup_free(report_path)} (faces found in {summary['face_detection_rate']:.0%} of the images)",
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
