"""Running ``deeprank`` commands as an unprivileged user, so that file permissions mean what they say.

Tests run as root here, and root reads chmod 000 files and writes into read-only folders. The
interpreter itself lives under ``/root`` (which ``nobody`` may not enter), so :func:`run_cli` starts
one child Python as root, imports everything the commands need, then drops to ``nobody``
(``setgroups``/``setgid``/``setuid``) and calls :func:`deeprank.cli.main` for each argv. Started as
another user, the child stays that user. A traceback escaping ``main`` is caught and returned, so a
test can assert there is none.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

NOBODY = 65534

_CHILD = r"""
import contextlib, io, json, os, sys, traceback, warnings
import torch
import deeprank, deeprank.cli as cli
import deeprank.data, deeprank.demo, deeprank.embedding, deeprank.evaluation, deeprank.evaluation.plots
import deeprank.index, deeprank.models, deeprank.training, deeprank.training.config
import safetensors, safetensors.torch, fcntl  # imported lazily by deeprank; /root is closed to nobody
import csv, shutil, tempfile, uuid, encodings.idna, cProfile, pstats, secrets, numpy.random, torch._dynamo
from PIL import Image, ImageEnhance, ImageOps, ImageDraw, ImageFont
Image.init()
calls = json.loads(sys.stdin.read())
if os.geteuid() == 0:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
results = []
for argv in calls:
    out, err = io.StringIO(), io.StringIO()
    code, tb = None, None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exc:
            code = exc.code
        except BaseException:
            tb = traceback.format_exc()
    results.append({"argv": argv, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue(),
                    "traceback": tb})
sys.__stdout__.write(json.dumps(results))
""".replace("NOBODY", str(NOBODY))


def is_root() -> bool:
    return os.geteuid() == 0


def shared_dir(prefix: str = "deeprank-") -> Path:
    """A fresh folder under the system temp folder that every user may enter (mode 0755)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def writable_dir(parent: Path, name: str) -> Path:
    """A folder every user may write (for the unprivileged commands' outputs)."""
    path = parent / name
    path.mkdir(parents=True)
    path.chmod(0o777)
    return path


def run_cli(calls: list[list[str]], *, home: Path, timeout: float = 600) -> list[dict]:
    """``deeprank.cli.main(argv)`` for each of ``calls`` as ``nobody`` (see the module docstring).

    Returns per call ``{"argv", "code", "stdout", "stderr", "traceback"}``.
    """
    import deeprank  # the child imports the deeprank this process imported

    package_parent = str(Path(deeprank.__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": path}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD],
        input=json.dumps([[str(a) for a in argv] for argv in calls]),
        capture_output=True,
        text=True,
        env=env,
        cwd=home,
        timeout=timeout,
    )
    if proc.returncode != 0 or not proc.stdout:
        raise AssertionError(f"the unprivileged child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)
