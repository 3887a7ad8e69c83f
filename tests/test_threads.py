"""Threading of deeprank.topk: determinism, thread settings, torch alongside, Python threads, fork."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch

import deeprank

# Shapes that exercise both kernels (few queries: row kernel; many: packed lanes), several database
# splits and tiles, and candidate buffers that compact many times.
CASES = [(1, 30011, 16, 10), (3, 20000, 40, 257), (50, 20000, 16, 100), (600, 3001, 64, 5)]


def _data(seed: int, m: int, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[n // 2] = x[n // 3]  # an exact duplicate: a tie that must resolve the same way every time
    q = rng.standard_normal((m, d)).astype(np.float32)
    return q, x


@pytest.mark.parametrize(("m", "n", "d", "k"), CASES)
def test_results_identical_for_any_thread_count(rng, m, n, d, k):
    q, x = _data(int(rng.integers(1 << 30)), m, n, d)
    d1, i1 = deeprank.topk(q, x, k, threads=1)
    for threads in (2, 3, 8):
        dn, i_n = deeprank.topk(q, x, k, threads=threads)
        np.testing.assert_array_equal(dn, d1)
        np.testing.assert_array_equal(i_n, i1)


def test_threads_argument_overrides_setting_only_for_the_call():
    before = deeprank.get_num_threads()
    q, x = _data(1, 4, 1000, 8)
    deeprank.topk(q, x, 3, threads=before + 2)
    assert deeprank.get_num_threads() == before


def test_torch_thread_setting_is_independent(rng):
    # torch is imported first (conftest) and shares the process; neither setting moves the other.
    q, x = _data(int(rng.integers(1 << 30)), 40, 5000, 32)
    expect = deeprank.topk(q, x, 7, threads=1)
    torch_before, ours_before = torch.get_num_threads(), deeprank.get_num_threads()
    try:
        torch.set_num_threads(1)
        got = deeprank.topk(q, x, 7, threads=2)
        assert deeprank.get_num_threads() == ours_before
        deeprank.set_num_threads(1)
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        # Interleave torch's OpenMP work with ours.
        tq, tx = torch.from_numpy(q), torch.from_numpy(x)
        tdist = torch.cdist(tq, tx) ** 2
        got2 = deeprank.topk(tq, tx, 7)
        assert deeprank.get_num_threads() == 1
    finally:
        torch.set_num_threads(torch_before)
        deeprank.set_num_threads(ours_before)
    np.testing.assert_array_equal(got[1], expect[1])
    np.testing.assert_array_equal(got2[1].numpy(), expect[1])
    torch.testing.assert_close(tdist.topk(7, largest=False).values, got2[0], rtol=1e-4, atol=1e-4)


def test_calls_from_several_python_threads(rng):
    seeds = [int(s) for s in rng.integers(1 << 30, size=6)]
    cases = [_data(s, m, 6000, 24) for s, m in zip(seeds, (1, 2, 9, 33, 70, 5), strict=True)]
    expect = [deeprank.topk(q, x, 11, threads=1) for q, x in cases]
    results: list = [None] * len(cases)
    errors: list = []
    barrier = threading.Barrier(len(cases))

    def work(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            for _ in range(3):
                results[i] = deeprank.topk(*cases[i], 11, threads=2)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for got, want in zip(results, expect, strict=True):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def _child_search(conn, q, x, k) -> None:
    try:
        conn.send(deeprank.topk(q, x, k, threads=2))
    finally:
        conn.close()


def test_results_correct_after_fork():
    q, x = _data(7, 20, 8000, 16)
    expect = deeprank.topk(q, x, 9, threads=2)  # the parent's pool threads exist before the fork
    ctx = multiprocessing.get_context("fork")
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_search, args=(child_conn, q, x, 9))
    proc.start()
    child_conn.close()
    try:
        assert parent_conn.poll(60), "child did not answer within 60 s (pool deadlock after fork?)"
        got = parent_conn.recv()
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
    assert proc.exitcode == 0
    np.testing.assert_array_equal(got[0], expect[0])
    np.testing.assert_array_equal(got[1], expect[1])
    # The parent still works after forking.
    again = deeprank.topk(q, x, 9, threads=2)
    np.testing.assert_array_equal(again[1], expect[1])


def _run_python(code: str, **env: str) -> str:
    full_env = {**os.environ, **env}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env=full_env,
        cwd=os.getcwd(),
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_thread_setting_is_honoured():
    # DEEPRANK_NUM_THREADS sets the default.
    # Count the OS threads of a fresh process (torch imported first, as users do): the pool grows to
    # exactly threads - 1 helpers, and a setting of 1 starts none.
    code = """
        import os, torch, numpy as np, deeprank
        def count(): return len(os.listdir("/proc/self/task"))
        x = np.random.default_rng(0).random((20000, 16), dtype=np.float32)
        q = x[:64].copy()
        print(deeprank.get_num_threads())  # from DEEPRANK_NUM_THREADS
        start = count()
        deeprank.set_num_threads(1)
        deeprank.topk(q, x, 5)
        one = count()
        deeprank.topk(q, x, 5, threads=3)
        three = count()
        print(one - start, three - start)
    """
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("needs /proc")
    out = _run_python(code, DEEPRANK_NUM_THREADS="3", PYTHONPATH=os.pathsep.join(sys.path))
    default, one, three = map(int, out.split())
    assert (default, one, three) == (3, 0, 2)
