"""``faceprompt eval`` (score generated images) and ``faceprompt eval-run`` (generate a protocol and score it)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table
from rich.text import Text

from ..errors import EvaluationError
from .common import (
    add_analyzer_options,
    add_model_options,
    check_device,
    make_analyzer,
    markup_free,
    model_options,
    parse_size,
    positive_int,
    print_warning,
    say_workers,
    stderr,
    stdout,
    workers_option,
)


def add_parser(subparsers) -> None:
    evaluate = subparsers.add_parser("eval", help="score generated images: identity similarity, CLIP-T, CLIP-I")
    evaluate.add_argument("images", nargs="+", help="generated image files or folders")
    evaluate.add_argument("--reference", nargs="+", metavar="PHOTO", help="photos of the person (face similarity)")
    evaluate.add_argument("--prompt", action="append", dest="prompts", metavar="TEXT",
                          help="one per image, in order (default: the prompt recorded in each image)")
    evaluate.add_argument("--baseline", nargs="+", metavar="IMAGE",
                          help="the same prompts and seeds without the identity, files or folders (CLIP-I)")
    evaluate.add_argument("--clip", default=None, metavar="MODEL|tiny|none",
                          help="CLIP model for CLIP-T/CLIP-I: Hub id or folder (default: OpenAI's CLIP ViT-L/14, as "
                               "the papers), tiny (offline random stand-in), none")
    evaluate.add_argument("--out", metavar="FILE",
                          help="write the report as JSON here, and as a web page beside it (.html; never overwritten)")
    evaluate.add_argument("--device", default="cpu", help="where CLIP runs: cpu, cuda, mps ... (default cpu)")
    evaluate.add_argument("--workers", type=workers_option, default="auto",
                          help="processes for the face analysis: auto (default: as many as help with the face "
                               "backend) or a number")
    add_analyzer_options(evaluate)
    evaluate.set_defaults(handler=run_eval)

    protocol = subparsers.add_parser(
        "eval-run", help="generate a protocol of prompts x seeds with and without each person, and score it"
    )
    protocol.add_argument("--person", nargs="+", action="append", required=True, metavar=("NAME", "PHOTO"),
                          help="a name and photos of the person; repeat for several people")
    protocol.add_argument("--prompts", metavar="FILE", help="one prompt per line (# comments); default: 20 built-in")
    protocol.add_argument("--face-prompt", help="the portrait prompt of the face-similarity images ('' for none)")
    protocol.add_argument("--seeds", type=positive_int, default=4, help="seeds 0..N-1 per person and prompt (default 4)")
    protocol.add_argument("--no-baseline", action="store_true",
                          help="skip the images without the identity (CLIP-I; skipped anyway with --clip none)")
    protocol.add_argument("--batch-size", type=positive_int, default=4, help="images per generation call (default 4)")
    protocol.add_argument("--clip", default=None, metavar="MODEL|tiny|none", help="CLIP model, as for eval")
    protocol.add_argument("--out", required=True, metavar="DIR", help="output folder (never overwritten)")
    protocol.add_argument("--eval-backend", choices=["auto", "insightface", "dlib"],
                          help="face backend that scores the images (default: --backend's; in a comparison, the "
                               "other backend when it is installed); another model than the one the adapter is "
                               "conditioned on gives unbiased scores")
    protocol.add_argument("--compare", nargs="+", metavar="METHOD",
                          help="compare methods on the same people, prompts and seeds, one report: adapters (registry "
                               "name, file, owner/repo/file, tiny) and AdaFace encoders (adaface:NAME|PATH|tiny); "
                               "--adapter and --adaface add one more each")
    protocol.add_argument("--adaface", action="append", dest="adaface_methods", metavar="NAME|PATH|tiny",
                          help="an AdaFace encoder as a method of the comparison (repeatable; same as "
                               "--compare adaface:PATH)")
    add_model_options(protocol)
    add_analyzer_options(protocol)
    protocol.set_defaults(handler=run_eval_run, controlnet=None, task=None, style_image=None, style_adapter=None,
                          motion_adapter=None)


def run_eval(args: argparse.Namespace) -> int:
    from ..evaluation import EvaluationReport, IdentityScorer, evaluate_images, image_files
    from ..evaluation.report import check_evaluation_inputs

    # every input is checked before CLIP or a face model loads (loading can take long, or wait on the Hub)
    if args.out:
        EvaluationReport.check_free(args.out)
    check_device(args.device)
    images = image_files(args.images)
    baselines = image_files(args.baseline) if args.baseline else None
    references = image_files(args.reference) if args.reference else None
    check_evaluation_inputs(images, prompts=args.prompts, baselines=baselines, workers=args.workers,
                            face_similarity=references is not None, clip=args.clip != "none")

    identity = None
    if references is not None:
        analyzer = make_analyzer(args)
        say_workers(args.workers, analyzer.backend_name)
        identity = IdentityScorer.from_photos(references, analyzer)
    clip = _clip_scorer(args.clip, args.device)
    report = evaluate_images(images, prompts=args.prompts, identity=identity, clip=clip, baselines=baselines,
                             workers=args.workers)
    if args.out:
        stdout.print(f"report: {report.save(args.out)}", highlight=False, markup=False)
    _print_report(report)
    return 0


def run_eval_run(args: argparse.Namespace) -> int:
    from ..errors import OutputExistsError
    from ..evaluation import run_protocol
    from ..evaluation.protocol import protocol_folders
    from ..files import write_text_file

    if args.compare or args.adaface_methods:
        return run_comparison_command(args)
    # what can be checked without the models is refused before any of them loads
    out = _checked_out_folder(args)
    summary_path = out / "summary.json"
    protocol_folders(out, [name for name, *_ in args.person])
    if summary_path.exists() or summary_path.is_symlink():
        raise OutputExistsError(f"{summary_path} exists; choose another --out (nothing is overwritten)")
    prompts, photos_of, generation = _checked_protocol(args)
    options = model_options(args)  # the models, checked as generate checks them
    clip = _clip_scorer(args.clip, args.device)

    analyzer = make_analyzer(args)
    evaluator = make_analyzer(args, args.eval_backend) if args.eval_backend else analyzer
    people, scorers = _people_and_scorers(photos_of, analyzer, evaluator)
    settings = _protocol_settings(args, prompts, generation, clip)
    from ..pipelines import load_face_pipeline

    face = load_face_pipeline(options, id_embeddings_dim=next(iter(people.values())).embedding_dim)
    face.pipeline.set_progress_bar_config(disable=True)
    total = len(people) * len(settings.jobs()) * (2 if settings.baseline else 1)
    from rich.progress import Progress

    with Progress(console=stderr) as progress:
        task = progress.add_task("protocol", total=total)

        def advance(message: str, images: int) -> None:
            progress.update(task, advance=images, description=markup_free(message[:60]))

        result = run_protocol(face, people, out, settings, scorers=scorers, clip=clip, progress=advance)
    for person, report in result.reports.items():
        stdout.print(Text(person, style="bold"))
        _print_report(report)
    write_text_file(summary_path, json.dumps(result.summary, indent=2))
    stdout.print(f"reports: {out}/<person>/report.json, summary: {summary_path}", highlight=False, markup=False)
    return 0


def run_comparison_command(args: argparse.Namespace) -> int:
    """``eval-run --compare``: every method on the same people, prompts and seeds, one report."""
    from ..evaluation.compare import comparison_folders, run_comparison
    from ..evaluation.methods import (
        MethodPipelines,
        check_identity_width,
        check_method_files,
        check_methods,
        method_options,
    )

    # every method, person, prompt and setting is checked before any model loads
    if args.variant:
        raise EvaluationError("--variant names one adapter file's variant; with --compare give registry names, or "
                              "files whose weights tell their variant")
    texts = [*(args.compare or []), *([args.adapter] if args.adapter else []),
             *(f"adaface:{source}" for source in args.adaface_methods or [])]
    methods = check_methods(texts, tiny=args.model == "tiny")
    out = _checked_out_folder(args)
    comparison_folders(out, methods, [name for name, *_ in args.person])
    prompts, photos_of, generation = _checked_protocol(args)
    options = model_options(args)
    for method in methods:
        method_options(options, method.method)  # each method's models, checked as generate checks them
    check_method_files(methods, options)

    analyzer = make_analyzer(args)
    check_identity_width(methods, analyzer.face_model, analyzer.backend.embedding_dim)
    evaluator = _comparison_evaluator(args, analyzer)
    clip = _clip_scorer(args.clip, args.device)
    people, scorers = _people_and_scorers(photos_of, analyzer, evaluator)
    settings = _protocol_settings(args, prompts, generation, clip)
    pipelines = MethodPipelines(options, id_embeddings_dim=next(iter(people.values())).embedding_dim,
                                face_model=analyzer.face_model)
    images_per_method = len(people) * len(settings.jobs())
    total = len(methods) * images_per_method + (len(settings.jobs()) if settings.baseline else 0)
    from rich.progress import Progress

    with Progress(console=stderr) as progress:
        task = progress.add_task("comparison", total=total)

        def advance(message: str, images: int) -> None:
            progress.update(task, advance=images, description=markup_free(message[:60]))

        report = run_comparison(methods, pipelines, people, out, settings, scorers=scorers, clip=clip,
                                progress=advance)
    _print_comparison(report)
    stdout.print(f"report: {out / 'comparison.json'} and {out / 'comparison.html'}", highlight=False, markup=False)
    return 0


def _checked_out_folder(args: argparse.Namespace) -> Path:
    """``--out``, and ``--person`` given once per name (nothing is created)."""
    from ..files import check_output_folder

    names = [name for name, *_ in args.person]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise EvaluationError(f"--person {repeated[0]} is given twice; give each person once, with all their photos")
    return check_output_folder(args.out, inputs=[photo for _, *given in args.person for photo in given])


def _checked_protocol(args: argparse.Namespace) -> tuple[list[str], dict, dict]:
    """The prompts, each person's photos and the generation settings, checked as ``generate`` checks a request."""
    from ..evaluation import DEFAULT_PROMPTS
    from ..images import list_image_files

    prompts = _read_prompts(args.prompts) if args.prompts else DEFAULT_PROMPTS
    photos_of = {name: list_image_files(given) for name, *given in args.person}
    for name, photos in photos_of.items():
        missing = [photo for photo in photos if not photo.is_file()]
        if not photos or missing:
            where = f" ({missing[0]} is not a file)" if missing else ""
            raise EvaluationError(f"--person {name}: give the person's photos (files or folders) after the name{where}")
    width, height = parse_size(args.size)
    generation = {"steps": args.steps, "guidance": args.guidance, "width": width, "height": height,
                  "scale": args.scale, "s_scale": args.s_scale}
    generation = {key: value for key, value in generation.items() if value is not None}
    _check_generation(prompts, photos_of, generation)
    return prompts, photos_of, generation


