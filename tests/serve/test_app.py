"""``deeprank serve``: the JSON API through a real HTTP server on 127.0.0.1, hostile uploads, concurrency."""

import io
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
try:
    import python_multipart  # noqa: F401
except ImportError:
    pytest.importorskip("multipart")
httpx = pytest.importorskip("httpx")

from deeprank import cli  # noqa: E402
from deeprank.data import export_image_folder, load_fashion_mnist  # noqa: E402
from deeprank.index import Index  # noqa: E402
from deeprank.models import MultiScaleNet  # noqa: E402
from deeprank.models.checkpoint import save_checkpoint  # noqa: E402
from deeprank.serve import create_app, serve_in_thread  # noqa: E402
from deeprank.serve.batching import Batcher  # noqa: E402

MAX_UPLOAD = 256 * 1024
MAX_PIXELS = 1_000_000


def build_collection(root: Path, count: int = 40) -> Path:
    """Fashion-MNIST test images as PNG files, an untrained ``small`` model, and a saved index over them."""
    images, labels = load_fashion_mnist("test")
    export_image_folder(images[:count], labels[:count], root / "images")
    torch.manual_seed(0)
    save_checkpoint(root / "model", MultiScaleNet("small", in_channels=1))
    index = Index.build(root / "model", root / "images", progress=False)
    return index.save(root / "index")


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


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def upload(client, data: bytes, k: int = 5, name: str = "query.png"):
    return client.post("/search", files={"image": (name, data, "application/octet-stream")}, data={"k": k})


def assert_still_serving(client, index):
    item = index.ids[3]
    r = client.post("/search", data={"id": item, "k": 2})
    assert r.status_code == 200, r.text
    assert r.json()["hits"][0]["id"] == item


# ------------------------------------------------------------------ the API


def test_health_describes_the_index(client, index):
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert (body["count"], body["dim"]) == (len(index), index.dim)
    assert body["image_search"] is True and body["model_hash"] == index.model_hash
    assert body["max_upload_bytes"] == MAX_UPLOAD and body["max_k"] == 30


