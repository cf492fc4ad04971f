"""``faceprompt serve``: the HTTP service (API, web page and worker threads); ``faceprompt worker``: a worker process.

Both open the same store: ``--data DIR`` holds the SQLite database and the files, ``--db URL`` (Postgres) puts the
database elsewhere; workers on other machines need the same ``--db`` and the same ``--data`` folder (a shared mount).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import threading

from ..errors import FacepromptError
from .common import model_options, positive_int, stderr

LOOPBACK_NAMES = ("localhost",)


def add_parser(subparsers) -> None:
    serve = subparsers.add_parser(
        "serve", help="the HTTP service: identities, generation jobs and the web page"
    )
    _add_store_options(serve)
    _add_model_options(serve)
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine "
        "only; any other needs --token-file)",
    )
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument(
        "--token-file", help="bearer tokens, one per line: every /v1 call must send one"
    )
    serve.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="worker threads, each with its own loaded pipeline (default 1)",
    )
    serve.add_argument(
        "--no-worker",
        action="store_true",
        help="serve the API only; `faceprompt worker` processes run the jobs",
    )
    serve.add_argument(
        "--max-pixels",
        type=positive_int,
        default=1024 * 1024,
        help="largest image, px (default 1024x1024)",
    )
    serve.add_argument(
        "--max-images", type=positive_int, default=8, help="images per job (default 8)"
    )
    serve.add_argument(
        "--max-queued",
        type=positive_int,
        default=20,
        help="queued jobs per token (default 20)",
    )
    serve.add_argument(
        "--max-upload-mb",
        type=positive_int,
        default=10,
        help="size of one uploaded file, MB (default 10)",
    )
    serve.add_argument(
        "--max-body-mb",
        type=positive_int,
        default=64,
        help="size of one request, MB (default 64)",
    )
    serve.set_defaults(handler=run_serve)

    worker = subparsers.add_parser(
        "worker", help="a worker process: runs the jobs of a `faceprompt serve` store"
    )
    _add_store_options(worker)
    _add_model_options(worker)
    worker.add_argument(
        "--name",
        help="this worker's name in the store (default host:pid:0); unique per worker",
    )
    worker.set_defaults(handler=run_worker)


def _add_store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        default="faceprompt-data",
        help="folder of the database and files (default ./faceprompt-data)",
    )
    parser.add_argument(
        "--db",
        metavar="URL",
        help="database URL instead of <data>/faceprompt.db, e.g. postgresql+psycopg://user@host/db",
    )
    parser.add_argument(
        "--lease",
        type=float,
        default=60.0,
        help="seconds a silent worker keeps its job before another takes it over (default 60)",
    )
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "insightface", "dlib"],
        help="face backend for uploaded photos (default auto)",
    )


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """The models every worker loads (the per-image settings come with each job)."""
    parser.add_argument(
        "--model",
        choices=["tiny"],
        help="tiny: the offline random test models (images are noise)",
    )
    parser.add_argument(
        "--adapter",
        help="registry name, file or owner/repo/file (default faceid-plusv2-sd15)",
    )
    parser.add_argument(
        "--variant", help="registry variant when the adapter file's name cannot tell"
    )
    parser.add_argument(
        "--base",
        help="base model: Hub id, diffusers folder or single .safetensors/.ckpt file",
    )
    parser.add_argument("--vae", help="VAE to use instead of the base model's")
    parser.add_argument(
        "--image-encoder", help="CLIP ViT-H image encoder for Plus variants"
    )
    parser.add_argument(
        "--adaface",
        metavar="PATH|tiny",
        help="AdaFace encoder for placeholder identities",
    )
    parser.add_argument(
        "--video",
        action="store_true",
        help="load an AnimateDiff motion adapter (SD1.5) so jobs may have task video (the tiny SD1.5 models always can)",
    )
    parser.add_argument(
        "--motion-adapter",
        help="the motion adapter of --video: Hub id or folder (default guoyww/animatediff-motion-adapter-v1-5-2)",
    )
    parser.add_argument(
        "--fast",
        nargs="?",
        const="lcm-lora",
        choices=["lcm-lora", "lightning", "hyper-sd"],
        help="4-8 step generation with a distillation LoRA",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ...")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "float16", "bfloat16"]
    )
    parser.add_argument(
        "--offload", action="store_true", help="model CPU offload to the GPU --device"
    )
    parser.add_argument(
        "--vae-tiling",
        action="store_true",
        help="decode in tiles (large images, less memory)",
    )
    parser.add_argument(
        "--vae-slicing",
        action="store_true",
        help="decode one image at a time (less memory)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    parser.set_defaults(scheduler=None)


def _settings(args: argparse.Namespace, tokens: list[str] = (), limits=None):
    from ..server.settings import ServiceSettings

    return ServiceSettings.create(
        args.data,
        database_url=args.db,
        tokens=tokens,
        limits=limits,
        lease_seconds=args.lease,
        face_backend=args.backend,
    )


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _log_to_stderr() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logger = logging.getLogger("faceprompt.server")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    from ..server import Store, create_app
    from ..server.auth import RedactTokens
    from ..server.settings import Limits, read_token_file

    tokens = read_token_file(args.token_file) if args.token_file else []
    if not tokens and not is_loopback(args.host):
        raise FacepromptError(
            f"--host {args.host} is reachable from other machines and there is no --token-file: anyone could use "
            "the service; give --token-file FILE (one long random token per line) or serve on 127.0.0.1"
        )
    if not 0 < args.port < 65536:
        raise FacepromptError(f"--port {args.port} is not a port number; give 1-65535")
    mb = 1024 * 1024
    limits = Limits(
        max_pixels=args.max_pixels,
        max_images_per_job=args.max_images,
        max_queued_per_token=args.max_queued,
        max_upload_bytes=args.max_upload_mb * mb,
        max_body_bytes=args.max_body_mb * mb,
    )
    settings = _settings(args, tokens, limits)
    options = model_options(args, video=args.video)
    _log_to_stderr()
    settings.create_folders()
    store = Store(settings.database_url)
    store.create_tables()  # a database that cannot be opened is reported here, in one line
    app = create_app(
        settings, options, workers=0 if args.no_worker else args.workers, store=store
    )
    log_config = {**LOGGING_CONFIG, "filters": {"redact_tokens": {"()": RedactTokens}}}
    log_config["handlers"] = {**LOGGING_CONFIG["handlers"]}
    log_config["handlers"]["access"] = {
        **LOGGING_CONFIG["handlers"]["access"],
        "filters": ["redact_tokens"],
    }
    auth = f"{len(tokens)} token(s)" if tokens else "no tokens (loopback only)"
    stderr.print(
        f"serving on http://{args.host}:{args.port} ({auth}; data: {settings.data_dir})",
        highlight=False,
        markup=False,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_config=log_config)
    return 0


def run_worker(args: argparse.Namespace) -> int:
    from ..server.jobs import Worker
    from ..server.store import Store, shown_url

    settings = _settings(args)
    options = model_options(args, video=args.video)
    _log_to_stderr()
    settings.create_folders()
    store = Store(settings.database_url)
    store.create_tables()
    worker = Worker(store, settings, options, name=args.name)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stderr.print(
        f"worker {worker.name}: taking jobs from {shown_url(settings.database_url)}",
        highlight=False,
        markup=False,
    )
    try:
        worker.run_forever(stop)
    except KeyboardInterrupt:
        stop.set()
    finally:
        store.close()
    return 0
