"""``redgym pipeline e3``: Explore -> Establish -> Exploit end to end, into one folder with one ``report.md``.

    redgym pipeline e3 --config configs/e3_demo.yaml --out runs/e3      (rerun the same line to resume)

The YAML has one section per step:

    explore:   {...}        # ExploreConfig fields (pipelines/explore.py)
    establish: {...}        # EstablishConfig fields; `samples` is the explore folder
    exploit:
      seeds: [0, 1]
      shared: {...}         # RunConfig fields of every arm (the scorer is set to the established classifier)
      eval: {...}           # evaluation-only fields
      trainer: grpo
      extends: ../experiments/gain.yaml:grpo   # optional: an experiment file's arm (path from this file's folder)
      train: {...}          # the trainer's fields (over the extended arm's), both trained arms
      diversity: {...}      # the fields the `diverse` arm adds (diversity, novelty, entropy terms)

The exploit step is a ``redgym experiment`` (its YAML written to ``exploit.yaml``): arms ``untuned``, ``exploit``
(the harm term alone) and, when ``diversity`` is given, ``exploit_diverse`` (with the diversity terms), over the
seeds, on the same held-out prompts. Finished steps are skipped when the pipeline runs again; the experiment
resumes cell by cell.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from redgym.config import load_config, read_yaml_mapping
from redgym.errors import RedgymError
from redgym.eval.markdown import demote
from redgym.experiments.runner import run_experiment
from redgym.pipelines.establish import EstablishConfig, establish
from redgym.pipelines.explore import ExploreConfig, explore
from redgym.runfolder import CONTENT_WARNING, atomic_write, check_writable

SECTIONS = {"explore", "establish", "exploit"}
# The exploit section's keys, one line of help each (`redgym pipeline e3 --help`, docs/e3.md); others are errors.
EXPLOIT_KEYS = {
    "seeds": "seeds of every arm (default [0, 1])",
    "split_seed": "seed of the one prompt split every arm is evaluated on (default 0)",
    "shared": "RunConfig fields of every arm (the scorer is set to the established classifier)",
    "eval": "RunConfig fields for the evaluations only",
    "trainer": "the trainer of both trained arms (default grpo, or the extended arm's)",
    "extends": "FILE:ARM, an experiment file's arm both trained arms start from (FILE relative to this file)",
    "train": "the trainer's config fields, both trained arms (over the extended arm's, key by key)",
    "diversity": "the fields the exploit_diverse arm adds (diversity, novelty and entropy terms); no arm without it",
    "transfer_defenders": "models each arm's adversary is also evaluated against (default none)",
}


def _section(data: dict, name: str, where: str) -> dict:
    x = data.get(name) or {}
    if not isinstance(x, dict):
        raise RedgymError(f"{where}: {name} must be a mapping of key: value")
    return x


def load_pipeline(path: Path) -> dict:
    data = read_yaml_mapping(path)
    where = f"config file {path}"
    if set(data) - SECTIONS:
        raise RedgymError(f"{where}: expected the sections {', '.join(sorted(SECTIONS))}")
    ex = _section(data, "exploit", where)
    bad = sorted(set(ex) - EXPLOIT_KEYS.keys())
    if bad:
        raise RedgymError(f"{where}: exploit: unknown key {bad[0]!r} (known: {', '.join(sorted(EXPLOIT_KEYS))})")
    return {name: _section(data, name, where) for name in SECTIONS}


def exploit_experiment(ex: dict, scorer: str, folder: Path = Path(".")) -> dict:
    """The exploit step as an experiment mapping: untuned, the trainer with the harm term alone, and (given
    ``diversity``) with the diversity terms added; every arm scored by the established classifier. An ``extends``
    path is made absolute from ``folder`` (the pipeline file's), since ``exploit.yaml`` is written elsewhere."""
    train = dict(ex.get("train") or {})
    arm: dict = {"train": train}
    if "extends" in ex:
        file, _, name = str(ex["extends"]).rpartition(":")
        arm["extends"] = f"{(folder / file).resolve()}:{name}" if file else str(ex["extends"])
    if "trainer" in ex or "extends" not in ex:
        arm["kind"] = ex.get("trainer", "grpo")
    arms = {"untuned": {"kind": "untuned"}, "exploit": arm}
    if ex.get("diversity"):
        arms["exploit_diverse"] = {**arm, "train": {**train, **ex["diversity"]}}
    return {
        "seeds": ex.get("seeds", [0, 1]),
        "split_seed": ex.get("split_seed", 0),
        "shared": {**(ex.get("shared") or {}), "scorer": scorer},
        "eval": dict(ex.get("eval") or {}),
        "transfer_defenders": ex.get("transfer_defenders", []),
        "arms": arms,
    }


def pipeline_configs(path: Path, out: Path) -> tuple[ExploreConfig, EstablishConfig, dict]:
    """Every step's config, built and checked (a bad field is reported before the first model loads)."""
    from redgym.experiments.runner import expand_grid, parse_experiment

    spec = load_pipeline(path)
    where = f"config file {path}"
    try:
        explore_cfg = load_config(ExploreConfig, None, spec["explore"])
        establish_cfg = load_config(EstablishConfig, None, {**spec["establish"], "samples": str(out / "explore")})
    except RedgymError as e:
        raise RedgymError(f"{where}: {e}") from None
    scorer = f"classifier:{out / 'establish' / 'classifier'}#{establish_cfg.positive_label}"
    experiment = exploit_experiment(spec["exploit"], scorer, Path(path).parent)
    expand_grid(parse_experiment(experiment, f"{where}: exploit"))
    return explore_cfg, establish_cfg, experiment


def run_e3(path: Path, out: Path, progress: bool = True) -> Path:
    """Run (or resume) the three steps into ``out``; returns the report path."""
    check_writable(out)
    explore_cfg, establish_cfg, experiment = pipeline_configs(path, out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "explore" / "explore.json").exists():
        explore(explore_cfg, out / "explore", progress)
    if not (out / "establish" / "establish.json").exists():
        establish(establish_cfg, out / "establish", progress)
    atomic_write(out / "exploit.yaml", yaml.safe_dump(experiment, sort_keys=False))
    run_experiment(out / "exploit.yaml", out / "exploit", progress=progress)
    report = out / "report.md"
    atomic_write(report, e3_report(out))
    return report


def e3_report(out: Path) -> str:
    """One page: what explore found, how good the established classifier is, and what exploit did."""
    parts = ["# E3: Explore → Establish → Exploit", "", f"> {CONTENT_WARNING}", ""]
    for step, md in (("explore", "explore.md"), ("establish", "establish.md")):
        text = (out / step / md).read_text(encoding="utf-8").split("\n")
        body = [
            x.replace("](", f"]({step}/") if x.startswith("![") else x for x in text if not x.startswith(("# ", "> "))
        ]
        parts += [f"## {step.capitalize()}", *body]
    comparison = out / "exploit" / "comparison.md"
    parts += [
        "## Exploit",
        "",
        "Arms over seeds on the same held-out prompts, scored by the established classifier "
        "(`exploit.yaml`): `exploit` has the harm term alone, `exploit_diverse` adds the diversity terms.",
        "",
    ]
    if comparison.exists():
        text = demote(comparison.read_text(encoding="utf-8"), 1).split("\n")
        parts += [x.replace("](plots/", "](exploit/plots/") for x in text if not x.startswith(("## ", "> "))]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(parts)) + "\n"


