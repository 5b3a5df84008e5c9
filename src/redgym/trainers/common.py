"""Pieces every trainer shares: the trainer config fields, the policy (LoRA or full) and its frozen reference,
the defender view, the prompt schedule, metrics logging, the NaN guard, and checkpoints that resume.

Trainers compose these with ``accelerate.Accelerator`` and plain PyTorch; nothing here subclasses a framework
trainer.
"""

from __future__ import annotations

import copy
import dataclasses
import ctypes
import gc
import json
import logging
import resource
import shutil
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import set_seed

from redgym.config import RunConfig, _f
from redgym.errors import RedgymError, TrainingStopped
from redgym.models.base import ChatBackend
from redgym.models.lm import LM, SamplingParams, continuation_logprobs
from redgym.models.loading import load_model, resolve_device
from redgym.runfolder import atomic_write, replace_folder, write_json

log = logging.getLogger("redgym.train")


@dataclass
class TrainConfig(RunConfig):
    # --- optimisation --------------------------------------------------------------------------------------
    steps: int = _f(100, "optimizer steps")
    max_minutes: float = _f(0.0, "stop after the step that crosses this wall-clock budget (0 = no limit)")
    prompts_per_step: int = _f(8, "training prompts rolled out per step")
    lr: float = _f(1e-4, "AdamW learning rate")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    warmup_steps: int = _f(5, "linear learning-rate warmup steps")
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0 = off)")
    grad_accum: int = _f(1, "micro-batches accumulated per optimizer step")
    micro_batch_size: int = _f(4, "sequences per forward/backward pass (4 on CPU: 0.6x the peak memory of 8 "
                                  "and 0.84x the time, bench/train_memory.py)")
    gradient_checkpointing: bool = _f(False, "recompute activations in the backward pass: less peak memory, "
                                             "slower training passes")
    # --- adapter ---------------------------------------------------------------------------------------------
    lora: bool = _f(True, "train a LoRA adapter (peft); false = full fine-tuning with a separate reference copy")
    lora_r: int = _f(16, "LoRA rank")
    lora_alpha: int = _f(32, "LoRA alpha")
    lora_dropout: float = _f(0.0, "LoRA dropout")
    lora_targets: str = _f("all-linear", "LoRA target modules: all-linear or a comma list (q_proj,v_proj)")
    load_in_4bit: bool = _f(False, "4-bit base weights (bitsandbytes; CUDA only)")
    fast_generation: bool = _f(True, "sample from peft-free copies (adapter merged / base): ~1.7x faster on CPU, "
                                     "+2 model copies in memory; float32 only (a bf16 merge rounds small updates "
                                     "away, so bf16/fp16 runs sample through peft); false = sample through peft")
    on_policy_sampling: bool = _f(True, "sample training rollouts from exactly the distribution the loss uses "
                                        "(temperature only: no top_p, top_k, repetition penalty or minimum "
                                        "length); evaluation keeps them")
    # --- bookkeeping -----------------------------------------------------------------------------------------
    checkpoint_every: int = _f(25, "save a resumable checkpoint every N steps (and at the end)")
    keep_checkpoints: int = _f(2, "checkpoints kept on disk (oldest deleted first)")
    log_with: str = _f("none", "extra metric sink: none, tensorboard or wandb")
    eval_after: bool = _f(True, "redgym train: evaluate trained vs untuned adversary on the run's test prompts "
                                "when training ends")

    def validate(self) -> None:
        super().validate()
        if self.steps < 1 or self.prompts_per_step < 1 or self.micro_batch_size < 1 or self.grad_accum < 1:
            raise RedgymError("config: steps, prompts_per_step, micro_batch_size and grad_accum must be >= 1")
        if self.lr <= 0:
            raise RedgymError(f"config: lr must be > 0, got {self.lr}")
        if self.log_with not in ("none", "tensorboard", "wandb"):
            raise RedgymError(f"config: log_with must be none, tensorboard or wandb, got {self.log_with!r}")
        if self.load_in_4bit and not torch.cuda.is_available():
            raise RedgymError("config: load_in_4bit needs CUDA (bitsandbytes); it is not available here")


# ---- policy, reference, defender ------------------------------------------------------------------------------

class AdapterOff(torch.nn.Module):
    """The base model under a peft model, with the adapter switched off: the frozen defender and reference
    without a second copy of the weights in memory."""

    def __init__(self, peft_model):
        super().__init__()
        self.peft_model = peft_model

    def forward(self, *args, **kwargs):
        with self.peft_model.disable_adapter():
            return self.peft_model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        with self.peft_model.disable_adapter():
            return self.peft_model.generate(*args, **kwargs)


