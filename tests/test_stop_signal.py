"""SIGTERM / SIGINT during ``redgym train``: the step in progress finishes, its checkpoint is written, the command
exits with 128 + the signal and one line saying how to resume; the resumed run carries on from that step."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_experiment, tiny_run_fields


def metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_finishes_the_step_checkpoints_and_the_run_resumes(sig, tiny_model_dir, prompt_file, tmp_path):
    out = tmp_path / "run"
    fields = [
        *tiny_run_fields(
            tiny_model_dir, prompt_file, generations_per_prompt=2, micro_batch_size=4, checkpoint_every=1000
        ),
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "redgym", "train", "grpo", "--out", str(out), "--steps", "500", *fields],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.time() + 120
    while len(metrics(out)) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    lines = [line for line in err.splitlines() if line.startswith("redgym:")]
    assert lines == [
        f"redgym: stopped by {sig.name} after step {len(metrics(out))}; its checkpoint is saved; "
        f"resume with: redgym train grpo --resume {out}"
    ], err
    steps = [r["step"] for r in metrics(out)]
    assert steps == list(range(1, len(steps) + 1))  # the step in progress finished and was logged once
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == [f"step_{len(steps):06d}"] and (out / "checkpoints" / ckpts[0] / "trainer_state.json").exists()
    # resume to two more steps: it starts after the stopped step
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "redgym",
            "train",
            "grpo",
            "--resume",
            str(out),
            "--steps",
            str(len(steps) + 2),
            *fields,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert [r["step"] for r in metrics(out)] == list(range(1, len(steps) + 3))


def test_sigterm_inside_an_experiment_stops_its_training_cell_and_the_rerun_resumes_it(
    tiny_model_dir, prompt_file, tmp_path
):
    import yaml

    spec = tiny_experiment(tiny_model_dir, prompt_file, samples_per_prompt=1, steps=30, checkpoint_every=1000)
    cfg, out = tmp_path / "exp.yaml", tmp_path / "exp"
    cfg.write_text(yaml.safe_dump(spec))
    cmd = [sys.executable, "-m", "redgym", "experiment", "--config", str(cfg), "--out", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cell = out / "grpo" / "seed_0"
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while len(metrics(cell)) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    n = len(metrics(cell))
    lines = [line for line in err.splitlines() if line.startswith("redgym:")]
    assert lines == [
        f"redgym: stopped by SIGTERM after step {n}; its checkpoint is saved; rerun the same command: "
        "finished parts are skipped and this training resumes"
    ], err
    assert (cell / "checkpoints" / f"step_{n:06d}" / "trainer_state.json").exists()
    assert not (cell / "report.json").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [r["step"] for r in metrics(cell)] == list(range(1, 31))  # resumed after the stopped step
    assert (cell / "report.json").exists() and (out / "comparison.md").exists()
