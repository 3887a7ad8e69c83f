"""Untrusted request bodies: a byte limit enforced while the body streams in, and guarded image decoding."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from PIL import Image
from starlette.exceptions import HTTPException

from ..data.images import ImageTooLarge, NotAnImage, UnreadableImage, decode_image

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Pillow plugins we let parse uploads. Others (EPS runs Ghostscript, exotic formats) are attack surface
# a search page does not need.
DEFAULT_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")


class UploadError(Exception):
    """An upload the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a body passes the limit; an ``HTTPException`` so that frameworks that
    wrap body-parsing errors (FastAPI answers 400 for those) pass it through as a 413."""

    def __init__(self, limit: int) -> None:
        self.message = f"request body is larger than the limit of {limit} bytes"
        super().__init__(413, self.message, headers={"Connection": "close"})


class BodyTimeout(HTTPException):
    """Raised from ``receive`` when a body has not arrived whole in time (408, as :class:`BodyTooLarge`)."""

    def __init__(self, timeout_s: float) -> None:
        self.message = f"the request body did not arrive within {timeout_s:g} seconds"
        super().__init__(408, self.message, headers={"Connection": "close"})


class BodyLimitMiddleware:
    """ASGI middleware bounding request bodies in bytes (413) and in time (408).

    A declared ``Content-Length`` over ``limit`` is refused before any of the body is read; otherwise
    the bytes are counted as they arrive, so an endless chunked upload is cut off at the limit instead
    of being spooled to disk first. The whole body must arrive within ``timeout_s`` seconds of the
    request's start, so a client dripping it a byte at a time holds the request that long at most.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], limit: int, timeout_s: float = 30.0) -> None:
        self.app = app
        self.limit = int(limit)
        self.timeout_s = float(timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _json_response(send, 400, "invalid Content-Length header")
                    return
                if declared > self.limit:
                    await _json_response(send, 413, BodyTooLarge(self.limit).message)
                    return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        seen = 0
        body_done = False
        started = False

        async def guarded_receive() -> Message:
            nonlocal seen, body_done
            if body_done:  # after the body: waiting for a disconnect is not bounded here
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise BodyTimeout(self.timeout_s) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
                body_done = not message.get("more_body", False)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracking_send)
        except (BodyTooLarge, BodyTimeout) as exc:
            if started:  # cannot change a response already under way
                raise
            await _json_response(send, exc.status_code, exc.message)


async def _json_response(send: Send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def supported_formats(formats: tuple[str, ...]) -> tuple[str, ...]:
    """The given Pillow format names this Pillow can open (a build may lack e.g. WEBP)."""
    Image.init()
    known = tuple(f.upper() for f in formats if f.upper() in Image.OPEN)
    if not known:
        raise ValueError(f"none of the upload formats {formats} can be opened by this Pillow")
    return known


_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def _sniff(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _SIGNATURES if data.startswith(magic)), None)


def decode_upload(data: bytes, *, max_pixels: int, formats: tuple[str, ...] = DEFAULT_FORMATS) -> Image.Image:
    """Decode an uploaded image fully, refusing non-images, truncated files and decompression bombs.

    The decoding, its pixel limit (checked from the header before any pixel is decoded) and its bomb
    check are those of every file (:func:`deeprank.data.images.decode_image`). Raises
    :class:`UploadError` with 415 (not an image of an accepted format), 413 (too many pixels) or 422
    (empty, corrupt or truncated).
    """
    if not data:
        raise UploadError(422, "the uploaded file is empty")
    try:
        return decode_image(io.BytesIO(data), name="the upload", max_pixels=max_pixels, formats=formats)
    except ImageTooLarge as exc:
        raise UploadError(413, f"the image has too many pixels: {exc.reason}") from None
    except NotAnImage:
        kind = _sniff(data)
        if kind is not None:  # the right signature, but Pillow could not read the header
            raise UploadError(422, f"the {kind} image is truncated or corrupt") from None
        raise UploadError(
            415, f"the upload is not an image in a supported format ({', '.join(formats)})"
        ) from None
    except UnreadableImage as exc:
        raise UploadError(422, f"the image is truncated or corrupt: {exc.reason}") from None
