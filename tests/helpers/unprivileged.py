"""Running ``deeprank`` commands as an unprivileged user, so that file permissions mean what they say.

Tests run as root here, and root reads chmod 000 files and writes into read-only folders. The
interpreter itself lives under ``/root`` (which ``nobody`` may not enter), so :func:`run_cli` starts
one child Python as root, drops to ``nobody`` (real and effective ids; the saved ids stay root's) and
calls :func:`deeprank.cli.main` for each argv. Modules imported after that are found and loaded with
root's effective uid for the length of the import only (``AsRootFinder``), so every file the commands
read or write is checked against ``nobody``. Started as another user, the child stays that user.
A traceback escaping ``main`` is caught and returned, so a test can assert there is none.
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
import importlib.abc


class AsRootLoader(importlib.abc.Loader):
    # Loads a module with root's effective uid, then hands the user's back.
    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):  # resource readers, get_data, ...: the real loader's
        return getattr(self.loader, name)

    def create_module(self, spec):
        with as_root():
            return self.loader.create_module(spec)

    def exec_module(self, module):
        with as_root():
            return self.loader.exec_module(module)


class AsRootFinder(importlib.abc.MetaPathFinder):
    # The interpreter and its packages live under /root, closed to nobody: modules imported late
    # (numpy's lazy submodules, deeprank's optional imports) are found and loaded as root. Every
    # other file access (the images, folders and outputs under test) keeps nobody's permissions.
    def find_spec(self, name, path=None, target=None):
        if os.geteuid() == 0:
            return None
        with as_root():
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    if spec.loader is not None:
                        spec.loader = AsRootLoader(spec.loader)
                    return spec
        return None


@contextlib.contextmanager
def as_root():
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0:
        yield
        return
    os.seteuid(0)
    os.setegid(0)
    try:
        yield
    finally:
        os.setegid(gid)
        os.seteuid(uid)


import torch
import deeprank, deeprank.cli as cli
from PIL import Image
Image.init()
if os.geteuid() == 0:
    sys.meta_path.insert(0, AsRootFinder())
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, 0)  # the saved ids stay root's, for AsRootFinder alone
    os.setresuid(NOBODY, NOBODY, 0)
calls = json.loads(sys.stdin.read())
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
