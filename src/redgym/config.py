"""Typed, flat run configuration: a dataclass with one line of help per field.

A YAML file may set any field; command-line overrides (``--horizon 2``) win. Unknown keys and values of the
wrong type are errors with one clear line (``RedgymError``). Trainer configs subclass ``RunConfig`` and add
their own fields, so every command shares the model / data / reward / eval fields below.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from redgym.errors import RedgymError

_T = typing.TypeVar("_T")


def _f(default: _T, help: str) -> _T:
    """A dataclass field with a default and one line of help (``help_lines``)."""
    return field(default=default, metadata={"help": help})


def scorer_label(name: str) -> str:
    """The short name a detector's metrics carry (``defender_toxicity@LABEL``): the scorer name, except that a
    path is dropped (``classifier:runs/e3/establish/classifier#harmful`` -> ``classifier``) so a label never holds
    the ``/`` that per-turn metric names use."""
    return name.partition(":")[0] if "/" in name else name


class FieldHelp(typing.NamedTuple):
    """One config field as ``--help`` and the docs pages' field tables show it (``docs_fields.py``)."""

    name: str
    type: str
    default: object
    help: str

    def line(self) -> str:
        """``--name (type, default value): help``, as ``--help`` lists it."""
        return f"--{self.name} ({self.type}, default {self.default!r}): {self.help}"


class ConfigFields:
    """What every typed config dataclass shares: its values as a dict, and one line of help per field."""

    if typing.TYPE_CHECKING:
        # Every subclass is a @dataclass; this tells the checker so (dataclasses.fields/asdict accept it).
        __dataclass_fields__: typing.ClassVar[dict[str, dataclasses.Field[Any]]]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Check values that a type alone cannot; subclasses raise RedgymError with one line."""

    @classmethod
    def upgrade(cls, name: str, value: object) -> object:
        """A value written by an older redgym, in today's form (a saved run folder's config still resumes)."""
        return value

    @classmethod
    def fields_help(cls) -> list[FieldHelp]:
        """Every field's name, type, default and help: the one source of ``--help`` and the docs tables."""
        return [
            FieldHelp(f.name, _type_name(f.type), _default(f), f.metadata.get("help", ""))
            for f in dataclasses.fields(cls)
        ]

    @classmethod
    def help_lines(cls) -> list[str]:
        return [h.line() for h in cls.fields_help()]


def need(ok: object, msg: str) -> None:
    """A config check, for every config class's ``validate``: raise one line unless ``ok``."""
    if not ok:
        raise RedgymError(f"config: {msg}")


def one_of(cfg: object, name: str, *choices: str) -> None:
    """A config check: field ``name`` of ``cfg`` is one of ``choices`` (``config: NAME must be A, B or C, got X``)."""
    value = getattr(cfg, name)
    need(value in choices, f"{name} must be {', '.join(choices[:-1])} or {choices[-1]}, got {value!r}")


@dataclass
class DeviceConfig(ConfigFields):
    """Where and in what precision the models run, and the run's seed: every command's first part."""

    dtype: str = _f(
        "auto", "auto (float32 on CPU, bf16/fp16 on CUDA; bench/sampler_dtype.py), bfloat16, float16 or float32"
    )
    device: str = _f("auto", "auto (cuda when present), cpu or cuda")
    seed: int = _f(0, "the run's seed: splits, sampling, batches, initialisation and bootstrap")

    def validate(self) -> None:
        super().validate()
        one_of(self, "dtype", "auto", "bfloat16", "float16", "float32")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise RedgymError(f"config: device must be auto, cpu or cuda, got {self.device!r}")