class MergedCopy:
    """A plain (peft-free) copy of the base weights that ``sync`` overwrites with base + LoRA delta.

    Sampling through peft's wrapped layers costs ~1.7x on a CPU for a 135M model (Python overhead in 200+
    small modules); sampling from this copy runs at the base model's speed. Training still goes through peft.
    """

    def __init__(self, base_model: torch.nn.Module):
        self.model = copy.deepcopy(base_model).eval().requires_grad_(False)

    @torch.no_grad()
    def sync(self, peft_model) -> None:
        target = dict(self.model.named_modules())
        for name, module in peft_model.named_modules():
            if hasattr(module, "lora_A") and hasattr(module, "base_layer") and "default" in module.lora_A:
                w = module.base_layer.weight
                merged = w.float() + module.get_delta_weight("default").float()
                target[name.removeprefix("base_model.model.")].weight.copy_(merged.to(w.dtype))


@dataclass
class Policy:
    """The trainable adversary and its frozen reference (``ref_model`` is an ``AdapterOff`` view under LoRA).

    ``sampler`` / ``frozen_sampler``: peft-free copies used only for generation when ``fast_generation`` is on
    (the adapter merged in, and the untouched base); None otherwise.
    """

    model: torch.nn.Module
    tokenizer: object
    ref_model: torch.nn.Module
    sampler: MergedCopy | None = None
    frozen_sampler: torch.nn.Module | None = None

    def sync_sampler(self) -> None:
        if self.sampler is not None:
            self.sampler.sync(unwrap(self.model))

    @property
    def generation_model(self) -> torch.nn.Module:
        return self.sampler.model if self.sampler is not None else unwrap(self.model)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (what ``accelerate`` prepares under several processes);
    forward passes that train go through the wrapper (its gradient sync), everything else through the model."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


# ---- stopping on a signal -------------------------------------------------------------------------------------

class StopRequest:
    """SIGINT / SIGTERM during training: the first lets the current step finish, write a checkpoint and stop
    (``end_step`` raises ``TrainingStopped``); a second one interrupts at once (the last complete checkpoint
    stays). Handlers are installed only from the main thread and restored by ``restore``."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            self.restore()
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s: finishing this step, then a checkpoint, then stop (again to stop at once)",
                    signal.Signals(signum).name)

    def requested(self, acc) -> int | None:
        """The signal to stop on, agreed by every process (one process's signal stops them all at one step)."""
        if acc.num_processes == 1:
            return self.signum
        got = acc.gather(torch.tensor([[float(self.signum or 0)]], device=acc.device)).max()
        return int(got) or None

    def restore(self) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old = {}


# ---- several processes (accelerate launch) ---------------------------------------------------------------------

def rank_share(items: list, acc) -> list:
    """This process's share of a step's items (data parallelism: rank r takes items r, r + N, ...); all of them
    in a single process."""
    return items[acc.process_index::acc.num_processes]


def mean_over_ranks(acc, metrics: dict) -> dict:
    """Numeric metrics averaged over the processes (each computed them on its own share of the step); other
    values as the main process has them. One process: ``metrics`` unchanged."""
    if acc.num_processes == 1:
        return metrics
    keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float, np.floating, np.integer)))
    mine = torch.tensor([[float(metrics[k]) for k in keys]], dtype=torch.float64, device=acc.device)
    every = acc.gather(mine).cpu().numpy()  # (processes, metrics)
    with warnings.catch_warnings():  # a metric no process could compute stays nan, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(np.where(np.isfinite(every), every, np.nan), axis=0)
    return {**metrics, **{k: float(v) for k, v in zip(keys, means)}}


def accumulate_locally(acc, model):
    """The context of an update that accumulates a step's micro-batches into one optimizer step. Processes may
    hold different numbers of micro-batches (IPO's pairs, SFT's examples), so under several DDP's sync on every
    backward is off and ``all_reduce_grads`` averages once, before clipping."""
    return acc.no_sync(model) if acc.num_processes > 1 else acc.accumulate(model)


