"""Pretraining components: span masking, distractors, quantizer, contrastive logits, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kwav2vec.models.config import Wav2Vec2Config, preset
from kwav2vec.models.losses import contrastive_logits, contrastive_loss, diversity_loss, pretraining_loss
from kwav2vec.models.masking import compute_mask_indices, sample_negatives
from kwav2vec.models.quantizer import GumbelVectorQuantizer
from kwav2vec.models.wav2vec2 import Wav2Vec2Model


def small_cfg(**kw) -> Wav2Vec2Config:
    base = dict(
        conv_feature_layers="[(48, 10, 5)] + [(48, 3, 2)] * 4 + [(48, 2, 2)] * 2",
        encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
        conv_pos=16, conv_pos_groups=4, final_dim=16, latent_vars=8, latent_groups=2, num_negatives=5,
        mask_prob=0.5, mask_length=3,
    )
    base.update(kw)
    return Wav2Vec2Config(**base)


# ---------------------------------------------------------------- masking
def test_mask_statistics_match_fairseq():
    gen = torch.Generator().manual_seed(0)
    mask = compute_mask_indices((16, 5000), None, 0.65, 10, min_masks=2, generator=gen)
    frac = mask.float().mean().item()
    assert abs(frac - 0.49) <= 0.03, frac
    # spans: masked runs are multiples-of-overlaps of length >= 10 except where subsampling thinned them
    assert mask.sum(1).unique().numel() == 1  # require_same_masks


def test_mask_never_in_padding_and_min_masks():
    gen = torch.Generator().manual_seed(1)
    lengths = torch.tensor([300, 120, 25, 7])
    for _ in range(20):
        mask = compute_mask_indices((4, 300), lengths, 0.65, 10, min_masks=2, require_same_masks=False, generator=gen)
        pad = torch.arange(300) >= lengths[:, None]
        assert not (mask & pad).any()
        # min_masks=2 spans: a 25-frame utterance has at least 10 masked frames (two spans may overlap)
        assert mask[2].sum() >= 10
        assert mask[3].sum() >= 1
    same = compute_mask_indices((4, 300), lengths, 0.65, 10, min_masks=2, generator=gen)
    assert same.sum(1).unique().numel() == 1
    assert not (same & (torch.arange(300) >= lengths[:, None])).any()


def test_mask_prob_zero_and_bad_lengths():
    assert not compute_mask_indices((2, 50), None, 0.0, 10).any()
    with pytest.raises(ValueError, match=r"\(2,\)"):
        compute_mask_indices((2, 50), torch.tensor([50]), 0.5, 10)
    with pytest.raises(ValueError, match=r"\[0, 50\]"):
        compute_mask_indices((2, 50), torch.tensor([50, 60]), 0.5, 10)


# ---------------------------------------------------------------- distractors
def test_negatives_never_the_positive_and_uniform():
    gen = torch.Generator().manual_seed(0)
    neg = sample_negatives(3, 6, 2000, generator=gen)
    assert neg.shape == (3, 6, 2000)
    assert (neg != torch.arange(6)[None, :, None]).all()
    assert neg.min() >= 0 and neg.max() <= 5
    counts = torch.bincount(neg[0, 0], minlength=6)  # positive 0: others about 400 each
    assert counts[0] == 0 and (counts[1:] > 300).all()
    with pytest.raises(ValueError, match="at least 2 masked frames"):
        sample_negatives(2, 1, 10)


def test_model_distractors_are_masked_frames_of_same_utterance():
    torch.manual_seed(0)
    model = Wav2Vec2Model(small_cfg()).train()
    lengths = torch.tensor([9600, 6000, 4000])
    audio = torch.randn(3, 9600) * (torch.arange(9600) < lengths[:, None])
    out = model(audio, lengths)
    B, M, K = out.negative_indices.shape
    assert (B, K) == (3, 5) and M >= 2
    pad = torch.arange(out.mask.shape[1]) >= out.frame_lengths[:, None]
    assert not (out.mask & pad).any()
    for b in range(B):
        frames = out.mask[b].nonzero().flatten()  # masked frame positions of utterance b
        neg_frames = frames[out.negative_indices[b]]  # (M, K) frame positions of the distractors
        assert (neg_frames != frames[:, None]).all()  # never the positive
        assert out.mask[b, neg_frames].all() and not pad[b, neg_frames].any()  # masked, never padding
    assert out.logits.shape == (B, M, 1 + K) and out.logits.dtype == torch.float32


def test_external_mask_is_checked():
    model = Wav2Vec2Model(small_cfg()).eval()
    audio, lengths = torch.randn(2, 6400), torch.tensor([6400, 3200])
    T = int(model.frame_lengths(torch.tensor([6400])))
    mask = torch.zeros(2, T, dtype=torch.bool)
    mask[:, -3:] = True  # frames past utterance 1's end
    with pytest.raises(ValueError, match=r"padding frames in utterances \[1\]"):
        model(audio, lengths, mask_indices=mask)
    with pytest.raises(ValueError, match=r"\(2, 19\)"):
        model(audio, lengths, mask_indices=torch.zeros(2, 5, dtype=torch.bool))
    mask = torch.zeros(2, T, dtype=torch.bool)
    mask[0, :4] = True
    mask[1, :3] = True
    with pytest.raises(ValueError, match=r"same number of frames, got \[4, 3\]"):
        model(audio, lengths, mask_indices=mask)


# ---------------------------------------------------------------- quantizer and losses
def test_quantizer_codes_perplexity_and_temperature():
    torch.manual_seed(0)
    q = GumbelVectorQuantizer(dim=8, num_vars=4, groups=2, vq_dim=6, temp=(2.0, 0.5, 0.5)).eval()
    x = torch.randn(50, 8)
    out = q(x)
    assert out.x.shape == (50, 6) and out.codes.shape == (50, 2) and out.num_vars == 8
    # eval: hard argmax codewords, concatenated over groups
    logits = q.weight_proj(x).view(50, 2, 4)
    torch.testing.assert_close(out.codes, logits.argmax(-1))
    vars_ = q.vars.view(2, 4, 3)
    expected = torch.cat([vars_[0][out.codes[:, 0]], vars_[1][out.codes[:, 1]]], dim=1)
    torch.testing.assert_close(out.x, expected)
    # code perplexity: exp(entropy) of each group's code histogram, summed over groups
    ppl = 0.0
    for g in range(2):
        hist = torch.bincount(out.codes[:, g], minlength=4).float() / 50
        ppl += math.exp(-sum(p * math.log(p) for p in hist.tolist() if p > 0))
    assert out.code_perplexity.item() == pytest.approx(ppl, rel=1e-5)
    soft = torch.softmax(logits, -1).mean(0)
    assert out.prob_perplexity.item() == pytest.approx(torch.exp(-(soft * soft.log()).sum(-1)).sum().item(), rel=1e-5)
    q.set_num_updates(1)
    assert q.curr_temp == 1.0
    q.set_num_updates(10)
    assert q.curr_temp == 0.5


def test_quantizer_and_losses_stay_fp32_under_autocast():
    torch.manual_seed(0)
    model = Wav2Vec2Model(small_cfg()).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 6400))
        terms = pretraining_loss(out)
    assert out.logits.dtype == torch.float32 and out.prob_perplexity.dtype == torch.float32
    assert terms["loss"].dtype == torch.float32 and torch.isfinite(terms["loss"])


def test_contrastive_logits_by_hand():
    pred = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]])  # (1, 3, 2)
    targ = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    neg = torch.tensor([[[1, 2], [0, 2], [0, 1]]])  # (1, 3, 2)
    logits = contrastive_logits(pred, targ, neg, temperature=0.5)
    cos = F.cosine_similarity(pred[0][:, None, :], targ[0][None, :, :], dim=-1)  # (3, 3) pred x target
    expected = torch.stack([torch.stack([cos[m, m], cos[m, neg[0, m, 0]], cos[m, neg[0, m, 1]]]) for m in range(3)])
    torch.testing.assert_close(logits[0], expected / 0.5)
    # a distractor with the positive's codes is excluded
    codes = torch.tensor([[[0, 1], [0, 1], [2, 2]]])
    masked = contrastive_logits(pred, targ, neg, temperature=0.5, codes=codes)
    assert masked[0, 0, 1] == float("-inf") and masked[0, 1, 1] == float("-inf")
    assert torch.isfinite(masked[0, 2]).all()
    loss, acc = contrastive_loss(masked)
    assert torch.isfinite(loss)
    assert diversity_loss(torch.tensor(8.0), 8).item() == 0.0
    assert diversity_loss(torch.tensor(2.0), 8).item() == pytest.approx(0.75)


def test_every_trainable_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = Wav2Vec2Model(preset("tiny", encoder_layers=2, encoder_layerdrop=0.0)).train()
    lengths = torch.tensor([16000, 11000])
    audio = torch.randn(2, 16000) * (torch.arange(16000) < lengths[:, None])
    terms = pretraining_loss(model(audio, lengths))
    terms["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, missing


def test_feature_grad_mult_scales_feature_encoder_gradients():
    torch.manual_seed(0)
    a = Wav2Vec2Model(small_cfg(feature_grad_mult=1.0, dropout=0.0, attention_dropout=0.0)).eval()
    b = Wav2Vec2Model(small_cfg(feature_grad_mult=0.1, dropout=0.0, attention_dropout=0.0)).eval()
    b.load_state_dict(a.state_dict())
    audio = torch.randn(1, 6400)
    for m in (a, b):
        x, _ = m.encode(audio)
        x.pow(2).sum().backward()
    ga = a.feature_extractor.conv_layers[0][0].weight.grad
    gb = b.feature_extractor.conv_layers[0][0].weight.grad
    torch.testing.assert_close(gb, 0.1 * ga, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(a.encoder.layers[0].fc1.weight.grad, b.encoder.layers[0].fc1.weight.grad)
