"""The shared frame of a training run: set-up and resume, prompt schedule, optimizer, step bookkeeping, the end.

``Frame`` / ``start_frame`` / ``end_frame_step`` are every trained model's (the guard's too); ``Run`` / ``start_run`` /
``end_step`` add what a red-team trainer has beside: the defender, the prompts and scorer, the reward's schedule."""

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
from redgym.models.replay import SilentSpeaker
from redgym.rollout.reward import (
    RewardWeights,
    anneal_fraction,
    curriculum_weights,
    multiplier_update,
    with_multiplier,
)
from redgym.runfolder import write_json
from redgym.trainers.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from redgym.trainers.distributed import all_reduce_grads, check_parallelism, mean_over_ranks
from redgym.trainers.memory import peak_rss_gb, release_memory, rss_gb
from redgym.trainers.metrics_log import MetricsLog
from redgym.trainers.policy import Policy, build_policy
from redgym.trainers.stop import StopRequest
from redgym.trainers.train_config import OptimConfig, TrainConfig

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


def make_accelerator(cfg: OptimConfig, out: Path) -> Accelerator:
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
    cfg: OptimConfig, model: torch.nn.Module, clock: StepClock | None = None
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    clock = clock or StepClock()
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, clock.step, cfg.warmup_steps, cfg.steps, cfg.lr_decay_steps)
    )
    return opt, sched


@dataclass(kw_only=True)
class Frame:
    """What every training run sets up the same way, the red-team trainers' and the guard's: accelerator, policy,
    optimizer and schedule, the metrics log, the step to start from and the state restored with it, the stop
    request. The trained model is saved to ``out/<model_dir>`` at each checkpoint."""

    cfg: OptimConfig
    out: Path
    acc: Accelerator
    policy: Policy
    opt: torch.optim.Optimizer  # accelerate's AcceleratedOptimizer (a torch Optimizer)
    sched: AcceleratedScheduler
    metrics_log: MetricsLog
    start: int
    state: dict[str, Any]
    extra: list[torch.nn.Module]
    t_start: float
    clock: StepClock
    model_dir: str = "adversary"
    stop: StopRequest = dataclasses.field(default_factory=StopRequest)
    bar: Any = None  # the progress bar of ``steps``

    def steps(self, name: str, progress: bool):
        """The training steps still to run, behind a progress bar, each begun with ``begin_step``."""
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

    def begin_step(self, step: int) -> None:
        """Every trainer's first act in a step: the learning rate takes this step's place in the schedule now (the
        decay counts training steps), so the step's first update already uses it, in a fresh and a resumed run."""
        self.clock.step = step
        inner = getattr(self.sched, "scheduler", self.sched)  # accelerate wraps the torch scheduler
        for group, base, factor in zip(inner.optimizer.param_groups, inner.base_lrs, inner.lr_lambdas):
            group["lr"] = base * factor(inner.last_epoch)

    def optimizer_step(self, trained: bool = True) -> float:
        """The end of one update whose micro-batches were accumulated under ``accumulate_locally``: gradients
        averaged over the processes, clipped to ``max_grad_norm`` (when something was trained), one optimizer and
        schedule step. Returns the gradient norm before clipping (nan when not clipped)."""
        all_reduce_grads(self.acc, self.policy.model.parameters())
        grad_norm = float("nan")
        if self.acc.sync_gradients and self.cfg.max_grad_norm > 0 and trained:
            grad_norm = float(self.acc.clip_grad_norm_(self.policy.model.parameters(), self.cfg.max_grad_norm))
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad()
        return grad_norm

    def checkpoint_state(self, state: dict) -> dict:
        """What a checkpoint saves beside the weights: the step's ``state`` (a subclass adds its own)."""
        return state


