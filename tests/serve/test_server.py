"""Running the server: the `deeprank serve` command in a subprocess, and the CLI's call of `run`."""

import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from deeprank import cli
from deeprank.errors import DeeprankError
from deeprank.serve import serve_in_thread


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


def test_cli_serve_calls_run_with_the_index(collection, monkeypatch):
    import deeprank.serve.server as server_module

    calls = []
    monkeypatch.setattr(server_module, "run", lambda index, **kw: calls.append((index, kw)))
    assert cli.main(["serve", str(collection), "--port", "8765", "--max-k", "7", "--max-upload-mb", "2"]) == 0
    options = {"host": "127.0.0.1", "port": 8765, "model": None, "max_upload_bytes": 2 * 2**20, "max_k": 7}
    assert calls == [
        (str(collection), {**options, "approximate": False, "body_timeout_s": 30.0, "expose_paths": False})
    ]
    calls.clear()
    argv = ["serve", str(collection), "--expose-paths", "--body-timeout", "2.5"]
    assert cli.main(argv) == 0
    assert calls[0][1]["expose_paths"] is True and calls[0][1]["body_timeout_s"] == 2.5


def test_a_port_out_of_range_or_taken_is_one_clear_error(collection, capsys):
    for bad in ("99999", "0", "-1", "http"):
        with pytest.raises(SystemExit) as exc:
            cli.main(["serve", str(collection), "--port", bad])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert (
            err.strip()
            .splitlines()[-1]
            .endswith(f"argument --port: expected a port number from 1 to 65535, got {bad!r}")
        )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["serve", str(collection), "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert err.strip() == f"deeprank: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    with pytest.raises(DeeprankError, match="port must be"), serve_in_thread(collection, port=99999):
        pass
