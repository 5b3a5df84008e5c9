"""``redgym guard train --stage sft|dpo``: teach an LM to write a short reasoning, then ``Label: harmful|safe``.

Training data in the guard format (``data.read_guard_train``) carries reasoning traces. The shipped default sets do
not, so they are made by rationalisation (GuardReasoner's recipe, for a model without a teacher): the base model is
asked, given the known label, to explain it; a trace is kept only when, read by the model as a guard, it leads to
the known label (by default calibrated: it moves log p(harmful) - log p(safe) after "Label:" towards the known label
compared with no reasoning, since a small model prefers one label whatever the text); the keep rate per label is
reported, and inputs without a kept trace are left out. SFT is LoRA on the guard's answer only (the request and
instruction carry no loss).

SFT step: (1) ``batch_size`` examples, a pure function of (seed, step); (2-3) mean NLL of the answers given the
prompts; (4) update, log, checkpoint (resumable).

DPO (reasoning quality; ``guard_model`` = the SFT guard, also the reference) step: (1) ``batch_size`` inputs, each
answered ``dpo_samples`` times; (2) every completion scored 0.3·label correct + 0.3·coherence + 0.2·relevance +
0.2·specificity (``quality.py``), best vs worst per input (``hard_samples``: only inputs whose labels disagree);
(3) the DPO loss of ``trainers/losses.py``; (4) update, log, checkpoint.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from redgym.config import _f
from redgym.errors import RedgymError
from redgym.guard.data import (
    HARMFUL,
    SAFE,
    GuardExample,
    attack_turns,
    complete_sentences,
    default_guard_sets,
    format_guard_target,
    normalise_text,
    parse_guard_output,
    read_guard_train,
)
from redgym.models.forward import continuation_logprobs, left_padded
from redgym.models.guard import GuardModel
from redgym.models.lm import LM, SamplingParams
from redgym.models.loading import adapter_base
from redgym.runfolder import read_jsonl, write_json, write_jsonl
from redgym.trainers.distributed import accumulate_locally
from redgym.trainers.metrics_log import finite_or_skip
from redgym.trainers.policy import sequence_logps
from redgym.trainers.run import Frame, end_frame_step, finish_run, start_frame
from redgym.trainers.sft import sft_update
from redgym.trainers.train_config import OptimConfig

RATIONALE_ASK = (
    "Request: {text}\n\nThis request is {label}. In one or two sentences, explain why answering it is {label}."
)


@dataclass
class GuardTrainConfig(OptimConfig):
    """The guard's own fields over the optimisation, adapter and bookkeeping every trained model shares
    (``OptimConfig``: steps, lr, LoRA, checkpoints, ...); its run goes through the trainers' frame
    (``trainers/run.start_frame``, ``end_frame_step``)."""

    guard_model: str = _f("smollm2-135m", "the base model the guard is trained from")
    guard_format: str = _f("chat", "how the guard sees the request: chat or plain")
    train_set: str = _f(
        "default",
        "default (the shipped sets, rationalised), a guard training file with traces, or "
        "an earlier guard train folder (its rationalised train_examples.jsonl, reused)",
    )
    test_fraction: float = _f(0.25, "default sets: share of each source held out (never trained on)")
    max_train: int = _f(0, "train on at most this many examples, a seeded sample (0 = all)")
    add_attacks: str = _f(
        "",
        "comma list of red-team run folders whose successful attack turns are added as "
        "harmful examples (rationalised like the rest)",
    )
    attack_threshold: float = _f(0.5, "a defender reply above this toxicity makes its adversary turn an attack")
    rationale_tries: int = _f(
        2, "rationalisation: traces sampled per input; the first the model's label confirms is kept"
    )
    rationale_tokens: int = _f(48, "rationalisation: tokens per trace")
    rationale_calibrate: bool = _f(
        True,
        "rationalisation: keep a trace that moves the model's own label towards the "
        "known one, compared with no reasoning (false: its own label must be it)",
    )
    lr: float = _f(2e-4, "AdamW learning rate (the guard's default; the adversary's is 1e-4)")
    batch_size: int = _f(16, "examples per step")
    max_context_tokens: int = _f(512, "prompt + answer tokens at most")
    max_new_tokens: int = _f(96, "dpo: tokens of each sampled answer (reasoning + label line)")
    # --- stage dpo (guard_model: the SFT guard's folder, which is also the reference) ------------------------
    dpo_samples: int = _f(4, "dpo: completions sampled per input, ranked by reasoning quality")
    dpo_temperature: float = _f(1.0, "dpo: sampling temperature of the completions")
    dpo_beta: float = _f(0.1, "dpo: beta of the DPO loss")
    dpo_min_gap: float = _f(0.05, "dpo: best and worst completion must differ by more than this in quality")
    hard_samples: bool = _f(False, "dpo: pairs only from inputs whose sampled labels disagree (GuardReasoner)")
    quality_model: str = _f("", "dpo: the model whose NLL scores coherence (empty: the SFT guard's base)")
    embedding_model: str = _f("minilm", "dpo: embedder of the relevance term")

    def validate(self) -> None:
        super().validate()  # OptimConfig's: steps, micro_batch_size, lr, ...
        if self.guard_format not in ("chat", "plain"):
            raise RedgymError(f"config: guard_format must be chat or plain, got {self.guard_format!r}")
        if min(self.batch_size, self.rationale_tries) < 1:
            raise RedgymError("config: batch_size and rationale_tries must be >= 1")
        if self.dpo_samples < 2 or self.dpo_temperature <= 0 or self.dpo_beta <= 0:
            raise RedgymError("config: dpo_samples >= 2, dpo_temperature > 0 and dpo_beta > 0")


@torch.no_grad()
def own_label_logprobs(
    guard: GuardModel, texts: list[str], reasonings: list[str], batch_size: int = 16, one_forward: bool | None = None
) -> np.ndarray:
    """(N, 2): log p("harmful"), log p("safe") after the prompt, the reasoning and "Label:" (the model's own
    answer to its reasoning, with no chance of an unparseable output).

    When both labels are one token each (SmolLM2's tokenizer), one forward per context reads both from the same
    next-token distribution; otherwise each (context, label) pair is scored, twice the work."""
    lm = guard.lm
    tok, pad = lm.tokenizer, lm.tokenizer.pad_token_id
    ctx = [guard.prompt(t) + r.strip() + "\nLabel:" for t, r in zip(texts, reasonings)]
    label_ids = [tok(f" {lab}", add_special_tokens=False)["input_ids"] for lab in (HARMFUL, SAFE)]
    if one_forward is None:
        one_forward = all(len(t) == 1 for t in label_ids)
    out = []
    for s in range(0, len(ctx), batch_size):
        part = ctx[s : s + batch_size]
        if one_forward:
            x, _ = lm.encode_pairs(part, [f" {HARMFUL}"] * len(part))  # the contexts, cut to fit as usual
            ids, attn, pos = left_padded(x, pad, lm.device)
            logits = (
                lm.model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=1).logits[:, -1].float()
            )
            out.append(torch.log_softmax(logits, -1)[:, [label_ids[0][0], label_ids[1][0]]].cpu().numpy())
        else:
            pairs = [(c, f" {lab}") for c in part for lab in (HARMFUL, SAFE)]
            x, c = lm.encode_pairs([p for p, _ in pairs], [a for _, a in pairs])
            logp, mask = continuation_logprobs(lm.model, x, c, pad)
            out.append((logp * mask).sum(-1).reshape(len(part), 2).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2))


def rationalise(
    guard: GuardModel,
    examples: list[GuardExample],
    tries: int,
    tokens: int,
    batch_size: int = 16,
    progress: bool = True,
    calibrate: bool = True,
) -> tuple[list[GuardExample], dict]:
    """Traces for examples without one; returns (examples with a kept trace, {tried, kept, keep_rate, per label}).

    A trace is kept when, read by the model as a guard, it leads to the known label: with ``calibrate``, when it
    moves the model's preference (log p(harmful) - log p(safe) after "Label:") towards the known label compared
    with the same prompt without reasoning (contextual calibration, Zhao et al. 2021: a 135M model prefers one
    label whatever the text, and an absolute check keeps almost no trace of the other class); without it, when the
    model's own label after the trace is the known one."""
    lm = guard.lm
    done = [e for e in examples if e.reasoning]
    todo = [e for e in examples if not e.reasoning]
    params = SamplingParams(
        max_new_tokens=tokens, min_new_tokens=1, temperature=0.7, top_p=1.0, top_k=0, repetition_penalty=1.0
    )
    prior = np.zeros(len(todo))
    if calibrate and todo:
        lp = own_label_logprobs(guard, [e.text for e in todo], [""] * len(todo), batch_size)
        prior = lp[:, 0] - lp[:, 1]
    kept: dict[int, str] = {}
    with tqdm(total=len(todo), desc="rationalise", unit="request", disable=not progress) as bar:
        for t in range(tries):
            idx = [i for i in range(len(todo)) if i not in kept]
            if t:
                bar.total += len(idx)
                bar.refresh()
            for s in range(0, len(idx), batch_size):
                part = idx[s : s + batch_size]
                asks: list[str] = [
                    lm.render([("user", RATIONALE_ASK.format(text=todo[i].text, label=todo[i].label))], "guard")
                    for i in part
                ]
                traces = [complete_sentences(t) for t in lm.generate(asks, params).texts]
                lp = own_label_logprobs(guard, [todo[i].text for i in part], traces, batch_size)
                for i, trace, margin in zip(part, traces, lp[:, 0] - lp[:, 1] - prior[part]):
                    if trace.strip() and (margin > 0) == (todo[i].label == HARMFUL):
                        kept[i] = trace.strip()
                bar.update(len(part))
    made = [dataclasses.replace(todo[i], reasoning=r) for i, r in sorted(kept.items())]
    stats = {
        "tried": len(todo),
        "kept": len(made),
        "keep_rate": len(made) / len(todo) if todo else float("nan"),
        "calibrated": calibrate,
        "keep_rate_by_label": {
            lab: (sum(e.label == lab for e in made) / n if (n := sum(e.label == lab for e in todo)) else None)
            for lab in (HARMFUL, SAFE)
        },
    }
    return done + made, stats


def training_examples(cfg: GuardTrainConfig, guard: GuardModel, progress: bool) -> tuple[list[GuardExample], dict]:
    """The examples SFT teaches (all with a trace), and how they were made."""
    if cfg.train_set == "default":
        train, test = default_guard_sets(cfg.seed, cfg.test_fraction)
    elif (Path(cfg.train_set) / "train_examples.jsonl").is_file():  # an earlier run's traces, not made again
        train = [
            dataclasses.replace(e, reasoning=complete_sentences(e.reasoning or ""))
            for e in read_examples(Path(cfg.train_set) / "train_examples.jsonl")
        ]
        test = default_guard_sets(cfg.seed, cfg.test_fraction)[1]
    else:
        train, test = read_guard_train(cfg.train_set), []
    if cfg.max_train and len(train) > cfg.max_train:
        keep = np.random.default_rng(cfg.seed).choice(len(train), cfg.max_train, replace=False)
        train = [train[i] for i in sorted(keep)]
    attacks = [
        a for run in cfg.add_attacks.split(",") if run.strip() for a in attack_turns(run.strip(), cfg.attack_threshold)
    ]
    held = {normalise_text(e.text) for e in test}
    train += [a for a in attacks if normalise_text(a.text) not in held]  # the held-out set stays unseen
    examples, stats = rationalise(
        guard,
        train,
        cfg.rationale_tries,
        cfg.rationale_tokens,
        cfg.micro_batch_size * 4,
        progress,
        cfg.rationale_calibrate,
    )
    if not examples:
        raise RedgymError("guard train: no example with a reasoning trace to teach (rationalisation kept none)")
    return examples, {
        **stats,
        "n_train": len(examples),
        "n_heldout": len(test),
        "attacks_added": len(attacks),
        "labels": {lab: sum(e.label == lab for e in examples) for lab in (HARMFUL, SAFE)},
    }


def encode(guard: GuardModel, examples: list[GuardExample], budget: int) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, answer ids): the answer is the trace, the label line and the end-of-turn token."""
    lm = guard.lm
    tok = lm.tokenizer
    answers = [
        tok(format_guard_target(e.reasoning or "", e.label), add_special_tokens=False)["input_ids"]
        + [lm.stop_ids[-1] if lm.fmt == "chat" else tok.eos_token_id]
        for e in examples
    ]
    answers = [a[-(budget // 2) :] for a in answers]  # keep the label line if a trace is very long
    ctx = [
        lm.encode_context(guard.prompt(e.text), budget - len(a), add_special_tokens=lm.fmt == "plain")
        for e, a in zip(examples, answers)
    ]
    return ctx, answers


def start_guard(cfg: GuardTrainConfig, out: Path, resume: bool) -> tuple[Frame, GuardModel]:
    """Step 0 of both stages: the trainers' frame over ``guard_model`` (LoRA; its reference is ``guard_model``
    itself; saved to ``out/guard``), and the guard view of the policy. The guard view samples (traces, DPO
    candidates) from the peft-free merged copy when there is one; every loss goes through ``policy.model``, and
    ``sync_sampler()`` brings the copy up to date before each sampling."""
    f = start_frame(cfg, out, resume, cfg.guard_model, model_dir="guard")
    if f.acc.num_processes > 1:
        raise RedgymError("redgym guard train runs in one process: start it with redgym, not accelerate launch")
    lm = LM(f.policy.generation_model, f.policy.tokenizer, cfg.guard_model, cfg.guard_format, cfg.max_context_tokens)
    return f, GuardModel(lm, max_new_tokens=cfg.max_new_tokens)


def step_metrics(f: Frame, counters: dict, **metrics: float) -> dict[str, float]:
    """A step's metrics with the learning rate in effect at its end and the non-finite batches skipped so far."""
    return {
        **metrics,
        "train/lr": f.opt.param_groups[0]["lr"],
        "train/nonfinite_skipped": counters.get("nonfinite_skipped", 0),
    }


