"""The FastAPI app over a real HTTP server on 127.0.0.1: search by id and upload, items, images, page."""

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from serve_support import MAX_UPLOAD, png_bytes, upload

from deeprank.data.images import MAX_IMAGE_PIXELS_ENV
from deeprank.index import Index
from deeprank.serve import create_app, serve_in_thread
from deeprank.serve.service import image_url


def test_health_describes_the_index(client, index):
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert (body["count"], body["dim"]) == (len(index), index.dim)
    assert body["image_search"] is True and body["model_hash"] == index.model_hash
    assert body["max_upload_bytes"] == MAX_UPLOAD and body["max_k"] == 30


def test_openapi_schema_documents_the_endpoints(client):
    schema = client.get("/openapi.json").json()
    assert {"/search", "/images", "/health", "/items"} <= set(schema["paths"])
    form = schema["paths"]["/search"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in form
    responses = schema["paths"]["/search"]["post"]["responses"]
    assert {"200", "400", "404", "408", "413", "415", "422"} <= set(responses)
    assert "path" not in schema["components"]["schemas"]["Hit"]["properties"]


def test_id_query_matches_index_search(client, index):
    for item in (index.ids[0], index.ids[17], index.ids[-1]):
        r = client.post("/search", data={"id": item, "k": 7})
        assert r.status_code == 200, r.text
        body = r.json()
        expected = index.search(index.vector(item), k=7)
        assert [h["id"] for h in body["hits"]] == expected.ids[0]
        np.testing.assert_allclose([h["distance"] for h in body["hits"]], expected.distances[0], atol=1e-6)
        assert all("path" not in h for h in body["hits"])  # no server paths unless asked for
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
        assert "/" in item and hit["image_url"] == "/images?id=" + item.replace("/", "%2F")
        r = client.get(hit["image_url"])
        assert r.status_code == 200
        assert r.headers["content-type"] == "image/png"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.content == Path(index.path_of(item)).read_bytes()
    assert client.get("/images", params={"id": index.ids[0]}).status_code == 200  # any client encoding
    assert client.get("/images").status_code == 422  # the id is required


@pytest.mark.parametrize(
    "raw_path",
    [
        "/images?id=..%2F..%2F..%2Fetc%2Fpasswd",
        "/images?id=%2Fetc%2Fpasswd",
        "/images?id=/etc/passwd",
        "/images?id=../../etc/passwd",
        "/images?id=%2e%2e/%2e%2e/etc/passwd",
        "/images?id=Ankle-boot%2F..%2F..%2Fmodel%2Fconfig.json",
        "/images?id=no-such-id",
        "/images?id=",
        "/images/../../etc/passwd",
        "/images/%2Fetc%2Fpasswd",
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
        assert [c.get("/images", params={"id": i}).status_code for i in "abcd"] == [404, 404, 404, 200]
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
        assert c.get("/images?id=a").status_code == 200
        r = c.get("/images?id=b")
        assert r.status_code == 404 and b"secret" not in r.content


def test_int_ids_are_found_from_text(tmp_path):
    vectors = np.eye(4, dtype=np.float32)
    with serve_in_thread(Index.from_vectors(vectors)) as url:
        body = httpx.post(url + "/search", data={"id": "2", "k": 2}).json()
    assert body["query"]["id"] == 2 and body["hits"][0]["id"] == 2


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


# ------------------------------------------------------------------ ids, messages, paths

ODD_IDS = [
    "new\nline.png", "a/b/c.png", "100%.png", "%2F", "ünïcödé 画像.png", "..", ".", "../x", "a/../b",
    " spaced ", "+plus&amp=q?#frag", "tab\there", "", "\\back", "//double", "bad\udcff.png",
]  # fmt: skip


def test_every_id_round_trips_through_search_and_image_urls(tmp_path):
    paths = []
    for j in range(len(ODD_IDS)):
        paths.append(str(tmp_path / f"{j}.png"))
        Image.new("L", (4, 4), j * 10).save(paths[-1])
    vectors = np.eye(len(ODD_IDS), dtype=np.float32)
    index = Index.from_vectors(vectors, ids=ODD_IDS, paths=paths)
    with serve_in_thread(index) as url, httpx.Client(base_url=url) as c:
        for item, path in zip(ODD_IDS, paths, strict=True):
            url_of_item = image_url(item)
            assert url_of_item.startswith("/images?id=") and "/" not in url_of_item[8:]
            r = c.get(url_of_item)
            assert r.status_code == 200, (item, r.text)
            assert r.content == Path(path).read_bytes()
            if "\udcff" in item:  # text a client cannot send as UTF-8 form data: served by URL only
                continue
            body = c.post("/search", data={"id": item, "k": 1}).json()
            assert "query" in body, (item, body)
            assert body["query"]["id"] == item and body["hits"][0]["id"] == item
            assert body["hits"][0]["image_url"] == body["query"]["image_url"] == url_of_item
        assert c.get("/items").json()["ids"] == ODD_IDS  # JSON escapes what UTF-8 cannot carry


def test_unknown_ids_are_cut_short_in_messages(client):
    by_search = client.post("/search", data={"id": "x" * 100_000})
    by_url = client.get("/images", params={"id": "x" * 50_000})  # URLs are shorter (clients cap them)
    for r, length in ((by_search, 100_000), (by_url, 50_000)):
        assert r.status_code == 404
        detail = r.json()["detail"]
        assert len(detail) < 200 and f"({length} characters)" in detail and detail.count("x") <= 80


def test_search_answers_give_paths_only_when_the_operator_asks(client, index, collection):
    r = client.post("/search", data={"id": index.ids[4], "k": 5})
    assert r.status_code == 200
    assert str(collection.parent) not in r.text and all("path" not in h for h in r.json()["hits"])
    with serve_in_thread(collection, expose_paths=True) as url:
        r = httpx.post(url + "/search", data={"id": index.ids[4], "k": 5})
        schema = httpx.get(url + "/openapi.json").json()
    expected = index.search(index.vector(index.ids[4]), k=5)
    assert [h["path"] for h in r.json()["hits"]] == expected.paths[0]
    assert "path" in schema["components"]["schemas"]["HitWithPath"]["properties"]


def test_the_upload_pixel_limit_is_the_setting_of_every_command(collection, index, monkeypatch):
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "500")  # the collection images are 28 x 28 = 784 pixels
    with serve_in_thread(collection) as url, httpx.Client(base_url=url) as c:
        r = upload(c, Path(index.path_of(index.ids[0])).read_bytes())
    assert r.status_code == 413 and "784 pixels, over the limit of 500" in r.json()["detail"]
