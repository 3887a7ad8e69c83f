"""Fixtures of the serve tests: one collection, index and live server per module."""

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
try:
    import python_multipart  # noqa: F401
except ImportError:
    pytest.importorskip("multipart")
httpx = pytest.importorskip("httpx")

from serve_support import MAX_PIXELS, MAX_UPLOAD, build_collection  # noqa: E402

from deeprank.index import Index  # noqa: E402
from deeprank.serve import serve_in_thread  # noqa: E402


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return build_collection(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def index(collection):
    return Index.load(collection)


@pytest.fixture(scope="module")
def server(collection):
    with serve_in_thread(collection, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS, max_k=30) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server, timeout=30) as c:
        yield c