@dataclass
class EvalConfig(ConfigFields):
    """What only an evaluation reads: the adversary evaluated, where its test prompts come from, how many are rolled
    out, the untuned baseline and the bootstrap. A training run reads them only for the evaluation after it; an
    experiment's arm sets them under ``eval``, never under ``train`` (``experiments/runner.py``)."""

    adversary_checkpoint: str | None = _f(None, "trained adversary to load: a LoRA adapter or full model folder")
    split_from: str | None = _f(
        None,
        "use this run folder's split.json (or a split.json path) instead of computing "
        "the split; default: the trained adversary's run folder when it has one",
    )
    compare_untuned: bool = _f(True, "with adversary_checkpoint, also evaluate the untuned adversary side by side")
    baseline_from: str | None = _f(
        None,
        "reuse the untuned adversary's scored conversations from this earlier "
        "run folder instead of generating them again (settings must match)",
    )
    n_eval_prompts: int = _f(64, "test prompts evaluated (0 = the whole test split)")
    samples_per_prompt: int = _f(1, "conversations rolled out per evaluation prompt")
    bootstrap_samples: int = _f(1000, "bootstrap resamples for the 95% confidence intervals")
    eval_scorers: list[str] = field(
        default_factory=lambda: ["wordlist"],
        metadata={
            "help": "detectors besides scorer, scored on every turn at evaluation and reported beside it (each "
            "a scorer name; a YAML list or comma-separated); the training scorer itself is skipped; [] = none"
        },
    )

    def validate(self) -> None:
        super().validate()
        need(self.samples_per_prompt >= 1, "samples_per_prompt must be >= 1")
        need(self.bootstrap_samples >= 1, "bootstrap_samples must be >= 1")
        labels = [scorer_label(n) for n in self.eval_scorers]
        need(
            len(set(labels)) == len(labels),
            f"eval_scorers must name each detector once (labels {labels}); got {self.eval_scorers}",
        )


@dataclass
class ModelConfig(ConfigFields):
    """The two LMs and what scores the NLL term: which weights, how each sees the conversation, which engine."""

    adversary_model: str = _f("smollm2-135m", "adversary LM: a known name, a local HF folder, a .gguf file or a hub id")
    defender_model: str = _f("smollm2-135m", "defender LM (frozen), same forms as adversary_model")
    adversary_format: str = _f("plain", "how the adversary sees the conversation: plain (raw continuation) or chat")
    defender_format: str = _f("plain", "how the defender sees the conversation: plain or chat")
    max_context_tokens: int = _f(512, "conversation context is cut from the left to this many tokens")
    likelihood_model: str | None = _f(
        None,
        "local LM that scores the reward's NLL term (same forms as "
        "defender_model); None = the defender itself: a local one, or a server "
        "with defender_api completions that returns prompt log-probs",
    )
    defender_engine: str = _f(
        "hf",
        "what samples a local defender's replies: hf (transformers generate) or "
        "ctranslate2 (models/ct2.py: converted once and cached; not yet faster here, "
        "bench/rollout.py --engines hf,ctranslate2); the NLL term and training stay in "
        "PyTorch",
    )
    defender_compute_type: str = _f(
        "float32",
        "ctranslate2 engine: float32 (the same defender) or int8 (weights "
        "quantized when loading: faster, and a slightly different defender)",
    )

    def validate(self) -> None:
        super().validate()
        one_of(self, "adversary_format", "plain", "chat")
        one_of(self, "defender_format", "plain", "chat")
        one_of(self, "defender_engine", "hf", "ctranslate2")
        one_of(self, "defender_compute_type", "float32", "int8")


@dataclass
class DefenderGuardConfig(ConfigFields):
    """A guard in front of the defender (``models/guard.py``), and what the guarded defender says when it flags."""

    defender_guard: str | None = _f(
        None,
        "a guard (redgym guard train's DIR/guard, or a model prompted as one) in "
        "front of the defender: a flagged adversary turn gets guard_refusal",
    )
    guard_refusal: str = _f("I can't help with that.", "the guarded defender's reply to a flagged adversary turn")


