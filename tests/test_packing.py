"""Packed rows (models/packing.py): the prefix tree, its mask, and a packed forward pass equal to a padded one."""

import pytest
import torch

from redgym.models import load_model
from redgym.models.forward import continuation_forward
from redgym.models.packing import can_pack, kept_logit_rows, pack_rows, packed_inputs


def test_two_rows_sharing_a_context_are_one_tree_with_the_wanted_positions_last():
    # rows (ctx [1, 2], cont [3]) and (ctx [1, 2], cont [4, 5]): tokens 1, 2 once; 2 predicts 3 and 4, 4 predicts 5
    (pack,) = pack_rows([[1, 2], [1, 2]], [[3], [4, 5]])
    # tree nodes in order 1, 2, 3, 4, 5; wanted: 2 and 4, placed last
    assert pack.ids == [1, 3, 5, 2, 4]
    assert pack.positions == [0, 2, 3, 1, 2]  # each token's depth in its own row
    assert pack.kept == 2 and pack.rows == [0, 1]
    assert pack.predictors == [[0], [0, 1]]  # token 2 (kept 0) predicts 3; 2 then 4 (kept 1) predict 4, 5
    assert pack.paths == [[0, 3, 1], [0, 3, 4, 2]]  # where each row's tokens sit
    visible = [
        # 1  3  5  2  4
        [1, 0, 0, 0, 0],  # 1
        [1, 1, 0, 1, 0],  # 3: 1, 2, itself
        [1, 0, 1, 1, 1],  # 5: 1, 2, 4, itself (not 3, the other row's)
        [1, 0, 0, 1, 0],  # 2
        [1, 0, 0, 1, 1],  # 4
    ]
    assert pack.visible.int().tolist() == visible


def test_packs_close_at_the_token_cap_and_a_long_row_gets_its_own():
    rows = [[1, 2, 3], [7, 8, 9], [4] * 10, [1, 2, 3]]
    packs = pack_rows(rows, [[5], [5], [5], [6]], max_tokens=6)
    # taken in token order: [1, 2, 3] + 5 and + 6 share their context (5 positions), the long row alone, then the last
    assert [p.rows for p in packs] == [[0, 3], [2], [1]]
    assert [len(p.ids) for p in packs] == [5, 11, 4]
    with pytest.raises(ValueError, match="at least one context"):
        pack_rows([[]], [[1]])


def test_packed_inputs_pad_on_the_left_and_padding_sees_only_itself():
    packs = pack_rows([[1, 2], [3]], [[4], [5]], max_tokens=3)  # two packs: 3 and 2 positions
    ids, mask, pos, kept = packed_inputs(packs, pad_id=0, dtype=torch.float32, device="cpu")
    # the position predicting the continuation last: [1, 4, 2] and [5, 3] (left-padded)
    assert ids.tolist() == [[1, 4, 2], [0, 5, 3]] and pos.tolist() == [[0, 2, 1], [0, 1, 0]]
    assert kept == 1 and mask.shape == (2, 1, 3, 3)
    assert (mask[1, 0] == 0).int().tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    assert float(mask.min()) == torch.finfo(torch.float32).min


def test_kept_logit_rows_index_each_packs_wanted_positions_in_the_flat_kept_logits():
    # pack 0: the two rows of the first test (kept 2); pack 1: one row (kept 1), its wanted position right-aligned
    packs = pack_rows([[1, 2], [1, 2], [7]], [[3], [4, 5], [8]], max_tokens=5)
    assert [p.rows for p in packs] == [[0, 1], [2]] and [p.kept for p in packs] == [2, 1]
    # logits (2 packs x 2 kept positions) flattened: pack 1's one wanted position is its second (index 3)
    assert kept_logit_rows(packs, kept=2) == {0: [0], 1: [0, 1], 2: [3]}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_packed_forward_equals_the_padded_one_values_and_gradients(tiny_model_dir, tiny_gpt2_dir, arch):
    # G samples of one prompt, another prompt, uneven lengths, one row identical to another: log-probs, entropies,
    # hidden states and the gradient of a loss as with padding (RoPE and absolute positions alike)
    model, tok = load_model(str(tiny_model_dir if arch == "llama" else tiny_gpt2_dir), "float32", "cpu")
    assert can_pack(model)
    ctx = [[5, 6, 7, 8], [5, 6, 7, 8], [5, 6, 7, 8], [9, 10], [5, 6, 7, 8]]
    cont = [[11, 12, 13], [11, 14], [20, 21, 22, 23, 24], [11, 12, 13], [11, 12, 13]]
    outs, grads = [], []
    for packed in (True, False):
        model.zero_grad()
        o = continuation_forward(model, ctx, cont, tok.pad_token_id, 0.7, True, True, packed=packed)
        weights = torch.arange(o.logps.numel(), dtype=torch.float32).reshape(o.logps.shape)
        ((o.logps * weights).sum() + (o.need_hidden() * o.mask[..., None]).pow(2).sum()).backward()
        outs.append(o)
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    a, b = outs
    assert torch.equal(a.mask, b.mask) and a.mask.sum() == sum(len(c) for c in cont)
    assert torch.allclose(a.logps, b.logps, atol=1e-5)
    assert torch.allclose(a.need_entropy(), b.need_entropy(), atol=1e-5)
    m = a.mask[..., None]
    assert torch.allclose(a.need_hidden() * m, b.need_hidden() * m, atol=1e-5)
    assert len(grads[0]) == len(grads[1]) > 0
    assert all(torch.allclose(x, y, atol=1e-4, rtol=1e-4) for x, y in zip(*grads))


def test_a_model_with_sliding_window_or_flash_attention_runs_padded(tiny_model_dir):
    model, _ = load_model(str(tiny_model_dir), "float32", "cpu")
    assert can_pack(model)
    model.config.sliding_window = 4
    assert not can_pack(model)
    model.config.sliding_window = None
    model.config._attn_implementation = "flash_attention_2"
    assert not can_pack(model)
