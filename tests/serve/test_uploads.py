"""Untrusted uploads: non-images, truncations, bombs, oversized bodies get a clear 4xx; serving goes on."""

import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from hostile_files import UPRIGHT, exif_jpeg, png16, png_header, png_pixel_bomb, stored_pixels
from PIL import Image
from serve_support import MAX_UPLOAD, assert_still_serving, png_bytes, upload

from deeprank.serve import serve_in_thread


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


def test_bombs_by_header_and_by_pixels_are_413_before_decoding(client, index):
    for data in (png_header(30000, 30000), png_pixel_bomb(20000, 20000), png_header(2000, 2000)):
        r = upload(client, data)
        assert r.status_code == 413, r.text
        assert "over the limit of" in r.json()["detail"]
    assert_still_serving(client, index)


def test_sixteen_bit_and_exif_rotated_uploads_search_as_the_pictures_they_show(client, index):
    item = index.ids[9]
    grey = np.asarray(Image.open(index.path_of(item)))
    sixteen = upload(client, png16(grey.astype(np.uint16) * 257), k=6)  # v * 257: exactly v in 8 bits
    eight = upload(client, Path(index.path_of(item)).read_bytes(), k=6)
    assert sixteen.status_code == eight.status_code == 200, sixteen.text
    assert [h["id"] for h in sixteen.json()["hits"]] == [h["id"] for h in eight.json()["hits"]]
    assert sixteen.json()["hits"] == eight.json()["hits"] and sixteen.json()["hits"][0]["id"] == item

    data = exif_jpeg(np.repeat(np.rot90(grey, 1)[..., None], 3, axis=2), 6)  # stored turned, tag turns back
    upright = Image.fromarray(np.ascontiguousarray(UPRIGHT[6](stored_pixels(data))))
    body = upload(client, data, k=6).json()
    expected = index.search(upright, k=6)
    assert [h["id"] for h in body["hits"]] == expected.ids[0]
    np.testing.assert_allclose([h["distance"] for h in body["hits"]], expected.distances[0], atol=1e-5)
    sideways = index.search(Image.fromarray(stored_pixels(data)), k=6)
    assert not np.allclose(sideways.distances[0], expected.distances[0], atol=1e-4)


def test_a_dripping_body_gets_408_within_the_timeout_and_others_are_served(collection, index):
    timeout_s = 1.0
    with serve_in_thread(collection, body_timeout_s=timeout_s) as url, httpx.Client(base_url=url) as c:
        host, port = url.removeprefix("http://").split(":")
        head = (
            b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000\r\n"
            b"Content-Type: multipart/form-data; boundary=xyz\r\n\r\n"
            b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        )
        answer, served_meanwhile = b"", False
        with socket.create_connection((host, int(port)), timeout=0.1) as sock:
            sock.sendall(head)
            start = time.monotonic()
            for step in range(100):  # a byte every 0.1 s: 10 s at most, far past the timeout
                try:
                    sock.sendall(b"x")
                    answer += sock.recv(65536)
                except TimeoutError:
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    break
                if b"\r\n\r\n" in answer and answer.rstrip().endswith(b"}"):
                    break
                if step == 2:
                    assert_still_serving(c, index)  # another client is answered during the drip
                    served_meanwhile = True
            elapsed = time.monotonic() - start
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"did not arrive within 1 seconds" in answer
        assert served_meanwhile and elapsed < timeout_s + 2.0, elapsed
        assert_still_serving(c, index)
