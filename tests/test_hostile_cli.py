"""Hostile input through the CLI, one case per kind (issue 15 item 4): each is one line on stderr, exit code 2, and
nothing written."""

import os

import pytest

import redgym
from tests.test_cli import _bad, tiny_args


def write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "content,msg",
    [
        (b"- a\n- b\n", "must be a mapping"),
        (b"just text\n", "must be a mapping"),
        (b"a: " + b"[" * 5000 + b"\n", "nested too deeply"),
        (b"# " + b"x" * (2 * 1024 * 1024) + b"\n", "larger than"),
        (b"temperature: [1, 2\n", "not valid YAML"),
        (b"temperature: \xff\xfe\n", "not UTF-8"),
    ],
)
def test_hostile_config_files(content, msg, tiny_model_dir, prompt_file, tmp_path, capsys):
    cfg = write(tmp_path, "c.yaml", content)
    out = tmp_path / "run"
    _bad(tiny_args(tiny_model_dir, prompt_file, out, "--config", str(cfg)), capsys, out, msg)


@pytest.mark.parametrize(
    "name,content,msg",
    [
        ("nul.txt", b"hello\x00there\n", "NUL"),
        ("long.txt", b"word " * 40000 + b"\n", "line 1 is longer than"),
        ("blank.txt", b"\n\n   \n\n", "has no prompts"),
        ("broken.jsonl", b'{"text": "hi there"}\n{"text": "ok"\n', "line 2: not valid JSON"),
        ("latin1.txt", "caf\u00e9 talk\n".encode("cp1252"), "is not UTF-8 text"),
        ("columns.csv", b"id,body\n1,hello there\n", "no column 'text'"),
    ],
)
def test_hostile_prompt_files(name, content, msg, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    _bad(tiny_args(tiny_model_dir, write(tmp_path, name, content), out), capsys, out, msg)


@pytest.mark.parametrize(
    "extra,msg",
    [
        (("--temperature", "-1"), "temperature"),
        (("--horizon", "0"), "horizon"),
        (("--top_p", "1.5"), "top_p"),
        (("--defender_samples", "0"), "defender_samples"),
        (("--test_fraction", "1.5"), "test_fraction"),
        (("--max_new_tokens", "0"), "max_new_tokens"),
    ],
)
def test_numbers_out_of_range(extra, msg, tiny_model_dir, prompt_file, tmp_path, capsys):
    out = tmp_path / "run"
    _bad(tiny_args(tiny_model_dir, prompt_file, out, *extra), capsys, out, msg)


@pytest.mark.parametrize(
    "trainer,extra,msg",
    [
        ("ipo", ("--lr", "-0.001"), "lr"),
        ("ipo", ("--weak_supervision", "1.5"), "weak_supervision"),
        ("grpo", ("--generations_per_prompt", "0"), "generations_per_prompt"),
        ("ppo", ("--gamma", "2"), "gamma"),
    ],
)
def test_training_numbers_out_of_range(trainer, extra, msg, tiny_model_dir, prompt_file, tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        trainer,
        "--out",
        str(out),
        "--adversary_model",
        str(tiny_model_dir),
        "--defender_model",
        str(tiny_model_dir),
        "--prompts",
        str(prompt_file),
        *extra,
    ]
    _bad(args, capsys, out, msg)


def test_an_output_folder_inside_the_package_is_refused(tiny_model_dir, prompt_file, capsys):
    out = os.path.join(os.path.dirname(redgym.__file__), "runs_here")
    from pathlib import Path

    _bad(tiny_args(tiny_model_dir, prompt_file, out), capsys, Path(out), "inside the redgym package")


def test_an_output_folder_under_a_regular_file_is_refused(tiny_model_dir, prompt_file, tmp_path, capsys):
    # Runs as root too (CI runs as root): no permission lets anyone create a folder inside a regular file.
    blocker = write(tmp_path, "a_file", b"not a folder\n")
    out = blocker / "run"
    _bad(tiny_args(tiny_model_dir, prompt_file, out), capsys, out, f"output folder {out} cannot be written")
    assert blocker.read_bytes() == b"not a folder\n" and sorted(tmp_path.iterdir()) == [blocker, prompt_file]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_refused(tiny_model_dir, prompt_file, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    _bad(tiny_args(tiny_model_dir, prompt_file, ro / "run"), capsys, ro / "run", "cannot be written")


@pytest.mark.parametrize(
    "extra,msg",
    [
        (("--defender_guard", "{empty}"), "guard"),
        (("--scorer", "classifier:{empty}"), "classifier"),
    ],
)
def test_guard_or_classifier_folders_missing_files(extra, msg, tiny_model_dir, prompt_file, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "run"
    _bad(tiny_args(tiny_model_dir, prompt_file, out, *(e.format(empty=empty) for e in extra)), capsys, out, msg)


def test_a_csv_prompt_file_with_a_byte_order_mark_loads(tmp_path):
    from redgym.data.prompts import file_prompts

    path = write(tmp_path, "excel.csv", "\ufefftext,source\nhello there,a\nhow are you,b\n".encode("utf-8"))
    assert [p.turns for p in file_prompts(path)] == [("hello there",), ("how are you",)]


@pytest.mark.parametrize(
    "command,msg",
    [
        (["experiment", "--config", "x.yaml"], "experiment: set fields in the experiment YAML"),
        (["pipeline", "e3", "--config", "x.yaml"], "pipeline: set fields in the pipeline YAML"),
        (["compare", "DIR"], "compare takes no config fields (got --steps)"),
    ],
)
def test_config_fields_on_commands_that_take_none(command, msg, tmp_path, capsys):
    out = tmp_path / "out"
    args = [str(tmp_path) if a == "DIR" else a for a in command]
    _bad([*args, "--out", str(out), "--steps", "3"], capsys, out, msg)