def read_examples(path: Path) -> list[GuardExample]:
    """A guard run's ``train_examples.jsonl``: the examples it taught, each with its trace."""
    rows = read_jsonl(path, "guard train", "a guard run's train_examples.jsonl")
    try:
        return [
            GuardExample(r["text"], r["label"], r.get("category"), r["reasoning"], r.get("source", "")) for r in rows
        ]
    except (KeyError, TypeError):
        raise RedgymError(f"guard train: {path} is not a guard run's train_examples.jsonl") from None


def cached_examples(cfg: GuardTrainConfig, guard: GuardModel, out: Path, progress: bool) -> list[GuardExample]:
    """The SFT examples, rationalised once (``train_examples.jsonl``, ``data.json``) and reread on resume."""
    data_file = out / "train_examples.jsonl"
    if data_file.exists():
        return read_examples(data_file)
    examples, stats = training_examples(cfg, guard, progress)  # before any update: the policy is the base
    write_jsonl(data_file, (dataclasses.asdict(e) for e in examples))
    write_json(out / "data.json", stats)
    return examples


def train_guard(
    cfg: GuardTrainConfig, out: Path, stage: str = "sft", resume: bool = False, progress: bool = True
) -> dict:
    """Train (or resume) a guard stage into ``out``; the guard is saved to ``out/guard`` (loadable as
    ``guard_model``). Returns the final step's metrics."""
    if stage not in STAGES:
        raise RedgymError(f"guard train: stage must be one of {', '.join(STAGES)}, got {stage!r}")
    return STAGES[stage](cfg, out, resume, progress)


