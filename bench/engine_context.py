"""Where a sampling engine's float32 speed-up goes: bare transformers ``generate`` against bare CTranslate2 sampling
of the same token ids, at one batch size, by context length.

bench/rollout.py measures the rollout (history contexts that grow turn by turn, scoring included); this strips both
sides to one sampling call on fixed contexts so the ratio shows what the engine itself buys on this CPU, and whether
it shrinks as the prefill of longer contexts takes over the time. Both sides: batch ``--batch`` of contexts cut from
one tokenised text (every row ``L`` tokens), ``--max-new-tokens`` new tokens each (min = max), temperature 0.7,
top-p 0.7, no repetition penalty (so CTranslate2 prefills the contexts: models/ct2.py), float32, the same threads.
Runs are interleaved (transformers, engine, transformers, ...) and the best of ``--repeats`` is kept.
ratio = engine tok/s / transformers tok/s.

Run: ``.venv/bin/python bench/engine_context.py [--batch 64] [--contexts 8,64,160] [--max-new-tokens 24]``;
ends with ``BENCH ...``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import redgym
from redgym.models import ct2 as ct2mod
from redgym.models.loading import load_model

NAME = "smollm2-135m"


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def sample_hf(model, tok, rows: list[list[int]], n_new: int) -> None:
    x = torch.tensor(rows)
    with torch.no_grad():
        model.generate(
            x, attention_mask=torch.ones_like(x), do_sample=True, temperature=0.7, top_p=0.7, top_k=0,
            max_new_tokens=n_new, min_new_tokens=n_new, pad_token_id=tok.eos_token_id,
        )  # fmt: skip


def sample_ct2(gen, starts: list[list[str]], n_new: int) -> None:
    gen.generate_batch(
        starts, max_length=n_new, min_length=n_new, sampling_topk=0, sampling_topp=0.7, sampling_temperature=0.7,
        include_prompt_in_result=False,
    )  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--contexts", default="8,64,160", help="comma-separated context lengths in tokens")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    torch.manual_seed(0)
    model, tok = load_model(NAME)
    gen = ct2mod.load_generator(ct2mod.engine_source(NAME, model, tok), NAME, "float32", "cpu")
    # any long text gives real token ids; redgym's own config module ships with the package
    ids = tok((Path(redgym.__file__).parent / "config.py").read_text())["input_ids"]
    n_new, keys = args.max_new_tokens, []
    print(f"{NAME} float32 batch={args.batch} new_tokens={n_new} threads={torch.get_num_threads()}")
    for length in (int(x) for x in args.contexts.split(",")):
        rows = [ids[i * 7 : i * 7 + length] for i in range(args.batch)]
        if any(len(r) < length for r in rows):
            raise SystemExit(f"the text is too short for {args.batch} contexts of {length} tokens")
        starts = [tok.convert_ids_to_tokens(r) for r in rows]
        sample_hf(model, tok, rows, n_new)  # warm-up
        sample_ct2(gen, starts, n_new)
        t_hf = t_ct = float("inf")
        for _ in range(args.repeats):
            t_hf = min(t_hf, timed(sample_hf, model, tok, rows, n_new))
            t_ct = min(t_ct, timed(sample_ct2, gen, starts, n_new))
        tokens = args.batch * n_new
        print(
            f"context {length:4d}: transformers {tokens / t_hf:6.1f} tok/s  ctranslate2 {tokens / t_ct:6.1f} tok/s"
            f"  ratio {t_hf / t_ct:.2f}",
            flush=True,
        )
        keys += [
            f"hf_tok_s_ctx{length}={tokens / t_hf:.1f}",
            f"ct2_tok_s_ctx{length}={tokens / t_ct:.1f}",
            f"ratio_ctx{length}={t_hf / t_ct:.3f}",
        ]
    print("BENCH " + " ".join(keys) + f" batch={args.batch}")


if __name__ == "__main__":
    main()