def test_openapi_schema_documents_the_endpoints(client):
    schema = client.get("/openapi.json").json()
    assert {"/search", "/images/{item_id}", "/health", "/items"} <= set(schema["paths"])
    form = schema["paths"]["/search"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in form
    responses = schema["paths"]["/search"]["post"]["responses"]
    assert {"200", "400", "404", "413", "415", "422"} <= set(responses)


def test_id_query_matches_index_search(client, index):
    for item in (index.ids[0], index.ids[17], index.ids[-1]):
        r = client.post("/search", data={"id": item, "k": 7})
        assert r.status_code == 200, r.text
        body = r.json()
        expected = index.search(index.vector(item), k=7)
        assert [h["id"] for h in body["hits"]] == expected.ids[0]
        np.testing.assert_allclose([h["distance"] for h in body["hits"]], expected.distances[0], atol=1e-6)
        assert [h["path"] for h in body["hits"]] == expected.paths[0]
        assert [h["rank"] for h in body["hits"]] == list(range(1, 8))
        assert body["hits"][0]["id"] == item and body["hits"][0]["distance"] < 1e-5
        assert body["query"] == {
            "kind": "id",
            "id": item,
            "filename": None,
            "width": None,
            "height": None,
            "image_url": body["hits"][0]["image_url"],
        }


def test_upload_query_matches_searching_the_file(client, index):
    item = index.ids[11]
    path = Path(index.path_of(item))
    body = upload(client, path.read_bytes(), k=6, name=path.name).json()
    expected = index.search(path, k=6)
    assert [h["id"] for h in body["hits"]] == expected.ids[0]
    np.testing.assert_allclose([h["distance"] for h in body["hits"]], expected.distances[0], atol=1e-5)
    assert body["hits"][0]["id"] == item
    assert body["query"]["kind"] == "image" and body["query"]["filename"] == path.name
    assert (body["query"]["width"], body["query"]["height"]) == (28, 28)


def test_upload_of_another_format_and_size_is_searched(client, index):
    # An RGB JPEG at another size goes through the same preprocessing as Index.search on a PIL image.
    image = Image.open(index.path_of(index.ids[5])).convert("RGB").resize((90, 70))
    data = png_bytes(image, "JPEG")
    body = upload(client, data, k=4).json()
    expected = index.search(Image.open(io.BytesIO(data)), k=4)
    assert [h["id"] for h in body["hits"]] == expected.ids[0]
    assert (body["query"]["width"], body["query"]["height"]) == (90, 70)


def test_k_is_validated_and_capped_by_the_index_size(client, index, collection):
    assert len(client.post("/search", data={"id": index.ids[0], "k": 1}).json()["hits"]) == 1
    for bad in ("0", "-3", "31", "abc", "2.5"):
        r = client.post("/search", data={"id": index.ids[0], "k": bad})
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["detail"].startswith("k: ")
    with serve_in_thread(collection, max_k=100) as url:
        r = httpx.post(url + "/search", data={"id": index.ids[0], "k": 100})
        assert r.status_code == 200 and r.json()["k"] == len(index) == len(r.json()["hits"])


def test_query_needs_exactly_one_of_image_and_id(client, index):
    r = client.post("/search", data={"k": 3})
    assert r.status_code == 400 and "exactly one" in r.json()["detail"]
    data = Path(index.path_of(index.ids[0])).read_bytes()
    r = client.post("/search", files={"image": ("a.png", data)}, data={"id": index.ids[0]})
    assert r.status_code == 400
    r = client.post("/search", data={"id": "no/such/item.png"})
    assert r.status_code == 404 and "no/such/item.png" in r.json()["detail"]


def test_items_lists_ids_in_pages(client, index):
    body = client.get("/items", params={"offset": 5, "limit": 3}).json()
    assert body == {"count": len(index), "offset": 5, "ids": index.ids[5:8]}
    assert client.get("/items", params={"offset": 10_000}).json()["ids"] == []
    assert client.get("/items", params={"limit": 0}).status_code == 422


# ------------------------------------------------------------------ images


def test_images_are_served_by_id(client, index):
    for item in index.ids[:3]:
        hit = client.post("/search", data={"id": item, "k": 1}).json()["hits"][0]
        assert "/" in item and "%2F" in hit["image_url"]  # ids with slashes survive the URL
        r = client.get(hit["image_url"])
        assert r.status_code == 200
        assert r.headers["content-type"] == "image/png"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.content == Path(index.path_of(item)).read_bytes()
    assert client.get("/images/" + index.ids[0]).status_code == 200  # unencoded slashes work too


@pytest.mark.parametrize(
    "raw_path",
    [
        "/images/..%2F..%2F..%2Fetc%2Fpasswd",
        "/images/%2Fetc%2Fpasswd",
        "/images//etc/passwd",
        "/images/../../etc/passwd",
        "/images/%2e%2e/%2e%2e/etc/passwd",
        "/images/Ankle-boot%2F..%2F..%2Fmodel%2Fconfig.json",
        "/images/no-such-id",
    ],
)
def test_images_never_leave_the_collection(server, raw_path):
    # Send the path exactly as written (no client-side normalisation of "..").
    with httpx.Client() as c:
        request = c.build_request("GET", server)
        request.url = request.url.copy_with(raw_path=raw_path.encode())
        r = c.send(request)
    assert r.status_code == 404
    assert b"root:" not in r.content and b"model_hash" not in r.content


def test_items_without_an_image_file_are_404(tmp_path):
    vectors = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    paths = [str(tmp_path / "gone.png"), None, "relative/path.png", str(tmp_path / "x.png"), None]
    (tmp_path / "x.png").write_bytes(png_bytes(Image.new("L", (4, 4))))
    index = Index.from_vectors(vectors, ids=["a", "b", "c", "d", "e"], paths=paths)
    with serve_in_thread(index) as url, httpx.Client(base_url=url) as c:
        assert [c.get(f"/images/{i}").status_code for i in "abcd"] == [404, 404, 404, 200]
        # No model: id queries work, uploads are refused with a reason.
        assert c.get("/health").json()["image_search"] is False
        assert c.post("/search", data={"id": "b", "k": 2}).json()["hits"][0]["id"] == "b"
        r = c.post("/search", files={"image": ("x.png", (tmp_path / "x.png").read_bytes())})
        assert r.status_code == 422 and "no model" in r.json()["detail"]


def test_a_collection_file_swapped_for_a_symlink_is_not_followed_outside(tmp_path):
    inside, outside = tmp_path / "collection", tmp_path / "secret"
    inside.mkdir()
    outside.mkdir()
    (outside / "key.png").write_bytes(b"secret bytes")
    for name in ("a.png", "b.png"):
        (inside / name).write_bytes(png_bytes(Image.new("L", (4, 4))))
    paths = [str(inside / "a.png"), str(inside / "b.png")]
    index = Index.from_vectors(np.eye(2, dtype=np.float32), ids=["a", "b"], paths=paths)
    (inside / "b.png").unlink()
    (inside / "b.png").symlink_to(outside / "key.png")
    with serve_in_thread(index) as url, httpx.Client(base_url=url) as c:
        assert c.get("/images/a").status_code == 200
        r = c.get("/images/b")
        assert r.status_code == 404 and b"secret" not in r.content


def test_int_ids_are_found_from_text(tmp_path):
    vectors = np.eye(4, dtype=np.float32)
    with serve_in_thread(Index.from_vectors(vectors)) as url:
        body = httpx.post(url + "/search", data={"id": "2", "k": 2}).json()
    assert body["query"]["id"] == 2 and body["hits"][0]["id"] == 2


# ------------------------------------------------------------------ untrusted uploads


def hostile_uploads(index) -> dict[str, tuple[bytes, int, str]]:
    good = Path(index.path_of(index.ids[0])).read_bytes()
    photo = png_bytes(Image.new("RGB", (200, 150), (200, 30, 30)), "JPEG")
    return {
        "text": (b"this is not an image at all\n" * 10, 415, "not an image"),
        "empty": (b"", 422, "empty"),
        "svg": (
            b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
            415,
            "not an image",
        ),
        "eps": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 415, "not an image"),
        "truncated png": (good[: len(good) // 2], 422, "truncated"),
        "truncated jpeg": (photo[: len(photo) // 2], 422, "truncated"),
        "png header only": (good[:33], 422, ""),
        # 4000 x 4000 grey: ~16 MP in a few KB of PNG, over the server's 1 MP limit.
        "decompression bomb": (png_bytes(Image.new("L", (4000, 4000))), 413, "pixels"),
        "too many bytes": (b"\x89PNG\r\n\x1a\n" + bytes(MAX_UPLOAD + 1), 413, "limit"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "text",
        "empty",
        "svg",
        "eps",
        "truncated png",
        "truncated jpeg",
        "png header only",
        "decompression bomb",
        "too many bytes",
    ],
)
def test_hostile_upload_gets_a_clear_4xx_and_the_server_keeps_serving(client, index, case):
    data, status, fragment = hostile_uploads(index)[case]
    r = upload(client, data)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and fragment in detail
    assert_still_serving(client, index)


def raw_request(server: str, head: bytes, body: bytes) -> bytes:
    """Send a request head and part of a body, never finish it, and read what the server answers."""
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + body)
        received = b""
        try:
            while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except TimeoutError:
            pass
    return received


def test_body_over_the_limit_is_refused_while_streaming(server, client, index):
    # A chunked upload with no end: a server that read everything before checking would never answer.
    head = (
        b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: multipart/form-data; boundary=xyz\r\n\r\n"
    )
    part = b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
    payload = part + bytes(2 * MAX_UPLOAD)
    body = b"%x\r\n%s\r\n" % (len(payload), payload)
    answer = raw_request(server, head, body)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"limit" in answer
    assert_still_serving(client, index)


def test_declared_content_length_over_the_limit_is_refused_up_front(server, client, index):
    head = (
        b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n"
        b"Content-Type: multipart/form-data; boundary=xyz\r\n\r\n" % (100 * MAX_UPLOAD)
    )
    answer = raw_request(server, head, b"--xyz\r\n")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert_still_serving(client, index)


# ------------------------------------------------------------------ concurrency


def test_concurrent_requests_match_sequential_ones(client, index, server):
    queries = []
    for j, item in enumerate(index.ids[:32]):
        if j % 2:
            queries.append(("id", item, 1 + j % 9))
        else:
            queries.append(("image", Path(index.path_of(item)).read_bytes(), 1 + j % 9))

    def ask(c, query):
        kind, value, k = query
        if kind == "id":
            r = c.post("/search", data={"id": value, "k": k})
        else:
            r = c.post("/search", files={"image": ("q.png", value)}, data={"k": k})
        assert r.status_code == 200, r.text
        return [(h["id"], round(h["distance"], 5)) for h in r.json()["hits"]]

    sequential = [ask(client, q) for q in queries]
    before = client.get("/health").json()["stats"]
    barrier = threading.Barrier(len(queries), timeout=30)

    def ask_together(query):
        with httpx.Client(base_url=server, timeout=60) as c:
            barrier.wait()
            return ask(c, query)

    with ThreadPoolExecutor(len(queries)) as pool:
        concurrent = list(pool.map(ask_together, queries))
    assert concurrent == sequential
    after = client.get("/health").json()["stats"]
    assert after["embedded_images"] - before["embedded_images"] == 16
    assert after["searched_queries"] - before["searched_queries"] == 32


def test_batcher_gathers_items_that_arrive_while_a_batch_runs():
    release = threading.Event()
    sizes = []

    def fn(items):
        sizes.append(len(items))
        if len(sizes) == 1:
            release.wait(10)
        return [x * 2 for x in items]

    batcher = Batcher(fn, max_batch=4, max_wait_s=0.0)
    first = batcher.submit(0)
    while not sizes:
        time.sleep(0.001)
    rest = [batcher.submit(i) for i in range(1, 7)]
    release.set()
    assert first.result(10) == 0 and [f.result(10) for f in rest] == [2, 4, 6, 8, 10, 12]
    assert sizes == [1, 4, 2]  # the six waiting items, in batches of at most max_batch
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(1)


def test_batcher_waits_only_for_items_that_are_on_their_way():
    sizes = []

    def fn(items):
        sizes.append(len(items))
        return items

    coming = [0]
    batcher = Batcher(fn, max_batch=8, max_wait_s=5.0, expected=lambda: coming[0])
    start = time.monotonic()
    assert batcher.submit(1).result(10) == 1
    assert time.monotonic() - start < 2.5  # alone: no 5 s wait
    coming[0] = 3  # three requests in flight: the first waits for the other two
    first = batcher.submit(1)
    time.sleep(0.05)
    rest = [batcher.submit(2), batcher.submit(3)]
    assert [f.result(10) for f in [first, *rest]] == [1, 2, 3]
    assert sizes == [1, 3]
    batcher.close()


def test_batcher_hands_an_error_to_every_request_of_the_batch():
    def fn(items):
        if 3 in items:
            raise ValueError("bad item")
        return items

    batcher = Batcher(fn, max_batch=8, max_wait_s=0.05)
    futures = [batcher.submit(i) for i in (1, 3, 4)]
    for f in futures:
        with pytest.raises(ValueError, match="bad item"):
            f.result(10)
    assert batcher.submit(5).result(10) == 5  # the worker survives
    batcher.close()
    assert not any(t.name == "deeprank-batcher" for t in threading.enumerate())


# ------------------------------------------------------------------ the page and the command


def test_page_is_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in r.text
    texts = [r.text] + [client.get(a).text for a in ("/static/app.js", "/static/style.css")]
    for text in texts:  # no CDN, web fonts or other external assets
        assert "http://" not in text and "https://" not in text
        assert 'src="//' not in text and 'href="//' not in text and "url(" not in text
    assert client.get("/static/../app.py").status_code == 404
    assert client.get("/static/index.py").status_code == 404


def test_create_app_rejects_bad_options(collection):
    with pytest.raises(ValueError, match="max_upload_bytes"):
        create_app(collection, max_upload_bytes=0)
    with pytest.raises(ValueError, match="default_k"):
        create_app(collection, max_k=5, default_k=6)
    with pytest.raises(FileNotFoundError):
        create_app(collection.parent / "missing")
    with pytest.raises(ValueError, match="formats"):
        create_app(collection, formats=("NOPE",))


def test_deeprank_serve_command_serves_until_stopped(collection):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # conftest.py points subprocesses at the deeprank this process imported.
    proc = subprocess.Popen(
        [sys.executable, "-m", "deeprank", "serve", str(collection), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert health is not None and health["count"] == 40, proc.stdout.read() if proc.poll() else ""
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(20)
    output = proc.stdout.read().decode()
    assert f"40 items (d=64) at http://127.0.0.1:{port}/" in output


def test_approximate_search_uses_the_saved_faiss_index(collection, index, tmp_path):
    pytest.importorskip("faiss")
    from deeprank.errors import DeeprankError

    with pytest.raises(DeeprankError, match="approximate"):
        create_app(collection, approximate=True)
    ann = Index.load(collection)
    ann.build_approximate("hnsw")
    saved = ann.save(tmp_path / "ann.index")
    with serve_in_thread(saved, approximate=True) as url, httpx.Client(base_url=url) as c:
        assert c.get("/health").json()["approximate"] is True
        item = index.ids[9]
        hits = c.post("/search", data={"id": item, "k": 5}).json()["hits"]
    expected = ann.search(ann.vector(item), k=5, approximate=True)
    assert [h["id"] for h in hits] == expected.ids[0] and hits[0]["id"] == item


def test_cli_serve_calls_run_with_the_index(collection, monkeypatch):
    import deeprank.serve.server as server_module

    calls = []
    monkeypatch.setattr(server_module, "run", lambda index, **kw: calls.append((index, kw)))
    assert cli.main(["serve", str(collection), "--port", "8765", "--max-k", "7", "--max-upload-mb", "2"]) == 0
    options = {"host": "127.0.0.1", "port": 8765, "model": None, "max_upload_bytes": 2 * 2**20, "max_k": 7}
    assert calls == [(str(collection), {**options, "approximate": False})]
