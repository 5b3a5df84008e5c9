"""Fixed-seed tiny runs of every trainer and the guard's SFT, for checking that a refactor changes no number.

    .venv/bin/python bench/fixed_seed_metrics.py runs/same-before        (on the old code, e.g. after git stash)
    .venv/bin/python bench/fixed_seed_metrics.py runs/same-after         (on the new code)
    .venv/bin/python bench/fixed_seed_metrics.py --compare runs/same-before runs/same-after

Each run is ``redgym train`` (grpo, ppo, ipo, sft) or ``redgym guard train --stage sft`` on the tests' tiny random
model (tests/conftest.build_tiny_model), 3 steps, CPU, seed 0; ``metrics.json`` keeps every step's metrics except
wall-clock time and memory. ``--compare`` prints one line per run and ends with ``BENCH identical=N runs=M``.
"""

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REDGYM = str(ROOT / ".venv" / "bin" / "redgym")


def steps(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time" and not k.startswith(("time/", "sys/"))} for r in rows]


def run_all(root: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import CORPUS, build_tiny_model

    root.mkdir(parents=True, exist_ok=True)
    model = root / "tiny"
    if not model.exists():
        build_tiny_model(model)
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(CORPUS[:9]) + "\n")
    common = f"--adversary_model {model} --defender_model {model} --prompts {prompts} --scorer wordlist --horizon 1 "
    common += "--max_new_tokens 6 --min_new_tokens 1 --dev_fraction 0.2 --test_fraction 0.3 --max_context_tokens 64 "
    common += "--eval_after false --steps 3 --prompts_per_step 2 --batch_size 4 --device cpu"
    extra = {
        "grpo": "--generations_per_prompt 4",
        "ppo": "",
        "ipo": "--weak_supervision 0 --samples_per_node 3",
        "sft": "--weak_prompts rtp",
    }
    commands = {name: ["train", name, *common.split(), *args.split()] for name, args in extra.items()}
    guard = f"--guard_model {model} --guard_format plain --max_context_tokens 64 --steps 3 --batch_size 4 "
    guard += "--max_train 8 --rationale_tokens 8 --device cpu"
    commands["guard_sft"] = ["guard", "train", "--stage", "sft", *guard.split()]
    result = {}
    for name, cmd in commands.items():
        out = root / name
        done = subprocess.run([REDGYM, *cmd, "--out", str(out), "--quiet"], capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{name} failed: {done.stderr.strip().splitlines()[-1]}")
        result[name] = steps(out)
        print(f"{name}: {len(result[name])} steps", flush=True)
    (root / "metrics.json").write_text(json.dumps(result, indent=1, sort_keys=True))


def compare(a: Path, b: Path) -> None:
    def norm(rows):  # nan == nan for this purpose; a wall-clock stamp is never the same
        return [
            {k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items() if k != "time"}
            for r in rows
        ]

    old, new = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    same = 0
    for name in old:
        ok = norm(old[name]) == norm(new.get(name, []))
        same += ok
        keys = len(old[name][0]) if old[name] else 0
        print(f"{name}: {len(old[name])} steps x {keys} metrics: {'identical' if ok else 'DIFFERENT'}")
    print(f"BENCH identical={same} runs={len(old)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, nargs="+", help="a folder to run into, or two with --compare")
    ap.add_argument("--compare", action="store_true", help="compare two folders' metrics.json")
    args = ap.parse_args()
    if args.compare:
        compare(*args.out)
    else:
        run_all(args.out[0])


if __name__ == "__main__":
    main()