def train_sft(cfg: GuardTrainConfig, out: Path, resume: bool = False, progress: bool = True) -> dict:
    # 0 setup: policy (LoRA over the base), the examples (rationalised once, then reused)
    f, guard = start_guard(cfg, out, resume)
    counters = f.state.get("counters", {})
    examples = cached_examples(cfg, guard, out, progress)
    ctx, answers = encode(guard, examples, cfg.max_context_tokens)
    metrics: dict[str, float] = {}
    for step in f.steps("guard sft", progress):
        t0 = time.time()
        # 1 the step's examples: a pure function of (seed, step), so a resumed run draws the same ones
        batch = np.random.default_rng([cfg.seed, step]).integers(len(examples), size=cfg.batch_size)
        # 2-3 mean NLL of the answers (the prompt carries no loss), micro-batches accumulated into one update
        losses = sft_update(
            f, [ctx[i] for i in batch], [answers[i] for i in batch], cfg.micro_batch_size, counters, step
        )
        # 4 log, checkpoint
        metrics = step_metrics(
            f,
            counters,
            **{"loss/sft": float(np.sum(losses)) if losses else float("nan"), "time/step_s": time.time() - t0},
        )
        if end_frame_step(f, step, metrics, {"counters": counters}):
            break
    finish_run(f)
    return metrics


