"""One command per run folder (runfolder.hold_folder): a second command on a held folder ends in one line naming the
holder, exit 2; a killed holder blocks nothing; a refused command leaves no folder behind. Real processes."""

import signal
import subprocess
import sys

from redgym.cli import main
from redgym.runfolder import HOLDER_FILE, LOCK_FILE
from tests.test_cli import tiny_args

# a process holding a folder as a redgym command does, until it is killed
HOLD = """import sys, time
from pathlib import Path
from redgym.runfolder import hold_folder
with hold_folder(Path(sys.argv[1]), "eval --out " + sys.argv[1]):
    print("held", flush=True)
    time.sleep(300)
"""


def _holder(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_command_on_a_held_folder_ends_in_one_line_naming_the_holder(
    tiny_model_dir, prompt_file, tmp_path, capsys
):
    out = tmp_path / "run"
    holder = _holder(out)
    try:
        second = subprocess.run(
            [sys.executable, "-m", "redgym", *tiny_args(tiny_model_dir, prompt_file, out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert second.returncode == 2, second.stderr
        assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
        assert f"{out} is in use by pid {holder.pid} (redgym eval --out {out})" in second.stderr
        # a resumed training run is refused the same way, and nothing of either command was written
        assert main(["train", "grpo", "--resume", str(out)]) == 2
        assert f"in use by pid {holder.pid}" in capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == sorted([HOLDER_FILE, LOCK_FILE])
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_blocks_nothing(tiny_model_dir, prompt_file, tmp_path):
    out = tmp_path / "run"
    holder = _holder(out)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (out / HOLDER_FILE).exists()  # its name stays behind; its lock went with the process
    assert main(tiny_args(tiny_model_dir, prompt_file, out)) == 0
    assert (out / "report.json").exists() and not (out / HOLDER_FILE).exists()


def test_a_command_refused_on_bad_input_leaves_no_folder(tiny_model_dir, prompt_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_args(tiny_model_dir, prompt_file, out, "--no_such_field", "1")) == 2
    assert "no_such_field" in capsys.readouterr().err
    assert not out.exists()


def test_an_experiment_skips_the_cells_another_command_is_running(tiny_model_dir, prompt_file, tmp_path, caplog):
    """redgym experiment holds each cell, not its --out: a second command on the same grid runs the cells nobody
    holds and says which it left to the holder."""
    import yaml

    from tests.test_experiment import spec

    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(spec(tiny_model_dir, prompt_file), sort_keys=False))
    out = tmp_path / "exp"
    holder = _holder(out / "untuned" / "seed_0")
    try:
        with caplog.at_level("INFO", logger="redgym"):
            assert main(["experiment", "--config", str(cfg), "--out", str(out), "--only", "untuned", "--quiet"]) == 0
        assert (out / "untuned" / "seed_1" / "report.json").exists()
        assert not (out / "untuned" / "seed_0" / "report.json").exists()  # the holder's, untouched
        assert f"untuned seed 0: skipped, in use by pid {holder.pid}" in caplog.text
        assert "1 cell(s) were running in another command" in caplog.text
    finally:
        holder.kill()
        holder.wait()
    assert main(["experiment", "--config", str(cfg), "--out", str(out), "--only", "untuned", "--quiet"]) == 0
    assert (out / "untuned" / "seed_0" / "report.json").exists()  # once the holder is gone, the next run does it
