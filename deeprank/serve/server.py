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
    ``max_batch``, ...). The default host only accepts connections from this machine.
    """
    import uvicorn

    app = create_app(index_dir, **app_options)
    if not _is_loopback(host):
        print(
            f"deeprank serve: listening on {host}, reachable from other machines; there is no authentication",
            file=sys.stderr,
        )
    service = app.state.service
    print(
        f"deeprank serve: {len(service.index)} items (d={service.index.dim}) at http://{_url_host(host)}:{port}/",
        file=sys.stderr,
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)


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
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
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


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
