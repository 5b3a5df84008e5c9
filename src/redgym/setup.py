"""The shared set-up layer: what training and evaluation both stand on.

Builds, from a ``RunConfig``, the scorer, the prompt split (computed, or read from a run folder's ``split.json``),
the defender (a local LM or an OpenAI-compatible server), the likelihood model of the NLL term, the embedder, the
reward weights and the sampling settings, and rolls out + scores the held-out prompts. ``trainers/`` and ``eval/``
import this module; it imports only the layers below it (``data``, ``models``, ``scorers``, ``rollout``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from transformers import set_seed

from redgym.config import DeviceConfig, PromptConfig, RolloutConfig, RunConfig, scorer_label
from redgym.data.prompts import Prompt, Split, load_prompts, split_from_json, split_prompts
from redgym.errors import RedgymError
from redgym.models.base import ChatBackend, LikelihoodBackend
from redgym.models.ct2 import ct2_lm
from redgym.models.guard import GuardedDefender, GuardModel, bare_defender
from redgym.models.http import OpenAIChat, ServerLikelihood
from redgym.models.lm import LM, SamplingParams
from redgym.models.loading import load_model
from redgym.rollout.engine import rollout
from redgym.rollout.records import Conversation
from redgym.rollout.reward import RewardWeights, reweight, score_conversations
from redgym.runfolder import git_hash
from redgym.scorers.embeddings import load_embedder
from redgym.scorers.novelty import NoveltyMemory
from redgym.scorers.toxicity import Scorer, build_scorer

log = logging.getLogger(__name__)


@dataclass
class Setup:
    """What every command shares: the scorer, the prompt split, the defender, the likelihood model of the reward's
    NLL term (the defender itself when it is local and no ``likelihood_model`` is set), and (optionally) the
    embedder."""

    cfg: RunConfig
    scorer: object
    split: Split
    defender: ChatBackend
    likelihood: LikelihoodBackend
    embedder: object | None
    baseline: list[Conversation] | None = None  # the untuned adversary's conversations, reused (baseline_from)
    # past adversary turns for the novelty terms (training only; a trainer checkpoints it with its state)
    memory: NoveltyMemory | None = None
    # eval_scorers besides the training scorer, by label (eval/detectors.py scores every turn with them)
    detectors: dict[str, Scorer] = field(default_factory=dict)
    # The code the run starts from: a training run's report is written long after, when HEAD may have moved.
    code_version: str = field(default_factory=lambda: git_hash())

    @property
    def weights(self) -> RewardWeights:
        return reward_weights(self.cfg)

    @property
    def params(self) -> SamplingParams:
        return eval_params(self.cfg)

    def eval_prompts(self) -> list[Prompt]:
        test = self.split.test[: self.cfg.n_eval_prompts or None]
        return [p for p in test for _ in range(self.cfg.samples_per_prompt)]


def eval_params(c: RolloutConfig) -> SamplingParams:
    """Evaluation sampling (ASTPrompter's settings), used by both speakers in evaluation and by the defender in
    training."""
    return SamplingParams(
        max_new_tokens=c.max_new_tokens,
        min_new_tokens=c.min_new_tokens,
        temperature=c.temperature,
        top_p=c.top_p,
        repetition_penalty=c.repetition_penalty,
        top_k=c.top_k,
    )


def reward_weights(c: RunConfig) -> RewardWeights:
    return RewardWeights(
        defender=c.w_defender,
        combined=c.w_combined,
        nll=c.w_nll,
        diversity=c.w_diversity,
        target=c.reward_target,
        novelty_bleu=c.w_novelty_bleu,
        novelty_cos=c.w_novelty_cos,
        gibberish=c.w_gibberish,
        nll_bound=c.nll_bound,
        adversary=c.w_adversary,
        transform=c.tox_transform,
        gate=c.stealth_gate,
    )


def guarded(cfg: RunConfig, defender: ChatBackend) -> ChatBackend:
    """The defender, behind ``defender_guard`` when one is configured (a guard's chat format is the default)."""
    if not cfg.defender_guard:
        return defender
    return GuardedDefender(
        defender,
        GuardModel(load_lm(cfg, cfg.defender_guard, "chat", cfg.max_context_tokens)),
        cfg.guard_refusal,
        cfg.batch_size,
    )


def load_lm(device: DeviceConfig, name: str, fmt: str, max_context_tokens: int) -> LM:
    """Model ``name`` as an ``LM`` in format ``fmt``, loaded where and in what precision ``device`` says."""
    model, tok = load_model(name, device.dtype, device.device)
    return LM(model, tok, name, fmt, max_context_tokens)


def load_defender(cfg: RunConfig, weights: tuple | None = None) -> ChatBackend:
    """The bare defender: ``defender_model`` as a local LM (on the (model, tokenizer) ``weights`` when given: a
    trainer's frozen base, so the defender is not a second copy in memory; sampled by CTranslate2 when
    ``defender_engine`` says so, the NLL term staying on the model), or asked of the server at
    ``defender_base_url`` (checked to answer now, so a wrong address or key fails before any work)."""
    if cfg.defender_backend == "local":
        model, tok = weights or load_model(cfg.defender_model, cfg.dtype, cfg.device)
        if cfg.defender_engine == "ctranslate2":
            return ct2_lm(
                model, tok, cfg.defender_model, cfg.defender_format, cfg.max_context_tokens, cfg.defender_compute_type
            )
        return LM(model, tok, cfg.defender_model, cfg.defender_format, cfg.max_context_tokens)
    server = OpenAIChat(
        cfg.defender_model,
        cfg.defender_base_url or "",
        cfg.defender_api_key_env,
        cfg.defender_api,
        cfg.http_timeout_s,
        cfg.http_max_retries,
        cfg.http_concurrency,
        cfg.http_max_requests,
        cfg.http_rate_limit,
    )
    server.check()
    return server


def load_likelihood(cfg: RunConfig, defender: ChatBackend) -> LikelihoodBackend:
    """What scores the NLL term: ``likelihood_model`` (the defender's own copy when it names the local defender),
    else the defender itself, which must then be able to score."""
    bare = bare_defender(defender)
    if cfg.likelihood_model is None and isinstance(bare, OpenAIChat) and bare.api == "completions":
        return ServerLikelihood(bare)  # the server scores the text itself (echoed prompt log-probs)
    if cfg.likelihood_model is None or (isinstance(bare, LM) and cfg.likelihood_model == cfg.defender_model):
        if not isinstance(bare, LikelihoodBackend):
            raise RedgymError(
                f"defender_backend {cfg.defender_backend} cannot score the reward's NLL term: set "
                "likelihood_model to a local LM (e.g. the defender's own weights)"
            )
        if isinstance(bare, LM):
            bare.score_turn_nll = True  # its replies' forward passes give the NLL term too (models/lm.py)
        return bare
    return load_lm(cfg, cfg.likelihood_model, "plain", cfg.max_context_tokens)


def split_file(cfg: RunConfig) -> Path | None:
    """The ``split.json`` an evaluation must reuse: ``split_from``, else the one in the trained adversary's run
    folder (so a trained adversary is tested on the prompts its own run held out)."""
    if cfg.split_from:
        p = Path(cfg.split_from)
        p = p / "split.json" if p.is_dir() else p
        if not p.is_file():
            raise RedgymError(f"split_from: {p} not found")
        return p
    if cfg.adversary_checkpoint:
        p = Path(cfg.adversary_checkpoint).parent / "split.json"
        if p.is_file():
            return p
    return None


def make_split(cfg: PromptConfig, scorer, path: Path | None = None) -> Split:
    """The prompts ``cfg`` names, split into train, dev and test by ``cfg.data_seed``, or as the split file at
    ``path`` has them (``split_file``: a run's own held-out prompts)."""
    prompts = load_prompts(
        cfg.prompts,
        field=cfg.prompt_field,
        prompt_turns=cfg.prompt_turns,
        n_words=cfg.prompt_words,
        min_words=cfg.min_prompt_words,
        max_words=cfg.max_prompt_words,
        max_prompts=cfg.max_prompts,
        max_toxicity=cfg.prompt_max_toxicity,
        scorer=scorer,
        seed=cfg.data_seed,
    )
    if path is not None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise RedgymError(f"cannot read split file {path} ({e})") from None
        log.info("using the split of %s", path)
        return split_from_json(data, prompts, str(path))
    return split_prompts(prompts, cfg.dev_fraction, cfg.test_fraction, cfg.data_seed)


def build_detectors(names: list[str], training_scorer: str | None) -> dict[str, Scorer]:
    """The second detectors by label (``config.scorer_label``): each named scorer but the one trained on."""
    return {scorer_label(n): build_scorer(n) for n in names if n != training_scorer}


def prepare(cfg: RunConfig, need_embedder: bool = True, defender_weights: tuple | None = None) -> Setup:
    """Load scorer, prompts, split, embedder, the defender (a local one on ``defender_weights`` when given, see
    ``load_defender``), and the likelihood model; failures are one-line RedgymErrors."""
    scorer = build_scorer(cfg.scorer)
    split = make_split(cfg, scorer, split_file(cfg))
    if cfg.n_eval_prompts > len(split.test):
        log.warning(
            "n_eval_prompts %d exceeds the test split; evaluating all %d test prompts",
            cfg.n_eval_prompts,
            len(split.test),
        )
    weights = reward_weights(cfg)
    embedder = load_embedder(cfg.embedding_model) if (need_embedder or weights.needs_embeddings) else None
    defender = guarded(cfg, load_defender(cfg, defender_weights))
    likelihood = load_likelihood(cfg, defender)
    memory = NoveltyMemory(cfg.novelty_memory) if weights.needs_memory else None
    detectors = build_detectors(cfg.eval_scorers, cfg.scorer)
    setup = Setup(cfg, scorer, split, defender, likelihood, embedder, memory=memory, detectors=detectors)
    if cfg.baseline_from:
        setup.baseline = load_baseline(setup, Path(cfg.baseline_from))
    return setup


# Settings that do not change the untuned adversary's conversations or their scores, only how they are summarised
# (the rewards are recomputed from the stored terms under the current weights).
_BASELINE_FREE = {
    "adversary_checkpoint",
    "compare_untuned",
    "baseline_from",
    "bootstrap_samples",
    "toxic_threshold",
    "eval_scorers",
    "embedding_model",
    "w_defender",
    "w_combined",
    "w_nll",
    "w_adversary",
    "tox_transform",
    "reward_target",
    "split_from",
    "w_novelty_bleu",
    "w_novelty_cos",
    "novelty_memory",
    "w_gibberish",
    "nll_bound",
    "defender_api_key_env",
    "http_timeout_s",
    "http_max_retries",
    "http_concurrency",
    "http_max_requests",
    "http_rate_limit",
}


def load_baseline(setup: Setup, folder: Path) -> list[Conversation]:
    """The untuned adversary's conversations from an earlier run folder (report.json + samples.jsonl), checked
    to come from the same evaluation settings and prompts, in the order of ``setup.eval_prompts()``."""
    try:
        old = json.loads((folder / "report.json").read_text())["config"]
        rows = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError, KeyError) as e:
        raise RedgymError(f"baseline_from: cannot read report.json/samples.jsonl in {folder} ({e})") from None
    new = setup.cfg.to_dict()
    changed = [
        f"{f.name} ({old.get(f.name, f.default)!r} there, {new[f.name]!r} here)"
        for f in dataclasses.fields(RunConfig)
        if f.name not in _BASELINE_FREE and old.get(f.name, f.default) != new[f.name]
    ]
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
    """The adversary: the defender object itself when they are the same untuned local model (one copy in memory);
    with a remote defender, the likelihood model's weights when they are the adversary's."""
    cfg = setup.cfg
    d = bare_defender(setup.defender)
    local: tuple[LM, tuple[str, str]] | None = None  # a loaded LM and the (model, format) it was loaded as
    if isinstance(d, LM):
        local = d, (cfg.defender_model, cfg.defender_format)
    elif isinstance(setup.likelihood, LM) and cfg.likelihood_model is not None:
        local = setup.likelihood, (cfg.likelihood_model, "plain")
    if checkpoint is None and local is not None:
        lm, (model, fmt) = local
        if (model, fmt) == (cfg.adversary_model, cfg.adversary_format):
            return lm
        if model == cfg.adversary_model:
            return LM(lm.model, lm.tokenizer, lm.name, cfg.adversary_format, cfg.max_context_tokens)
    return load_lm(cfg, checkpoint or cfg.adversary_model, cfg.adversary_format, cfg.max_context_tokens)


def run_adversary(
    setup: Setup,
    adversary,
    desc: str = "eval",
    progress: bool = True,
    prompts: list[tuple[str, tuple[str, ...]]] | None = None,
    horizon: int | None = None,
) -> list[Conversation]:
    """Roll out and score the evaluation prompts (or ``prompts``: (id, utterances) pairs) with a fixed seed, so
    every adversary sees the same draws."""
    cfg = setup.cfg
    set_seed(cfg.seed)
    prompts = prompts if prompts is not None else [(p.id, p.turns) for p in setup.eval_prompts()]
    convs = rollout(
        prompts,
        adversary,
        setup.defender,
        horizon or cfg.horizon,
        setup.params,
        cfg.batch_size,
        progress,
        desc,
        defender_samples=cfg.defender_samples,
    )
    score_conversations(convs, setup.scorer, setup.likelihood, setup.weights, setup.embedder, cfg.batch_size)
    return convs
