"""An experiment folder without its generated text, small enough to commit: ``redgym archive SRC DEST``.

A run folder is git-ignored (it holds what the adversary and the defender said), so a grid that takes longer than
one session on one machine is lost with the machine unless its finished cells are kept somewhere. An archive keeps,
for every evaluation under SRC (a folder holding ``report.json``: a cell, or a cell's transfer evaluation), the
files that carry numbers only, at the same relative path:

    report.json     every metric with its CI, the config and the ids of the test prompts evaluated
    metrics.jsonl   the training curve and budget (trained arms)
    config.yaml     the resolved training config
    scores.jsonl    samples.jsonl with every utterance's text removed: prompt ids, each turn's speaker, token count
                    and scores, the rewards and reward terms

and ``experiment.json`` and ``experiment.yaml`` at the top. A cell that is itself archived (a grid continued from an
archive) keeps its scores.jsonl as it is. ``redgym compare DEST`` tables it as it tables SRC
(the text-based metrics, distinct-n, self-BLEU and embedding diversity, from each report, as they cannot be pooled
again), and ``redgym experiment --out DIR`` run on a copy of it skips its finished cells and runs the rest.
A cell ``--reuse`` copied in from another experiment's folder (``reused_from.txt`` names it) is left out: it lives
there already (main.yaml's untuned, dataset, sft and grpo cells stay in gain's archive, not in main's too).
Adversary weights, checkpoints, split.json, report.md/.html (they quote samples) and plots are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from redgym.errors import RedgymError
from redgym.runfolder import atomic_write, read_jsonl, write_jsonl

SCORES = "scores.jsonl"  # an archived cell's conversations without their text
# numbers and ids only (split.json, the whole split's ids, the same ~200 kB in every cell, is left out: a finished
# cell's report names the test prompts it evaluated)
COPIED = ("report.json", "metrics.jsonl", "config.yaml")
TOP = ("experiment.json", "experiment.yaml")
REUSED = "reused_from.txt"  # in a cell ``redgym experiment --reuse`` copied: the folder it was copied from


def conversations_file(folder: Path) -> tuple[Path, bool]:
    """An evaluation folder's conversations: (its samples.jsonl, True), or in an archive (scores.jsonl, False: no
    text). The path may not exist (an evaluation written without samples)."""
    samples = folder / "samples.jsonl"
    if samples.exists() or not (folder / SCORES).exists():
        return samples, True
    return folder / SCORES, False


def without_text(row: dict[str, Any]) -> dict[str, Any]:
    """A samples.jsonl row with every utterance's text removed (the prompt's, each turn's and each alternative
    reply's), everything else (ids, speakers, token counts, scores, rewards) kept."""
    turns = [
        {
            **{k: v for k, v in t.items() if k not in ("text", "alternatives")},
            "text": "",
            **({"alternatives": [""] * len(t["alternatives"])} if t.get("alternatives") else {}),
        }
        for t in row["turns"]
    ]
    return {**row, "prompt": [], "turns": turns}


def reused_elsewhere(cell: Path, dest: Path) -> bool:
    """Whether ``cell`` was copied in by ``--reuse`` from a folder other than ``dest`` (so archiving it into
    ``dest`` would keep a second copy of a cell another archive holds)."""
    marker = cell / REUSED
    if not marker.is_file():
        return False
    return Path(marker.read_text(encoding="utf-8").strip()).resolve() != dest.resolve()


def archive_experiment(src: Path, dest: Path) -> list[Path]:
    """Write DEST as the archive of experiment (or evaluation) folder SRC; returns the evaluation folders archived
    (relative to SRC). DEST may already hold an earlier archive of SRC: its files are replaced. A cell reused from
    another folder than DEST (``reused_elsewhere``), with its transfer evaluations, is left out."""
    if not src.is_dir():
        raise RedgymError(f"archive: {src} is not a folder")
    if dest.resolve() == src.resolve() or src.resolve() in dest.resolve().parents:
        raise RedgymError(f"archive: {dest} must lie outside {src}")
    found = sorted(p.parent.relative_to(src) for p in src.rglob("report.json"))
    if not found:
        raise RedgymError(f"archive: no evaluation (report.json) under {src}")
    elsewhere = [rel for rel in found if reused_elsewhere(src / rel, dest)]
    cells = [rel for rel in found if not any(rel == e or e in rel.parents for e in elsewhere)]
    for name in TOP:
        if (src / name).is_file():
            atomic_write(dest / name, (src / name).read_bytes())
    for rel in cells:
        here, there = src / rel, dest / rel
        there.mkdir(parents=True, exist_ok=True)
        for name in COPIED:
            if (here / name).is_file():
                atomic_write(there / name, (here / name).read_bytes())
        conversations, has_text = conversations_file(here)
        if has_text and conversations.is_file():
            rows = read_jsonl(conversations, "archive", "an evaluation's samples")
            write_jsonl(there / SCORES, (without_text(r) for r in rows))
        elif not has_text:  # a cell continued from an earlier archive: its scores as they are
            atomic_write(there / SCORES, conversations.read_bytes())
    return cells