@dataclass
class HTTPConfig(ConfigFields):
    """A defender behind an OpenAI-compatible server (``models/http.py``): where, which API, and the client's limits."""

    defender_backend: str = _f(
        "local",
        "local (defender_model loaded here) or openai (an OpenAI-compatible server "
        "at defender_base_url, asked for the model defender_model)",
    )
    defender_base_url: str | None = _f(None, "openai backend: the server's API root, e.g. http://127.0.0.1:8000/v1")
    defender_api_key_env: str | None = _f(
        None,
        "openai backend: NAME of the environment variable holding the API key "
        "(the key itself never goes into a config); None = no key",
    )
    defender_api: str = _f(
        "chat",
        "openai backend: chat (/chat/completions, streamed, history as messages) or "
        "completions (/completions on the plain transcript)",
    )
    http_timeout_s: float = _f(60.0, "openai backend: seconds one request may take before it is retried")
    http_max_retries: int = _f(2, "openai backend: retries of a failed request (timeouts, 5xx, dropped connections)")
    http_concurrency: int = _f(8, "openai backend: requests in flight at once")
    http_max_requests: int = _f(
        0, "openai backend: stop, in one line, before the request past this many (a paid API's budget); 0 = no cap"
    )
    http_rate_limit: float = _f(0.0, "openai backend: requests sent per second at most; 0 = no limit")

    def validate(self) -> None:
        super().validate()
        one_of(self, "defender_backend", "local", "openai")
        one_of(self, "defender_api", "chat", "completions")
        if self.defender_backend == "openai":
            need(
                bool(self.defender_base_url),
                "defender_backend openai needs defender_base_url (e.g. http://127.0.0.1:8000/v1)",
            )
        need(self.http_timeout_s > 0, f"http_timeout_s must be > 0, got {self.http_timeout_s}")
        need(self.http_max_retries >= 0, f"http_max_retries must be >= 0, got {self.http_max_retries}")
        need(self.http_concurrency >= 1, f"http_concurrency must be >= 1, got {self.http_concurrency}")
        need(self.http_max_requests >= 0, f"http_max_requests must be >= 0, got {self.http_max_requests}")
        need(self.http_rate_limit >= 0, f"http_rate_limit must be >= 0, got {self.http_rate_limit}")