def _people_and_scorers(photos_of: dict, analyzer, evaluator) -> tuple[dict, dict]:
    """Each person's identity (read by ``analyzer``) and the scorer of their generated images (``evaluator``)."""
    from ..evaluation import IdentityScorer
    from ..identity import Identity

    people, scorers = {}, {}
    for name, photos in photos_of.items():
        people[name] = Identity.from_images(photos, analyzer, name=name)
        if evaluator is analyzer:
            scorers[name] = IdentityScorer.from_identity(people[name], analyzer)  # the same embeddings
        else:
            scorers[name] = IdentityScorer.from_photos(photos, evaluator)
    return people, scorers


def _protocol_settings(args: argparse.Namespace, prompts: list[str], generation: dict, clip):
    """The protocol's prompts, seeds and generation settings from the command line."""
    from ..evaluation import FACE_PROMPT, ProtocolSettings

    return ProtocolSettings(
        prompts=prompts,
        face_prompt=FACE_PROMPT if args.face_prompt is None else args.face_prompt or None,
        seeds=tuple(range(args.seeds)), baseline=not args.no_baseline and clip is not None, generation=generation,
        batch_size=args.batch_size,
    )


def _comparison_evaluator(args: argparse.Namespace, analyzer):
    """The face model that scores a comparison: ``--eval-backend``'s, else the other backend than the people's
    (the methods read the people's embeddings), when it is installed."""
    from ..faces.backends.insightface_backend import find_pack_dir

    backend = args.eval_backend
    if backend is None:
        other = "dlib" if analyzer.backend_name == "insightface" else "insightface"
        backend = other if other == "dlib" or find_pack_dir(args.pack, args.model_root) else analyzer.backend_name
    if backend == analyzer.backend_name:
        return analyzer
    return make_analyzer(args, backend)


