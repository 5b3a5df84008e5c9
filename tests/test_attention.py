"""models/attention.py: grouped-query SDPA without copied keys and values gives transformers' SDPA numbers."""

import pytest
import torch

from redgym.models import load_model
from redgym.models.attention import NAME
from redgym.models.forward import continuation_forward


def test_loaded_models_use_it_and_agree_with_transformers_sdpa_forward_and_backward(tiny_model_dir):
    model, tok = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    assert model.config._attn_implementation == NAME and model.config.num_key_value_heads < 4  # grouped heads
    ctx = [tok("hello there, how are you")["input_ids"], tok("no")["input_ids"]]  # left padding: a mask
    cont = [tok(" we could go")["input_ids"], tok(" to the park today")["input_ids"]]
    results = []
    for impl in (NAME, "sdpa"):
        model.set_attn_implementation(impl)
        model.zero_grad()
        out = continuation_forward(model, ctx, cont, tok.pad_token_id)
        (out.logps * out.mask).sum().backward()
        results.append((out.logps.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (ours, our_grads), (theirs, their_grads) = results
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert len(our_grads) == len(their_grads) > 0
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(our_grads, their_grads))


@pytest.mark.parametrize("impl", [NAME, "sdpa"])
def test_greedy_generation_with_a_cache_is_the_same(tiny_model_dir, impl):
    model, tok = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    enc = tok(["hello there, how are you", "no"], return_tensors="pt", padding=True, return_token_type_ids=False)
    assert enc["attention_mask"].min() == 0  # left padding: a mask at every step
    model.set_attn_implementation(impl)
    out = model.generate(**enc, do_sample=False, max_new_tokens=6, min_new_tokens=6, pad_token_id=tok.pad_token_id)
    model.set_attn_implementation("sdpa" if impl == NAME else NAME)
    again = model.generate(**enc, do_sample=False, max_new_tokens=6, min_new_tokens=6, pad_token_id=tok.pad_token_id)
    assert torch.equal(out, again)