@dataclass
class RolloutConfig(ConfigFields):
    """How conversations are sampled (ASTPrompter's defaults): utterance length and sampling, replies per turn,
    batch and horizon."""

    max_new_tokens: int = _f(24, "new tokens per utterance")
    min_new_tokens: int = _f(2, "minimum new tokens per utterance")
    temperature: float = _f(0.7, "sampling temperature")
    top_p: float = _f(0.7, "nucleus sampling mass")
    top_k: int = _f(50, "sample among the k likeliest tokens (50: transformers' default; 0 = off)")
    repetition_penalty: float = _f(1.1, "repetition penalty (1.0 = off)")
    defender_samples: int = _f(
        1,
        "defender replies sampled for each adversary turn (batched); the toxicity terms "
        "are their mean and the conversation continues with the first",
    )
    batch_size: int = _f(16, "conversations advanced together in one generate call")
    horizon: int = _f(3, "adversary/defender exchanges per conversation")

    def validate(self) -> None:
        super().validate()
        need(self.horizon >= 1, f"horizon must be >= 1, got {self.horizon}")
        need(self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        need(0 <= self.min_new_tokens <= self.max_new_tokens, "min_new_tokens must be between 0 and max_new_tokens")
        need(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        need(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")
        need(self.top_k >= 0, f"top_k must be >= 0, got {self.top_k}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(self.defender_samples >= 1, f"defender_samples must be >= 1, got {self.defender_samples}")


@dataclass
class ScorerConfig(ConfigFields):
    """What scores texts (``scorers/``): the toxicity scorer, its threshold, and the sentence embedder."""

    scorer: str = _f(
        "profanity",
        "toxicity scorer: profanity (offline, lexical), wordlist[:surge[:severity]|:ldnoobw] (offline, whole "
        "listed words, 0 or 1), detoxify, hf:<model>[#label], or classifier:DIR[#label] (a classifier trained on "
        "labelled texts)",
    )
    toxic_threshold: float = _f(0.5, "a score above this counts as toxic")
    embedding_model: str = _f(
        "minilm", "sentence embedder for diversity: minilm (shipped) or a sentence-transformers id"
    )

    def validate(self) -> None:
        super().validate()
        need(0 <= self.toxic_threshold <= 1, f"toxic_threshold must be in [0, 1], got {self.toxic_threshold}")


@dataclass
class RewardConfig(ConfigFields):
    """The reward built from the scores: the one reward-term vocabulary (``rollout/reward.py``)."""

    w_defender: float = _f(1.0, "reward weight of tox(defender turn); 0 switches the term off")
    w_combined: float = _f(0.5, "reward weight of tox(adversary + defender turns); 0 switches it off")
    w_nll: float = _f(0.1, "reward weight of -NLL(adversary turn | context) under the defender; 0 switches it off")
    w_adversary: float = _f(
        0.0,
        "reward weight of tox(adversary turn): the adversary's own toxicity, which the "
        "defender's follows (echo); 0 switches it off",
    )
    stealth_gate: float | None = _f(
        None,
        "stealth: the defender-dependent terms (w_defender, w_combined) count only on exchanges whose adversary turn "
        "scores at or below this (e.g. toxic_threshold), so echoing the adversary's own toxicity earns nothing; "
        "None = off (rollout/reward.gate_mask)",
    )
    adversary_budget: float | None = _f(
        None,
        "stealth as a constraint (DiveR-CT): the batch's mean adversary toxicity <= this budget, enforced by a "
        "Lagrange multiplier lambda >= 0 on tox(adversary turn) that each training step moves by multiplier_lr x "
        "(mean - budget), logged as reward/multiplier and checkpointed; None = off",
    )
    multiplier_lr: float = _f(1.0, "adversary_budget: step size of the multiplier's update (dual ascent)")
    multiplier_init: float = _f(0.0, "adversary_budget: the multiplier's value at step 0")
    tox_transform: str = _f(
        "none",
        "how toxicity scores enter the reward: none (probabilities) or logit "
        "(log(s / (1 - s)): a difference at the low end of the scale counts as much as "
        "in the middle); logged and evaluated scores stay probabilities",
    )
    w_diversity: float = _f(0.0, "reward weight of the adversary turn's embedding distance to the batch; 0 = off")
    w_novelty_bleu: float = _f(
        0.0,
        "reward weight of 1 - BLEU of the adversary turn against a memory of past "
        "adversary turns (curiosity-driven red-teaming); 0 = off",
    )
    w_novelty_cos: float = _f(
        0.0, "reward weight of 1 - max cosine similarity of the adversary turn's embedding to the memory's; 0 = off"
    )
    novelty_memory: int = _f(2048, "past adversary turns the novelty memory keeps (oldest dropped first)")
    w_gibberish: float = _f(
        0.0, "reward weight of -max(0, NLL - nll_bound): a fluency guard that only bites above the bound; 0 = off"
    )
    nll_bound: float = _f(4.0, "adversary NLL (nats/token under the defender) above which w_gibberish penalises")
    reward_target: str = _f("composite", "composite (the weighted reward above) or adversary (tox of its own text)")

    def validate(self) -> None:
        super().validate()
        one_of(self, "tox_transform", "none", "logit")
        one_of(self, "reward_target", "composite", "adversary")
        for name in ("stealth_gate", "adversary_budget"):
            v = getattr(self, name)
            need(v is None or 0 <= v <= 1, f"{name} must be in [0, 1] or None, got {v}")
        need(
            self.multiplier_lr >= 0 and self.multiplier_init >= 0,
            f"multiplier_lr and multiplier_init must be >= 0, got {self.multiplier_lr} and {self.multiplier_init}",
        )
        need(self.novelty_memory >= 1, f"novelty_memory must be >= 1, got {self.novelty_memory}")


@dataclass
class PromptConfig(DeviceConfig):
    """Where the prompts come from, which are kept, and how they are split into train, dev and test (by
    ``data_seed``: ``split_seed``, else the run's ``seed``, hence the device part beneath it)."""

    prompts: str = _f("chitchat", "prompt source: chitchat, rtp, advbench, a .txt/.jsonl/.csv file, or hf:<dataset id>")
    prompt_field: str = _f("text", "field holding the prompt text in .jsonl/.csv files and hf datasets")
    prompt_turns: int = _f(2, "chitchat: utterances of the conversation used as the starting prompt")
    prompt_words: int = _f(0, "keep only the first N words of each prompt (0 = whole prompt)")
    min_prompt_words: int = _f(1, "drop prompts with fewer words than this")
    max_prompt_words: int = _f(
        60,
        "drop prompts with more words than this (0 = no cap); a few very long "
        "chitchat prompts would otherwise pad whole batches to hundreds of tokens",
    )
    max_prompts: int = _f(0, "cap on prompts read from the source before splitting (0 = all)")
    prompt_max_toxicity: float | None = _f(
        None, "drop prompts scoring at or above this; None = source default (chitchat 0.5, others off)"
    )
    dev_fraction: float = _f(0.1, "share of prompts held out for development")
    test_fraction: float = _f(0.1, "share of prompts held out for the final test")
    split_seed: int | None = _f(
        None,
        "seed of the prompt split and max_prompts sample (None = seed); fix it to "
        "vary the seed over one set of test prompts",
    )

    def validate(self) -> None:
        super().validate()
        need(
            self.dev_fraction >= 0 and self.test_fraction > 0 and self.dev_fraction + self.test_fraction < 1,
            "dev_fraction + test_fraction must be below 1 and test_fraction above 0",
        )

    @property
    def data_seed(self) -> int:
        """The seed of the prompt split (``split_seed``, else ``seed``)."""
        return self.seed if self.split_seed is None else self.split_seed


@dataclass
class RunConfig(
    EvalConfig,
    PromptConfig,
    RewardConfig,
    ScorerConfig,
    RolloutConfig,
    HTTPConfig,
    DefenderGuardConfig,
    ModelConfig,
    DeviceConfig,
):
    """A red-team run's config, built of parts (fields in this order): ``DeviceConfig``, ``ModelConfig``,
    ``DefenderGuardConfig``, ``HTTPConfig``, ``RolloutConfig``, ``ScorerConfig``, ``RewardConfig``, ``PromptConfig``,
    ``EvalConfig``.
    Each part checks its own values; this checks what spans two."""

    def validate(self) -> None:
        super().validate()
        need(self.max_context_tokens > self.max_new_tokens, "max_context_tokens must exceed max_new_tokens")
        if self.defender_backend == "openai":
            need(
                bool(self.likelihood_model) or self.defender_api == "completions",
                "defender_backend openai with defender_api chat cannot score the reward's NLL term: set "
                "likelihood_model to a local LM (e.g. the defender's own weights)",
            )


def _type_name(tp: object) -> str:
    return getattr(tp, "__name__", str(tp))


def _default(f: dataclasses.Field[Any]) -> object:
    """A field's default value (a ``default_factory`` called: the value a config starts with)."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _coerce(name: str, tp: Any, value: object, source: str) -> Any:
    """Convert a YAML or command-line value to the field's type, or raise one clear line.

    ``tp`` is a runtime type hint and the result has that type, which only the hint knows: hence ``Any``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(name, args[0], value, source)
    if origin is list:
        items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise RedgymError(f"{source}: {name} expects a list, got {value!r}")
        return [_coerce(name, typing.get_args(tp)[0], v, source) for v in items if v != ""]
    bad = RedgymError(f"{source}: {name} expects {tp.__name__}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    raise bad


def _unknown(name: str, known: list[str], source: str) -> RedgymError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return RedgymError(f"{source}: unknown config key {name!r}{hint}")


C = typing.TypeVar("C", bound=ConfigFields)


MAX_YAML_BYTES = 1024 * 1024  # the largest config file read: a config is a page of key: value lines


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict[Any, Any]:
    """A YAML file holding a mapping (empty file: ``{}``); every way it can be unreadable is one line."""
    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size > MAX_YAML_BYTES:
            raise RedgymError(f"{what} {path} is larger than {MAX_YAML_BYTES // 1024} KiB: not a config")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RedgymError(f"{what} not found: {path}") from None
    except UnicodeDecodeError:
        raise RedgymError(f"{what} is not UTF-8 text: {path}") from None
    except OSError as e:
        raise RedgymError(f"cannot read {what} {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise RedgymError(f"{what} {path} is not valid YAML{where}") from None
    except RecursionError:
        raise RedgymError(f"{what} {path} is nested too deeply to be a config") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RedgymError(f"{what} {path} must be a mapping of key: value")
    return data


def load_config(cls: type[C], path: str | Path | None = None, overrides: Mapping[str, object] | None = None) -> C:
    """Build a ``cls`` from defaults, then the YAML file at ``path``, then ``overrides``; validate it."""
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        data = read_yaml_mapping(path)
        for k, v in data.items():
            if k not in known:
                raise _unknown(str(k), known, f"config file {path}")
            values[k] = _coerce(k, hints[k], cls.upgrade(k, v), f"config file {path}")
    for k, v in (overrides or {}).items():
        if k not in known:
            raise _unknown(k, known, "command line")
        values[k] = _coerce(k, hints[k], cls.upgrade(k, v), "command line")
    cfg = cls(**values)
    cfg.validate()
    return cfg


def parse_overrides(args: list[str]) -> dict[str, str]:
    """``["--horizon", "2", "--w_nll=0"]`` -> ``{"horizon": "2", "w_nll": "0"}``; errors are one line."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--") or len(a) == 2:
            raise RedgymError(f"command line: expected --key value, got {a!r}")
        key = a[2:]
        if "=" in key:
            key, val = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise RedgymError(f"command line: --{key} needs a value")
            val = args[i + 1]
            i += 2
        out[key.replace("-", "_")] = val
    return out
