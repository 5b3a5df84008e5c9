"""A local LM whose sampling runs on CTranslate2 (OpenNMT's inference engine), everything else as ``LM``.

    defender_engine: ctranslate2        (defender_compute_type: float32 | int8)

Hugging Face ``generate`` hardly gains from batching on a CPU; CTranslate2 does. With a repetition penalty the
context is decoded token by token (the only exact way, see ``CT2LM._sample_rows``), slower than ``generate`` at
batch 64; with ``repetition_penalty`` 1 it is prefilled in one pass (bench/rollout.py --repetition-penalty 1),
identical contexts side by side once. The model is
converted once with CTranslate2's own converter from the folder ``load_model`` uses (the GGUF's safetensors cache,
a local folder, or a hub model's snapshot) into ``$REDGYM_CACHE/ct2/<name>-<hash of the source's files>``, written
atomically and reused; a converted folder that does not load is converted again, once.

The converted weights stay float32; ``compute_type`` float32 (the default) is the same defender, ``int8`` quantizes
its weights when loading (faster, and a slightly different defender: say so when you report it).

Same sampling settings as ``LM.generate``: temperature (0 = greedy), top-p, top-k, repetition penalty, minimum and
maximum new tokens, the same stop tokens, the same left-cut context window. With a penalty the context is fed as the
start of the result (``include_prompt_in_result``), so the penalty covers the context's tokens as Hugging Face's does,
all but the very first (the engine's start token: a difference only when that token occurs nowhere else in the
context or the reply); with greedy decoding the tokens are those of ``LM.generate`` (tests/test_ct2.py).
``Generation.logprobs`` are the engine's per-token log-probs at temperature 1, after its repetition penalty and
minimum-length mask (equal to ``LM``'s where neither applies); ``sample_logprobs`` is None. Nothing downstream reads
a defender's log-probs. The reward's NLL term and training never use this engine: ``continuation_nll`` is ``LM``'s
(PyTorch).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from redgym.errors import RedgymError
from redgym.models.base import Generation, SamplingParams
from redgym.models.kv_cache import run_length
from redgym.models.lm import LM
from redgym.models.loading import cache_dir, resolve_model_path, save_atomically

log = logging.getLogger(__name__)

COMPUTE_TYPES = ("float32", "int8")


def _import_ct2():
    try:
        import ctranslate2
    except ImportError:
        raise RedgymError(
            "defender_engine ctranslate2 needs `pip install ctranslate2` (in redgym's dependencies)"
        ) from None
    return ctranslate2


def source_key(folder: Path) -> str:
    """A short hash of a model folder's files (names, sizes, modification times): a changed source converts anew."""
    h = hashlib.sha1(str(folder.resolve()).encode())
    for f in sorted(p for p in folder.iterdir() if p.is_file()):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def convert(source: Path, target: Path) -> None:
    """Convert a Hugging Face model folder with CTranslate2's converter into ``target``, atomically."""
    ct2 = _import_ct2()
    log.info("converting %s for CTranslate2 into %s (once)", source, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        ct2.converters.TransformersConverter(str(source)).convert(str(tmp), force=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except Exception as e:  # noqa: BLE001 - any converter failure is one user-facing line
        shutil.rmtree(tmp, ignore_errors=True)
        if (target / "model.bin").exists():  # a concurrent converter may have won the race
            return
        raise RedgymError(f"CTranslate2 could not convert {source}: {type(e).__name__}: {str(e)[:200]}") from None


def engine_source(name: str, model, tokenizer) -> Path:
    """The Hugging Face folder to convert for model ``name``: its own folder when it is a full local model (a
    GGUF's safetensors cache included), else the loaded model (an adapter merged, or a hub model) saved once under
    ``$REDGYM_CACHE/merged``."""
    path = Path(resolve_model_path(name))
    if path.is_dir() and (path / "config.json").exists() and not (path / "adapter_config.json").exists():
        return path
    key = source_key(path) if path.is_dir() else hashlib.sha1(name.encode()).hexdigest()[:12]
    target = cache_dir() / "merged" / f"{_safe(name)}-{key}"
    if not (target / "config.json").exists():
        save_atomically(model, tokenizer, target)
    return target


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(name).name) or "model"


def converted_dir(source: Path, name: str) -> Path:
    return cache_dir() / "ct2" / f"{_safe(name)}-{source_key(source)}"


def load_generator(source: Path, name: str, compute_type: str, device: str):
    """A ``ctranslate2.Generator`` for the model in ``source`` (converted once and cached); a cached conversion that
    does not load is converted again, once."""
    ct2 = _import_ct2()
    if compute_type not in COMPUTE_TYPES:
        raise RedgymError(f"compute_type must be one of {', '.join(COMPUTE_TYPES)}, got {compute_type!r}")
    target = converted_dir(source, name)
    threads = max(1, torch.get_num_threads())
    for attempt in (0, 1):
        if not (target / "model.bin").exists() or attempt:
            convert(source, target)
        try:
            return ct2.Generator(str(target), device=device, compute_type=compute_type, intra_threads=threads)
        except Exception as e:  # noqa: BLE001 - a damaged cache entry: convert again once, then give up
            if attempt:
                raise RedgymError(f"CTranslate2 cannot load the converted model {target}: {str(e)[:200]}") from None
            log.warning("the converted model in %s does not load (%s); converting again", target, str(e)[:120])
    raise AssertionError("unreachable")


class CT2LM(LM):
    """``LM`` (rendering, tokenizer, continuation NLL in PyTorch) whose ``generate`` runs on CTranslate2."""

    keeps_cache = False  # the engine keeps no cache between calls: generate ignores kept and keep

    def __init__(self, model, tokenizer, generator, name: str = "", fmt: str = "plain", max_context_tokens: int = 512):
        super().__init__(model, tokenizer, name, fmt, max_context_tokens)
        self.generator = generator
        self._end_tokens = tokenizer.convert_ids_to_tokens(self.stop_ids)

    def _context_tokens(self, contexts: list[str], budget: int) -> list[list[str]]:
        tok = self.tokenizer
        tok.truncation_side = "left"  # as LM._encode_left: keep the most recent turns
        ids = tok(contexts, truncation=True, max_length=budget, add_special_tokens=self.fmt == "plain")["input_ids"]
        return [tok.convert_ids_to_tokens(row) for row in ids]

    def generate(
        self, contexts: list[str], params: SamplingParams = SamplingParams(), kept=None, keep: bool = False
    ) -> Generation:
        """One continuation per context, one engine call for the batch."""
        starts = self._context_tokens(contexts, self.max_context_tokens - params.max_new_tokens)
        rows = self._sample_rows(starts, params)
        # The engine's minimum length counts from the batch's shortest context: a row with a longer one that
        # stopped before min_new_tokens (rare) is sampled again on its own, where the minimum is its own.
        stops = set(self.stop_ids)
        for b, row in enumerate(rows):
            if params.min_new_tokens and any(t in stops for t, _ in row[: params.min_new_tokens]):
                rows[b] = self._sample_rows([starts[b]], params)[0]
        texts, ids, lps = [], [], []
        for row in rows:
            n = next((i + 1 for i, (t, _) in enumerate(row) if t in stops), len(row))
            ids.append([t for t, _ in row[:n]])
            lps.append([lp for _, lp in row[:n]])
            texts.append(self.tokenizer.decode(ids[-1], skip_special_tokens=True).strip())
        return Generation(texts, ids, lps, None)

    def _sample_rows(self, starts: list[list[str]], params: SamplingParams) -> list[list[tuple[int, float]]]:
        """(token id, log-prob) of each row's new tokens, up to its stop token or ``max_new_tokens``.

        Two ways to feed the contexts, both exact. With a repetition penalty (which covers the context, as
        transformers'), each context is decoded as the result's forced start, token by token: slow. Without one
        (``repetition_penalty`` 1), the engine prefills the contexts in one pass up to the batch's shortest and
        forces only the rest; its penalty would cover those forced tokens, which is why a penalty needs the first
        way."""
        if not starts:
            return []
        prefill = params.repetition_penalty == 1.0
        fixed = params.temperature <= 0 or params.top_k == 1  # one answer per context
        # Identical contexts side by side (G samples of a prompt, K replies to a turn) are one start: greedy says
        # the same for each, sampling draws k hypotheses from it (the engine repeats its prefilled state; with a
        # penalty nothing is prefilled, so there is nothing to share)
        k = run_length(starts) if prefill or fixed else 1
        if k > 1:
            rows = self._sample(starts[::k], params, 1 if fixed else k)
            return [r for r in rows for _ in range(k)] if fixed else rows
        return self._sample(starts, params)

    def _sample(
        self, starts: list[list[str]], params: SamplingParams, hypotheses: int = 1
    ) -> list[list[tuple[int, float]]]:
        """One engine call: ``hypotheses`` sampled rows per start, in start order."""
        lengths = [len(s) for s in starts]
        prefill = params.repetition_penalty == 1.0
        greedy = params.temperature <= 0
        new: list[list[tuple[int, float]]] = [[] for _ in range(len(starts) * hypotheses)]
        # lengths count from the first decoded position: the shortest context's end (prefill) or its 2nd token
        offset = min(lengths) if prefill else 0

        def on_token(step) -> bool:  # keep the new tokens, stop at the cap
            if not prefill and step.step < lengths[step.batch_id] - 1:
                return False  # a forced context token
            row = new[step.batch_id * hypotheses + step.hypothesis_id]
            row.append((step.token_id, float(step.log_prob)))
            return len(row) >= params.max_new_tokens

        self.generator.generate_batch(
            starts,
            max_length=max(lengths) - offset + params.max_new_tokens,
            min_length=min(lengths) - offset + params.min_new_tokens if params.min_new_tokens else 0,
            sampling_topk=1 if greedy else params.top_k,
            sampling_topp=1.0 if greedy else params.top_p,
            sampling_temperature=1.0 if greedy else params.temperature,
            repetition_penalty=params.repetition_penalty,
            end_token=self._end_tokens,
            return_end_token=True,
            include_prompt_in_result=not prefill,
            num_hypotheses=hypotheses,
            return_scores=True,
            callback=on_token,
        )
        return new


def ct2_lm(
    model, tokenizer, name: str, fmt: str = "plain", max_context_tokens: int = 512, compute_type: str = "float32"
) -> CT2LM:
    """``model`` (loaded as ``name``) with CTranslate2 sampling: converted once, cached, loaded on its device."""
    device = next(model.parameters()).device.type
    gen = load_generator(engine_source(name, model, tokenizer), name, compute_type, device)
    return CT2LM(model, tokenizer, gen, name, fmt, max_context_tokens)
