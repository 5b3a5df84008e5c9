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
from conftest import tiny_experiment, tiny_run_fields
from safetensors.torch import load_file

VOLATILE = ("time", "time/", "sys/")  # wall-clock and memory readings differ between any two runs


def metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


@pytest.mark.parametrize(
    "trainer,extra",
    [
        ("grpo", ["--generations_per_prompt", "2", "--ppo_epochs", "2", "--micro_batch_size", "2"]),
        ("ipo", ["--horizon", "2", "--weak_supervision", "0"]),
    ],
)
def test_sigkill_then_resume_equals_an_uninterrupted_run(trainer, extra, tiny_model_dir, prompt_file, tmp_path):
    steps = 6
    fields = [
        *tiny_run_fields(tiny_model_dir, prompt_file, lr="1e-2", checkpoint_every=1, steps=steps),
        "--quiet",
        *extra,
    ]
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


def test_sigkill_during_an_experiment_resumes_at_its_arm_and_ends_as_a_straight_run(
    tiny_model_dir, prompt_file, tmp_path
):
    import yaml

    spec = tiny_experiment(tiny_model_dir, prompt_file, samples_per_prompt=2, steps=5, lr=1e-2, checkpoint_every=1)
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(out):
        return [sys.executable, "-m", "redgym", "experiment", "--config", str(cfg), "--out", str(out), "--quiet"]

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert subprocess.run(run(straight), env=env, capture_output=True, timeout=300).returncode == 0

    proc = subprocess.Popen(run(killed), env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(metrics(killed / "grpo" / "seed_0")) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the experiment ended before it could be killed"
    proc.send_signal(signal.SIGKILL)  # in the grpo arm, after the untuned arm finished
    proc.wait(timeout=30)
    assert (killed / "untuned" / "seed_0" / "report.json").exists()
    assert not (killed / "grpo" / "seed_0" / "report.json").exists() and not (killed / "comparison.md").exists()
    stamp = (killed / "untuned" / "seed_0" / "report.json").stat().st_mtime_ns
    done = subprocess.run(run(killed), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    assert (killed / "untuned" / "seed_0" / "report.json").stat().st_mtime_ns == stamp  # the finished arm not redone
    steps = [r["step"] for r in metrics(killed / "grpo" / "seed_0")]
    assert steps == [1, 2, 3, 4, 5]  # resumed inside the arm: no step lost, none twice
    assert stable(metrics(killed / "grpo" / "seed_0")) == stable(metrics(straight / "grpo" / "seed_0"))
    for arm in ("untuned", "grpo"):
        a, b = (json.loads((o / arm / "seed_0" / "report.json").read_text())["results"] for o in (straight, killed))
        assert a == b, arm
    assert (straight / "comparison.csv").read_text() == (killed / "comparison.csv").read_text()


def test_sigkill_during_eval_leaves_no_half_report(tiny_model_dir, prompt_file, tmp_path):
    import threading

    out = tmp_path / "eval"
    args = [
        sys.executable,
        "-m",
        "redgym",
        "eval",
        "--out",
        str(out),
        "--adversary_model",
        str(tiny_model_dir),
        "--defender_model",
        str(tiny_model_dir),
        "--prompts",
        str(prompt_file),
        "--test_fraction",
        "0.5",
        "--max_new_tokens",
        "12",
        "--min_new_tokens",
        "12",
        "--horizon",
        "3",
        "--samples_per_prompt",
        "100",
        "--dtype",
        "float32",
        "--scorer",
        "profanity",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = bytearray()
    threading.Thread(
        target=lambda: [seen.extend(b) for b in iter(lambda: proc.stderr.read1(256), b"")], daemon=True
    ).start()
    deadline = time.time() + 120
    while b"eval untuned" not in seen and time.time() < deadline and proc.poll() is None:  # its progress bar
        time.sleep(0.05)
    time.sleep(0.5)  # inside the rollouts
    assert proc.poll() is None, "the evaluation ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    left = sorted(p.name for p in out.rglob("*")) if out.exists() else []
    assert "report.json" not in left, left  # written last: its absence marks an unfinished evaluation
    # A kill inside atomic_write leaves its temporary file (nothing runs after SIGKILL), never a torn final file:
    # plant what such a kill leaves, torn, and the rerun must neither stop on it nor read it
    out.mkdir(exist_ok=True)
    (out / ".report.json.k1ll3d0").write_text('{"metrics": {"defender_tox')
    (out / ".samples.jsonl.k1ll3d0").write_text('{"prompt_id": "x", "turns": [{"spea')
    done = subprocess.run(
        [*args, "--quiet", "--samples_per_prompt", "2"], env=env, capture_output=True, text=True, timeout=300
    )  # run again into the same folder (smaller, to keep the suite short)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "report.json").read_text())["metrics"]
    assert (out / ".report.json.k1ll3d0").read_text().startswith('{"metrics"')  # untouched, unread
