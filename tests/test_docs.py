"""The README and docs/*.md say what the code does: every command they show parses with the real CLI parser and uses
only real config fields, every relative link points at a file (and heading) that exists, and every generated field
table matches the config classes (a field added without ``make docs`` fails here)."""

import re
import shlex
import shutil
from pathlib import Path

import pytest

from redgym import docs_fields
from redgym.cli import build_parser
from redgym.config import RunConfig, load_config, parse_overrides
from redgym.errors import RedgymError
from redgym.guard.evaluate import GuardConfig
from redgym.guard.train import GuardTrainConfig
from redgym.pipelines.establish import EstablishConfig
from redgym.pipelines.exploit import ExploitKeys, exploit_config
from redgym.pipelines.explore import ExploreConfig
from redgym.trainers.registry import TRAINERS

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAMS = ("redgym", ".venv/bin/redgym")


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def fenced_commands(text: str) -> list[tuple[int, str]]:
    """(line number, command) of every line in a fenced code block that starts with ``redgym `` or
    ``.venv/bin/redgym ``: a comment (`` #`` after a blank) is dropped and a trailing ``\\`` joins the next line."""
    found: list[tuple[int, str]] = []
    fence, pending = False, None
    for n, raw in enumerate(text.splitlines(), 1):
        if raw.lstrip().startswith("```"):
            fence, pending = not fence, None
            continue
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not fence:
            continue
        if pending is not None:
            start, so_far = pending
        elif line.split(" ", 1)[0] in PROGRAMS:
            start, so_far = n, ""
        else:
            continue
        so_far = f"{so_far} {line}".strip()
        if so_far.endswith("\\"):
            pending = (start, so_far[:-1].rstrip())
        else:
            pending = None
            found.append((start, so_far))
    return found


def test_fenced_commands_joins_continuations_and_drops_comments():
    text = (
        "redgym eval --out a   # not in a fence\n"
        "```bash\n"
        ".venv/bin/redgym eval --out runs/x \\\n"
        "    --scorer classifier:DIR#harmful   # trained vs untuned\n"
        "make demo   # not redgym\n"
        "redgym compare runs/main\n"
        "```\n"
    )
    assert fenced_commands(text) == [
        (3, ".venv/bin/redgym eval --out runs/x --scorer classifier:DIR#harmful"),
        (6, "redgym compare runs/main"),
    ]


def command_config(args, overrides: dict[str, str]) -> type | None:
    """The config class a parsed command reads its ``--field value`` overrides into (as cli.py's command does);
    None for the commands that take none. ``exploit`` reads its trainer's, besides its own two keys."""
    if args.command == "train":
        return TRAINERS[args.trainer][0]
    if args.command == "exploit":
        return TRAINERS[overrides.get("trainer", "grpo")][0]
    if args.command == "guard":
        return {"eval": GuardConfig, "train": GuardTrainConfig}.get(args.guard_command)
    return {"eval": RunConfig, "explore": ExploreConfig, "establish": EstablishConfig}.get(args.command)


def check_command(command: str) -> None:
    """Parse ``command`` as ``redgym`` would and check its overrides; raise AssertionError saying what is wrong.

    Placeholders such as ``--config FILE`` or ``--out DIR`` need no special case: argparse takes any path. A config
    file that exists is loaded with the overrides, so their values are typed and validated as the command would;
    one that does not (a placeholder) is left out, unless it claims to be a shipped one under configs/."""
    argv = shlex.split(command)[1:]
    parser = build_parser()
    if "--help" in argv or "-h" in argv:
        with pytest.raises(SystemExit) as done:
            parser.parse_known_args(argv)
        assert done.value.code == 0, f"{command!r}: --help did not exit cleanly"
        return
    try:
        args, rest = parser.parse_known_args(argv)
        overrides = parse_overrides(rest)
    except RedgymError as e:
        raise AssertionError(f"{command!r} does not parse: {e}") from None
    cls = command_config(args, overrides)
    fields = set(cls.__dataclass_fields__) if cls is not None else set()
    if args.command == "exploit":
        fields |= set(ExploitKeys.__dataclass_fields__)
    unknown = sorted(set(overrides) - fields)
    assert not unknown, f"{command!r}: --{unknown[0]} is not a config field of this command"
    config = getattr(args, "config", None)
    if config is not None and not (ROOT / config).is_file():
        assert not str(config).startswith("configs/"), f"{command!r}: {config} is not a shipped config"
        config = None
    if cls is None:
        return
    try:
        if args.command == "exploit":
            exploit_config(ROOT / config if config else None, overrides)
        else:
            load_config(cls, ROOT / config if config else None, overrides)
    except RedgymError as e:
        raise AssertionError(f"{command!r}: {e}") from None


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_command_in_the_docs_parses_with_real_fields(page):
    commands = fenced_commands(page.read_text(encoding="utf-8"))
    for line, command in commands:
        try:
            check_command(command)
        except AssertionError as e:
            raise AssertionError(f"{page_id(page)}:{line}: {e}") from None


