"""Running the app: ``run`` (blocking, for ``deeprank serve``) and ``serve_in_thread`` (tests, benchmarks)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from ..errors import DeeprankError
from ..index import Index
from .app import create_app


def run(
    index_dir: str | os.PathLike | Index,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    log_level: str = "info",
    **app_options: Any,
) -> None:
    """Load the index (and its model) once and serve it until interrupted (Ctrl-C).

    ``app_options`` go to :func:`deeprank.serve.create_app` (``model``, ``max_upload_bytes``, ``max_k``,
    ``max_batch``, ``expose_paths``, ...). The default host only accepts connections from this machine.
    A port that cannot be listened on raises :class:`deeprank.errors.DeeprankError` before serving.
    """
    sock = _listen(host, port)  # first: a taken port is said before a long index load
    try:
        _serve(sock, create_app(index_dir, **app_options), host, log_level)
    finally:
        sock.close()


def _serve(sock: socket.socket, app: Any, host: str, log_level: str) -> None:
    import uvicorn

    port = sock.getsockname()[1]
    if not _is_loopback(host):
        print(
            f"deeprank serve: listening on {host}, reachable from other machines; there is no authentication",
            file=sys.stderr,
        )
    service = app.state.service
    if service.model is None:
        print(f"deeprank serve: no search by image: {service.model_error}", file=sys.stderr)
    print(
        f"deeprank serve: {len(service.index)} items (d={service.index.dim}) at http://{_url_host(host)}:{port}/",
        file=sys.stderr,
    )
    uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False)).run(sockets=[sock])


@contextlib.contextmanager
def serve_in_thread(
    app_or_index: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    startup_timeout: float = 30.0,
    **app_options: Any,
) -> Iterator[str]:
    """Serve on a background thread for the duration of a ``with`` block; yields the base URL.

    ``port=0`` picks a free port. The server is shut down (and the thread joined) on exit.
    """
    import uvicorn

    app = app_or_index if hasattr(app_or_index, "router") else create_app(app_or_index, **app_options)
    sock = _listen(host, port)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="deeprank-serve", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        yield f"http://{_url_host(host)}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``; a port out of range or taken, or a bad host, is one clear error."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise DeeprankError(f"port must be a whole number from 1 to 65535 (0: any free port), got {port!r}")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:  # gaierror (unknown host) included
        sock.close()
        raise DeeprankError(f"cannot listen on {_url_host(host)}:{port}: {exc.strerror or exc}") from None
    return sock


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
