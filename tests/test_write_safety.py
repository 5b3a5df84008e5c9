"""Files appear whole or not at all: a checkpoint that cannot be written (disk full, no permission) keeps the
previous one and says so in one line, and the run resumes from it; the shared writers leave no temporary files."""

import errno
import json

import numpy as np
import pytest
from accelerate import Accelerator
from conftest import tiny_run_fields

from redgym.cli import main
from redgym.runfolder import atomic_files, atomic_savefig, atomic_write, replace_folder


def train_args(model_dir, prompts, *extra):
    fields = tiny_run_fields(model_dir, prompts, generations_per_prompt=2, micro_batch_size=4, checkpoint_every=1)
    return ["train", "grpo", "--quiet", *fields, *extra]


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EACCES])
def test_a_failed_checkpoint_keeps_the_previous_one_and_the_run_resumes(
    error, tiny_model_dir, prompt_file, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    real, calls = Accelerator.save_state, []

    def full_disk(self, output_dir=None, **kw):  # the second checkpoint hits a full disk (or a read-only folder)
        calls.append(output_dir)
        if len(calls) == 2:
            real(self, output_dir, **kw)  # part of it is written before the error, as on a real disk
            raise OSError(error, __import__("os").strerror(error))
        return real(self, output_dir, **kw)

    monkeypatch.setattr(Accelerator, "save_state", full_disk)
    assert main(train_args(tiny_model_dir, prompt_file, "--out", str(out), "--steps", "3")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "checkpoint at step 2 could not be written" in err and __import__("os").strerror(error) in err
    assert "the previous checkpoint step_000001 is intact" in err and f"--resume {out}" in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000001"]  # no partial one left
    assert json.loads((out / "checkpoints" / "step_000001" / "trainer_state.json").read_text())["step"] == 1
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]

    monkeypatch.setattr(Accelerator, "save_state", real)  # space freed: resume from step 1 and finish
    assert main(train_args(tiny_model_dir, prompt_file, "--resume", str(out), "--steps", "3")) == 0
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert sorted(p.name for p in (out / "checkpoints").iterdir())[-1] == "step_000003"


def test_writers_leave_whole_files_and_no_temporaries(tmp_path):
    import matplotlib.pyplot as plt

    atomic_write(tmp_path / "a.txt", "one\n")
    # a failure while writing leaves the old file and no temporary file
    with pytest.raises(RuntimeError), atomic_files(tmp_path) as tmp:
        (tmp / "a.txt").write_text("two\n")
        raise RuntimeError("killed")
    assert (tmp_path / "a.txt").read_text() == "one\n"
    with atomic_files(tmp_path) as tmp:
        (tmp / "a.txt").write_text("three\n")
        (tmp / "sub").mkdir()
        np.save(tmp / "sub" / "x.npy", np.arange(3))
    assert (tmp_path / "a.txt").read_text() == "three\n" and np.load(tmp_path / "sub" / "x.npy").tolist() == [0, 1, 2]
    fig = plt.figure()
    atomic_savefig(fig, tmp_path / "p.png")
    plt.close(fig)
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    old, new = tmp_path / "folder", tmp_path / "new"
    old.mkdir(), new.mkdir()
    (old / "f").write_text("old"), (new / "f").write_text("new")
    replace_folder(new, old)
    assert (old / "f").read_text() == "new" and not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "folder", "p.png", "sub"]


# Where a file may be opened or saved in place: the atomic writers themselves, and saves into a fresh temporary folder.
IN_PLACE_ALLOWED = {
    ("runfolder.py", "fdopen"),
    ("models/loading.py", "save_pretrained"),
    ("trainers/checkpoints.py", "save_pretrained"),
    ("scorers/classifier.py", "save_pretrained"),
    ("runfolder.py", "savefig"),
}
WRITERS = {"write_text", "write_bytes", "savefig", "save_pretrained", "save_file", "copyfile", "fdopen"}


def test_no_module_writes_a_file_in_place():
    # Every file a run writes goes through runfolder's atomic writers: a scan of the source for the calls that
    # write a file directly (a new one would need a reason to be listed above).
    import ast
    from pathlib import Path

    import redgym

    root = Path(redgym.__file__).parent
    found = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            mode = [a.value for a in node.args[1:2] if isinstance(a, ast.Constant)] + [
                k.value.value for k in node.keywords if k.arg == "mode" and isinstance(k.value, ast.Constant)
            ]
            if name in WRITERS or (name == "open" and any(c in str(m) for m in mode for c in "wax")):
                found.add((path.relative_to(root).as_posix(), name))
    assert found <= IN_PLACE_ALLOWED, sorted(found - IN_PLACE_ALLOWED)
