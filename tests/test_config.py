from pathlib import Path

import pytest

from redgym.config import RunConfig, load_config, parse_overrides
from redgym.errors import RedgymError

ROOT = Path(__file__).resolve().parents[1]


def test_yaml_then_overrides_win(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("horizon: 2\nw_nll: 0.3\nscorer: profanity\n")
    cfg = load_config(RunConfig, f, {"w_nll": "0", "adversary_checkpoint": "none", "batch_size": "4"})
    assert (cfg.horizon, cfg.w_nll, cfg.batch_size, cfg.adversary_checkpoint) == (2, 0.0, 4, None)
    assert cfg.temperature == 0.7  # untouched default


def test_unknown_key_names_the_closest_field(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("horizn: 2\n")
    with pytest.raises(RedgymError, match=r"unknown config key 'horizn' \(did you mean 'horizon'\?\)"):
        load_config(RunConfig, f)
    with pytest.raises(RedgymError, match="command line: unknown config key 'nope'"):
        load_config(RunConfig, None, {"nope": "1"})


@pytest.mark.parametrize(
    "key,value,msg",
    [
        ("horizon", "three", "horizon expects int, got 'three'"),
        ("horizon", "2.5", "horizon expects int"),
        ("temperature", "hot", "temperature expects float"),
        ("horizon", "0", "horizon must be >= 1"),
        ("adversary_format", "xml", "adversary_format must be plain or chat, got 'xml'"),
    ],
)
def test_bad_values_are_one_line_errors(key, value, msg):
    with pytest.raises(RedgymError, match=msg):
        load_config(RunConfig, None, {key: value})


def test_yaml_types_are_checked(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("horizon: [1, 2]\n")
    with pytest.raises(RedgymError, match="horizon expects int"):
        load_config(RunConfig, f)
    f.write_text("horizon: true\n")  # YAML booleans are not ints
    with pytest.raises(RedgymError, match="horizon expects int"):
        load_config(RunConfig, f)
    f.write_text("a: [\n")
    with pytest.raises(RedgymError, match="not valid YAML"):
        load_config(RunConfig, f)
    f.write_bytes(b"horizon: \xff\xfe\n")
    with pytest.raises(RedgymError, match="not UTF-8"):
        load_config(RunConfig, f)


def test_parse_overrides_forms():
    assert parse_overrides(["--horizon", "2", "--w-nll=-0.5", "--prompts", "a-b.txt"]) == {
        "horizon": "2",
        "w_nll": "-0.5",
        "prompts": "a-b.txt",
    }
    with pytest.raises(RedgymError, match="--horizon needs a value"):
        parse_overrides(["--horizon"])
    with pytest.raises(RedgymError, match="expected --key value"):
        parse_overrides(["horizon"])


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    from redgym.cli import CONFIG_CLASSES
    from redgym.models.loading import KNOWN_MODELS
    from redgym.scorers.toxicity import build_scorer

    kind = path.stem.split("_")[0]
    assert kind in CONFIG_CLASSES  # the name says which command reads the file (eval, or a trainer): no guessing
    cfg = load_config(CONFIG_CLASSES[kind], path)  # validate() runs here: a bad field fails this line
    # What validate() cannot know. The usage line in the file's header runs this very file with that command:
    command = "redgym eval" if kind == "eval" else f"redgym train {kind}"
    assert f"{command} --config configs/{path.name} --out DIR" in path.read_text()
    # It runs offline, as shipped: every model loaded here is a shipped known name (a server's defender is asked for
    # by name and loads nothing here), the prompts are a source shipped with a dependency, and the scorer builds (a
    # misspelled one would fail only once a run had loaded its models).
    local = [cfg.adversary_model, cfg.likelihood_model or cfg.defender_model]
    if cfg.defender_backend == "local":
        local.append(cfg.defender_model)
    assert set(local) <= set(KNOWN_MODELS), local
    assert cfg.prompts in ("chitchat", "rtp", "advbench")
    assert callable(build_scorer(cfg.scorer))


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_experiment_expands(path):
    from redgym.experiments.runner import expand_grid, load_experiment

    exp = load_experiment(path)
    cells = expand_grid(exp)
    assert {c.arm for c in cells} == {a.name for a in exp.arms}
    # budgets are steps: a trained arm's length never depends on machine speed
    assert all(c.train_cfg.max_minutes == 0 for c in cells if c.train_cfg is not None)


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "pipelines").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_pipeline_config_builds_its_steps(path, tmp_path):
    from redgym.pipelines.e3 import pipeline_configs

    explore_cfg, establish_cfg, experiment = pipeline_configs(path, tmp_path / "out")
    assert explore_cfg.n_samples >= 2000 and explore_cfg.clusters >= 50  # the explore scale
    assert establish_cfg.samples == str(tmp_path / "out" / "explore")
    assert len(experiment["seeds"]) >= 3 and set(experiment["arms"]) == {"untuned", "exploit"}  # no diversity terms


GUARD_CONFIGS = {
    "sft": "train",
    "sft_round2": "train",
    "dpo": "train",
    "dpo_hard": "train",
    "eval": "eval",
    "asr": "run",
    "redteam_round2": "grpo",
    "report": "report",
}


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "guard").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_guard_config_loads(path):
    from redgym.guard.evaluate import GuardConfig
    from redgym.guard.report import load_rows
    from redgym.guard.train import GuardTrainConfig
    from redgym.trainers.registry import TRAINERS

    kind = GUARD_CONFIGS[path.stem]  # a new guard config must say here what reads it
    if kind == "report":
        assert load_rows(path)
    else:
        cls = {"train": GuardTrainConfig, "eval": GuardConfig, "run": RunConfig, "grpo": TRAINERS["grpo"][0]}[kind]
        load_config(cls, path)


def test_a_saved_bool_scale_rewards_still_loads(tmp_path):
    # run folders written before scale_rewards took none | group | batch saved true / false; --resume reads them
    from redgym.trainers.grpo import GRPOConfig

    p = tmp_path / "config.yaml"
    p.write_text("scale_rewards: true\n")
    assert load_config(GRPOConfig, p).scale_rewards == "group"
    p.write_text("scale_rewards: false\n")
    assert load_config(GRPOConfig, p).scale_rewards == "none"
    assert load_config(GRPOConfig, None, {"scale_rewards": "batch"}).scale_rewards == "batch"
    with pytest.raises(RedgymError, match="none, group or batch"):
        load_config(GRPOConfig, None, {"scale_rewards": "std"})


def test_a_command_refuses_a_field_of_a_part_it_does_not_take():
    # establish rolls nothing out: a rollout or reward field would do nothing there, so it is an unknown key
    from redgym.pipelines.establish import EstablishConfig

    cfg = load_config(EstablishConfig, None, {"samples": "runs/e3/explore", "scorer": "wordlist", "seed": 3})
    assert (cfg.scorer, cfg.seed, cfg.batch_size) == ("wordlist", 3, 16)
    for key in ("horizon", "w_nll", "adversary_model"):
        with pytest.raises(RedgymError, match=f"unknown config key '{key}'"):
            load_config(EstablishConfig, None, {"samples": "x", key: "1"})


def test_explore_takes_the_run_parts_it_uses_and_refuses_the_rest():
    from redgym.pipelines.explore import ExploreConfig

    cfg = load_config(ExploreConfig, None, {"defender_model": "m", "prompts": "rtp", "max_new_tokens": 8, "seed": 2})
    assert (cfg.defender_model, cfg.prompts, cfg.max_new_tokens, cfg.data_seed) == ("m", "rtp", 8, 2)
    for key in ("w_nll", "n_eval_prompts", "defender_base_url", "defender_guard"):  # reward, eval, HTTP, guard
        with pytest.raises(RedgymError, match=f"unknown config key '{key}'"):
            load_config(ExploreConfig, None, {key: "1"})
