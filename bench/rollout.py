"""Throughput of redgym's rollout engine (scoring included) next to the raw ``model.generate`` floor.

What is measured, per batch size B (default 1, 8, 16, 64):

- engine: ``redgym.rollout.engine.rollout`` (adversary and defender are the same ``LM`` object, as in the default
  eval) followed by ``redgym.rollout.reward.score_conversations`` (profanity scorer + the defender's NLL of every
  adversary turn), timed together. Four things make it cheaper than the floor, all exact (models/lm.py,
  models/sampling.py, models/packing.py): each token is drawn from the top-k candidates (the same distribution as
  transformers' processors, without their passes over the whole vocabulary); within a batch the LM keeps its
  key-value cache between calls, so each turn runs only the new utterances (``Generation.kept``); a context pass with
  nothing kept runs packed, so contexts sharing a prefix (a prompt's G samples, a system prompt) compute it once
  (``LM._packed_prefill``); and the defender, which also scores
  the NLL term (``score_turn_nll``, as ``setup.load_likelihood`` sets it), takes each adversary turn's NLL from
  the forward pass of its reply's context and returns it with the reply, so scoring adds only the toxicity scorer.
- floor: the same number of turns for the same prompts with bare ``model.generate`` calls on left-padded
  contexts built here from ``render_plain`` of the growing history: no logits output, no log-probs, no scoring,
  the whole history run again every turn (what a rollout built on ``generate`` does). It runs the same loaded
  model, so it shares the engine's attention function (models/attention.py): the ratio leaves that saving out.

With ``--defender-samples K`` (K-reply denoised scoring, the trainers' ``defender_samples``) the engine samples K
defender replies per adversary turn in one batch and scores all of them; the floor generates the same K replies per
context with bare ``generate`` (the history continues with the first, as in the engine).

With ``--generations G`` (GRPO's ``generations_per_prompt``: a training rollout's shape) each of B/G prompts is rolled
out G times side by side. The engine runs the forward pass of identical contexts once (the G first adversary turns
of a prompt, the K replies to a turn: ``LM._prefill``); the floor, like ``generate`` with repeated rows (TRL's GRPO),
runs it for every row. BENCH keys then carry ``_g{G}``.

Both sides use the same model, prompts, seed and sampling settings, with ``min_new_tokens == max_new_tokens`` so
every utterance is exactly ``max_new_tokens`` new tokens (no early stop), and the same number of tokens on both
sides. The engine draws from another random stream than ``generate``'s multinomial, so the texts differ (the last
column says whether they agree) and context lengths differ a little turn for turn.

Floor and engine runs are interleaved (floor, engine, floor, engine, ...) so machine noise hits both, and the
best (shortest) of the repeats is kept. Reported: generated tokens/s, conversation turns/s (utterances
generated per second) and ratio = engine tok/s / floor tok/s. The last output line is
``BENCH key=value ...``; each key names the batch, then ``_g{G}`` and ``_k{K}`` where above 1, then the engine and
its precision (``ratio_b64_g4_k2_hf_float32``).

With ``--engines hf,ctranslate2`` the engine side runs once per sampling engine (``defender_engine``: the same
SmolLM2 sampled by CTranslate2, models/ct2.py, as adversary and defender; ``--compute-type`` float32 or int8), each
against the same floor; the NLL term then costs its own forward pass (the engine does not share its prefill), which
the timing includes. CTranslate2 draws from its own random generator, so its texts differ from the floor's; an
utterance that stops early (a sampled stop token) makes fewer tokens, and tok/s counts the tokens made.

With ``--repetition-penalty 1`` (both sides; default: the config's 1.1) CTranslate2 prefills the contexts in one
pass instead of decoding them token by token (models/ct2.py says why only then); BENCH keys then end in ``_rp1``.

Run: ``.venv/bin/python bench/rollout.py [--horizon 2] [--max-new-tokens 24] [--batches 1,8,16,64]
[--defender-samples 1,4] [--generations 4] [--engines hf,ctranslate2] [--compute-type float32]
[--repetition-penalty 1.1]``
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch

from redgym.data.prompts import load_prompts
from redgym.models.lm import LM, SamplingParams, render_plain
from redgym.models.loading import load_model
from redgym.rollout.engine import rollout
from redgym.rollout.reward import RewardWeights, score_conversations
from redgym.scorers.toxicity import build_scorer

SEED = 0


@dataclass
class Timing:
    seconds: float
    tokens: int
    turns: int
    texts: list[list[str]]  # per conversation, the generated utterances (to check engine == floor draws)
    score_seconds: float = 0.0  # engine only: the part spent in score_conversations

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def turns_s(self) -> float:
        return self.turns / self.seconds


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--horizon", type=int, default=2, help="(adversary, defender) exchanges per conversation")
    p.add_argument("--max-new-tokens", type=int, default=24, help="tokens per utterance (min = max)")
    p.add_argument("--batches", default="1,8,16,64", help="comma-separated batch sizes")
    p.add_argument("--convs-b1", type=int, default=2, help="conversations at batch size 1 (others use B)")
    p.add_argument("--defender-samples", default="1", help="comma-separated K: defender replies per adversary turn")
    p.add_argument("--generations", type=int, default=1, help="G: rollouts of each prompt (B/G prompts a batch)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved floor/engine repeats; the best is kept")
    p.add_argument("--engines", default="hf", help="comma-separated sampling engines: hf, ctranslate2")
    p.add_argument("--compute-type", default="float32", help="ctranslate2: float32 or int8")
    p.add_argument(
        "--repetition-penalty",
        type=float,
        default=SamplingParams().repetition_penalty,
        help="both sides' repetition penalty (1 lets ctranslate2 prefill the contexts; see models/ct2.py)",
    )
    return p.parse_args()


def setup(max_new_tokens: int, repetition_penalty: float):
    """The default eval's objects: one SmolLM2 LM used as adversary and defender, the profanity scorer."""
    model, tok = load_model("smollm2-135m")
    lm = LM(model, tok, "smollm2-135m", "plain", 512, score_turn_nll=True)  # as setup.load_likelihood does
    scorer = build_scorer("profanity")
    prompts = load_prompts("chitchat", scorer=scorer, max_words=60)  # the default config's length cap
    params = SamplingParams(
        max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty
    )
    return lm, scorer, prompts, params


