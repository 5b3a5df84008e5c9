"""A causal LM with the two operations redgym needs: batched sampling with log-probs, and continuation NLL.

The forward pass that training and scoring share is ``models/forward.py``; the key-value cache kept between the
``generate`` calls of a rollout batch is ``models/kv_cache.py``.

Conversations reach this layer as ``(speaker, text)`` pairs, so models know nothing of rollouts or trainers.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, LogitsProcessorList

from redgym.errors import RedgymError
from redgym.models.base import (
    ChatBackend,
    Context,
    Generation,
    LikelihoodBackend,
    SamplingParams,
    chat_messages,
    render_plain,
)
from redgym.models.forward import continuation_logprobs
from redgym.models.kv_cache import KeptCache, run_length
from redgym.models.packing import can_pack, kept_logit_rows, pack_rows, packed_inputs
from redgym.models.sampling import CandidateSampler


def turn_nll(logits: torch.Tensor, turn: list[int]) -> float:
    """A turn's mean per-token NLL from the logits (len(turn), V) of the positions predicting its tokens."""
    target = torch.tensor(turn, device=logits.device)[:, None]
    return float(-torch.log_softmax(logits.float(), -1).gather(-1, target).mean())


def render_chat(history: list[tuple[str, str]], me: str, tokenizer) -> str:
    """The model's chat template: its own turns are ``assistant``, everyone else's ``user`` (merged when adjacent)."""
    if not getattr(tokenizer, "chat_template", None):
        raise RedgymError("format 'chat' needs a tokenizer with a chat template; use format 'plain' for this model")
    return tokenizer.apply_chat_template(chat_messages(history, me), tokenize=False, add_generation_prompt=True)


