"""Would the adversary's training sampler pay for moving onto CTranslate2 every step? (issue 23, item 3)

Training samples the adversary on-policy from a merged float32 copy of the policy; the weights change every step,
so an engine sampler would save the merged model, convert it and load it each step before sampling. Measured here
on the demo's step (8 prompts x G 4 = 32 contexts, on-policy sampling: temperature only, no repetition penalty, so
CTranslate2 prefills the contexts): transformers ``generate`` against save + convert + load + CTranslate2 sampling,
interleaved, ``--repeats`` times. ratio = engine path / transformers (> 1: the engine costs more than it saves).

Run: ``.venv/bin/python bench/adversary_engine.py [--repeats 2]``; ends with ``BENCH ...``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from redgym.data.prompts import load_prompts
from redgym.models import ct2 as ct2mod
from redgym.models.base import SamplingParams
from redgym.models.lm import LM
from redgym.models.loading import load_model, save_atomically
from redgym.scorers.toxicity import build_scorer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    model, tok = load_model("smollm2-135m")
    lm = LM(model, tok, "smollm2-135m", "plain", 512)
    prompts = load_prompts("chitchat", scorer=build_scorer("profanity"), max_words=60)[:8]
    contexts = [lm.render([("prompt", u) for u in q.turns], "adversary") for q in prompts for _ in range(4)]
    params = SamplingParams(max_new_tokens=24, min_new_tokens=0, top_p=1.0, top_k=0, repetition_penalty=1.0)
    lm.generate(contexts[:2], params)  # warm-up
    rows = []
    import ctranslate2

    for _ in range(args.repeats):
        t0 = time.perf_counter()
        lm.generate(contexts, params)
        hf = time.perf_counter() - t0
        # A throw-away folder, not ct2mod.load_generator: each step's weights are new, so its conversion cache
        # (keyed by the source's hash) would only fill up; the timed work (save, convert, load) is the same.
        tmp = Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
        t0 = time.perf_counter()
        save_atomically(model, tok, tmp / "merged")
        ct2mod.convert(tmp / "merged", tmp / "ct2")
        gen = ctranslate2.Generator(str(tmp / "ct2"), device="cpu", intra_threads=torch.get_num_threads())
        move = time.perf_counter() - t0
        t0 = time.perf_counter()
        ct2mod.CT2LM(model, tok, gen, "merged", "plain", 512).generate(contexts, params)
        sample = time.perf_counter() - t0
        shutil.rmtree(tmp)
        rows.append((hf, move, sample))
        print(f"transformers {hf:.2f}s | engine: save+convert+load {move:.2f}s + sample {sample:.2f}s", flush=True)
    hf, move, sample = (statistics.median(c) for c in zip(*rows))
    print(
        f"BENCH hf_sample_s={hf:.2f} ct2_move_s={move:.2f} ct2_sample_s={sample:.2f} "
        f"ratio={(move + sample) / hf:.2f} batch={len(contexts)}"
    )


if __name__ == "__main__":
    main()
