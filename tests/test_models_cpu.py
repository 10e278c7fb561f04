"""The CPU kernels (kwav2vec.models.cpu), each against the plain PyTorch operator it replaces:
the lane dropout (right keep rate in every lane, unbiased, exact gradient, seeded), blocked attention
(SDPA), FFTConv1d (nn.Conv1d, forward and backward), im2col (conv1d on (B, C, T)) and the
per-utterance frozen encoder (the batched pass); and `plain_pytorch()` switching all of them off."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_models_backbone import small_cfg

from kwav2vec.models.cpu import Dropout, dropout, plain_pytorch
from kwav2vec.models.cpu.fft_conv import FFTConv1d, fast_fft_length, fft_block_length
from kwav2vec.models.transformer import MultiheadSelfAttention, attention_mask
from kwav2vec.models.wav2vec2 import Wav2Vec2Model


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
    monkeypatch.setattr("kwav2vec.models.cpu.attention.ATTENTION_BLOCK_ELEMENTS", block_elements)
    torch.manual_seed(0)
    attn = MultiheadSelfAttention(32, 4, dropout=0.1).train()
    x = torch.randn(2, 9, 32)
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[1, 6:] = True
    mask = attention_mask(pad)
    monkeypatch.setattr("kwav2vec.models.cpu.attention.dropout", lambda t, p, training=True: t)
    ours = attn(x, mask)
    attn.dropout = 0.0
    reference = attn(x, mask)  # F.scaled_dot_product_attention
    assert torch.allclose(ours, reference, atol=1e-6)


def _reference(conv: FFTConv1d, x: torch.Tensor) -> torch.Tensor:
    return F.conv1d(x, conv.weight, conv.bias, padding=conv.padding, groups=conv.groups)


@pytest.mark.parametrize(
    "channels, kernel, groups, lengths",
    [
        (32, 64, 4, [5, 63, 64, 131, 257]),  # shorter than the padding, one block, several blocks
        (16, 33, 1, [1, 40, 199]),  # odd kernel, no groups
        (48, 128, 16, [199]),  # the BASE positional conv's shape, narrowed
    ],
)
def test_matches_conv1d_forward_and_backward(channels, kernel, groups, lengths):
    torch.manual_seed(0)
    conv = FFTConv1d(channels, channels, kernel, padding=kernel // 2, groups=groups).double()
    for T in lengths:
        x = torch.randn(3, channels, T, dtype=torch.float64, requires_grad=True)
        params = (x, conv.weight, conv.bias)
        ours, ref = conv(x), _reference(conv, x)
        assert ours.shape == ref.shape
        assert torch.allclose(ours, ref, atol=1e-10), T
        g = torch.randn_like(ref)
        for a, b in zip(torch.autograd.grad(ours, params, g), torch.autograd.grad(ref, params, g), strict=True):
            assert torch.allclose(a, b, atol=1e-9), T


def test_float32_error_is_rounding_only():
    torch.manual_seed(0)
    conv = FFTConv1d(64, 64, 128, padding=64, groups=16)
    x = torch.randn(2, 64, 500)
    ref = _reference(conv, x)
    assert (conv(x) - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_only_input_gradient_when_the_weight_is_frozen():
    conv = FFTConv1d(8, 8, 40, padding=20, groups=2)
    conv.weight.requires_grad_(False)
    x = torch.randn(1, 8, 30, requires_grad=True)
    conv(x).sum().backward()
    assert x.grad is not None and conv.weight.grad is None


def test_block_lengths_are_fast_and_long_enough():
    assert [fast_fft_length(n) for n in (1, 7, 17, 127, 257, 327)] == [1, 8, 18, 128, 270, 360]
    assert fft_block_length(327, 128) == 256  # two kernels, not the whole input
    assert fft_block_length(150, 128) == 150  # one block (150 = 2 * 3 * 5^2)


@pytest.mark.parametrize("mode", ["default", "layer_norm"])
def test_feature_encoder_matches_fairseq_style_conv_stack(mode):
    """Our im2col + matmul, time-major front end equals the plain conv1d/(B, C, T) formulation."""
    torch.manual_seed(0)
    enc = Wav2Vec2Model(small_cfg(extractor_mode=mode, conv_bias=True)).feature_extractor
    x = torch.randn(2, 3000)
    h = x.unsqueeze(1)
    for i, block in enumerate(enc.conv_layers):
        h = block[0](h)  # nn.Conv1d on (B, C, T)
        if mode == "layer_norm":
            ln = block[2][1]
            h = F.layer_norm(h.transpose(1, 2), ln.normalized_shape, ln.weight, ln.bias, ln.eps).transpose(1, 2)
        elif i == 0:
            gn = block[2]
            h = F.group_norm(h, gn.num_groups, gn.weight, gn.bias, gn.eps)
        h = F.gelu(h)
    ours, _ = enc(x)
    torch.testing.assert_close(ours, h.transpose(1, 2), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["default", "layer_norm"])
def test_feature_encoder_without_grad_equals_the_batched_pass(mode):
    """Without autograd the encoder runs one utterance at a time: same features and frame lengths."""
    torch.manual_seed(0)
    enc = Wav2Vec2Model(small_cfg(extractor_mode=mode)).feature_extractor
    x = torch.randn(3, 4000)
    lengths = torch.tensor([4000, 3100, 1700])
    batched, frames = enc(x, lengths)  # grad enabled: the whole batch at once
    with torch.no_grad():
        one_by_one, frames_no_grad = enc(x, lengths)
        unpadded, _ = enc(x)
    assert torch.equal(frames, frames_no_grad)
    torch.testing.assert_close(one_by_one, batched.detach(), atol=1e-5, rtol=1e-5)
    assert unpadded.shape == batched.shape


def test_plain_pytorch_turns_every_kernel_off(monkeypatch):
    """Under the one switch: F.dropout's own masks, conv1d itself, no im2col, no per-utterance loop."""
    x = torch.randn(4, 300)
    torch.manual_seed(3)
    with plain_pytorch():
        ours = dropout(x, 0.3)
    torch.manual_seed(3)
    assert torch.equal(ours, F.dropout(x, 0.3, training=True))
    conv = FFTConv1d(8, 8, 40, padding=20, groups=2)
    h = torch.randn(2, 8, 70)
    with plain_pytorch():
        assert torch.equal(conv(h), F.conv1d(h, conv.weight, conv.bias, padding=20, groups=2))

    def kernel(*args):
        raise AssertionError("a CPU kernel ran under plain_pytorch()")

    monkeypatch.setattr("kwav2vec.models.feature_encoder.conv_as_matmul", kernel)
    monkeypatch.setattr("kwav2vec.models.feature_encoder.per_utterance", kernel)
    enc = Wav2Vec2Model(small_cfg()).feature_extractor
    with plain_pytorch(), torch.no_grad():
        features, frames = enc(torch.randn(3, 4000), torch.tensor([4000, 3100, 1700]))
    assert features.shape[0] == 3 and frames.shape == (3,)
    with pytest.raises(AssertionError, match="CPU kernel"), torch.no_grad():
        enc(torch.randn(3, 4000))  # outside the switch the kernels are taken


def test_plain_pytorch_attention_mask_is_additive_and_equal():
    """Under plain_pytorch() (the ONNX export) the mask is 0 / -inf: the same attention as the
    boolean mask; under CPU autocast a float32 mask with a bf16 query is accepted."""
    torch.manual_seed(0)
    attn = MultiheadSelfAttention(32, 4).eval()
    x = torch.randn(2, 9, 32)
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[1, 6:] = True
    boolean = attention_mask(pad)
    with plain_pytorch():
        additive = attention_mask(pad, x.dtype)
    assert boolean.dtype == torch.bool and additive.dtype == torch.float32
    assert torch.equal(additive == 0, boolean) and bool(torch.isinf(additive[~boolean]).all())
    with torch.no_grad():
        torch.testing.assert_close(attn(x, additive), attn(x, boolean), atol=1e-6, rtol=1e-6)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = attn(x, additive)
        assert y.dtype == torch.bfloat16 and bool(torch.isfinite(y).all())
    assert attention_mask(None) is None
