"""Run folders describe themselves: resolved config, seed, split, versions, git hash, metrics, outputs.

Files are written atomically (temporary file, then rename), so a stopped run never leaves a half-written file.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

import redgym
from redgym.errors import RedgymError

CONTENT_WARNING = (
    "Content warning: this run folder holds text that language models generated while being "
    "red-teamed for toxicity. It may be offensive."
)


def check_writable(out: Path) -> None:
    """Fail early, with one line, when ``out`` cannot be created or written (before any expensive work)."""
    if out.exists() and not out.is_dir():
        raise RedgymError(f"output folder {out} exists and is not a folder")
    package = Path(redgym.__file__).resolve().parent
    if out.resolve().is_relative_to(package):
        raise RedgymError(f"output folder {out} is inside the redgym package ({package}); write runs elsewhere")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise RedgymError(f"output folder {out} cannot be written (no write permission on {parent})")


LOCK_FILE, HOLDER_FILE = ".redgym.lock", ".redgym.holder"


class FolderInUse(RedgymError):
    """Another live command holds the folder (``hold_folder``)."""


@contextmanager
def hold_folder(out: Path, command: str):
    """One command per run folder: an advisory lock on ``out`` for the life of the command. The lock is the
    operating system's (``filelock``: flock), so a killed process holds nothing and never blocks the next run; a
    second command on a held folder ends in one line naming the holder (its pid and command line, from
    ``.redgym.holder``). A folder this call created and the command left empty is removed again."""
    from filelock import FileLock, Timeout

    check_writable(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = (out / HOLDER_FILE).read_text(encoding="utf-8").strip()
        except OSError:
            holder = "another process"
        raise FolderInUse(f"{out} is in use by {holder}; wait for it to end or write elsewhere") from None
    try:
        atomic_write(out / HOLDER_FILE, f"pid {os.getpid()} (redgym {command})\n")
        yield
    finally:
        (out / HOLDER_FILE).unlink(missing_ok=True)
        lock.release()
        if created and {p.name for p in out.iterdir()} <= {LOCK_FILE}:  # nothing of the command's: leave no trace
            shutil.rmtree(out, ignore_errors=True)


def atomic_write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_savefig(fig, path: Path, **kwargs) -> None:
    """``fig.savefig`` to ``path`` through a temporary file (the format from the suffix)."""
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", **kwargs)
    atomic_write(Path(path), buf.getvalue())


@contextmanager
def atomic_files(folder: Path):
    """Yield a temporary folder inside ``folder`` to write into (e.g. ``save_pretrained``); on success each file
    is renamed into ``folder``, so every file appears whole or not at all. On failure nothing is moved."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".partial-"))
    try:
        yield tmp
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                target = folder / f.relative_to(tmp)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(f, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_folder(new: Path, path: Path) -> None:
    """Put the complete folder ``new`` at ``path``: an old ``path`` is first renamed aside and removed only after
    ``new`` is in place, so a kill at any moment leaves one whole folder on disk (at ``path`` or aside)."""
    aside = path.with_name(f".{path.name}.old")
    shutil.rmtree(aside, ignore_errors=True)
    if path.exists():
        path.rename(aside)
    new.rename(path)
    shutil.rmtree(aside, ignore_errors=True)


def write_json(path: Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_jsonl(path: Path, rows) -> None:
    atomic_write(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


def read_jsonl(path: Path, what: str, missing: str) -> list[dict]:
    """The rows of a JSONL file; a missing or unreadable file is one ``RedgymError`` line starting ``what:``
    (``missing`` says where such a file comes from)."""
    from redgym.errors import RedgymError

    try:
        return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        raise RedgymError(f"{what}: {path} not found ({missing})") from None
    except (OSError, ValueError) as e:
        raise RedgymError(f"{what}: cannot read {path} ({type(e).__name__})") from None


def read_json(path: Path, what: str) -> dict:
    """A JSON file of a run folder; a missing or unreadable one is one ``RedgymError`` line starting ``what:``."""
    from redgym.errors import RedgymError

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RedgymError(f"{what}: cannot read {path} ({type(e).__name__})") from None


def git_hash() -> str:
    try:
        here = Path(redgym.__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if out.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_metadata(code_version: str) -> dict:
    """Versions for a report; ``code_version`` is ``git_hash()`` taken when the run started."""
    import torch
    import transformers

    return {
        "redgym_version": redgym.__version__,
        "git_hash": code_version,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def save_config(out: Path, cfg) -> None:
    atomic_write(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