def _print_comparison(report) -> None:
    from ..evaluation.compare import COLUMNS

    table = Table(title="comparison")
    table.add_column("method", no_wrap=True)
    for _, title in COLUMNS:
        table.add_column(title)
    table.add_column("conditioned on", overflow="fold")
    for row in report.table:
        cells = ["-" if row[key] is None else f"{row[key]:.3f}" if key != "clip_t" else f"{row[key]:.2f}"
                 for key, _ in COLUMNS]
        table.add_row(Text(row["method"]), *cells, Text(row["conditioned_on"] or "face crops"))
    stdout.print(table)
    for key in ("face_model", "clip_model"):
        if report.evaluator.get(key):
            stdout.print(f"scored with {key.replace('_', ' ')}: {report.evaluator[key]}", highlight=False, markup=False)
    for warning in report.evaluator.get("warnings", []):
        print_warning(warning)


def _check_generation(prompts: list[str], photos_of: dict, generation: dict) -> None:
    """The protocol's generation settings, checked as ``generate`` checks a request, before any model loads."""
    from ..pipelines import GenerateRequest, IdentityRef

    photos = [str(photo) for photo in next(iter(photos_of.values()))]
    for prompt in dict.fromkeys(prompts):  # one prompt per request: the protocol batches them itself
        GenerateRequest(prompt=prompt, identity=IdentityRef(photos=photos), seed=0, **generation)