def publish_e3(out: Path, readme: Path, name: str = "e3") -> Path:
    """Copy the report and its plots to ``docs/results/<name>/`` beside ``readme`` (no generated samples: the
    report holds numbers and plots only), the exploit comparison to ``docs/results/<name>.md`` with a link to the
    report, and its rows into the README's results table."""
    from redgym.experiments.readme import publish_rows, results_page

    target = Path(readme).parent / "docs" / "results" / name
    target.mkdir(parents=True, exist_ok=True)
    for png in [
        out / "explore" / "clusters.png",
        out / "establish" / "confusion.png",
        *sorted((out / "exploit" / "plots").glob("*.png")),
    ]:
        if png.exists():
            atomic_write(target / png.name, png.read_bytes())
    flat = e3_report(out)
    for prefix in ("](explore/", "](establish/", "](exploit/plots/"):
        flat = flat.replace(prefix, "](")
    atomic_write(target / "report.md", flat)
    comparison = (out / "exploit" / "comparison.md").read_text(encoding="utf-8")
    comparison = comparison.replace("](plots/", f"]({name}/")
    what = "The whole pipeline report (explore clusters, establish F1 and confusion matrix, exploit)"
    atomic_write(results_page(readme, name), f"{what}: [{name}/report.md]({name}/report.md).\n\n" + comparison)
    publish_rows(readme, name, (out / "exploit" / "headline.md").read_text(encoding="utf-8"))
    return target / "report.md"
