"""A training run killed with SIGKILL mid-run and resumed ends where an uninterrupted run with the same seed ends:
the same metrics step by step and the same adapter weights (CPU, same machine)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

VOLATILE = ("time", "time/", "sys/")  # wall-clock and memory readings differ between any two runs


def metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


@pytest.mark.parametrize("trainer,extra", [
    ("grpo", ["--generations_per_prompt", "2", "--ppo_epochs", "2", "--micro_batch_size", "2"]),
    ("ipo", ["--horizon", "2", "--weak_supervision", "0"]),
])
def test_sigkill_then_resume_equals_an_uninterrupted_run(trainer, extra, tiny_model_dir, prompt_file, tmp_path):
    steps = 6
    fields = ["--adversary_model", str(tiny_model_dir), "--defender_model", str(tiny_model_dir), "--prompts",
              str(prompt_file), "--max_new_tokens", "4", "--min_new_tokens", "4", "--prompts_per_step", "2",
              "--dtype", "float32", "--lr", "1e-2", "--test_fraction", "0.3", "--max_context_tokens", "64",
              "--scorer", "profanity", "--eval_after", "false", "--checkpoint_every", "1", "--steps", str(steps),
              "--quiet", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = lambda *a: [sys.executable, "-m", "redgym", "train", trainer, *a, *fields]  # noqa: E731
    straight = tmp_path / "straight"
    assert subprocess.run(run("--out", str(straight)), env=env, capture_output=True, timeout=300).returncode == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen(run("--out", str(killed)), env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(metrics(killed)) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert len(metrics(killed)) < steps
    done = subprocess.run(run("--resume", str(killed)), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    assert [r["step"] for r in metrics(killed)] == list(range(1, steps + 1))  # no step lost, none twice
    assert stable(metrics(killed)) == stable(metrics(straight))
    a = load_file(str(straight / "adversary" / "adapter_model.safetensors"))
    b = load_file(str(killed / "adversary" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
