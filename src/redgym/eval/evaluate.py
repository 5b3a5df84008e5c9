"""``redgym eval``: roll out an adversary against the defender on held-out test prompts and write a report.

Everything that can fail on bad input (output folder, scorer, prompts, models, embedder) is checked before the
first conversation is generated, and nothing is written into the output folder until then.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from transformers import set_seed

from redgym.config import RunConfig
from redgym.data.prompts import Prompt, Split, load_prompts, split_prompts
from redgym.errors import RedgymError
from redgym.eval.metrics import compute_metrics, paired_difference
from redgym.eval.report import write_report
from redgym.models.lm import LM, SamplingParams
from redgym.models.loading import load_model
from redgym.rollout.engine import rollout
from redgym.rollout.records import Conversation
from redgym.rollout.reward import RewardWeights, reweight, score_conversations
from redgym.runfolder import CONTENT_WARNING, check_writable, git_hash, run_metadata, save_config, write_json
from redgym.scorers.embeddings import load_embedder
from redgym.scorers.toxicity import build_scorer

log = logging.getLogger(__name__)


@dataclass
class Setup:
    """What every command shares: the scorer, the prompt split, the defender, and (optionally) the embedder."""

    cfg: RunConfig
    scorer: object
    split: Split
    defender: LM
    embedder: object | None
    baseline: list[Conversation] | None = None  # the untuned adversary's conversations, reused (baseline_from)
    # The code the run starts from: a training run's report is written long after, when HEAD may have moved.
    code_version: str = field(default_factory=lambda: git_hash())

    @property
    def weights(self) -> RewardWeights:
        c = self.cfg
        return RewardWeights(c.w_defender, c.w_combined, c.w_nll, c.w_diversity, c.reward_target)

    @property
    def params(self) -> SamplingParams:
        c = self.cfg
        return SamplingParams(c.max_new_tokens, c.min_new_tokens, c.temperature, c.top_p, c.repetition_penalty)

    def eval_prompts(self) -> list[Prompt]:
        test = self.split.test[: self.cfg.n_eval_prompts or None]
        return [p for p in test for _ in range(self.cfg.samples_per_prompt)]


def load_lm(cfg: RunConfig, name: str, fmt: str) -> LM:
    model, tok = load_model(name, cfg.dtype, cfg.device)
    return LM(model, tok, name, fmt, cfg.max_context_tokens)


def prepare(cfg: RunConfig, need_embedder: bool = True, defender: LM | None = None) -> Setup:
    """Load scorer, prompts, split, embedder and (unless given) the defender; failures are one-line RedgymErrors."""
    scorer = build_scorer(cfg.scorer)
    prompts = load_prompts(cfg.prompts, field=cfg.prompt_field, prompt_turns=cfg.prompt_turns,
                           n_words=cfg.prompt_words, min_words=cfg.min_prompt_words, max_words=cfg.max_prompt_words,
                           max_prompts=cfg.max_prompts,
                           max_toxicity=cfg.prompt_max_toxicity, scorer=scorer, seed=cfg.seed)
    split = split_prompts(prompts, cfg.dev_fraction, cfg.test_fraction, cfg.seed)
    if cfg.n_eval_prompts > len(split.test):
        log.warning("n_eval_prompts %d exceeds the test split; evaluating all %d test prompts", cfg.n_eval_prompts,
                    len(split.test))
    embedder = load_embedder(cfg.embedding_model) if (need_embedder or cfg.w_diversity) else None
    defender = defender or load_lm(cfg, cfg.defender_model, cfg.defender_format)
    setup = Setup(cfg, scorer, split, defender, embedder)
    if cfg.baseline_from:
        setup.baseline = load_baseline(setup, Path(cfg.baseline_from))
    return setup


# Settings that do not change the untuned adversary's conversations or their scores, only how they are summarised
# (the rewards are recomputed from the stored terms under the current weights).
_BASELINE_FREE = {"adversary_checkpoint", "compare_untuned", "baseline_from", "bootstrap_samples", "toxic_threshold",
                  "embedding_model", "w_defender", "w_combined", "w_nll", "reward_target"}


def load_baseline(setup: Setup, folder: Path) -> list[Conversation]:
    """The untuned adversary's conversations from an earlier run folder (report.json + samples.jsonl), checked
    to come from the same evaluation settings and prompts, in the order of ``setup.eval_prompts()``."""
    try:
        old = json.loads((folder / "report.json").read_text())["config"]
        rows = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError, KeyError) as e:
        raise RedgymError(f"baseline_from: cannot read report.json/samples.jsonl in {folder} ({e})") from None
    new = setup.cfg.to_dict()
    changed = [f"{f.name} ({old.get(f.name, f.default)!r} there, {new[f.name]!r} here)"
               for f in dataclasses.fields(RunConfig)
               if f.name not in _BASELINE_FREE and old.get(f.name, f.default) != new[f.name]]
    if changed:
        raise RedgymError(f"baseline_from: {folder} was evaluated with other settings: {', '.join(changed)}")
    by_id: dict[str, list[Conversation]] = {}
    for r in rows:
        if r.get("adversary") == "untuned":
            by_id.setdefault(r["prompt_id"], []).append(Conversation.from_json(r))
    try:
        convs = [by_id[p.id].pop(0) for p in setup.eval_prompts()]
    except (KeyError, IndexError):
        raise RedgymError(f"baseline_from: {folder} holds no untuned conversation for some evaluation prompt") from None
    reweight(convs, setup.weights)
    return convs


def load_adversary(setup: Setup, checkpoint: str | None = None) -> LM:
    """The adversary: the defender object itself when they are the same untuned model (one copy in memory)."""
    cfg = setup.cfg
    if checkpoint is None and cfg.adversary_model == cfg.defender_model and cfg.adversary_format == cfg.defender_format:
        return setup.defender
    if checkpoint is None and cfg.adversary_model == cfg.defender_model:
        d = setup.defender
        return LM(d.model, d.tokenizer, d.name, cfg.adversary_format, cfg.max_context_tokens)
    return load_lm(cfg, checkpoint or cfg.adversary_model, cfg.adversary_format)


def run_adversary(setup: Setup, adversary: LM, desc: str = "eval", progress: bool = True) -> list[Conversation]:
    """Roll out and score the evaluation prompts with a fixed seed, so every adversary sees the same draws."""
    set_seed(setup.cfg.seed)
    convs = rollout([(p.id, p.turns) for p in setup.eval_prompts()], adversary, setup.defender, setup.cfg.horizon,
                    setup.params, setup.cfg.batch_size, progress, desc)
    score_conversations(convs, setup.scorer, setup.defender, setup.weights, setup.embedder, setup.cfg.batch_size)
    return convs


def write_eval(out: Path, setup: Setup, convs_by_label: dict[str, list[Conversation]], title: str,
               n_samples: int = 0, extra: dict | None = None) -> dict:
    """Metrics for every label, paired differences of the last label against the first, and all files."""
    cfg = setup.cfg
    results = {label: compute_metrics(convs, cfg.toxic_threshold, setup.embedder, cfg.bootstrap_samples, cfg.seed)
               for label, convs in convs_by_label.items()}
    labels = list(convs_by_label)
    differences = None
    if len(labels) > 1:
        differences = paired_difference(convs_by_label[labels[0]], convs_by_label[labels[-1]],
                                        cfg.bootstrap_samples, cfg.seed, cfg.toxic_threshold)
    split_json = setup.split.to_json(cfg.prompts, cfg.seed)
    report = {
        "title": title,
        "content_warning": CONTENT_WARNING,
        **run_metadata(setup.code_version),
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "split": {k: v for k, v in split_json.items() if not isinstance(v, list)} | {
            "test_ids_evaluated": [p.id for p in setup.split.test[: cfg.n_eval_prompts or None]]},
        "n_conversations": len(convs_by_label[labels[-1]]),
        "metrics": results[labels[-1]],
        "results": results,
        "differences": differences,
        **(extra or {}),
    }
    out.mkdir(parents=True, exist_ok=True)
    save_config(out, cfg)
    write_json(out / "split.json", split_json)
    write_report(out, report, convs_by_label, differences, n_samples)
    return report


def compare(setup: Setup, adversaries: dict[str, LM], out: Path, title: str, progress: bool = True,
            n_samples: int = 10) -> dict:
    """Evaluate several adversaries on the same test prompts and seed; one report, side by side."""
    convs = {label: setup.baseline if label == "untuned" and setup.baseline is not None
             else run_adversary(setup, lm, desc=f"eval {label}", progress=progress)
             for label, lm in adversaries.items()}
    return write_eval(out, setup, convs, title=title, n_samples=n_samples)


def evaluate(cfg: RunConfig, out: Path, progress: bool = True) -> dict:
    """Evaluate the configured adversary (untuned, or ``adversary_checkpoint`` beside the untuned one when
    ``compare_untuned``); returns the report dict."""
    check_writable(out)
    setup = prepare(cfg)
    adversaries = {}
    if cfg.adversary_checkpoint is None or cfg.compare_untuned:
        adversaries["untuned"] = load_adversary(setup, None)
    if cfg.adversary_checkpoint is not None:
        adversaries["trained"] = load_adversary(setup, cfg.adversary_checkpoint)
    title = "trained vs untuned adversary" if len(adversaries) > 1 else f"{next(iter(adversaries))} adversary"
    return compare(setup, adversaries, out, title, progress, n_samples=5)
