"""Size limits applied before any work: request bodies (while they arrive) and uploaded images (from their header)."""

from __future__ import annotations

from typing import BinaryIO

from fastapi import HTTPException
from PIL import Image, UnidentifiedImageError
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Refuses (413) a request whose body is over ``max_bytes``: by its Content-Length at once, else while reading.

    An ASGI middleware rather than a route check: it stops a multipart upload before it is spooled to disk.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise BodyTooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = (
            f'{{"detail": "the request body is over the server\'s limit of {self.max_bytes} bytes; send less '
            'data (fewer or smaller photos)"}'
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def check_upload_size(name: str, size: int | None, max_bytes: int) -> None:
    if size is not None and size > max_bytes:
        raise HTTPException(
            413,
            f"{name}: {size} bytes is over the limit of {max_bytes} bytes per file; send a smaller file",
        )


def check_image_header(name: str, file: BinaryIO, max_pixels: int) -> tuple[int, int]:
    """The image's size from its header (nothing decoded yet); 422 when it is not an image, 413 when too large."""
    file.seek(0)
    try:
        with Image.open(file) as image:
            width, height = image.size
    except Image.DecompressionBombError:
        raise HTTPException(
            413,
            f"{name}: far too many pixels; send a photo of at most {max_pixels} pixels",
        ) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise HTTPException(
            422,
            f"{name}: not an image this server can read; send a JPEG, PNG or WebP photo of the person",
        ) from None
    finally:
        file.seek(0)
    if width * height > max_pixels:
        raise HTTPException(
            413,
            f"{name}: {width}x{height} = {width * height} pixels is over the limit of {max_pixels} per photo; "
            "send a smaller photo",
        )
    return width, height
