"""The shared frame of a training run: set-up and resume, prompt schedule, optimizer, step bookkeeping, the end."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import set_seed

from redgym.errors import RedgymError, ServerError, TrainingStopped
from redgym.models.base import ChatBackend
from redgym.models.lm import LM
from redgym.models.loading import resolve_device
from redgym.rollout.reward import (
    RewardWeights,
    anneal_fraction,
    curriculum_weights,
    multiplier_update,
    with_multiplier,
)
from redgym.runfolder import write_json
from redgym.trainers.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from redgym.trainers.distributed import check_parallelism, mean_over_ranks
from redgym.trainers.memory import peak_rss_gb, release_memory, rss_gb
from redgym.trainers.metrics_log import MetricsLog
from redgym.trainers.policy import Policy, build_policy, defender_lm
from redgym.trainers.stop import StopRequest
from redgym.trainers.train_config import TrainConfig

if TYPE_CHECKING:
    from accelerate import Accelerator
    from accelerate.scheduler import AcceleratedScheduler

    from redgym.setup import Setup

log = logging.getLogger("redgym.train")


def batch_indices(n: int, per_step: int, step: int, seed: int) -> np.ndarray:
    """Prompt indices for ``step``: epochs of seeded permutations, a pure function of the step (so resuming
    needs no data-loader state)."""
    out = []
    for pos in range(step * per_step, (step + 1) * per_step):
        epoch, i = divmod(pos, n)
        out.append(np.random.default_rng([seed, epoch]).permutation(n)[i])
    return np.array(out)


def make_accelerator(cfg: TrainConfig, out: Path) -> Accelerator:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    dev = resolve_device(cfg.device)
    trackers = None if cfg.log_with == "none" else cfg.log_with
    acc = Accelerator(
        cpu=dev.type == "cpu",
        gradient_accumulation_steps=cfg.grad_accum,
        log_with=trackers,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    if trackers:
        acc.init_trackers("redgym", config={k: v for k, v in cfg.to_dict().items() if v is not None})
    return acc


def lr_factor(opt_step: int, train_step: int, warmup_steps: int, steps: int, decay_steps: int) -> float:
    """The learning rate's multiplier (warmup-stable-decay): linear warmup over the first ``warmup_steps`` optimizer
    steps, then constant, and over the last ``decay_steps`` training steps of ``steps`` linearly toward 0 (training
    step ``steps - k`` gets ``k / (decay_steps + 1)``, so the last step still moves). 0-based steps."""
    warm = min(1.0, (opt_step + 1) / max(1, warmup_steps))
    if decay_steps <= 0:
        return warm
    return warm * min(1.0, (steps - train_step) / (decay_steps + 1))


@dataclass
class StepClock:
    """The training step the optimizer's updates belong to (a trainer sets it at each step's start): the learning
    rate schedule's decay counts training steps, whose number of optimizer steps varies."""

    step: int = 0


def optimizer_and_schedule(
    cfg: TrainConfig, model: torch.nn.Module, clock: StepClock | None = None
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    clock = clock or StepClock()
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, clock.step, cfg.warmup_steps, cfg.steps, cfg.lr_decay_steps)
    )
    return opt, sched


@dataclass
class Run:
    """What both trainers set up the same way: accelerator, policy, defender, prompts/scorer, optimizer, the
    adversary LM used for sampling, the step to start from, and the state restored from a checkpoint."""

    cfg: TrainConfig
    out: Path
    acc: Accelerator
    policy: Policy
    defender: ChatBackend
    adversary: LM
    setup: Setup
    opt: torch.optim.Optimizer  # accelerate's AcceleratedOptimizer (a torch Optimizer)
    sched: AcceleratedScheduler
    metrics_log: MetricsLog
    start: int
    state: dict[str, Any]
    extra: list[torch.nn.Module]
    t_start: float
    clock: StepClock
    stop: StopRequest = dataclasses.field(default_factory=StopRequest)
    http_seen: dict[str, int] = dataclasses.field(default_factory=dict)  # a server's counts at the last step's end
    bar: Any = None  # the progress bar of ``steps``
    multiplier: float = 0.0  # adversary_budget's Lagrange multiplier (checkpointed with the step's state)

    def steps(self, name: str, progress: bool):
        """The training steps still to run, behind a progress bar (its postfix: a server defender's requests so
        far), each begun with ``begin_step``."""
        from tqdm.auto import tqdm

        self.bar = tqdm(
            range(self.start, self.cfg.steps),
            desc=f"train {name}",
            initial=self.start,
            total=self.cfg.steps,
            disable=not (progress and self.acc.is_main_process),
        )
        for step in self.bar:
            self.begin_step(step)
            yield step

    def http_metrics(self, counters: dict) -> dict[str, float]:
        """A server defender's request, retry, failure and token counts: this step's (``http/*``) and the run's so
        far (``http/total_*``, kept in the checkpoint's ``counters`` so a resumed run goes on counting)."""
        counts = getattr(self.setup.defender, "counts", None)
        if counts is None:
            return {}
        now, out = counts(), {}
        for k, v in now.items():
            step_v = v - self.http_seen.get(k, 0)
            counters[f"http_{k}"] = counters.get(f"http_{k}", 0) + step_v
            out[f"http/{k}"], out[f"http/total_{k}"] = float(step_v), float(counters[f"http_{k}"])
        self.http_seen = now
        out["http/skipped_steps"] = float(counters.get("http_skipped_steps", 0))
        return out

    def defender_step(self, step: int, counters: dict, roll, *args):
        """``roll(*args)`` (a step's rollouts), or None when a server defender failed it and ``http_skip_failed_steps``
        says to skip the step (counted); otherwise the failure stops the run before anything of the step is
        trained, its last checkpoint intact."""
        try:
            return roll(*args)
        except ServerError as e:
            if not self.cfg.http_skip_failed_steps:
                raise
            counters["http_skipped_steps"] = counters.get("http_skipped_steps", 0) + 1
            log.warning("step %d skipped, nothing trained: %s", step + 1, e)
            return None

    def begin_step(self, step: int) -> None:
        """Every trainer's first act in a step: the learning rate takes this step's place in the schedule now (the
        decay counts training steps), so the step's first update already uses it, in a fresh and a resumed run."""
        self.clock.step = step
        inner = getattr(self.sched, "scheduler", self.sched)  # accelerate wraps the torch scheduler
        for group, base, factor in zip(inner.optimizer.param_groups, inner.base_lrs, inner.lr_lambdas):
            group["lr"] = base * factor(inner.last_epoch)

    def curriculum_alpha(self, step: int) -> float:
        """How far the reward has annealed from the adversary's own toxicity to the configured one (1 = there)."""
        return anneal_fraction(step, self.cfg.reward_curriculum_steps)

    def reward_weights(self, step: int) -> RewardWeights:
        """The reward weights of ``step``: the configured ones, unless a curriculum is still annealing, with the
        adversary-budget multiplier folded into the adversary-toxicity weight."""
        return with_multiplier(curriculum_weights(self.setup.weights, self.curriculum_alpha(step)), self.multiplier)

    def observe_adversary_toxicity(self, tox) -> None:
        """After a step's scoring: one dual-ascent step of the adversary-budget multiplier from the mean toxicity of
        the step's adversary turns (over every process's share), so the next step's rewards use it."""
        if self.cfg.adversary_budget is None or len(tox) == 0:
            return
        mean = mean_over_ranks(self.acc, {"tox": float(np.mean(tox))})["tox"]
        self.multiplier = multiplier_update(self.multiplier, mean, self.cfg.adversary_budget, self.cfg.multiplier_lr)