def check_parallelism(acc) -> None:
    """Data parallelism (one full copy of the model per process, DDP) is what the trainers implement: IPO/SFT average
    gradients by hand and the merged sampler reads whole LoRA weights. Sharded set-ups (FSDP, DeepSpeed, Megatron)
    would silently train wrongly, so they are refused in one line."""
    kind = getattr(acc.distributed_type, "name", str(acc.distributed_type))
    if kind in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
        raise RedgymError(f"accelerate config uses {kind}: redgym's trainers support data parallelism only "
                          "(accelerate launch --multi_gpu, or a config with distributed_type MULTI_GPU)")


def all_reduce_grads(acc, params) -> None:
    """Average the gradients of ``params`` over the processes, by hand: for updates whose number of backward
    passes differs between processes (IPO's pairs per step), run under ``acc.no_sync``. A process with no
    gradient for a parameter contributes zeros."""
    if acc.num_processes == 1:
        return
    for p in params:
        if not p.requires_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.SUM)
        p.grad /= acc.num_processes


def build_policy(cfg: TrainConfig) -> Policy:
    model, tok = load_model(cfg.adversary_model, cfg.dtype, cfg.device)
    if not cfg.lora:
        ref = copy.deepcopy(model).eval().requires_grad_(False)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return Policy(model.train(), tok, ref, frozen_sampler=ref)
    from peft import LoraConfig, get_peft_model

    targets = "all-linear" if cfg.lora_targets == "all-linear" else [t.strip() for t in cfg.lora_targets.split(",")]
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")
    # autocast_adapter_dtype keeps the adapter in float32 over a bf16 base: AdamW updates stay exact.
    fast = cfg.fast_generation and next(model.parameters()).dtype == torch.float32
    if cfg.fast_generation and not fast:
        log.info("fast_generation needs float32 weights (a bf16 merge rounds small updates away); sampling through "
                 "the adapter instead")
    frozen = copy.deepcopy(model).eval().requires_grad_(False) if fast else None
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_model = get_peft_model(model, lora, autocast_adapter_dtype=True)
    peft_model.peft_config["default"].base_model_name_or_path = cfg.adversary_model  # reload by redgym name
    sampler = MergedCopy(frozen) if frozen is not None else None
    return Policy(peft_model, tok, AdapterOff(peft_model), sampler, frozen)


def defender_lm(cfg: RunConfig, policy: Policy) -> LM:
    """The frozen defender: the policy's own base weights when it is the same model (a peft-free copy of them
    when ``fast_generation`` is on, else the adapter-disabled view)."""
    if cfg.defender_model == cfg.adversary_model:
        model = policy.frozen_sampler if policy.frozen_sampler is not None else policy.ref_model
        return LM(model, policy.tokenizer, cfg.defender_model, cfg.defender_format, cfg.max_context_tokens)
    model, tok = load_model(cfg.defender_model, cfg.dtype, cfg.device)
    return LM(model, tok, cfg.defender_model, cfg.defender_format, cfg.max_context_tokens)


def train_sampling(cfg: TrainConfig, eval_params: SamplingParams) -> SamplingParams:
    """The adversary's sampling in training rollouts: with ``on_policy_sampling`` the plain softmax at the
    configured temperature (no top-p, no top-k, no repetition penalty, no minimum length, which would mask the
    stop token), the distribution whose log-probs the losses use."""
    if not cfg.on_policy_sampling:
        return eval_params
    return dataclasses.replace(eval_params, top_p=1.0, top_k=0, repetition_penalty=1.0, min_new_tokens=0)


def sequence_logps(model, ctx_ids: list[list[int]], cont_ids: list[list[int]], pad_id: int) -> torch.Tensor:
    """(B,) summed log-probs of each continuation given its context (differentiable when grads are on)."""
    logps, mask = continuation_logprobs(model, ctx_ids, cont_ids, pad_id)
    return (logps * mask).sum(-1)


# ---- schedule, logging, guards --------------------------------------------------------------------------------

def batch_indices(n: int, per_step: int, step: int, seed: int) -> np.ndarray:
    """Prompt indices for ``step``: epochs of seeded permutations, a pure function of the step (so resuming
    needs no data-loader state)."""
    out = []
    for pos in range(step * per_step, (step + 1) * per_step):
        epoch, i = divmod(pos, n)
        out.append(np.random.default_rng([seed, epoch]).permutation(n)[i])
    return np.array(out)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def rss_gb() -> float:
    """Current resident set size (Linux /proc; nan elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 1024**3
    except (OSError, IndexError, ValueError):
        return float("nan")


def release_memory() -> None:
    """Return freed heap to the OS after a step. Steps alternate long generation caches and training
    activations of varying shapes; without a trim glibc keeps the freed arenas and RSS creeps up step by step."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


