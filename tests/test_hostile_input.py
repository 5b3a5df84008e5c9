"""Hostile input to every loader: random YAML configs, prompt files, labelling CSVs and guard JSONL files give a
valid object or redgym's own one-line error, never another exception (property-based, hypothesis)."""

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from redgym.config import RunConfig, load_config
from redgym.data.labels import read_labelled_csv
from redgym.data.prompts import load_prompts
from redgym.errors import RedgymError
from redgym.guard.data import read_guard_test, read_guard_train
from redgym.trainers.ipo import IPOConfig
from redgym.trainers.ppo import PPOConfig

FIELDS = [
    "temperature",
    "top_p",
    "horizon",
    "batch_size",
    "max_new_tokens",
    "max_context_tokens",
    "seed",
    "n_eval_prompts",
    "w_nll",
    "defender_samples",
    "scorer",
    "prompts",
    "lr",
    "steps",
    "beta",
    "weak_supervision",
    "gae_lambda",
    "gamma",
    "samples_per_node",
    "kl_coef",
    "test_fraction",
    "not_a_field",
]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**12), 10**12), st.floats(allow_nan=True), st.text(max_size=20)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
TEXT_BYTES = st.one_of(st.binary(max_size=300), st.text(max_size=300).map(lambda t: t.encode("utf-8")))
HOSTILE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def survives(call) -> object:
    """The loader's result, or None when it raised RedgymError; any other exception fails the test."""
    try:
        return call()
    except RedgymError as e:
        assert "\n" not in str(e), str(e)  # one line
        return None


@HOSTILE
@given(
    config=st.one_of(st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=6), VALUES),
    cls=st.sampled_from([RunConfig, IPOConfig, PPOConfig]),
)
def test_random_yaml_configs_load_or_fail_in_one_line(config, cls, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    cfg = survives(lambda: load_config(cls, path))
    assert cfg is None or isinstance(cfg, cls)


@HOSTILE
@given(data=TEXT_BYTES)
def test_random_config_bytes_load_or_fail_in_one_line(data, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(data)
    survives(lambda: load_config(RunConfig, path))


@HOSTILE
@given(data=TEXT_BYTES, suffix=st.sampled_from([".txt", ".jsonl", ".csv"]))
def test_random_prompt_files_load_or_fail_in_one_line(data, suffix, tmp_path):
    path = tmp_path / f"prompts{suffix}"
    path.write_bytes(data)
    prompts = survives(lambda: load_prompts(str(path)))
    assert prompts is None or (prompts and all(p.turns for p in prompts))


@HOSTILE
@given(data=TEXT_BYTES, header=st.sampled_from([b"", b"text,label\n", b"\xef\xbb\xbftext,label\n", b"label\n"]))
def test_random_labelling_csvs_load_or_fail_in_one_line(data, header, tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes(header + data)
    survives(lambda: read_labelled_csv(path))


@HOSTILE
@given(data=TEXT_BYTES)
def test_random_guard_files_load_or_fail_in_one_line(data, tmp_path):
    path = tmp_path / "guard.jsonl"
    path.write_bytes(data)
    survives(lambda: read_guard_train(path))
    survives(lambda: read_guard_test(path))