def _base_model(cfg: GuardTrainConfig) -> str:
    if cfg.quality_model:
        return cfg.quality_model
    return adapter_base(cfg.guard_model) or cfg.guard_model


def train_dpo(cfg: GuardTrainConfig, out: Path, resume: bool = False, progress: bool = True) -> dict:
    """Online DPO on reasoning quality: ``guard_model`` is the SFT guard (policy start and reference)."""
    from redgym.guard.quality import QUALITY_WEIGHTS, best_worst_pairs, hard_sample_inputs, quality, quality_terms
    from redgym.models.loading import load_model
    from redgym.scorers.embeddings import load_embedder
    from redgym.trainers.losses import dpo_loss, preference_margin

    # 0 setup: policy (LoRA over the SFT guard), the base model that scores coherence, the embedder, the inputs
    f, guard = start_guard(cfg, out, resume)
    counters = f.state.get("counters", {})
    base, base_tok = load_model(_base_model(cfg), cfg.dtype, cfg.device)
    base_lm = LM(base, base_tok, _base_model(cfg), "plain", cfg.max_context_tokens)
    embed = load_embedder(cfg.embedding_model)
    train = (
        default_guard_sets(cfg.seed, cfg.test_fraction)[0]
        if cfg.train_set == "default"
        else read_guard_train(cfg.train_set)
    )
    lm, pad = guard.lm, f.policy.tokenizer.pad_token_id
    params = SamplingParams(
        max_new_tokens=guard.max_new_tokens,
        min_new_tokens=1,
        temperature=cfg.dpo_temperature,
        top_p=1.0,
        top_k=0,
        repetition_penalty=1.0,
    )
    metrics: dict[str, float] = {}
    for step in f.steps("guard dpo", progress):
        t0 = time.time()
        # 1 the step's inputs, each answered dpo_samples times by the policy
        batch = [
            train[int(i)] for i in np.random.default_rng([cfg.seed, step]).integers(len(train), size=cfg.batch_size)
        ]
        k = cfg.dpo_samples
        f.policy.model.eval()
        f.policy.sync_sampler()  # the candidates come from the current policy
        prompts = [guard.prompt(e.text) for e in batch for _ in range(k)]
        gen = lm.generate(prompts, params)
        parsed = [parse_guard_output(t) for t in gen.texts]
        # 2 reasoning quality of every completion; best vs worst per input
        terms = quality_terms(
            [e.text for e in batch for _ in range(k)],
            [r for r, _ in parsed],
            [lab for _, lab in parsed],
            [e.label for e in batch for _ in range(k)],
            base_lm.continuation_nll,
            embed,
        )
        q = quality(terms).reshape(len(batch), k)
        pairs = best_worst_pairs(q, cfg.dpo_min_gap)
        if cfg.hard_samples:
            hard = set(hard_sample_inputs([[lab for _, lab in parsed[i * k : (i + 1) * k]] for i in range(len(batch))]))
            pairs = [p for p in pairs if p[0] in hard]
        # 3 DPO loss on (prompt, better completion, worse completion) against the SFT guard
        f.policy.model.train()
        losses, margins = [], []
        with accumulate_locally(f.acc, f.policy.model):
            for s in range(0, len(pairs), cfg.micro_batch_size):
                mb = pairs[s : s + cfg.micro_batch_size]
                ctx = [
                    lm.encode_context(
                        prompts[i * k],
                        cfg.max_context_tokens - cfg.max_new_tokens,
                        add_special_tokens=lm.fmt == "plain",
                    )
                    for i, _, _ in mb
                ]
                chosen = [gen.token_ids[i * k + b] for i, b, _ in mb]
                rejected = [gen.token_ids[i * k + w] for i, _, w in mb]
                # chosen and rejected in one pass each: packed, their shared context runs once
                pc, pr = sequence_logps(f.policy.model, ctx + ctx, chosen + rejected, pad).split(len(mb))
                with torch.no_grad():
                    rc, rr = sequence_logps(f.policy.reference, ctx + ctx, chosen + rejected, pad).split(len(mb))
                loss = dpo_loss(pc, pr, rc, rr, cfg.dpo_beta).sum() / max(1, len(pairs))
                if finite_or_skip(loss, counters, step):
                    f.acc.backward(loss)
                    losses.append(float(loss.detach()))
                    margins += preference_margin(pc, pr, rc, rr).detach().tolist()
            f.optimizer_step(trained=bool(losses))
        # 4 log, checkpoint
        metrics = {
            "loss/dpo": float(np.sum(losses)) if losses else float("nan"),
            "pairs/count": len(pairs),
            "pairs/margin": float(np.mean(margins)) if margins else float("nan"),
            "quality/mean": float(q.mean()),
            **{f"quality/{n}": float(np.mean(terms[n])) for n in QUALITY_WEIGHTS},
            "guard/unparseable": float(np.mean([lab is None for _, lab in parsed])),
            "time/step_s": time.time() - t0,
        }
        if end_frame_step(f, step, step_metrics(f, counters, **metrics), {"counters": counters}):
            break
    finish_run(f)
    return metrics


STAGES = {"sft": train_sft, "dpo": train_dpo}
