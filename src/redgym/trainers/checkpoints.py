"""Resumable checkpoints (written whole or not at all) and the saved adversary that evaluation loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from redgym.errors import RedgymError
from redgym.runfolder import replace_folder, write_json
from redgym.trainers.policy import Policy


def save_checkpoint(
    accelerator, out: Path, step: int, policy: Policy, state: dict, keep: int, model_dir: str = "adversary"
) -> Path:
    """Accelerate state (model, optimizer, scheduler, RNGs) + trainer state, and the adapter for evaluation
    (``out/<model_dir>``).

    The checkpoint is written under a hidden temporary name, ``trainer_state.json`` last, and renamed into place
    when complete; older checkpoints are removed only after that. A write that fails (disk full, no permission)
    keeps the previous checkpoint and says so in one line.
    """
    ckpt = out / "checkpoints" / f"step_{step:06d}"
    partial = ckpt.with_name(f".{ckpt.name}.partial")
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(partial))  # every process: accelerate writes the weights once, RNGs per process
        if accelerator.is_main_process:
            write_json(partial / "trainer_state.json", {"step": step, **state})
            replace_folder(partial, ckpt)
            save_adversary(accelerator, policy, out / model_dir)
            done = sorted(p for p in (out / "checkpoints").glob("step_*") if (p / "trainer_state.json").exists())
            for old in done[:-keep] if keep > 0 else []:
                shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(partial, ignore_errors=True)
        previous = latest_checkpoint(out)
        kept = f"the previous checkpoint {previous.name} is intact" if previous else "no earlier checkpoint exists"
        raise RedgymError(
            f"checkpoint at step {step} could not be written to {out / 'checkpoints'} "
            f"({e.strerror or type(e).__name__}); {kept}: free space or fix permissions, then "
            f"resume with --resume {out}"
        ) from None
    accelerator.wait_for_everyone()
    return ckpt


def save_adversary(accelerator, policy: Policy, path: Path) -> None:
    """The trained adversary in a form ``load_model`` reads: a LoRA adapter folder or a full model folder."""
    model = accelerator.unwrap_model(policy.model)
    tmp = path.with_name(f".{path.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if hasattr(model, "peft_config"):
        # The adapter never holds embedding layers unless LoRA targets them; saying so keeps peft from asking the
        # hub about the base model's config at every save (minutes of retries offline, for a name like smollm2-135m).
        targets = model.peft_config["default"].target_modules or []
        model.save_pretrained(tmp, save_embedding_layers=any("embed" in t or "lm_head" in t for t in targets))
    else:
        model.save_pretrained(tmp)
    policy.tokenizer.save_pretrained(tmp)
    replace_folder(tmp, path)


def latest_checkpoint(out: Path) -> Path | None:
    done = sorted(p for p in (out / "checkpoints").glob("step_*") if (p / "trainer_state.json").exists())
    return done[-1] if done else None


def load_checkpoint(accelerator, ckpt: Path) -> dict:
    accelerator.load_state(str(ckpt))
    return json.loads((ckpt / "trainer_state.json").read_text())
