"""The feature encoder as block products (`deploy.onnx_convs`, the int8 ONNX graph's form) equals
`conv1d` and `ConvFeatureEncoder`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kwav2vec.deploy.onnx_convs import IM2COL_MAX_TAPS, BlockConv, BlockConvFeatureEncoder
from kwav2vec.models.cpu import plain_pytorch
from kwav2vec.models.feature_encoder import ConvFeatureEncoder


@pytest.mark.parametrize("kernel,stride", [(3, 2), (2, 2), (10, 5), (7, 3), (2, 3), (1, 1), (5, 1)])
@pytest.mark.parametrize("channels", [1, 40])  # 1: one product over the concatenated taps
@pytest.mark.parametrize("frames", [37, 38])  # odd and even: the blocks' tail is cut differently
def test_block_conv_equals_conv1d(kernel, stride, channels, frames):
    torch.manual_seed(kernel * 10 + stride)
    conv = nn.Conv1d(channels, 16, kernel, stride=stride, bias=True)
    block = BlockConv(conv)
    assert block.concat == (channels * kernel <= IM2COL_MAX_TAPS)
    x = torch.randn(3, frames, channels)  # (B, T, C)
    want = F.conv1d(x.transpose(1, 2), conv.weight, conv.bias, stride=stride).transpose(1, 2)
    got = block(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_block_conv_refuses_what_the_feature_encoder_never_has():
    for conv in (nn.Conv1d(4, 4, 3, padding=1), nn.Conv1d(4, 4, 3, dilation=2), nn.Conv1d(4, 4, 3, groups=2)):
        with pytest.raises(ValueError, match="no padding, dilation or groups"):
            BlockConv(conv)


@pytest.mark.parametrize("mode", ["default", "layer_norm"])
@pytest.mark.parametrize("conv_bias", [False, True])
def test_block_encoder_equals_the_feature_encoder_on_padded_batches(mode, conv_bias):
    torch.manual_seed(0)
    layers = [(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2
    encoder = ConvFeatureEncoder(layers, mode=mode, conv_bias=conv_bias).eval()
    block = BlockConvFeatureEncoder(encoder)
    assert block.receptive_field == encoder.receptive_field
    lengths = torch.tensor([16000, 12345, 401, 7999])  # padding; one of a single frame
    x = torch.randn(4, 16000) * (torch.arange(16000) < lengths[:, None])
    with torch.no_grad(), plain_pytorch():
        want, want_frames = encoder(x, lengths)
        got, frames = block(x, lengths)
    assert torch.equal(frames, want_frames) and got.shape == want.shape
    valid = torch.arange(want.shape[1]) < frames[:, None]  # padded frames are nobody's output
    torch.testing.assert_close(got[valid], want[valid], atol=1e-5, rtol=1e-4)
