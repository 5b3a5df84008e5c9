"""Labelled texts: the CSV a person fills in, and PyRIT's human-scored harm sets.

The labelling CSV has the columns ``id, cluster, distance, text, label`` (then any extra columns); ``label`` is
left empty for a person to fill in a spreadsheet or an editor. Reading it back skips rows whose label is still
empty, and every malformed input is one ``RedgymError`` line naming the file and, where it helps, the row (in
spreadsheet numbering: the header is row 1).

PyRIT's harm sets are read by path, without importing pyrit: ``<pyrit>/datasets/scorer_evals/harm/*.csv``, one set
per file, named by its stem (``violence``, ``violence_multi_score``, ...). ``mini_*.csv`` files are skipped: each is a
sample of a ``*_multi_score.csv`` set (``mini_hate_speech`` is 15 rows of ``hate_speech_multi_score``), so loading
both would count those rows twice. The ``*_multi_score`` sets are kept: their rows differ from the single-score
set of the same harm, and three raters' mean is the better label.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from redgym.assets import package_dir
from redgym.errors import RedgymError
from redgym.runfolder import atomic_write

COLUMNS = ["id", "cluster", "distance", "text", "label"]
HARMFUL, HARMLESS = "harmful", "harmless"


@dataclass(frozen=True)
class Labelled:
    id: str
    text: str
    label: str


def write_labelling_csv(path: str | Path, rows: list[dict]) -> Path:
    """UTF-8 CSV with ``COLUMNS`` first, then any other keys in first-seen order; missing values are empty."""
    extra: list[str] = []
    for row in rows:
        extra.extend(k for k in row if k not in COLUMNS and k not in extra)
    path = Path(path)
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=COLUMNS + extra, restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, buf.getvalue())
    return path


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise RedgymError(f"labels file {path} not found")
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a spreadsheet's UTF-8 export may start with a BOM
    except UnicodeDecodeError as e:
        raise RedgymError(f"labels file {path} is not UTF-8 (byte {e.start}); save it as 'CSV UTF-8'") from None
    if not text.strip():
        raise RedgymError(f"labels file {path} is empty")
    return text


def _canonical(labels: list[str] | None) -> dict[str, str] | None:
    return None if labels is None else {label.strip().lower(): label for label in labels}


def read_labelled_csv(path: str | Path, labels: list[str] | None = None) -> list[Labelled]:
    """Filled labelling CSV -> labelled rows; ``labels`` (if given) are the allowed names, matched loosely."""
    path = Path(path)
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    try:
        header = [(name or "").strip().lower() for name in (reader.fieldnames or [])]
        missing = [c for c in ("text", "label") if c not in header]
        if missing:
            raise RedgymError(
                f"labels file {path} has no {' or '.join(repr(c) for c in missing)} column "
                f"(its columns are {[n for n in header if n]})"
            )
        reader.fieldnames = header
        rows = list(reader)
    except csv.Error as e:
        raise RedgymError(f"labels file {path}: malformed CSV near line {reader.line_num} ({e})") from None
    if not rows:
        raise RedgymError(f"labels file {path} has a header but no rows")
    allowed = _canonical(labels)
    out: list[Labelled] = []
    for row_number, row in enumerate(rows, start=2):
        raw = (row.get("label") or "").strip()
        if not raw:
            continue  # not labelled (yet)
        if allowed is not None:
            if raw.lower() not in allowed:
                raise RedgymError(f"labels file {path} row {row_number}: label {raw!r} is not one of {labels}")
            raw = allowed[raw.lower()]
        out.append(Labelled((row.get("id") or "").strip() or f"row{row_number}", row.get("text") or "", raw))
    if not out:
        raise RedgymError(f"labels file {path} has no labelled rows (fill in the 'label' column)")
    return out


def pyrit_harm_folder() -> Path:
    """PyRIT's human-scored harm CSVs, found without importing (executing) pyrit."""
    return package_dir("pyrit==1.1.0", "pyrit") / "datasets" / "scorer_evals" / "harm"


def _read_harm_csv(path: Path) -> list[Labelled]:
    """One harm CSV: a ``# dataset_version=...`` line, then a header with ``assistant_response, human_score*``."""
    lines = path.read_text(encoding="utf-8-sig")
    if lines.startswith("#"):
        lines = lines.split("\n", 1)[1] if "\n" in lines else ""
    reader = csv.DictReader(io.StringIO(lines, newline=""))
    score_cols = [c for c in (reader.fieldnames or []) if c.startswith("human_score")]
    if "assistant_response" not in (reader.fieldnames or []) or not score_cols:
        raise RedgymError(f"PyRIT harm set {path} lacks 'assistant_response' or 'human_score' columns")
    out = []
    for i, row in enumerate(reader):
        try:
            mean = sum(float(row[c]) for c in score_cols) / len(score_cols)
        except (TypeError, ValueError):
            raise RedgymError(f"PyRIT harm set {path} data row {i + 1}: unreadable human scores") from None
        out.append(Labelled(f"pyrit:{path.stem}:{i}", row["assistant_response"], HARMFUL if mean >= 0.5 else HARMLESS))
    return out


def pyrit_harm_sets(names: list[str] | None = None) -> dict[str, list[Labelled]]:
    """PyRIT's harm sets by name (all when ``names`` is None): "harmful" when the raters' mean score is >= 0.5."""
    folder = pyrit_harm_folder()
    files = {p.stem: p for p in sorted(folder.glob("*.csv")) if not p.stem.startswith("mini_")}
    if not files:
        raise RedgymError(f"no PyRIT harm sets in {folder}: reinstall with `pip install --no-deps pyrit==1.1.0`")
    unknown = [n for n in names or [] if n not in files]
    if unknown:
        raise RedgymError(f"unknown PyRIT harm set(s) {unknown}; available: {sorted(files)}")
    return {name: _read_harm_csv(files[name]) for name in (names if names is not None else sorted(files))}
