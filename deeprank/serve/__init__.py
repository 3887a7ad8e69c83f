"""``deeprank serve``: a search-by-example web page and JSON API over a saved index (extra ``serve``).

::

    from deeprank.serve import create_app, run
    run("photos.index", host="127.0.0.1", port=8000)          # blocks; what `deeprank serve` calls
    app = create_app("photos.index")                           # a FastAPI app for your own ASGI server

Endpoints: ``GET /`` (the page), ``POST /search`` (multipart: ``image`` file or ``id``, and ``k``),
``GET /images?id=ID``, ``GET /items``, ``GET /health`` and ``GET /openapi.json`` (no ``/docs``: Swagger UI
would load its scripts from a CDN, and the page loads nothing from other origins).
"""

from __future__ import annotations

from .app import create_app
from .server import run, serve_in_thread

__all__ = ["create_app", "run", "serve_in_thread"]