def start_run(
    cfg: TrainConfig,
    out: Path,
    resume: bool,
    make_extra: Callable[[Policy], Sequence[torch.nn.Module]] | None = None,
) -> Run:
    """Step 0 of every trainer. ``make_extra(policy)`` returns modules (e.g. a value head) trained and
    checkpointed with the policy."""
    from redgym.runfolder import check_writable, save_config
    from redgym.setup import prepare

    check_writable(out)
    acc = make_accelerator(cfg, out)
    check_parallelism(acc)
    if not acc.is_main_process:  # each message once: the main process logs, the others only on errors
        logging.getLogger("redgym").setLevel(logging.ERROR)
    if cfg.prompts_per_step % acc.num_processes:
        raise RedgymError(
            f"prompts_per_step {cfg.prompts_per_step} does not split over {acc.num_processes} "
            "processes; make it a multiple"
        )
    set_seed(cfg.seed)  # LoRA/value-head init and rollout sampling; a resumed run restores the saved RNG states
    policy = build_policy(cfg)
    # a local defender shares the policy's base weights; a server defender is set up (and checked) by prepare
    defender = defender_lm(cfg, policy) if cfg.defender_backend == "local" else None
    setup = prepare(cfg, need_embedder=False, defender=defender)
    dev = next(policy.model.parameters()).device
    extra = [m.to(dev) for m in (make_extra(policy) if make_extra else ())]
    clock = StepClock()
    opt, sched = optimizer_and_schedule(cfg, torch.nn.ModuleList([policy.model, *extra]), clock)
    policy.model, *extra, opt, sched = acc.prepare(policy.model, *extra, opt, sched)
    if acc.num_processes > 1:  # same initial weights (DDP broadcast them), each process its own sampling stream
        set_seed(cfg.seed + acc.process_index)
    adversary = LM(
        policy.generation_model, policy.tokenizer, cfg.adversary_model, cfg.adversary_format, cfg.max_context_tokens
    )
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
    return Run(
        cfg,
        out,
        acc,
        policy,
        setup.defender,
        adversary,
        setup,
        opt,
        sched,
        metrics_log,
        start,
        state,
        extra,
        time.time(),
        clock,
        multiplier=float(state.get("multiplier", cfg.multiplier_init)),
    )


def end_step(run: Run, step: int, metrics: dict, state: dict) -> bool:
    """Step 5's bookkeeping: log, checkpoint every N steps / at the end / when out of time. True = stop now."""
    cfg = run.cfg
    metrics["time/train_min"] = (time.time() - run.t_start) / 60
    if cfg.reward_curriculum_steps:
        metrics["reward/curriculum_alpha"] = run.curriculum_alpha(step)
    if cfg.adversary_budget is not None:  # the value the next step's rewards use, resumed from the checkpoint
        metrics["reward/multiplier"] = run.multiplier
        state = {**state, "multiplier": run.multiplier}
    release_memory()
    metrics["sys/peak_rss_gb"] = peak_rss_gb()
    metrics["sys/rss_gb"] = rss_gb()
    metrics.update(run.http_metrics(state.get("counters", {})))
    if run.bar is not None and "http/total_requests" in metrics:
        run.bar.set_postfix(requests=int(metrics["http/total_requests"]), refresh=False)
    metrics.update(mean_over_ranks(run.acc, metrics))
    for k in [k for k in metrics if k.startswith("budget/")]:  # a step's cost is the sum over processes
        metrics[k] = metrics[k] * run.acc.num_processes
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
