"""Every command describes itself: ``redgym CMD --help`` lists the fields its config takes, each with its type,
default and help, as ``redgym train grpo --help`` always has."""

import argparse

import pytest

from redgym.cli import build_parser


def help_text(capsys, *command: str) -> str:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([*command, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        # one field of each command's own config, with the type and default it is declared with
        (("explore",), "--n_samples (int, default 2000): target outputs sampled"),
        (("explore",), "--horizon (int, default 3)"),  # and the shared fields it inherits
        (("establish",), "--labels_from (str, default 'scorer'): label source"),
        (("exploit",), "--classifier (str | None, default None): the harm term"),
        (("exploit",), "--generations_per_prompt (int, default 4)"),  # the default trainer's (grpo) fields
        (("pipeline", "e3"), "--per_cluster (int, default 6)"),
        (("pipeline", "e3"), "--judge_model (str, default 'smollm2-135m')"),
        (("pipeline", "e3"), "exploit.diversity: the fields the exploit_diverse arm adds"),
        (("experiment",), "arms.NAME.kind: one of untuned, dataset"),
        (("guard", "eval"), "--guard_format (str, default 'chat')"),
        (("guard", "train"), "--dpo_beta (float, default 0.1)"),
        (("guard", "report"), "rows[].asr: a redgym eval folder with defender_guard"),
        (("eval",), "--w_nll (float, default 0.1)"),
        (("train", "grpo"), "--kl_coef (float, default"),
    ],
)
def test_help_lists_the_config_fields(capsys, command, expected):
    assert expected in help_text(capsys, *command)


def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, parser) of every command that runs (a parser without subcommands)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, child in action.choices.items():
            yield from leaves(child, (*path, name))


def test_every_command_but_archive_compare_docs_and_rescore_has_a_field_epilog():
    found = dict(leaves(build_parser()))
    assert ("train", "sft") in found and ("guard", "report") in found and ("pipeline", "e3") in found
    bare = sorted(" ".join(path) for path, p in found.items() if not p.epilog)
    assert bare == ["archive", "compare", "docs", "rescore"]  # they read no config: folders and flags only
