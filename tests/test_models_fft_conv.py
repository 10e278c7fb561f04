"""FFTConv1d computes what nn.Conv1d computes, forward and backward, for every input length."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kwav2vec.models.fft_conv import FFTConv1d, fast_fft_length, fft_block_length


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
