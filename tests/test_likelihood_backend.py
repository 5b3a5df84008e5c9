"""The reward's NLL term asks the set-up's likelihood backend: the local defender itself unless ``likelihood_model``
names another local LM (models/base.py, setup.load_likelihood)."""

from redgym.cli import main
from redgym.config import RunConfig, load_config
from redgym.models.guard import GuardedDefender
from redgym.setup import load_adversary, prepare, run_adversary


def _cfg(model_dir, prompt_file, **kw) -> RunConfig:
    values = dict(
        adversary_model=str(model_dir),
        defender_model=str(model_dir),
        prompts=str(prompt_file),
        max_new_tokens=4,
        test_fraction=0.3,
        horizon=1,
        n_eval_prompts=2,
        dtype="float32",
        device="cpu",
    )
    return load_config(RunConfig, None, values | kw)


def _spy(lm) -> list:
    """Record the contexts each ``continuation_nll`` call of ``lm`` scores."""
    calls, real = [], lm.continuation_nll
    lm.continuation_nll = lambda ctx, cont, *a, **k: calls.append(list(cont)) or real(ctx, cont, *a, **k)
    return calls


def test_without_likelihood_model_the_local_defender_scores(tiny_model_dir, prompt_file):
    setup = prepare(_cfg(tiny_model_dir, prompt_file), need_embedder=False)
    assert setup.likelihood is setup.defender
    # naming the defender's own weights does not load a second copy
    same = prepare(_cfg(tiny_model_dir, prompt_file, likelihood_model=str(tiny_model_dir)), need_embedder=False)
    assert same.likelihood is same.defender


def test_a_guarded_defender_is_scored_by_the_bare_defender(tiny_model_dir, prompt_file):
    setup = prepare(_cfg(tiny_model_dir, prompt_file, defender_guard=str(tiny_model_dir)), need_embedder=False)
    assert isinstance(setup.defender, GuardedDefender) and setup.likelihood is setup.defender.defender


def test_likelihood_model_scores_the_nll_term_instead_of_the_defender(tiny_model_dir, tiny_gpt2_dir, prompt_file):
    setup = prepare(_cfg(tiny_model_dir, prompt_file, likelihood_model=str(tiny_gpt2_dir)), need_embedder=False)
    assert setup.likelihood is not setup.defender and setup.likelihood.name == str(tiny_gpt2_dir)
    by_likelihood, by_defender = _spy(setup.likelihood), _spy(setup.defender)
    convs = run_adversary(setup, load_adversary(setup), progress=False)
    adversary_turns = [t.text for c in convs for t in c.turns if t.speaker == "adversary"]
    assert by_likelihood == [adversary_turns] and by_defender == []
    assert all(t.scores["nll"] > 0 for c in convs for t in c.turns if t.speaker == "adversary")


def test_training_against_an_unreachable_server_is_one_line(tiny_model_dir, prompt_file, tmp_path, capsys):
    args = [
        "train",
        "grpo",
        "--out",
        str(tmp_path / "o"),
        "--adversary_model",
        str(tiny_model_dir),
        "--prompts",
        str(prompt_file),
        "--defender_backend",
        "openai",
        "--defender_base_url",
        "http://127.0.0.1:9/v1",
        "--likelihood_model",
        str(tiny_model_dir),
        "--http_max_retries",
        "0",
        "--quiet",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "connection failed for GET /models" in err
    assert "resume with" not in err  # nothing to resume: the server was checked before any step
