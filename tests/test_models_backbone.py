"""Backbone: presets, parameter counts, frame lengths, padding invariance, boundary errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kwav2vec.models.config import Wav2Vec2Config, preset
from kwav2vec.models.transformer import TransformerEncoderLayer
from kwav2vec.models.wav2vec2 import Wav2Vec2Model


def small_cfg(**kw) -> Wav2Vec2Config:
    """A very small model with the BASE conv geometry (stride 320, receptive field 400)."""
    base = dict(
        conv_feature_layers="[(48, 10, 5)] + [(48, 3, 2)] * 4 + [(48, 2, 2)] * 2",
        encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
        conv_pos=16, conv_pos_groups=4, final_dim=16, latent_vars=8, latent_groups=2, num_negatives=5,
    )
    base.update(kw)
    return Wav2Vec2Config(**base)


def test_base_preset_has_fairseq_parameter_count():
    with torch.device("meta"):  # no memory, no init cost
        model = Wav2Vec2Model(preset("base"))
    assert sum(p.numel() for p in model.parameters()) == 95_044_608


def test_presets_shape():
    tiny, large = preset("tiny"), preset("large")
    assert tiny.layer_norm_first and tiny.extractor_mode == "layer_norm" and tiny.frame_stride == 320
    assert (large.encoder_embed_dim, large.encoder_layers, large.encoder_attention_heads) == (1024, 24, 16)
    with torch.device("meta"):
        n_tiny = sum(p.numel() for p in Wav2Vec2Model(tiny).parameters())
        n_large = sum(p.numel() for p in Wav2Vec2Model(large).parameters())
    assert 1_000_000 < n_tiny < 8_000_000
    assert 310_000_000 < n_large < 320_000_000
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")
    with pytest.raises(TypeError, match="unknown Wav2Vec2Config field"):
        preset("tiny", not_a_field=1)


def test_state_dict_keys_mirror_fairseq():
    keys = set(Wav2Vec2Model(small_cfg()).state_dict())
    for k in [
        "feature_extractor.conv_layers.0.0.weight", "feature_extractor.conv_layers.0.2.weight",
        "layer_norm.weight", "post_extract_proj.weight", "mask_emb", "quantizer.vars",
        "quantizer.weight_proj.weight", "project_q.weight", "final_proj.weight",
        "encoder.pos_conv.0.bias", "encoder.pos_conv.0.parametrizations.weight.original0",
        "encoder.layers.1.self_attn.q_proj.weight", "encoder.layers.1.self_attn.out_proj.bias",
        "encoder.layers.1.self_attn_layer_norm.weight", "encoder.layers.1.fc1.weight",
        "encoder.layers.1.fc2.weight", "encoder.layers.1.final_layer_norm.weight", "encoder.layer_norm.weight",
    ]:
        assert k in keys, k
    ln_keys = set(Wav2Vec2Model(small_cfg(extractor_mode="layer_norm")).state_dict())
    assert "feature_extractor.conv_layers.3.2.1.weight" in ln_keys


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=400, max_value=6000), min_size=1, max_size=4))
def test_frame_lengths_match_conv_output(lengths):
    torch.manual_seed(0)
    model = _MODELS["default"]
    S = max(lengths)
    w = torch.randn(len(lengths), S)
    L = torch.tensor(lengths)
    with torch.no_grad():
        x, frames = model.encode(w, L)
    expected = []
    for n in lengths:  # conv formula by hand, one layer at a time
        for _, k, s in model.cfg.conv_layers:
            n = (n - k) // s + 1
        expected.append(n)
    assert frames.tolist() == expected
    assert model.frame_lengths(L).tolist() == expected
    assert x.shape[:2] == (len(lengths), max(expected))
    # the conv stack itself produces exactly formula(S) frames
    with torch.no_grad():
        feats, _ = model.feature_extractor(torch.randn(1, S))
    assert feats.shape[1] == model.frame_lengths(torch.tensor([S])).item()  # (B, T, C)


_MODELS = {
    mode: Wav2Vec2Model(small_cfg(extractor_mode=mode, layer_norm_first=(mode == "layer_norm"))).eval()
    for mode in ("default", "layer_norm")
}


@pytest.mark.parametrize("mode", ["default", "layer_norm"])
def test_padded_batch_matches_each_utterance_alone(mode):
    torch.manual_seed(1)
    model = Wav2Vec2Model(small_cfg(extractor_mode=mode, layer_norm_first=(mode == "layer_norm"), normalize=True)).eval()
    lengths = [8000, 5123, 2400]
    waves = [torch.randn(n) for n in lengths]
    batch = torch.zeros(len(lengths), max(lengths))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    with torch.no_grad():
        x, frames = model.encode(batch, torch.tensor(lengths))
        for i, w in enumerate(waves):
            xi, fi = model.encode(w[None], torch.tensor([len(w)]))
            assert fi.item() == frames[i].item()
            torch.testing.assert_close(x[i, : fi.item()], xi[0], atol=1e-5, rtol=1e-4)


def test_encode_masking_only_in_training():
    model = _MODELS["layer_norm"]
    w = torch.randn(2, 8000)
    with torch.no_grad():
        a, _ = model.encode(w, mask_time_prob=0.5, mask_time_length=2, mask_channel_prob=0.5, mask_channel_length=4)
        b, _ = model.encode(w)
    torch.testing.assert_close(a, b)  # eval mode: no masking
    m = Wav2Vec2Model(small_cfg(dropout=0.0, attention_dropout=0.0)).train()
    with torch.no_grad():
        c, _ = m.encode(w, mask_time_prob=0.5, mask_time_length=2)
        d, _ = m.encode(w)
    assert not torch.allclose(c, d)


def test_errors_name_the_shape():
    model = _MODELS["default"]
    with pytest.raises(ValueError, match=r"\(3,\)"):
        model.encode(torch.randn(3))
    with pytest.raises(ValueError, match="fewer than the 400"):
        model.encode(torch.randn(2, 1000), torch.tensor([1000, 300]))
    with pytest.raises(ValueError, match="exceed"):
        model.encode(torch.randn(2, 1000), torch.tensor([1000, 1200]))
    with pytest.raises(ValueError, match=r"\(2,\)"):
        model.encode(torch.randn(2, 1000), torch.tensor([1000]))


def test_transformer_layer_contract():
    torch.manual_seed(0)
    layer = TransformerEncoderLayer(16, 32, 4, 0.0, 0.0, 0.0, layer_norm_first=False).eval()
    x = torch.randn(2, 7, 16)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 4:] = True
    y = layer(x, pad)
    assert y.shape == x.shape
    # padding only affects the padded utterance's real frames through nothing: same as unpadded alone
    torch.testing.assert_close(y[1, :4], layer(x[1:, :4], None)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"\(2, 5\)"):
        layer(x, torch.zeros(2, 5, dtype=torch.bool))


@pytest.mark.parametrize("layers", [
    "[(48, 10, 5)] + [(48, 3, 2)] * 4 + [(48, 2, 2)] * 2",  # the standard stack: 400 / 320
    "[(16, 7, 3)] + [(16, 5, 2)] + [(16, 3, 3)]",  # another stack: the geometry must follow it
])
def test_frame_geometry_is_the_conv_stacks_output_length(layers):
    cfg = small_cfg(conv_feature_layers=layers)
    geometry = cfg.frame_geometry
    encoder = Wav2Vec2Model(cfg).feature_extractor
    assert geometry.receptive_field == encoder.receptive_field
    for n in [geometry.receptive_field - 1, geometry.receptive_field, 401, 999, 5000, 16000]:
        layerwise = int(encoder.output_lengths(torch.tensor([n]))[0])
        assert geometry.num_frames(n) == max(layerwise, 0), n


def test_model_normalisation_keeps_silence_finite_and_equals_per_utterance_layer_norm():
    model = Wav2Vec2Model(small_cfg(normalize=True)).eval()
    silent = torch.zeros(1, 4000)
    with torch.no_grad():
        assert torch.isfinite(model.encode(silent)[0]).all()
    loud = torch.randn(2, 4000) * 3 + 0.2
    lengths = torch.tensor([4000, 2500])
    out = model._normalize(loud, lengths)
    ref = torch.nn.functional.layer_norm(loud[1, :2500], (2500,))  # fairseq's normalize
    torch.testing.assert_close(out[1, :2500], ref, atol=1e-5, rtol=1e-4)
    assert out[1, 2500:].abs().max() == 0  # padding stays zero