def _read_prompts(path: str) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise EvaluationError(f"--prompts {path}: cannot read the prompts file ({error.strerror})") from error
    except UnicodeDecodeError as error:
        raise EvaluationError(
            f"--prompts {path}: not UTF-8 text (byte {error.start} cannot be decoded); save the file as UTF-8"
        ) from error
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise EvaluationError(f"--prompts {path}: no prompts (one per line; lines starting with # are comments)")
    return prompts


def _clip_scorer(choice: str | None, device: str = "cpu"):
    """``--clip``: a Hub id or folder (default CLIP ViT-L/14), ``tiny`` or ``none``."""
    from ..evaluation import DEFAULT_CLIP_MODEL, ClipScorer

    if choice == "none":
        return None
    if choice == "tiny":
        from ..testing import tiny_clip_model, tiny_clip_processor

        return ClipScorer(tiny_clip_model(), tiny_clip_processor(), device=device)
    return ClipScorer.from_pretrained(choice or DEFAULT_CLIP_MODEL, device=device)


def _print_report(report) -> None:
    table = Table(title="evaluation")
    for column in ("image", "faces", "face similarity", "CLIP-T", "CLIP-I"):
        table.add_column(column)

    def number(value, fmt="{:.3f}"):
        return "-" if value is None else fmt.format(value)

    for row in report.images:
        table.add_row(Text(Path(row.path).name), number(row.faces, "{}"), number(row.face_similarity),
                      number(row.clip_t, "{:.2f}"), number(row.clip_i))
    stdout.print(table)
    for key, value in report.summary.items():
        stdout.print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}", highlight=False,
                     markup=False)
    for warning in report.evaluator.get("warnings", []):
        print_warning(warning)