class MetricsLog:
    """One JSON line per step in ``metrics.jsonl`` (the file replaced whole each time, through a temporary file),
    forwarded to accelerate trackers when configured."""

    def __init__(self, out: Path, accelerator=None):
        self.path, self.accelerator = out / "metrics.jsonl", accelerator

    @property
    def writes(self) -> bool:
        """Only the main process writes the file (one line per step under several processes)."""
        return self.accelerator is None or self.accelerator.is_main_process

    def keep_until(self, step: int) -> None:
        """Drop the lines after ``step`` (a resumed run restarts after its checkpoint's step: lines a killed run
        wrote for later steps would be there twice)."""
        if not self.path.exists() or not self.writes:
            return

        def before(line: str) -> bool:  # a line cut short by the kill is dropped too
            try:
                return json.loads(line).get("step", 0) <= step
            except ValueError:
                return False

        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line if line.endswith("\n") else line + "\n" for line in lines if line.strip() and before(line)]
        if kept != lines:
            atomic_write(self.path, "".join(kept))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.writes:
            return
        clean = {k: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) else v) for k, v in metrics.items()}
        # the whole log rewritten through a temporary file: a kill never leaves a torn line
        before = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
        atomic_write(self.path, before + json.dumps({"step": step, "time": time.time(), **clean}) + "\n")
        if self.accelerator is not None and self.accelerator.trackers:
            self.accelerator.log({k: v for k, v in clean.items() if isinstance(v, float)}, step=step)


def finite_or_skip(loss: torch.Tensor, counter: dict, step: int) -> bool:
    """True when ``loss`` is finite; otherwise log a warning, count it and tell the caller to skip the batch."""
    if torch.isfinite(loss).all():
        return True
    counter["nonfinite_skipped"] = counter.get("nonfinite_skipped", 0) + 1
    log.warning("step %d: non-finite loss (%s); batch skipped (%d so far)", step, loss.detach().float().tolist(),
                counter["nonfinite_skipped"])
    return False


def make_accelerator(cfg: TrainConfig, out: Path):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    dev = resolve_device(cfg.device)
    trackers = None if cfg.log_with == "none" else cfg.log_with
    acc = Accelerator(cpu=dev.type == "cpu", gradient_accumulation_steps=cfg.grad_accum, log_with=trackers,
                      project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")))
    if trackers:
        acc.init_trackers("redgym", config={k: v for k, v in cfg.to_dict().items() if v is not None})
    return acc


def optimizer_and_schedule(cfg: TrainConfig, model):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))
    return opt, sched


# ---- the shared frame of a training run ---------------------------------------------------------------------

@dataclass
class Run:
    """What both trainers set up the same way: accelerator, policy, defender, prompts/scorer, optimizer, the
    adversary LM used for sampling, the step to start from, and the state restored from a checkpoint."""

    cfg: TrainConfig
    out: Path
    acc: object
    policy: Policy
    defender: ChatBackend
    adversary: LM
    setup: object
    opt: torch.optim.Optimizer
    sched: object
    metrics_log: MetricsLog
    start: int
    state: dict
    extra: list
    t_start: float
    stop: StopRequest = dataclasses.field(default_factory=StopRequest)


