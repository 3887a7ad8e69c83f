"""The CUDA kernels under a CPU SIMT emulator, where no GPU is present.

Each driver here (``*_emulation_main.cuh``) includes the emulator (``cuda_emulation.cuh``) and then the
real ``csrc/<op>/<op>.cu``, runs its launchers and kernels on the CPU and compares the results with a
reference of its own; the test compiles it with the host compiler and checks that it ends with "ok".
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CSRC = HERE.parents[2] / "csrc"


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    """Builds a kernel emulation driver (the real .cu code on a CPU SIMT emulator); returns a runner."""
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if cxx is None or not CSRC.is_dir():
        pytest.skip("needs a C++20 compiler and the csrc/ sources (a source checkout)")
    out_dir = tmp_path_factory.mktemp("cuda_emulation")
    built: dict[str, Path] = {}

    def run(driver: str, *args: object, timeout: float = 300) -> str:
        if driver not in built:
            exe = out_dir / Path(driver).stem
            cmd = [
                cxx,
                "-std=c++20",
                "-O1",
                "-pthread",
                "-DDEEPRANK_CUDA_EMULATION",
                f"-I{CSRC}",
                "-x",
                "c++",
                str(HERE / driver),
                "-o",
                str(exe),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0 and "barrier" in proc.stderr and "No such file" in proc.stderr:
                pytest.skip("the compiler lacks C++20 <barrier>")
            assert proc.returncode == 0, proc.stderr[-4000:]
            built[driver] = exe
        # A divergent warp intrinsic deadlocks the emulator: the timeout turns that into a failure.
        proc = subprocess.run(
            [str(built[driver]), *map(str, args)], capture_output=True, text=True, timeout=timeout
        )
        assert proc.returncode == 0 and proc.stdout.rstrip().endswith("ok"), (
            proc.stdout[-4000:] + proc.stderr[-2000:]
        )
        return proc.stdout

    return run


# (M, N, D, K, seed, mode, emulated SM count): NaN rows, ties, k = N, databases whose neighbours all
# sit in the last split, every queries-per-block step (8, 16, 32, 64), several dimension stages.
EMULATED_TOPK = [
    (4, 50, 7, 50, 10, "nan", 2),
    (6, 200, 5, 60, 8, "ties", 2),
    (1, 300, 3, 300, 14, "ties", 8),
    (2, 1200, 9, 40, 11, "sorted", 4),
    (9, 300, 40, 33, 7, "normal", 2),
    (20, 300, 17, 10, 4, "sorted", 2),
    (33, 300, 5, 5, 3, "normal", 2),
]
EMULATED_TOPK_SLOW = [
    (3, 3000, 9, 40, 11, "sorted", 4),
    (9, 700, 1000, 33, 7, "normal", 2),
    (20, 1000, 17, 10, 4, "normal", 2),
    (70, 3000, 5, 64, 5, "normal", 2),
    (1, 5000, 8, 100, 6, "normal", 4),
    (6, 1400, 5, 150, 9, "ties", 3),
    (3, 3000, 9, 40, 11, "nan", 4),
    (2, 2000, 4, 1024, 12, "normal", 2),
    (33, 1500, 128, 1, 13, "normal", 2),
]


@pytest.mark.parametrize(
    "case", EMULATED_TOPK + [pytest.param(c, marks=pytest.mark.slow) for c in EMULATED_TOPK_SLOW]
)
def test_topk_kernels_under_cpu_emulation(emulated, case):
    """The top-K plan, launcher and kernels, bit for bit against the same ranking computed on the CPU."""
    out = emulated("topk_emulation_main.cuh", *case)
    assert out.startswith("plan ")


def test_triplet_kernels_under_cpu_emulation(emulated):
    emulated("triplet_emulation_main.cuh")


def test_lrn_kernels_under_cpu_emulation(emulated):
    emulated("lrn_emulation_main.cuh")