def engine_lm(lm: LM, engine: str, compute_type: str) -> LM:
    """The LM whose ``generate`` the engine side uses: ``lm`` itself (hf), or the same weights on CTranslate2."""
    if engine == "hf":
        return lm
    from redgym.models.ct2 import ct2_lm

    out = ct2_lm(lm.model, lm.tokenizer, "smollm2-135m", "plain", 512, compute_type)
    out.score_turn_nll = True
    out.generate([lm.render([("prompt", "Hello there")], "adversary")], SamplingParams(max_new_tokens=4))  # warm up
    return out


def warm_up(lm: LM, params: SamplingParams) -> None:
    """One small generate call so lazy initialisation is not timed."""
    enc = lm.tokenizer(["Hello there\n", "How are you?\n"], return_tensors="pt", padding=True)
    lm.model.generate(
        **enc, do_sample=True, max_new_tokens=params.max_new_tokens, pad_token_id=lm.tokenizer.pad_token_id
    )


def run_engine(lm: LM, scorer, prompts, horizon: int, params: SamplingParams, batch: int, k: int = 1) -> Timing:
    torch.manual_seed(SEED)
    t0 = time.perf_counter()
    convs = rollout(
        [(p.id, p.turns) for p in prompts], lm, lm, horizon, params, batch, progress=False, defender_samples=k
    )
    t1 = time.perf_counter()
    score_conversations(convs, scorer, lm, RewardWeights(), None, batch)
    t2 = time.perf_counter()
    # a defender turn stands for its k sampled replies (min = max new tokens: all the same length)
    tokens = sum(len(t.token_ids) * (1 + len(t.alternatives or [])) for c in convs for t in c.turns)
    turns = sum(len(c.turns) for c in convs)
    return Timing(t2 - t0, tokens, turns, [[t.text for t in c.turns] for c in convs], score_seconds=t2 - t1)


@torch.no_grad()
def floor_generate(lm: LM, contexts: list[str], params: SamplingParams) -> tuple[list[str], int]:
    """One bare generate call on left-padded contexts (same encoding as the LM): decoded texts, new-token count."""
    tok = lm.tokenizer
    tok.truncation_side = "left"
    enc = tok(
        contexts,
        return_tensors="pt",
        padding=True,
        truncation=True,
        max_length=lm.max_context_tokens - params.max_new_tokens,
        add_special_tokens=True,
    )
    out = lm.model.generate(
        **enc,
        do_sample=True,
        max_new_tokens=params.max_new_tokens,
        min_new_tokens=params.min_new_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        repetition_penalty=params.repetition_penalty,
        eos_token_id=lm.stop_ids,
        pad_token_id=tok.pad_token_id,
    )
    new = out[:, enc["input_ids"].shape[1] :]
    return tok.batch_decode(new, skip_special_tokens=True), new.numel()


def run_floor(lm: LM, prompts, horizon: int, params: SamplingParams, batch: int, k: int = 1) -> Timing:
    torch.manual_seed(SEED)
    t0 = time.perf_counter()
    tokens = 0
    histories = [[("prompt", u) for u in p.turns] for p in prompts]
    for i in range(0, len(histories), batch):
        chunk = histories[i : i + batch]
        for _ in range(horizon):
            for speaker in ("adversary", "defender"):
                reps = k if speaker == "defender" else 1  # k replies per context, in the engine's order
                texts, n = floor_generate(lm, [render_plain(h) for h in chunk for _ in range(reps)], params)
                tokens += n
                for h, text in zip(chunk, texts[::reps]):
                    h.append((speaker, text.strip()))
    seconds = time.perf_counter() - t0
    n_prompt = [len(p.turns) for p in prompts]
    texts = [[t for _, t in h[k:]] for h, k in zip(histories, n_prompt)]
    return Timing(seconds, tokens, sum(len(t) for t in texts), texts)