def start_run(cfg: TrainConfig, out: Path, resume: bool, make_extra=None) -> Run:
    """Step 0 of every trainer. ``make_extra(policy)`` returns modules (e.g. a value head) trained and
    checkpointed with the policy."""
    from redgym.runfolder import check_writable, save_config
    from redgym.setup import prepare

    check_writable(out)
    if cfg.defender_backend != "local":  # the trainers share the policy's base weights with a local defender
        raise RedgymError(f"training supports defender_backend local only, got {cfg.defender_backend!r}")
    acc = make_accelerator(cfg, out)
    check_parallelism(acc)
    if not acc.is_main_process:  # each message once: the main process logs, the others only on errors
        logging.getLogger("redgym").setLevel(logging.ERROR)
    if cfg.prompts_per_step % acc.num_processes:
        raise RedgymError(f"prompts_per_step {cfg.prompts_per_step} does not split over {acc.num_processes} "
                          "processes; make it a multiple")
    set_seed(cfg.seed)  # LoRA/value-head init and rollout sampling; a resumed run restores the saved RNG states
    policy = build_policy(cfg)
    defender = defender_lm(cfg, policy)
    setup = prepare(cfg, need_embedder=False, defender=defender)
    dev = next(policy.model.parameters()).device
    extra = [m.to(dev) for m in (make_extra(policy) if make_extra else ())]
    opt, sched = optimizer_and_schedule(cfg, torch.nn.ModuleList([policy.model, *extra]))
    policy.model, *extra, opt, sched = acc.prepare(policy.model, *extra, opt, sched)
    if acc.num_processes > 1:  # same initial weights (DDP broadcast them), each process its own sampling stream
        set_seed(cfg.seed + acc.process_index)
    adversary = LM(policy.generation_model, policy.tokenizer, cfg.adversary_model, cfg.adversary_format,
                   cfg.max_context_tokens)
    start, state = 0, {}
    if resume and (ckpt := latest_checkpoint(out)):
        state = load_checkpoint(acc, ckpt)
        start = state["step"]
        if setup.memory is not None and "novelty_memory" in state:
            setup.memory.load_state_dict(state["novelty_memory"])
        log.info("resumed from %s at step %d", ckpt, start)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(out, cfg)
        # the split this run trains on; its evaluation tests on these held-out prompts, never recomputing them
        write_json(out / "split.json", setup.split.to_json(cfg.prompts, cfg.data_seed))
    acc.wait_for_everyone()
    metrics_log = MetricsLog(out, acc)
    metrics_log.keep_until(start)
    # setup.defender: the defender behind its guard when defender_guard is set (a red-teamer trained against it)
    return Run(cfg, out, acc, policy, setup.defender, adversary, setup, opt, sched, metrics_log, start,
               state, extra, time.time())


def end_step(run: Run, step: int, metrics: dict, state: dict) -> bool:
    """Step 5's bookkeeping: log, checkpoint every N steps / at the end / when out of time. True = stop now."""
    cfg = run.cfg
    metrics["time/train_min"] = (time.time() - run.t_start) / 60
    release_memory()
    metrics["sys/peak_rss_gb"] = peak_rss_gb()
    metrics["sys/rss_gb"] = rss_gb()
    metrics.update(mean_over_ranks(run.acc, metrics))
    run.metrics_log.log(step + 1, metrics)
    out_of_time = cfg.max_minutes > 0 and time.time() - run.t_start > 60 * cfg.max_minutes
    signum = run.stop.requested(run.acc)
    if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps or out_of_time or signum:
        if run.setup.memory is not None:  # the novelty terms' history resumes with the policy
            state = {**state, "novelty_memory": run.setup.memory.state_dict()}
        save_checkpoint(run.acc, run.out, step + 1, run.policy, state, cfg.keep_checkpoints)
    if signum and step + 1 < cfg.steps:
        finish_run(run)
        raise TrainingStopped(step + 1, signum, run.out)
    if out_of_time:
        log.info("wall-clock budget of %.1f min reached after step %d", cfg.max_minutes, step + 1)
    return out_of_time


def finish_run(run: Run) -> None:
    """Step 6: close trackers, give the signals back. Evaluation is the caller's (``redgym train`` runs
    ``evaluate_run`` after it)."""
    run.stop.restore()
    run.acc.end_training()


# ---- checkpoints ----------------------------------------------------------------------------------------------

def save_checkpoint(accelerator, out: Path, step: int, policy: Policy, state: dict, keep: int,
                    model_dir: str = "adversary") -> Path:
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
        raise RedgymError(f"checkpoint at step {step} could not be written to {out / 'checkpoints'} "
                          f"({e.strerror or type(e).__name__}); {kept}: free space or fix permissions, then "
                          f"resume with --resume {out}") from None
    accelerator.wait_for_everyone()
    return ckpt


def save_adversary(accelerator, policy: Policy, path: Path) -> None:
    """The trained adversary in a form ``load_model`` reads: a LoRA adapter folder or a full model folder."""
    model = accelerator.unwrap_model(policy.model)
    tmp = path.with_name(f".{path.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    policy.tokenizer.save_pretrained(tmp)
    replace_folder(tmp, path)


def latest_checkpoint(out: Path) -> Path | None:
    done = sorted(p for p in (out / "checkpoints").glob("step_*") if (p / "trainer_state.json").exists())
    return done[-1] if done else None


def load_checkpoint(accelerator, ckpt: Path) -> dict:
    accelerator.load_state(str(ckpt))
    return json.loads((ckpt / "trainer_state.json").read_text())
