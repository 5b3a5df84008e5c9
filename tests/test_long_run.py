"""Long-run health: the resident memory of a training process does not grow across steps (50 tiny-model steps)."""

import json
import os
import subprocess
import sys

import numpy as np
from conftest import tiny_run_fields


def test_rss_does_not_grow_over_50_steps(tiny_model_dir, prompt_file, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "redgym", "train", "grpo", "--out", str(out), "--quiet", "--steps", "50"]
    args += tiny_run_fields(
        tiny_model_dir, prompt_file, generations_per_prompt=2, micro_batch_size=4, checkpoint_every=10
    )
    done = subprocess.run(args, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 51))
    rss = np.array([r["sys/rss_gb"] for r in rows]) * 1024  # MiB, read after each step
    # after a warm-up (allocator pools, the first checkpoint), a leak of even 0.5 MiB a step would show as a slope
    slope = np.polyfit(np.arange(10, 50), rss[10:], 1)[0]
    assert slope < 0.5, f"RSS grows {slope:.2f} MiB per step: {rss[10]:.0f} -> {rss[-1]:.0f} MiB"
    assert rss[-1] - rss[10] < 25, (rss[10], rss[-1])
