"""Data parallelism under ``accelerate launch``: two CPU processes (gloo) train a tiny model with the real trainers.
Each process rolls out its own share of the step's prompts; after the steps every process holds the same
parameters (they moved), and the run folder has each metrics line and each log message once."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_ipo import weak_file

WORKER = Path(__file__).with_name("dist_worker.py")


def launch(trainer: str, out: Path, model_dir: Path, prompt_file: Path, **kw) -> subprocess.CompletedProcess:
    fields = {
        **dict(
            adversary_model=model_dir,
            defender_model=model_dir,
            prompts=prompt_file,
            max_new_tokens=4,
            min_new_tokens=4,
            steps=2,
            prompts_per_step=4,
            micro_batch_size=4,
            dtype="float32",
            lr="1e-2",
            test_fraction=0.3,
            eval_after="false",
            max_context_tokens=64,
            checkpoint_every=1,
            scorer="profanity",
        ),
        **kw,
    }
    accelerate = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parent.parent)}
    cmd = [
        str(accelerate),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",
        str(WORKER),
        trainer,
        str(out),
        *(f"{k}={v}" for k, v in fields.items()),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.parametrize(
    "trainer,extra",
    [
        ("ipo", {"horizon": 2}),  # uneven pairs per process: gradients averaged by hand, once per step
        ("ppo", {}),  # equal micro-batches per process: DDP's own gradient sync
    ],
)
def test_two_processes_end_with_identical_parameters_and_log_once(
    trainer, extra, tiny_model_dir, prompt_file, tmp_path
):
    if trainer == "ipo":
        extra = {**extra, "weak_prompts": weak_file(tmp_path)}
    out = tmp_path / "run"
    done = launch(trainer, out, tiny_model_dir, prompt_file, **extra)
    ranks = [torch.load(out / f"rank_{i}.pt") for i in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    a, b = (r["params"] for r in ranks)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lora_b = [v for k, v in a.items() if "lora_B" in k]
    assert lora_b and all(float(v.abs().sum()) > 0 for v in lora_b)  # LoRA B starts at zero: the steps moved it
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # one line per step, not one per process
    loss = "loss/ipo" if trainer == "ipo" else "loss/policy"
    assert all(torch.isfinite(torch.tensor(r[loss])) for r in rows)
    # the split is too small for n_eval_prompts: warned once, by the main process
    assert done.stderr.count("exceeds the test split") == 1, done.stderr[-2000:]
    assert (out / "adversary" / "adapter_model.safetensors").is_file()


def test_prompts_per_step_must_split_over_the_processes(tiny_model_dir, prompt_file, tmp_path):
    cmd_out = tmp_path / "run"
    with pytest.raises(AssertionError, match="does not split over 2 processes"):
        launch("ppo", cmd_out, tiny_model_dir, prompt_file, prompts_per_step=3)


@pytest.mark.parametrize("kind", ["FSDP", "DEEPSPEED", "MEGATRON_LM"])
def test_sharded_accelerate_configs_are_refused_in_one_line(kind):
    # the trainers average gradients and read LoRA weights as whole replicas: a sharded set-up would train wrongly
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from redgym.errors import RedgymError
    from redgym.trainers.distributed import check_parallelism

    with pytest.raises(RedgymError, match=f"uses {kind}: redgym's trainers support data parallelism only"):
        check_parallelism(SimpleNamespace(distributed_type=DistributedType[kind]))
    for ok in ("NO", "MULTI_GPU", "MULTI_CPU"):
        check_parallelism(SimpleNamespace(distributed_type=DistributedType[ok]))