def test_the_docs_show_commands_at_all():
    shown = [c for page in PAGES for _, c in fenced_commands(page.read_text(encoding="utf-8"))]
    assert len(shown) >= 30
    for words in ("train grpo", "eval", "experiment", "compare", "explore", "pipeline e3", "guard train"):
        assert any(f" {words} " in f"{c} " for c in shown), words


def test_a_misspelt_flag_or_field_fails_the_check():
    with pytest.raises(AssertionError, match="--horizn is not a config field"):
        check_command("redgym eval --config configs/eval_untuned.yaml --out runs/x --horizn 2")
    with pytest.raises(AssertionError, match="does not parse"):
        check_command("redgym train grpoo --out runs/x")
    with pytest.raises(AssertionError, match="--steps is not a config field"):
        check_command("redgym experiment --config configs/experiments/main.yaml --out runs/main --steps 3")
    with pytest.raises(AssertionError, match="horizon expects int"):
        check_command("redgym eval --out runs/x --horizon two")
    with pytest.raises(AssertionError, match="not a shipped config"):
        check_command("redgym eval --config configs/no_such.yaml --out runs/x")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def relative_links(text: str) -> list[str]:
    """Targets of the markdown links and images outside code (fenced blocks and inline spans)."""
    text = re.sub(r"(?ms)^```.*?^```", "", text)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = re.findall(r"\[[^\]\n]*\]\(([^)\s]+)\)", text)
    return [t for t in targets if not re.match(r"[a-z]+:", t)]


def test_relative_links_finds_links_and_images_but_not_code():
    text = "[a](docs/a.md) ![p](x/p.png) [w](https://x.org) `[c](no.md)`\n```\n[d](no.md)\n```\n[e](#top)"
    assert relative_links(text) == ["docs/a.md", "x/p.png", "#top"]
    assert slug("Several processes (`accelerate launch`)") == "several-processes-accelerate-launch"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_points_at_an_existing_file_and_heading(page):
    for target in relative_links(page.read_text(encoding="utf-8")):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page_id(page)}: link {target} points at no file"
        if anchor:
            headings = re.findall(r"(?m)^#+ (.*)$", dest.read_text(encoding="utf-8"))
            assert anchor in {slug(h) for h in headings}, f"{page_id(page)}: link {target}: no such heading"


def test_field_tables_in_the_docs_match_the_config_classes():
    """``make docs`` was run after the last change to a config field (its type, default or help)."""
    stale = docs_fields.sync(ROOT / "docs", write=False)
    assert stale == [], f"field tables out of date in {[str(p) for p in stale]}: run make docs"


def test_a_stale_or_missing_field_table_is_found(tmp_path):
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs, ignore=shutil.ignore_patterns("results"))
    page = docs / "trainers.md"
    text = page.read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| `generations_per_prompt` |"))
    page.write_text(text.replace(row + "\n", ""), encoding="utf-8")  # as if the field were added after make docs
    assert docs_fields.sync(docs, write=False) == [page]
    assert docs_fields.sync(docs, write=True) == [page]
    assert row in page.read_text(encoding="utf-8") and docs_fields.sync(docs, write=False) == []
    no_block = re.sub(r"(?s)<!-- fields:SFTConfig -->.*?<!-- /fields:SFTConfig -->", "", page.read_text("utf-8"))
    page.write_text(no_block, encoding="utf-8")
    with pytest.raises(RedgymError, match="no page of .* has a block <!-- fields:SFTConfig -->"):
        docs_fields.sync(docs, write=False)


def test_a_class_table_lists_its_own_fields_with_type_default_and_help():
    table = docs_fields.fields_table(TRAINERS["sft"][0])
    assert (
        table.splitlines()[0] == "Fields of `SFTConfig` (`src/redgym/trainers/sft.py`), besides those of `TrainConfig`:"
    )
    assert "| `weak_prompts` | str | `'rtp'` | toxicity-eliciting prompts whose toxic rests are taught" in table
    assert "`steps`" not in table  # TrainConfig's table holds it
    grpo = docs_fields.fields_table(TRAINERS["grpo"][0])
    assert "| `horizon` | int | `1` |" in grpo  # redefined with its own default, so GRPO's table shows it
