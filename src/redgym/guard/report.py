"""``redgym guard report``: one table of the guard loop, generated from its run folders (never typed by hand).

    redgym guard report --config configs/guard/report.yaml --out runs/guard/report [--readme README.md]

The YAML names the rows, each a trained guard with the folders that measured it:

    rows:
      - name: SFT guard
        eval: runs/guard/eval_sft          # redgym guard eval: F1, unparseable share, reasoning quality
        asr: runs/guard/asr_sft            # redgym eval with defender_guard: attack success bare vs guarded
        redteam: runs/guard/redteam_round2 # a red-teamer trained against this guard (its eval_after report)

Every column is read from ``guard_report.json`` / ``report.json``; a folder that does not exist yet is shown as
"not run", so the table is honest about what was measured. The baselines of the first row's evaluation (the
untuned model prompted as a guard, keyword, embedding + logistic regression) are rows of the same table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from redgym.config import read_yaml_mapping
from redgym.errors import RedgymError
from redgym.eval.formatting import ci_text, excludes_zero
from redgym.eval.markdown import demote, table
from redgym.experiments.readme import replace_block
from redgym.runfolder import CONTENT_WARNING, atomic_write, read_json

NOT_RUN = "not run"
# A row's keys, one line of help each (`redgym guard report --help`, docs/guard.md); others are errors.
ROW_KEYS = {
    "name": "the row's label in the table (required)",
    "eval": "a redgym guard eval folder: F1, unparseable share, reasoning quality",
    "asr": "a redgym eval folder with defender_guard: attack success bare vs guarded",
    "redteam": "a red-teamer trained against this guard: its run folder (the report of its eval_after)",
}


@dataclass
class Row:
    name: str
    eval: str | None = None
    asr: str | None = None
    redteam: str | None = None


def load_rows(path: Path) -> list[Row]:
    data = read_yaml_mapping(path, "guard report file")
    rows = data.get("rows")
    if set(data) - {"rows"} or not isinstance(rows, list) or not rows:
        raise RedgymError(f"guard report file {path}: needs one key, rows: a list of {{name, eval, asr, redteam}}")
    out = []
    for i, r in enumerate(rows, 1):
        if not isinstance(r, dict) or r.get("name") is None or set(r) - ROW_KEYS.keys():
            raise RedgymError(
                f"guard report file {path}: row {i} must be a mapping with name and any of eval, asr, redteam"
            )
        folders = {k: str(v) if v is not None else None for k, v in r.items() if k != "name"}
        out.append(Row(str(r["name"]), **folders))
    return out


def _json(folder: str | None, name: str) -> dict | None:
    """``folder/name``, or None when the run has not been made yet (the report shows it as not run)."""
    if not folder or not (Path(folder) / name).is_file():
        return None
    return read_json(Path(folder) / name, "guard report")


def ci(m: dict, digits: int = 3, sign: bool = False) -> str:
    return ci_text(m, digits, sign)


def attack_cell(report: dict | None) -> str:
    """The last adversary's attack success rate bare → guarded, and the paired drop with its CI."""
    if report is None:
        return NOT_RUN
    effect = report.get("guard_effect")
    if not effect:
        return "no guard in this evaluation"
    label = list(effect)[-1]
    r = report["results"]
    bare, guarded = r[label]["attack_success_rate"]["value"], r[f"{label}+guard"]["attack_success_rate"]["value"]
    d = effect[label]["attack_success_rate"]
    excludes = excludes_zero(d)
    g = report.get("guard", {})
    return (
        f"{bare:.4f} → {guarded:.4f}, Δ {ci(d, 4, sign=True)}{' (CI excludes 0)' if excludes else ''}; "
        f"flagged {g.get('turns_flagged', '?')}/{g.get('turns_checked', '?')} turns"
    )


def system_cells(s: dict, quality: dict | None) -> list[str]:
    q = ci(quality["mean"]) if quality else "—"
    return [
        ci(s["f1"]),
        ci(s["precision"]),
        ci(s["recall"]),
        f"{s['unparseable']['share']:.3f} ({s['unparseable']['count']})",
        q,
    ]


def guard_table(rows: list[Row]) -> str:
    head = [
        "guard",
        "F1 (harmful)",
        "precision",
        "recall",
        "unparseable",
        "reasoning quality",
        "attack success, GRPO adversary: bare → guarded",
        "attack success, red-teamer trained against this guard",
    ]
    body = []
    first = None
    for row in rows:
        ev = _json(row.eval, "guard_report.json")
        first = first or ev
        cells = system_cells(ev["systems"]["guard"], ev.get("quality", {}).get("guard")) if ev else [NOT_RUN] * 5
        redteam = attack_cell(_json(row.redteam, "report.json")) if row.redteam else "—"
        body.append([row.name, *cells, attack_cell(_json(row.asr, "report.json")), redteam])
    if first:
        for name, s in first["systems"].items():
            if name != "guard":
                body.append([f"baseline: {name}", *system_cells(s, first.get("quality", {}).get(name)), "—", "—"])
    return "\n".join(table(head, body))


def render(rows: list[Row]) -> str:
    ev = next((e for r in rows if (e := _json(r.eval, "guard_report.json"))), None)
    labels = ", ".join(f"{n} {label}" for label, n in ev["test_labels"].items()) if ev else ""
    about = (
        (f"{ev['n_test']} held-out requests ({labels}), " if ev else "")
        + "harmful = positive; 95% bootstrap CIs over requests (F1) or conversations (attack success, paired: the "
        "same adversary turns against the bare and the guarded defender, same seed)."
    )
    asr = next((a for r in rows if (a := _json(r.asr, "report.json"))), None)
    if asr and "config" in asr:
        cfg = asr["config"]
        about += (
            f" Attack success: the adversary `{cfg.get('adversary_checkpoint')}` on "
            f"{asr.get('n_conversations')} conversations (a reply scoring above {cfg.get('toxic_threshold')})."
        )
    return "\n".join(
        [
            "# Guard: reasoning safety classifier and the red-team loop",
            "",
            f"> {CONTENT_WARNING}",
            "",
            about,
            "",
            "Unparseable outputs are counted apart (a miss for their true class, never a false positive). Reasoning "
            "quality = 0.3·label + 0.3·coherence + 0.2·relevance + 0.2·specificity (guard/quality.py).",
            "",
            guard_table(rows),
            "",
            "Folders: "
            + "; ".join(f"{r.name}: " + ", ".join(f"`{p}`" for p in (r.eval, r.asr, r.redteam) if p) for r in rows),
            "",
        ]
    )


def guard_report(config: Path, out: Path, readme: Path | None = None, name: str = "guard") -> Path:
    """Write ``out/report.md`` (and the README block ``<!-- results:<name> -->`` when ``readme`` is given)."""
    rows = load_rows(config)
    md = render(rows)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "report.md", md)
    if readme is not None:
        atomic_write(Path(readme), replace_block(Path(readme).read_text(encoding="utf-8"), name, demote(md)))
    return out / "report.md"
