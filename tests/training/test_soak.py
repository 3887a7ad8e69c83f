"""The 30-minute training soak (scripts/soak_train.py): resident memory stays flat on an image folder."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_training_memory_stays_flat_for_30_minutes(tmp_path):
    out = tmp_path / "soak.json"
    argv = [sys.executable, str(ROOT / "scripts" / "soak_train.py"), "--duration", "1800", "--threads", "1"]
    argv += ["--work", str(tmp_path), "--output", str(out)]
    # 20,000 images of 3 x 28 x 28 bytes: the image cache can add 47 MiB after warm-up; the rest is slack
    argv += ["--max-growth-mb", "120"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=2400)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["ran_s"] >= 1800 and len(result["samples"]) >= 30
    assert result["steps"] > 0 and result["growth_after_warmup_mb"] <= 120
