"""Start real ranks on 127.0.0.1 the way torchrun does: one process each, RANK / WORLD_SIZE / MASTER_*.

``launch(argv, world=2)`` starts ``python *argv`` once per rank with the environment torchrun would
give it (one CPU thread each: this machine has two cores); ``finish(procs)`` waits and returns each
rank's ``(returncode, stdout, stderr)``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    env.update(extra or {})
    return env


def launch(
    argv: Sequence[str], world: int = 2, env: Mapping[str, str] | None = None, cwd: str | None = None
) -> list[subprocess.Popen]:
    port = free_port()
    return [
        subprocess.Popen(
            [sys.executable, *argv],
            env=rank_env(r, world, port, env),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(world)
    ]


def finish(procs: Sequence[subprocess.Popen], timeout: float = 120.0) -> list[tuple[int, str, str]]:
    """Wait for every rank (killing all on a timeout, which fails the test); their results."""
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=timeout)
            out.append((p.returncode, stdout, stderr))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        for p in procs:
            p.communicate()
        raise AssertionError(f"ranks still running after {timeout} s (a hang)") from None
    return out


def train_ranks(
    args: Sequence[str], world: int = 2, timeout: float = 120.0, **kw
) -> list[tuple[int, str, str]]:
    """``python -m deeprank train ARGS`` on ``world`` ranks; asserts every rank succeeded."""
    results = finish(launch(["-m", "deeprank", "train", *args], world, **kw), timeout)
    for rank, (code, _, stderr) in enumerate(results):
        assert code == 0, f"rank {rank} exited {code}:\n{stderr[-3000:]}"
    return results
