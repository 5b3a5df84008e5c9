"""Red-teaming a model behind an API, measured on the offline default.

SmolLM2-135M-Instruct (the default's own converted weights) is served by ``transformers serve`` on 127.0.0.1 as the
defender (``defender_backend: openai``, chat API), and the same weights are the local ``likelihood_model`` of the
reward's NLL term. ``redgym train grpo`` runs the demo's config against it, then its evaluation (trained beside
untuned, against the server too). Printed: training and evaluation minutes, the server requests each made, the
trained-minus-untuned defender toxicity with its CI, and one line ``BENCH key=value …``.

    .venv/bin/python bench/served_defender.py [--config configs/grpo_demo.yaml] [--out DIR]

The server and the trainer share this machine's cores, as a user's local server would.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from redgym.models.loading import resolve_model_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def served_copy(source: Path, folder: Path) -> Path:
    """The model folder as ``transformers serve`` can run it: the same files (linked), with a tokenizer that hands
    ``generate`` only input ids and attention mask (a Llama rejects the token type ids it would add)."""
    folder.mkdir(parents=True)
    for f in source.iterdir():
        if f.name != "tokenizer_config.json":
            (folder / f.name).symlink_to(f.resolve())
    config = json.loads((source / "tokenizer_config.json").read_text())
    config["model_input_names"] = ["input_ids", "attention_mask"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def wait_ready(url: str, proc: subprocess.Popen, deadline_s: float = 180.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            sys.exit(f"transformers serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"transformers serve not ready after {deadline_s:g} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=Path("configs/grpo_demo.yaml"))
    ap.add_argument("--out", type=Path, default=Path(f"runs/served-{time.strftime('%Y%m%d-%H%M%S')}"))
    args = ap.parse_args()
    cli = Path(sys.executable).with_name("transformers")
    tmp = Path(tempfile.mkdtemp(prefix="redgym-served-"))
    model = served_copy(Path(resolve_model_path("smollm2-135m")), tmp / "smollm2-135m")
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    serve = [str(cli), "serve", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    with open(tmp / "serve.log", "w") as log:
        server = subprocess.Popen(
            [*serve, "--force_model", str(model), "--log_level", "warning"], stdout=log, stderr=log, env=env
        )
        try:
            wait_ready(url, server)
            t0 = time.time()
            train = [sys.executable, "-m", "redgym", "train", "grpo", "--config", str(args.config)]
            served = ["--defender_backend", "openai", "--defender_base_url", url, "--defender_model", str(model)]
            cmd = [*train, "--out", str(args.out), *served, "--likelihood_model", "smollm2-135m", "--quiet"]
            done = subprocess.run(cmd, env=env)
            total_min = (time.time() - t0) / 60
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
    if done.returncode != 0:
        sys.exit(f"redgym train exited with {done.returncode}; server log: {tmp / 'serve.log'}")
    shutil.rmtree(tmp, ignore_errors=True)
    rows = [json.loads(x) for x in (args.out / "metrics.jsonl").read_text().splitlines()]
    report = json.loads((args.out / "report.json").read_text())
    train_min, train_requests = rows[-1]["time/train_min"], int(rows[-1]["http/total_requests"])
    d = report["differences"]["defender_toxicity"]
    print(
        f"training: {len(rows)} steps in {train_min:.2f} min, {train_requests} requests "
        f"({int(rows[-1]['http/total_failures'])} failed, {int(rows[-1]['http/total_retries'])} retried)"
    )
    print(f"evaluation: {total_min - train_min:.2f} min, {report['http']['requests']} requests")
    print(f"defender toxicity trained - untuned {d['value']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]")
    print(
        f"BENCH served_train_min={train_min:.2f} served_total_min={total_min:.2f} train_requests={train_requests} "
        f"eval_requests={report['http']['requests']} defender_toxicity_diff={d['value']:.4f} "
        f"defender_toxicity_ci_low={d['ci95'][0]:.4f} defender_toxicity_ci_high={d['ci95'][1]:.4f} "
        f"peak_rss_gb={rows[-1]['sys/peak_rss_gb']:.2f}"
    )


if __name__ == "__main__":
    main()