@dataclass(kw_only=True)
class Run(Frame):
    """A red-team trainer's frame: also the defender, the prompts/scorer set-up, the adversary LM used for
    sampling, a server defender's request counts and the adversary-budget multiplier."""

    cfg: TrainConfig
    defender: ChatBackend
    adversary: LM
    setup: Setup
    http_seen: dict[str, int] = dataclasses.field(default_factory=dict)  # a server's counts at the last step's end
    multiplier: float = 0.0  # adversary_budget's Lagrange multiplier (checkpointed with the step's state)

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

    def who_replies(self, weights: RewardWeights, horizon: int) -> tuple[ChatBackend, int, bool]:
        """Who answers a training step's adversary turns, how many replies each, and whether that is nobody: a
        reward that does not read the replies (``weights.reads_replies``), at horizon 1 (no later turn's context
        holds one), gets a ``SilentSpeaker`` and 1, so the step spends nothing on replies nothing uses (drop their
        terms from its scores: ``without_replies``); otherwise the run's defender, ``defender_samples`` times."""
        if horizon == 1 and not weights.reads_replies:
            return SilentSpeaker(), 1, True
        return self.defender, self.cfg.defender_samples, False

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

    def checkpoint_state(self, state: dict) -> dict:
        """The step's state, the adversary-budget multiplier and the novelty terms' history (resumed with it)."""
        if self.cfg.adversary_budget is not None:
            state = {**state, "multiplier": self.multiplier}
        if self.setup.memory is not None:
            state = {**state, "novelty_memory": self.setup.memory.state_dict()}
        return state


REPLY_KEYS = ("tox_defender", "tox_combined", "tox_defender_replies", "tox_combined_replies")


def without_replies(scores: dict) -> dict:
    """A silent step's scores without the terms of the replies it never drew (``Run.who_replies``)."""
    return {k: v for k, v in scores.items() if k not in REPLY_KEYS}


def start_frame(
    cfg: OptimConfig,
    out: Path,
    resume: bool,
    model: str,
    make_extra: Callable[[Policy], Sequence[torch.nn.Module]] | None = None,
    model_dir: str = "adversary",
) -> Frame:
    """Step 0 of every training run: accelerator, the policy (LoRA over ``model``, or all of it), the optimizer
    and schedule, the latest checkpoint when resuming, ``config.yaml``. ``make_extra(policy)`` returns modules
    (e.g. a value head) trained and checkpointed with the policy."""
    from redgym.runfolder import check_writable, save_config

    check_writable(out)
    acc = make_accelerator(cfg, out)
    check_parallelism(acc)
    if not acc.is_main_process:  # each message once: the main process logs, the others only on errors
        logging.getLogger("redgym").setLevel(logging.ERROR)
    set_seed(cfg.seed)  # LoRA/value-head init and rollout sampling; a resumed run restores the saved RNG states
    policy = build_policy(cfg, model)
    dev = next(policy.model.parameters()).device
    extra = [m.to(dev) for m in (make_extra(policy) if make_extra else ())]
    clock = StepClock()
    opt, sched = optimizer_and_schedule(cfg, torch.nn.ModuleList([policy.model, *extra]), clock)
    policy.model, *extra, opt, sched = acc.prepare(policy.model, *extra, opt, sched)
    if acc.num_processes > 1:  # same initial weights (DDP broadcast them), each process its own sampling stream
        set_seed(cfg.seed + acc.process_index)
    start, state = 0, {}
    if resume and (ckpt := latest_checkpoint(out)):
        state = load_checkpoint(acc, ckpt)
        start = state["step"]
        log.info("resumed from %s at step %d", ckpt, start)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(out, cfg)
    acc.wait_for_everyone()
    metrics_log = MetricsLog(out, acc)
    metrics_log.keep_until(start)
    policy.sync_sampler()
    return Frame(
        cfg=cfg,
        out=out,
        acc=acc,
        policy=policy,
        opt=opt,
        sched=sched,
        metrics_log=metrics_log,
        start=start,
        state=state,
        extra=extra,
        t_start=time.time(),
        clock=clock,
        model_dir=model_dir,
    )