class LM(ChatBackend, LikelihoodBackend):
    """A model + tokenizer pair with a prompt format (``plain`` or ``chat``): both a ``ChatBackend`` and a
    ``LikelihoodBackend`` (models/base.py).

    With ``score_turn_nll`` on (set up when this LM, a plain-format defender, also scores the reward's NLL term),
    replying to an adversary turn costs no extra forward pass for its NLL: the reply's context *is* the plain
    transcript followed by that turn (``render`` returns a ``Context`` carrying the conversation, so ``generate``
    reads the turn from its own argument: ``turn_split``). ``generate`` runs the context's forward pass itself, takes
    the turn's per-token log-probs from it, and returns the turn's NLL with the reply (``Generation.turn_nll``; the
    rollout keeps it on the reply's ``Turn`` and the reward uses it instead of calling ``continuation_nll``). A value
    is returned only when the context's tokens start with exactly the (context, turn) tokens ``continuation_nll``
    would score, so results are unchanged.

    Identical contexts side by side (GRPO's G samples of one prompt, K replies to one turn) share that forward pass
    too: it runs once per distinct context and the cache is repeated for the rows that sample from it.

    Asked to keep it (``keep=True``: a rollout batch, where the weights do not change and the histories only
    grow), ``generate`` returns its key-value cache (``Generation.kept``), and a call given it (``kept=``) takes from
    it every context's longest prefix of tokens it already holds: a multi-turn conversation's next context is the
    last one plus the replies, so only the new
    utterances run through the model (the same LM as adversary and defender also shares the prompt's pass).
    """

    pack_prefill = True  # a prefill with nothing kept runs packed where the model can (``_packed_prefill``)
    keeps_cache = True  # generate takes kept= and keep= (a rollout batch hands the cache from call to call)

    def __init__(
        self,
        model,
        tokenizer,
        name: str = "",
        fmt: str = "plain",
        max_context_tokens: int = 512,
        score_turn_nll: bool = False,
    ):
        self.model, self.tokenizer, self.name, self.fmt = model, tokenizer, name, fmt
        self.max_context_tokens = max_context_tokens
        self.score_turn_nll = score_turn_nll
        # Stop on eos, and on the chat end-of-turn token when the template has one.
        stops = {tokenizer.eos_token_id}
        for special in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>"):
            tid = tokenizer.get_vocab().get(special)
            if tid is not None:
                stops.add(tid)
        self.stop_ids = sorted(s for s in stops if s is not None)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def render(self, history: list[tuple[str, str]], me: str) -> Context:
        """Context text for this model, speaking as ``me``, given the conversation so far (carrying it)."""
        text = render_plain(history) if self.fmt == "plain" else render_chat(history, me, self.tokenizer)
        return Context(text, history)

    def turn_split(self, context: str) -> tuple[str, str] | None:
        """(the plain transcript before it, the adversary turn) when ``context`` is a plain transcript ending in an
        adversary turn and this LM scores turn NLLs: the pair whose NLL the reply's forward pass gives."""
        history = getattr(context, "history", ())
        if not (self.score_turn_nll and self.fmt == "plain" and history and history[-1][0] == "adversary"):
            return None
        return render_plain(list(history[:-1])), history[-1][1]

    def _encode_left(self, contexts: list[str], budget: int) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        tok.truncation_side = "left"  # keep the most recent turns when a conversation outgrows the window
        enc = tok(
            contexts,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=budget,
            add_special_tokens=self.fmt == "plain",
        )
        return {k: enc[k].to(self.device) for k in ("input_ids", "attention_mask")}

    @torch.no_grad()
    def generate(
        self,
        contexts: list[str],
        params: SamplingParams = SamplingParams(),
        kept: KeptCache | None = None,
        keep: bool = False,
    ) -> Generation:
        """Sample one continuation per context, all in one ``generate`` call (left padding). ``kept``: a previous
        call's cache to start from (only while the weights are unchanged); ``keep``: return this call's
        (``Generation.kept``), see the class."""
        enc = self._encode_left(contexts, self.max_context_tokens - params.max_new_tokens)
        splits = [self.turn_split(c) for c in contexts]
        k = run_length([tuple(r) for r in enc["input_ids"].tolist()])  # G samples of one prompt, K replies
        prefill = any(splits) or k > 1 or kept is not None
        past, nll = self._prefill(enc, splits, k, kept) if prefill else (None, {})
        # Sampling: CandidateSampler draws each token from the top-k candidates (models/sampling.py) and generate's
        # greedy choice takes it; temperature 0: transformers' greedy decoding (a classifier's answer).
        sampler = CandidateSampler(params, self.stop_ids, enc["input_ids"].shape[1]) if params.temperature > 0 else None
        out = self.model.generate(
            **enc,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            max_new_tokens=params.max_new_tokens,
            min_new_tokens=None if sampler else params.min_new_tokens,
            repetition_penalty=None if sampler else params.repetition_penalty,
            logits_processor=LogitsProcessorList([sampler]) if sampler else None,
            eos_token_id=self.stop_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            past_key_values=past,
            output_logits=sampler is None,
            output_scores=sampler is None,
            return_dict_in_generate=True,
        )
        new = out.sequences[:, enc["input_ids"].shape[1] :]  # (B, T)
        if sampler is not None:
            logps = torch.stack(sampler.logprobs, 1)  # (B, T)
            sample_logps = torch.stack(sampler.sample_logprobs, 1)
        else:
            # out.logits: T tensors of (B, V), raw; out.scores: after the repetition penalty and the minimum
            # length, the scores the tokens were chosen from. One step at a time: (B, T, V) is never held.
            logps, sample_logps = (
                torch.stack(
                    [
                        torch.log_softmax(step.float(), -1).gather(-1, new[:, t : t + 1]).squeeze(-1)
                        for t, step in enumerate(steps)
                    ],
                    dim=1,
                )
                for steps in (out.logits, out.scores)
            )
        is_stop = torch.isin(new, torch.tensor(self.stop_ids, device=new.device))
        texts, ids, lps, slps = [], [], [], []
        for b in range(new.shape[0]):
            stop = torch.nonzero(is_stop[b])
            n = int(stop[0]) + 1 if len(stop) else new.shape[1]
            row = new[b, :n].tolist()
            ids.append(row)
            lps.append(logps[b, :n].tolist())
            slps.append(sample_logps[b, :n].tolist())
            texts.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        turn_nll = [nll.get(b // k) for b in range(len(texts))] if nll else None
        return Generation(
            texts, ids, lps, slps, turn_nll, KeptCache.of(out.past_key_values, enc, ids) if keep else None
        )

    def _prefill(
        self,
        enc: dict[str, torch.Tensor],
        splits: list[tuple[str, str] | None],
        k: int = 1,
        kept: KeptCache | None = None,
    ) -> tuple[DynamicCache | None, dict[int, float]]:
        """The forward pass over every context but its last token, for ``generate`` to continue from (its cache),
        and on the way the NLL of each context's final adversary turn (``splits[b]``: the transcript before it and
        the turn), by distinct context. Identical contexts in runs of ``k`` (G adversary samples of one prompt, K
        defender replies to one turn) run once and share the cache: the prefill costs the distinct contexts only
        (row b is distinct context b // k). The columns every context already holds in a ``kept`` cache are copied,
        not computed."""
        ids, attn = enc["input_ids"], enc["attention_mask"]
        n, width = ids.shape
        if width < 2:
            return None, {}
        rows = list(range(0, n, k))
        real = [ids[b][attn[b] == 1].tolist() for b in rows]
        scored = [(u, b, split) for u, b in enumerate(rows) if (split := splits[b]) is not None]
        ctxs, conts = self.encode_pairs([sp[0] for _, _, sp in scored], [sp[1] for _, _, sp in scored])
        wanted = []  # (unique row, its split, turn token ids, column of the first turn token)
        # tokens each row may take from the kept cache: all but the last (generate feeds it), none of a turn whose
        # NLL is wanted (its log-probs come from this pass)
        limit = [len(r) - 1 for r in real]
        for (u, _, sp), ctx, cont in zip(scored, ctxs, conts):
            if real[u][: len(ctx) + len(cont)] == ctx + cont and len(real[u]) > len(ctx) + len(cont):
                wanted.append((u, sp, cont, width - len(real[u]) + len(ctx)))
                limit[u] = min(limit[u], len(ctx) - 1)
        held, src = kept.reusable(real, limit) if kept is not None else ([0] * len(real), [0] * len(real))
        # columns [0, start) are copied from the kept cache, [start, width - 1) computed
        start = min(width - len(r) + m for r, m in zip(real, held))
        past = kept.past([width - len(r) for r in real], src, start) if start > 0 and kept is not None else None
        nll: dict[int, float] = {}
        if start == width - 1:  # everything held (no turn NLL wanted: it would start a computed column)
            cache = past
        elif start == 0 and self.pack_prefill and min(len(r) for r in real) > 2 and can_pack(self.model):
            cache, nll = self._packed_prefill(real, wanted, width)
        else:
            keep = max([width - first for _, _, _, first in wanted], default=1)  # positions W-1-keep .. W-2
            pos = (attn.cumsum(-1) - 1).clamp(min=0)
            out = self.model(
                input_ids=ids[rows, start:-1],
                attention_mask=attn[rows, :-1],
                position_ids=pos[rows, start:-1],
                past_key_values=past,
                use_cache=True,
                logits_to_keep=keep,
            )
            for u, _, cont, first in wanted:
                at = torch.arange(len(cont), device=ids.device) + first - 1 - (width - 1 - keep)  # predicting positions
                nll[u] = turn_nll(out.logits[u, at], cont)
            cache = out.past_key_values
        if k > 1 and cache is not None:
            cache.batch_repeat_interleave(k)
        return cache, nll

    def _packed_prefill(self, real: list[list[int]], wanted: list, width: int) -> tuple[DynamicCache, dict[int, float]]:
        """``_prefill``'s forward pass with the rows packed (models/packing.py): the G samples of a prompt, or every
        context with the same system prompt, compute their shared prefix once. Each row's keys and values are then
        gathered from its tree path into the left-padded layout ``generate`` continues from (a key depends only on
        the tokens before it and its position, both a row's own in the tree); padding columns stay zero."""
        turn_of = {u: len(real[u]) - (width - first) for u, _, _, first in wanted}  # the turn's first token index
        rows = [r[:-1] for r in real]  # generate feeds each row's last token
        cut = [turn_of.get(u, len(r) - 1) for u, r in enumerate(rows)]  # logits wanted from here on
        packs = pack_rows([r[:c] for r, c in zip(rows, cut)], [r[c:] for r, c in zip(rows, cut)])
        param = next(self.model.parameters())
        ids, mask, pos, kept = packed_inputs(packs, self.tokenizer.pad_token_id, param.dtype, param.device)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=kept)
        n_packs, length = ids.shape
        index = torch.full((len(rows), width - 1), n_packs * length, dtype=torch.long)  # the last: a zero row
        for p, pack in enumerate(packs):
            for u, path in zip(pack.rows, pack.paths):
                index[u, width - 1 - len(path) :] = torch.tensor(path) + p * length + length - len(pack.ids)
        index = index.to(param.device)
        pairs = []
        for layer in out.past_key_values.layers:
            gathered = []
            for t in (layer.keys, layer.values):  # (P, H, T, D) -> rows (U, H, W-1, D)
                flat = t.transpose(1, 2).reshape(n_packs * length, *t.shape[1:2], t.shape[3])
                flat = torch.cat([flat, flat.new_zeros(1, *flat.shape[1:])])
                gathered.append(flat[index].transpose(1, 2).contiguous())
            pairs.append((gathered[0], gathered[1]))
        logits, predictors = out.logits.reshape(-1, out.logits.shape[-1]), kept_logit_rows(packs, kept)
        nll = {
            u: turn_nll(logits[torch.tensor(predictors[u][: len(cont)], device=param.device)], cont)
            for u, _, cont, _ in wanted
        }
        return DynamicCache(pairs), nll

    def encode_context(self, text: str, budget: int, add_special_tokens: bool | None = None) -> list[int]:
        """Context ids cut from the left to ``budget`` tokens (keeping the most recent turns), never empty.

        Special tokens are added for plain text (as ``generate`` does) unless ``add_special_tokens`` says otherwise.
        """
        tok = self.tokenizer
        special = self.fmt == "plain" if add_special_tokens is None else add_special_tokens
        ids = tok(text, add_special_tokens=special)["input_ids"]
        # a continuation needs at least one token of context to be predicted from
        return ids[max(0, len(ids) - budget) :] or [
            tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        ]

    def encode_pairs(self, contexts: list[str], continuations: list[str]) -> tuple[list[list[int]], list[list[int]]]:
        """Token ids of (context, continuation) pairs, the context cut from the left to fit the window.

        An empty continuation becomes the end-of-sequence token (the speaker said nothing).
        """
        tok = self.tokenizer
        ctx_ids, cont_ids = [], []
        for ctx, cont in zip(contexts, continuations):
            c = (tok(cont, add_special_tokens=False)["input_ids"] or [tok.eos_token_id])[: self.max_context_tokens - 1]
            ctx_ids.append(self.encode_context(ctx, self.max_context_tokens - len(c), add_special_tokens=True))
            cont_ids.append(c)
        return ctx_ids, cont_ids

    @torch.no_grad()
    def continuation_nll(self, contexts: list[str], continuations: list[str], batch_size: int = 16) -> list[float]:
        """Mean negative log-likelihood per token of each continuation given its context."""
        out: list[float] = []
        for s in range(0, len(contexts), batch_size):
            x, c = self.encode_pairs(contexts[s : s + batch_size], continuations[s : s + batch_size])
            logp, mask = continuation_logprobs(self.model, x, c, self.tokenizer.pad_token_id)
            out += (-(logp * mask).sum(-1) / mask.sum(-1)).tolist()
        return out
