"""Every command's config fields, read from the config classes themselves: the epilog of ``redgym CMD --help`` and
the field tables of the docs pages, so neither is typed by hand.

A docs page holds a table between ``<!-- fields:NAME -->`` and ``<!-- /fields:NAME -->``, NAME a config class
(``GRPOConfig``) or a YAML file's keys (``experiment-keys``):

    redgym docs --write      # (make docs) fill every block of docs/*.md from the code
    redgym docs --check      # one line and exit 2 when a block differs from the code (tests/test_docs.py)

A class's table lists the fields its own body declares (new ones, and a parent's field it redefines, such as
GRPOConfig's ``horizon``) and names the parents whose tables hold the rest (a config made of parts, such as
``TrainConfig(OptimConfig, RunConfig)``, names each). Sits just below ``cli`` (it reads the
config classes of every layer) and above ``pipelines`` and ``guard``.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from redgym.config import (
    ConfigFields,
    DefenderGuardConfig,
    DeviceConfig,
    EvalConfig,
    FieldHelp,
    HTTPConfig,
    ModelConfig,
    PromptConfig,
    RewardConfig,
    RolloutConfig,
    RunConfig,
    ScorerConfig,
)
from redgym.errors import RedgymError
from redgym.experiments.runner import ABLATION_KEYS, ARM_KEYS, EXPERIMENT_KEYS
from redgym.guard.evaluate import GuardConfig
from redgym.guard.report import ROW_KEYS
from redgym.guard.train import GuardTrainConfig
from redgym.pipelines.e3 import EXPLOIT_KEYS
from redgym.pipelines.establish import EstablishConfig
from redgym.pipelines.exploit import ExploitKeys
from redgym.pipelines.explore import ExploreConfig
from redgym.runfolder import atomic_write
from redgym.trainers.registry import TRAINERS
from redgym.trainers.train_config import OptimConfig, TrainConfig

# Every config class a command reads, by block name (a new trainer in TRAINERS needs a block, or --check fails).
_READ_BY_COMMANDS: tuple[type[ConfigFields], ...] = (
    DeviceConfig,
    ModelConfig,
    DefenderGuardConfig,
    HTTPConfig,
    RolloutConfig,
    ScorerConfig,
    RewardConfig,
    PromptConfig,
    EvalConfig,
    RunConfig,
    OptimConfig,
    TrainConfig,
    *(cls for cls, _ in TRAINERS.values()),
    ExploreConfig,
    EstablishConfig,
    ExploitKeys,
    GuardConfig,
    GuardTrainConfig,
)
CLASSES: dict[str, type[ConfigFields]] = {c.__name__: c for c in _READ_BY_COMMANDS}
# YAML files that are not one flat config: (key prefix, {key: help}) tables, by block name.
YAML_KEYS: dict[str, list[tuple[str, dict[str, str]]]] = {
    "experiment-keys": [("", EXPERIMENT_KEYS), ("arms.NAME.", ARM_KEYS), ("ablations.NAME.", ABLATION_KEYS)],
    "e3-exploit-keys": [("exploit.", EXPLOIT_KEYS)],
    "guard-report-keys": [("rows[].", ROW_KEYS)],
}
_BLOCK = re.compile(r"(<!-- fields:([\w-]+) -->\n)(.*?)(<!-- /fields:\2 -->)", re.S)


def own_fields(cls: type[ConfigFields]) -> list[FieldHelp]:
    """The fields ``cls``'s own body declares (its parent's other fields are the parent's table)."""
    declared = inspect.get_annotations(cls)
    return [h for h in cls.fields_help() if h.name in declared]


def parents(cls: type[ConfigFields]) -> list[type[ConfigFields]]:
    """For each direct base (a config built of parts has several: ``TrainConfig(OptimConfig, RunConfig)``), the
    nearest class along it that has a table of its own."""
    found: list[type[ConfigFields]] = []
    for base in cls.__bases__:
        up = next((b for b in base.__mro__ if b in CLASSES.values()), None)
        if up is not None and up not in found:
            found.append(up)
    return found


def fields_epilog(cls: type[ConfigFields], title: str = "config fields (override any with --field value)") -> str:
    """``--help``'s epilog: one line per field, with type, default and help."""
    return f"{title}:\n  " + "\n  ".join(cls.help_lines())


def own_fields_epilog(cls: type[ConfigFields], title: str) -> str:
    """An epilog of the fields ``cls`` adds to its parent (whose fields another command's --help lists)."""
    return f"{title}:\n  " + "\n  ".join(h.line() for h in own_fields(cls))


def keys_epilog(name: str, title: str) -> str:
    """An epilog of a YAML file's keys (block ``name`` of ``YAML_KEYS``)."""
    lines = [f"{prefix}{key}: {help}" for prefix, keys in YAML_KEYS[name] for key, help in keys.items()]
    return f"{title}:\n  " + "\n  ".join(lines)


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell (no pipes, newlines or tags)."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace("\n", " ").replace("*", "\\*")


def _code(text: str) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def fields_table(cls: type[ConfigFields]) -> str:
    """A markdown table (field | type | default | help) of the fields ``cls`` declares, under one line saying where
    the class lives and which table holds the rest."""
    where = f"`{cls.__name__}` (`src/{cls.__module__.replace('.', '/')}.py`)"
    names = [f"`{b.__name__}`" for b in parents(cls)]
    ups = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)
    rows = [
        f"| {_code(h.name)} | {_cell(h.type)} | {_code(repr(h.default))} | {_cell(h.help)} |" for h in own_fields(cls)
    ]
    if not rows:
        return f"{where} is made of {ups} and declares no field of its own."
    head = f"Fields of {where}" + (f", besides those of {ups}" if ups else "") + ":"
    return "\n".join([head, "", "| field | type | default | help |", "|---|---|---|---|", *rows])


def keys_table(name: str) -> str:
    rows = [
        f"| {_code(prefix + key)} | {_cell(help)} |" for prefix, keys in YAML_KEYS[name] for key, help in keys.items()
    ]
    return "\n".join(["| key | meaning |", "|---|---|", *rows])


def render(name: str) -> str:
    """The body of block ``name``."""
    if name in CLASSES:
        return fields_table(CLASSES[name])
    if name in YAML_KEYS:
        return keys_table(name)
    raise RedgymError(f"unknown fields block {name!r} (known: {', '.join([*CLASSES, *YAML_KEYS])})")


def fill(text: str) -> str:
    """``text`` with every fields block rendered from the code."""
    return _BLOCK.sub(lambda m: m.group(1) + render(m.group(2)) + "\n" + m.group(4), text)


def sync(docs: Path, write: bool) -> list[Path]:
    """The pages of ``docs`` whose fields blocks differ from the code (rewritten when ``write``); a one-line error
    when a config class or YAML table has no block on any page."""
    pages = sorted(Path(docs).glob("*.md"))
    if not pages:
        raise RedgymError(f"docs: no markdown pages in {docs}")
    texts = {p: p.read_text(encoding="utf-8") for p in pages}
    seen = {m.group(2) for text in texts.values() for m in _BLOCK.finditer(text)}
    missing = [n for n in [*CLASSES, *YAML_KEYS] if n not in seen]
    if missing:
        raise RedgymError(
            f"docs: no page of {docs} has a block <!-- fields:{missing[0]} --> ... <!-- /fields:{missing[0]} -->"
        )
    stale = [p for p, text in texts.items() if fill(text) != text]
    if write:
        for p in stale:
            atomic_write(p, fill(texts[p]))
    return stale
