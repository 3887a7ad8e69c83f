"""The FastAPI application: the search page, ``POST /search``, ``GET /images?id=``, ``GET /health``.

Every answer a client can provoke is JSON ``{"detail": "<one clear sentence>"}`` with a 4xx status:
413 (body or image too large), 415 (not an image), 422 (truncated or corrupt image, bad ``k``),
404 (unknown id), 400 (neither or both of ``image`` and ``id``), 408 (a body that did not arrive in
time). Ids are echoed cut to 80 characters. Answers name items by id and image URL; the server's file
paths only with ``expose_paths=True``.
"""

import asyncio
import json
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from .._version import __version__
from ..data.images import max_image_pixels
from ..index import Index
from .service import SearchService, image_url, short_id
from .uploads import DEFAULT_FORMATS, BodyLimitMiddleware, UploadError

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_K = 100
DEFAULT_BODY_TIMEOUT_S = 30.0
# Room for the multipart boundaries and the small form fields around the file.
_MULTIPART_OVERHEAD = 64 * 1024

# The page loads only its own files; nothing from other origins.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}

_IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".webp": "image/webp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}


class JSONAnswer(JSONResponse):
    """JSON with non-ASCII escaped: ids from undecodable file names (surrogate escapes) stay valid."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


class Hit(BaseModel):
    rank: int = Field(description="1 for the nearest item")
    id: str | int
    distance: float = Field(description="squared Euclidean distance between embeddings")
    image_url: str


class HitWithPath(Hit):
    path: str | None = Field(description="the image file recorded in the index (None for vectors)")


class QueryInfo(BaseModel):
    kind: Literal["image", "id"]
    id: str | int | None = None
    filename: str | None = None
    width: int | None = None
    height: int | None = None
    image_url: str | None = None


class SearchResponse(BaseModel):
    query: QueryInfo
    k: int = Field(description="number of hits returned (the k asked, at most the index size)")
    hits: list[Hit]
    took_ms: float


class SearchResponseWithPaths(SearchResponse):
    hits: list[HitWithPath]


class Health(BaseModel):
    status: Literal["ok"]
    count: int
    dim: int
    image_search: bool = Field(description="whether the server has a model to embed uploads")
    model_hash: str | None
    approximate: bool = Field(description="whether searches use the approximate backend")
    backend: str = Field(description="the backend searches use: flat (exact), faiss or milvus")
    max_k: int
    default_k: int
    max_upload_bytes: int
    stats: dict[str, int]


class Items(BaseModel):
    count: int
    offset: int
    ids: list[str | int]


class ErrorBody(BaseModel):
    detail: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "neither or both of image and id",
        404: "unknown id",
        408: "the request body did not arrive in time",
        413: "upload or image too large",
        415: "not an image in a supported format",
        422: "truncated or corrupt image, or invalid k",
    }.items()
}


def _read_static(name: str) -> bytes:
    return (resources.files("deeprank.serve") / "static" / name).read_bytes()


def create_app(
    index: Index | str | os.PathLike,
    *,
    model: Any = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int | None = None,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
    expose_paths: bool = False,
    max_k: int = DEFAULT_MAX_K,
    default_k: int = 12,
    max_batch: int = 32,
    max_wait_ms: float = 2.0,
    max_concurrent_decodes: int = 4,
    formats: tuple[str, ...] = DEFAULT_FORMATS,
    approximate: bool = False,
    verify: bool = True,
) -> FastAPI:
    """Build the app over an :class:`~deeprank.index.Index` (or an index directory, loaded now).

    Args:
        index: the index, or its directory for :meth:`Index.load`.
        model: a model or checkpoint directory for image queries (default: the index's checkpoint).
        max_upload_bytes: largest accepted upload; bigger bodies get 413 while still streaming in.
        max_pixels: largest accepted image (width x height), checked before decoding (decompression
            bombs); default :func:`deeprank.data.images.max_image_pixels`, the limit of every command.
        body_timeout_s: seconds a request body may take to arrive whole (408 after that).
        expose_paths: give each hit's file path on the server too (default: ids and image URLs only).
        max_k: largest ``k`` a client may ask for; ``default_k`` is the page's initial value.
        max_batch, max_wait_ms: micro-batching of concurrent queries (``max_batch=1`` turns it off).
        max_concurrent_decodes: uploads decoded at once (bounds memory under a flood of large images).
        formats: Pillow formats accepted for uploads.
        approximate: search with the index's FAISS index (saved with it) instead of exact search.
        verify: check the index checksums on load.
    """
    max_pixels = max_image_pixels() if max_pixels is None else max_pixels
    limits = _Limits(int(max_upload_bytes), int(max_k), int(default_k), bool(expose_paths))
    _check_limits(limits, max_pixels, body_timeout_s)
    if not isinstance(index, Index):
        index = Index.load(index, model=model, verify=verify)
    elif model is not None:
        raise ValueError("pass model only with an index directory (Index.load checks it against the index)")
    service = SearchService(
        index,
        max_batch=max_batch,
        max_wait_s=max_wait_ms / 1000.0,
        max_pixels=max_pixels,
        formats=formats,
        approximate=approximate,
    )
    app = _new_app(service, limits, body_timeout_s)
    _add_page_routes(app)
    _add_info_routes(app, index, service, limits)
    _add_search_route(app, index, service, limits, asyncio.Semaphore(max(1, int(max_concurrent_decodes))))
    return app


@dataclass(frozen=True)
class _Limits:
    """What one request may ask for or send, and what an answer shows."""

    max_upload_bytes: int
    max_k: int
    default_k: int
    expose_paths: bool


def _check_limits(limits: _Limits, max_pixels: int, body_timeout_s: float) -> None:
    for name, value in (
        ("max_upload_bytes", limits.max_upload_bytes),
        ("max_pixels", max_pixels),
        ("max_k", limits.max_k),
        ("body_timeout_s", body_timeout_s),
    ):
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if not 1 <= limits.default_k <= limits.max_k:
        raise ValueError(f"default_k must be between 1 and max_k={limits.max_k}, got {limits.default_k}")


def _new_app(service: SearchService, limits: _Limits, body_timeout_s: float) -> FastAPI:
    """The bare app: lifespan (closes the service), body limits, and one-sentence error bodies."""

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        try:
            yield
        finally:
            await run_in_threadpool(service.close)

    app = FastAPI(
        title="deeprank search",
        summary="Search an image collection by example (Deep Ranking embeddings).",
        version=_version(),
        docs_url=None,  # Swagger UI would load from a CDN; the schema is at /openapi.json
        redoc_url=None,
        lifespan=lifespan,
        default_response_class=JSONAnswer,
    )
    app.state.service = service
    app.add_middleware(
        BodyLimitMiddleware, limit=limits.max_upload_bytes + _MULTIPART_OVERHEAD, timeout_s=body_timeout_s
    )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        # One readable sentence instead of pydantic's list, so the page can show it as is.
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
            parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg")))
        return JSONAnswer({"detail": "; ".join(parts) or "invalid request"}, status_code=422)

    @app.exception_handler(UploadError)
    async def _upload_error(_: Request, exc: UploadError) -> JSONResponse:
        return JSONAnswer({"detail": exc.message}, status_code=exc.status)

    return app


def _add_page_routes(app: FastAPI) -> None:
    """The search page and its fixed set of static files."""
    page_html = _read_static("index.html")
    static = {name: _read_static(name) for name in _STATIC}

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return Response(page_html, media_type="text/html; charset=utf-8", headers=_page_headers())

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str) -> Response:
        if name not in static:  # a fixed set of files: nothing from the request reaches the filesystem
            raise HTTPException(404, "no such file")
        return Response(static[name], media_type=_STATIC[name], headers=_page_headers())


def _add_info_routes(app: FastAPI, index: Index, service: SearchService, limits: _Limits) -> None:
    """``/health``, ``/items`` and ``/images``: facts, ids and collection images by id."""

    @app.get("/health", response_model=Health)
    async def health() -> dict[str, Any]:
        """Liveness and the facts the page needs (size, limits, whether uploads can be searched)."""
        return {
            "status": "ok",
            "count": len(index),
            "dim": index.dim,
            "image_search": service.model is not None,
            "model_hash": index.model_hash,
            "approximate": service.approximate,
            "backend": service.backend,
            "max_k": limits.max_k,
            "default_k": min(limits.default_k, len(index)),
            "max_upload_bytes": limits.max_upload_bytes,
            "stats": service.stats(),
        }

    @app.get("/items", response_model=Items)
    async def items(
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """A page of the index's ids, in index order (``offset`` past the end gives an empty list)."""
        ids = service.ids[offset : offset + limit]
        return {"count": len(index), "offset": offset, "ids": ids}

    @app.get("/images", responses={404: _ERRORS[404]}, response_class=FileResponse)
    async def image(
        request: Request, item_id: Annotated[str, Query(alias="id", description="the item's id")]
    ) -> FileResponse:
        """The collection image of an item, looked up by id (never by a client-given path)."""
        item_id = _exact_query_value(request, "id", item_id)
        try:
            path = service.image_path(item_id)
        except KeyError:
            raise HTTPException(404, f"no item with id {short_id(item_id)}") from None
        if path is None or not path.is_file():
            raise HTTPException(404, f"item {short_id(item_id)} has no image file")
        media = _IMAGE_TYPES.get(path.suffix.lower(), "application/octet-stream")
        return FileResponse(
            path,
            media_type=media,
            headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"},
        )


def _add_search_route(
    app: FastAPI, index: Index, service: SearchService, limits: _Limits, decode_slots: asyncio.Semaphore
) -> None:
    """``POST /search``: by uploaded image (decoded in at most ``decode_slots`` at once) or by id."""

    @app.post(
        "/search",
        response_model=SearchResponseWithPaths if limits.expose_paths else SearchResponse,
        responses=_ERRORS,
    )
    async def search(
        request: Request,
        image: Annotated[UploadFile | None, File(description="a query image (PNG, JPEG, ...)")] = None,
        item_id: Annotated[
            str | None, Form(alias="id", description="search from this item of the index")
        ] = None,
        k: Annotated[
            int, Form(ge=1, le=limits.max_k, description=f"number of neighbours, 1..{limits.max_k}")
        ] = limits.default_k,
    ) -> dict[str, Any]:
        """The ``k`` nearest items to an uploaded image or to an item already in the index."""
        start = time.perf_counter()
        if item_id is None and image is None and "id" in await request.form():
            item_id = ""  # FastAPI reads an empty field as absent; "" is an id like any other
        if (image is None) == (item_id is None):
            raise HTTPException(400, "send exactly one of: an image file (field 'image') or an id ('id')")
        service.queries_in_flight += 1
        try:
            return await _search(image, item_id, k, start)
        finally:
            service.queries_in_flight -= 1

    async def _search(image: UploadFile | None, item_id: str | None, k: int, start: float) -> dict[str, Any]:
        if item_id is not None:
            try:
                key = service.resolve_id(item_id)
            except KeyError:
                raise HTTPException(404, f"no item with id {short_id(item_id)}") from None
            vector = index.vector(key)
            query: dict[str, Any] = {"kind": "id", "id": key, "image_url": image_url(key)}
        else:
            assert image is not None
            data = await image.read(limits.max_upload_bytes + 1)
            if len(data) > limits.max_upload_bytes:
                too_big = f"the image is larger than the limit of {limits.max_upload_bytes} bytes"
                raise HTTPException(413, too_big)
            service.uploads_in_flight += 1
            try:
                async with decode_slots:
                    prepared = await run_in_threadpool(service.prepare_upload, data)
                vector = await service.embed(prepared)
            finally:
                service.uploads_in_flight -= 1
            query = {
                "kind": "image",
                "filename": image.filename,
                "width": prepared.width,
                "height": prepared.height,
            }
        hits = await service.neighbours(vector, k)
        for hit in hits:
            hit["image_url"] = image_url(hit["id"])
            if not limits.expose_paths:
                del hit["path"]
        return {
            "query": query,
            "k": len(hits),
            "hits": hits,
            "took_ms": round((time.perf_counter() - start) * 1000.0, 3),
        }


def _exact_query_value(request: Request, name: str, parsed: str) -> str:
    """``name`` from the raw query string, undecodable bytes kept as surrogate escapes (as file names
    are), so an id made from any file name comes back exactly; ``parsed`` when nothing differs."""
    raw = request.scope.get("query_string", b"").decode("latin-1")
    for key, value in parse_qsl(raw, keep_blank_values=True, encoding="utf-8", errors="surrogateescape"):
        if key == name:
            return value
    return parsed


def _page_headers() -> dict[str, str]:
    return {
        "Content-Security-Policy": PAGE_CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


def _version() -> str:
    try:
        return str(__version__)
    except ImportError:
        return "0"