def start_run(
    cfg: TrainConfig,
    out: Path,
    resume: bool,
    make_extra: Callable[[Policy], Sequence[torch.nn.Module]] | None = None,
) -> Run:
    """Step 0 of every red-team trainer: the frame (``start_frame``), then the defender, the prompts, scorer and
    reward (``setup.prepare``) and the split this run trains on (``split.json``)."""
    from redgym.setup import prepare

    f = start_frame(cfg, out, resume, cfg.adversary_model, make_extra)
    if cfg.prompts_per_step % f.acc.num_processes:
        raise RedgymError(
            f"prompts_per_step {cfg.prompts_per_step} does not split over {f.acc.num_processes} "
            "processes; make it a multiple"
        )
    # a local defender that is the adversary's own model shares the policy's frozen base weights
    shared = cfg.defender_backend == "local" and cfg.defender_model == cfg.adversary_model
    setup = prepare(cfg, need_embedder=False, defender_weights=f.policy.base if shared else None)
    if setup.memory is not None and "novelty_memory" in f.state:
        setup.memory.load_state_dict(f.state["novelty_memory"])
    adversary = LM(
        f.policy.generation_model, f.policy.tokenizer, cfg.adversary_model, cfg.adversary_format, cfg.max_context_tokens
    )
    if f.acc.is_main_process:  # the split this run trains on; its evaluation tests on these held-out prompts
        write_json(out / "split.json", setup.split.to_json(cfg.prompts, cfg.data_seed))
    f.acc.wait_for_everyone()
    fields = {k.name: getattr(f, k.name) for k in dataclasses.fields(Frame)}
    # setup.defender: the defender behind its guard when defender_guard is set (a red-teamer trained against it)
    return Run(
        **fields,
        defender=setup.defender,
        adversary=adversary,
        setup=setup,
        multiplier=float(f.state.get("multiplier", cfg.multiplier_init)),
    )


def end_step(run: Run, step: int, metrics: dict, state: dict) -> bool:
    """Step 5 of a red-team trainer: the reward's schedule and a server defender's counts in the step's metrics,
    then ``end_frame_step``. True = stop now."""
    cfg = run.cfg
    if cfg.reward_curriculum_steps:
        metrics["reward/curriculum_alpha"] = run.curriculum_alpha(step)
    if cfg.adversary_budget is not None:  # the value the next step's rewards use, resumed from the checkpoint
        metrics["reward/multiplier"] = run.multiplier
    metrics.update(run.http_metrics(state.get("counters", {})))
    if run.bar is not None and "http/total_requests" in metrics:
        run.bar.set_postfix(requests=int(metrics["http/total_requests"]), refresh=False)
    return end_frame_step(run, step, metrics, state)


def end_frame_step(f: Frame, step: int, metrics: dict, state: dict) -> bool:
    """A step's bookkeeping: time and memory in its metrics (averaged over the processes; ``budget/*`` summed), the
    log, a checkpoint every ``checkpoint_every`` steps / at the end / when out of time or asked to stop (SIGINT,
    SIGTERM: ``TrainingStopped`` after it). True = stop now (out of time)."""
    cfg = f.cfg
    metrics["time/train_min"] = (time.time() - f.t_start) / 60
    release_memory()
    metrics["sys/peak_rss_gb"] = peak_rss_gb()
    metrics["sys/rss_gb"] = rss_gb()
    metrics.update(mean_over_ranks(f.acc, metrics))
    for k in [k for k in metrics if k.startswith("budget/")]:  # a step's cost is the sum over processes
        metrics[k] = metrics[k] * f.acc.num_processes
    f.metrics_log.log(step + 1, metrics)
    out_of_time = cfg.max_minutes > 0 and time.time() - f.t_start > 60 * cfg.max_minutes
    signum = f.stop.requested(f.acc)
    if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps or out_of_time or signum:
        save_checkpoint(f.acc, f.out, step + 1, f.policy, f.checkpoint_state(state), cfg.keep_checkpoints, f.model_dir)
    if signum and step + 1 < cfg.steps:
        finish_run(f)
        raise TrainingStopped(step + 1, signum, f.out)
    if out_of_time:
        log.info("wall-clock budget of %.1f min reached after step %d", cfg.max_minutes, step + 1)
    return out_of_time


def finish_run(f: Frame) -> None:
    """The last step: close trackers, give the signals back. Evaluation is the caller's (``redgym train`` runs
    ``evaluate_run`` after it)."""
    f.stop.restore()
    f.acc.end_training()
