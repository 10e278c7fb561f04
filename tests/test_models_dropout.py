"""The fast CPU dropout: right keep rate in every lane, unbiased, exact gradient, seeded; and the
attention path it feeds computes what SDPA computes."""

from __future__ import annotations

import pytest
import torch

from kwav2vec.models.dropout import Dropout, dropout
from kwav2vec.models.transformer import MultiheadSelfAttention, attention_mask


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_and_scale(p):
    torch.manual_seed(0)
    x = torch.ones(400_003)  # not a multiple of the four lanes a draw gives
    y = dropout(x, p)
    kept = y != 0
    sigma = (p * (1 - p) / x.numel()) ** 0.5
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * sigma
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)), rtol=1e-4)
    assert abs(y.mean().item() - 1.0) < 5 * sigma / (1 - p)  # unbiased
    # each of the four 16-bit lanes of a 64-bit draw keeps at the same rate
    lanes = kept[: 400_000].view(-1, 4).float().mean(0)
    assert (lanes - (1 - p)).abs().max().item() < 5 * sigma * 2


def test_masks_are_seeded_and_fresh_every_call():
    x = torch.randn(3, 50, 64)
    torch.manual_seed(7)
    a, b = dropout(x, 0.3), dropout(x, 0.3)
    torch.manual_seed(7)
    assert torch.equal(a, dropout(x, 0.3))
    assert not torch.equal(a != 0, b != 0)


def test_gradient_is_the_mask_times_the_scale():
    x = torch.randn(8, 33, requires_grad=True)
    y = dropout(x, 0.25)
    y.backward(torch.ones_like(y))
    expected = (y.detach() != 0).float() / (1 - 0.25)
    assert torch.allclose(x.grad, expected, rtol=1e-4)


def test_edges_and_module():
    x = torch.randn(5, 7)
    assert dropout(x, 0.0) is x
    assert dropout(x, 0.5, training=False) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.5)
    m = Dropout(0.5)
    assert m.state_dict() == {} and "p=0.5" in repr(m)
    assert torch.equal(m.eval()(x), x)
    assert (m.train()(torch.ones(1000)) == 0).any()


@pytest.mark.parametrize("block_elements", [2**22, 2 * 4 * 9 * 2])  # one block; blocks of 2 query rows
def test_attention_with_dropout_is_sdpa_when_nothing_is_dropped(monkeypatch, block_elements):
    """The explicit CPU path (taken only for attention dropout) is SDPA's math, padding mask included,
    whether its query rows are done in one block or several."""
    monkeypatch.setattr("kwav2vec.models.transformer.ATTENTION_BLOCK_ELEMENTS", block_elements)
    torch.manual_seed(0)
    attn = MultiheadSelfAttention(32, 4, dropout=0.1).train()
    x = torch.randn(2, 9, 32)
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[1, 6:] = True
    mask = attention_mask(pad)
    monkeypatch.setattr("kwav2vec.models.transformer.dropout", lambda t, p, training=True: t)
    ours = attn(x, mask)
    attn.dropout = 0.0
    reference = attn(x, mask)  # F.scaled_dot_product_attention
    assert torch.allclose(ours, reference, atol=1e-6)
