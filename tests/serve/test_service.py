"""The search service: concurrent requests are batched and answer exactly as sequential ones."""

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx


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