def bench_batch(
    lm: LM,
    scorer,
    prompts,
    horizon: int,
    params: SamplingParams,
    batch: int,
    repeats: int,
    k: int = 1,
    floor_lm: LM | None = None,
) -> tuple[Timing, Timing]:
    """Interleave floor (bare HF ``generate`` on ``floor_lm``, default ``lm``) and engine runs; keep the fastest."""
    floors, engines = [], []
    for r in range(repeats):
        floors.append(run_floor(floor_lm or lm, prompts, horizon, params, batch, k))
        engines.append(run_engine(lm, scorer, prompts, horizon, params, batch, k))
        print(
            f"  B={batch:>2} K={k} repeat {r + 1}: floor {floors[-1].seconds:6.2f}s  "
            f"engine {engines[-1].seconds:6.2f}s (scoring {engines[-1].score_seconds:.2f}s)",
            flush=True,
        )
    return min(floors, key=lambda t: t.seconds), min(engines, key=lambda t: t.seconds)


def main() -> None:
    args = parse_args()
    torch.manual_seed(SEED)
    batches = [int(b) for b in args.batches.split(",")]
    t_load = time.perf_counter()
    lm, scorer, all_prompts, params = setup(args.max_new_tokens, args.repetition_penalty)
    warm_up(lm, params)
    print(
        f"model smollm2-135m dtype={lm.model.dtype} device={lm.device} threads={torch.get_num_threads()} "
        f"horizon={args.horizon} max_new_tokens={params.max_new_tokens} "
        f"repetition_penalty={params.repetition_penalty:g} setup+warm-up "
        f"{time.perf_counter() - t_load:.1f}s",
        flush=True,
    )

    results = {}
    for name in args.engines.split(","):
        elm = engine_lm(lm, name, args.compute_type)
        for k in (int(x) for x in args.defender_samples.split(",")):
            for batch in batches:
                # the engine batches prompts of similar length together: the floor takes them in that order too, so
                # both sample the same rows in the same order
                n = args.convs_b1 if batch == 1 else batch
                distinct = sorted(
                    all_prompts[: max(1, n // args.generations)], key=lambda p: sum(len(u) for u in p.turns)
                )
                prompts = [p for p in distinct for _ in range(args.generations)]  # G siblings side by side
                floor, engine = bench_batch(
                    elm, scorer, prompts, args.horizon, params, batch, args.repeats, k, floor_lm=lm
                )
                if name == "hf":
                    assert floor.tokens == engine.tokens, (floor.tokens, engine.tokens)
                results[name, batch, k] = (floor, engine)

    print(
        f"\n{'engine':>11} {'B':>3} {'K':>2} {'convs':>5} {'tokens':>6} | {'floor tok/s':>11} {'engine tok/s':>12} | "
        f"{'floor turns/s':>13} {'engine turns/s':>14} | {'ratio':>5} | {'scoring share':>13} | same draws"
    )
    fields = []
    for (name, batch, k), (floor, engine) in results.items():
        ratio = engine.tok_s / floor.tok_s
        same = floor.texts == engine.texts
        tag = f"b{batch}" + (f"_g{args.generations}" if args.generations > 1 else "") + (f"_k{k}" if k > 1 else "")
        tag += f"_{name}_" + (str(lm.model.dtype).removeprefix("torch.") if name == "hf" else args.compute_type)
        tag += (
            ""
            if params.repetition_penalty == SamplingParams().repetition_penalty
            else f"_rp{params.repetition_penalty:g}"
        )
        print(
            f"{name:>11} {batch:>3} {k:>2} {len(floor.texts):>5} {floor.tokens:>6} | "
            f"{floor.tok_s:>11.1f} {engine.tok_s:>12.1f} | "
            f"{floor.turns_s:>13.2f} {engine.turns_s:>14.2f} | {ratio:>5.2f} | "
            f"{engine.score_seconds / engine.seconds:>12.1%} | {same}"
        )
        fields += [
            f"engine_tok_s_{tag}={engine.tok_s:.2f}",
            f"floor_tok_s_{tag}={floor.tok_s:.2f}",
            f"engine_turns_s_{tag}={engine.turns_s:.3f}",
            f"floor_turns_s_{tag}={floor.turns_s:.3f}",
            f"ratio_{tag}={ratio:.3f}",
        ]
    print("BENCH " + " ".join(fields))


if __name__ == "__main__":
    main()
