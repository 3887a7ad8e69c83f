"""Kill a writer at each of its file-system steps (as ``kill -9`` would) to check what it leaves.

``killed_at(step, write)`` runs ``write()`` in a forked child whose ``step``-th call of a step that
changes the disk (``open`` for writing excluded: renames, replaces, fsyncs, mkdir, unlink, rmtree)
ends the process on the spot with ``os._exit``. ``every_kill(write, check)`` does it for step 1, 2,
... until a run completes, calling ``check()`` in the parent after each death.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

STEPS = [(os, "replace"), (os, "rename"), (os, "fsync"), (os, "mkdir"), (os, "unlink"), (os, "rmdir")]
STEPS += [(shutil, "rmtree")]
KILLED = 77


def killed_at(step: int, write: Callable[[], object]) -> bool:
    """True if the child died at ``step``; False if ``write()`` finished first."""
    pid = os.fork()
    if pid == 0:  # the child: count steps and die at the chosen one
        try:
            count = [0]
            for module, name in STEPS:
                real = getattr(module, name)

                def step_then(*args, _real=real, **kwargs):
                    count[0] += 1
                    if count[0] == step:
                        os._exit(KILLED)
                    return _real(*args, **kwargs)

                setattr(module, name, step_then)
            write()
        except BaseException:
            os._exit(3)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, KILLED), f"the writer failed with status {code}"
    return code == KILLED


def every_kill(write: Callable[[], object], check: Callable[[int], object], limit: int = 500) -> int:
    """Kill ``write`` at each step in turn, ``check(step)`` after each; returns the number of steps."""
    for step in range(1, limit):
        if not killed_at(step, write):
            return step - 1
        check(step)
    raise AssertionError(f"the writer took more than {limit} steps")
