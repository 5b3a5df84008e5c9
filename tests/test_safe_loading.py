"""Nothing from a run or model folder is unpickled: a resumed run reads its checkpoint with ``torch.load`` only
under ``weights_only=True`` (accelerate's optimizer, scheduler and RNG files; the weights are safetensors), adapters
and classifiers are safetensors + JSON, and a config file never executes code."""

import json

import pytest
import torch
from conftest import tiny_run_fields

from redgym.cli import main
from redgym.config import RunConfig, load_config
from redgym.errors import RedgymError


def train_args(model_dir, prompts, *extra):
    return [
        "train",
        "ppo",
        "--quiet",
        *tiny_run_fields(model_dir, prompts, micro_batch_size=2, checkpoint_every=1),
        *extra,
    ]


def test_a_resumed_run_unpickles_nothing(tiny_model_dir, prompt_file, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, prompt_file, "--out", str(out), "--steps", "1")) == 0
    ckpt = out / "checkpoints" / "step_000001"
    weights = sorted(p.name for p in ckpt.iterdir() if p.suffix == ".safetensors")
    assert weights == ["model.safetensors", "model_1.safetensors"]  # the LoRA policy and PPO's value head
    assert sorted(p.name for p in (out / "adversary").iterdir() if "adapter" in p.name) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    calls = []
    real = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    assert main(train_args(tiny_model_dir, prompt_file, "--resume", str(out), "--steps", "2")) == 0
    assert calls and all(w is True for w in calls), calls  # optimizer, scheduler, RNG states: tensors only
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_config_never_executes_code(tmp_path):
    marker = tmp_path / "executed"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"seed: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(RedgymError, match="evil.yaml"):
        load_config(RunConfig, cfg)
    assert not marker.exists()


def test_no_model_is_loaded_with_remote_code_and_nothing_is_unpickled_by_hand():
    # a source scan: no from_pretrained(..., trust_remote_code=...), no pickle, no torch.load without weights_only
    import ast
    from pathlib import Path

    import redgym

    found = []
    for path in Path(redgym.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                found += [f"{path.name}: imports {n}" for n in names if n.split(".")[0] in ("pickle", "dill", "joblib")]
            if isinstance(node, ast.Call):
                kw = {k.arg: k.value for k in node.keywords}
                if "trust_remote_code" in kw:
                    found.append(f"{path.name}:{node.lineno}: trust_remote_code")
                f = node.func
                if isinstance(f, ast.Attribute) and f.attr == "load" and getattr(f.value, "id", "") == "torch":
                    w = kw.get("weights_only")
                    if not (isinstance(w, ast.Constant) and w.value is True):
                        found.append(f"{path.name}:{node.lineno}: torch.load without weights_only=True")
    assert found == []
