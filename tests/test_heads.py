"""Output heads (grapheme, syllable) and the multi-task CTC loss: shapes, padding, feasibility, λ."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kwav2vec.models.ctc_loss import ctc_log_probs, ctc_min_frames, ctc_terms, multitask_ctc_loss
from kwav2vec.models.heads import GraphemeHead, SyllableHead
from kwav2vec.models.transformer import TransformerEncoderLayer


# ---------------------------------------------------------------- heads
def test_grapheme_head_is_dropout_plus_linear():
    head = GraphemeHead(16, 70, dropout=0.3).eval()
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(head(x), x @ head.proj.weight.T + head.proj.bias)
    assert head(x).shape == (2, 5, 70)
    assert [n for n, _ in head.named_parameters()] == ["proj.weight", "proj.bias"]
    with pytest.raises(ValueError, match=r"\(B, T, 16\)"):
        head(torch.randn(2, 5, 8))


@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_syllable_head_layers_and_padding(layer_norm_first):
    torch.manual_seed(0)
    head = SyllableHead(32, 50, num_layers=2, ffn_dim=64, num_heads=4, dropout=0.0, attention_dropout=0.0,
                        layer_norm_first=layer_norm_first).eval()
    assert len(head.layers) == 2 and all(isinstance(layer, TransformerEncoderLayer) for layer in head.layers)
    assert (head.layer_norm is not None) == layer_norm_first
    x = torch.randn(2, 9, 32)
    padding = torch.zeros(2, 9, dtype=torch.bool)
    padding[1, 6:] = True
    out = head(x, padding)  # (B, T, V)
    assert out.shape == (2, 9, 50)
    # a padded utterance's real frames do not depend on what sits in its padding
    x2 = x.clone()
    x2[1, 6:] = 100.0
    torch.testing.assert_close(head(x2, padding)[1, :6], out[1, :6])
    # and equal the utterance run alone
    torch.testing.assert_close(head(x[1:, :6])[0], out[1, :6], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="padding_mask shape"):
        head(x, padding[:, :5])


def test_syllable_head_without_layers_is_a_linear_head():
    head = SyllableHead(8, 12, num_layers=0).eval()
    x = torch.randn(1, 3, 8)
    torch.testing.assert_close(head(x), x @ head.proj.weight.T + head.proj.bias)


# ---------------------------------------------------------------- CTC
def test_min_frames_counts_adjacent_repeats_inside_the_target_only():
    targets = torch.tensor([[3, 3, 4, 4, 4, 0], [5, 6, 5, 0, 0, 0], [7, 7, 0, 0, 0, 0]])
    lengths = torch.tensor([5, 3, 1])  # the third's second 7 is padding beyond its length
    assert ctc_min_frames(targets, lengths).tolist() == [5 + 3, 3, 1]


def test_ctc_terms_match_torch_and_exclude_infeasible_utterances():
    torch.manual_seed(0)
    B, T, V = 3, 6, 5
    log_probs = ctc_log_probs(torch.randn(B, T, V))
    frames = torch.tensor([6, 6, 4])
    targets = torch.tensor([[1, 2, 3], [2, 2, 2], [1, 2, 0]])
    lengths = torch.tensor([3, 3, 2])
    # utt 1: "2 2 2" needs 3 + 2 = 5 <= 6 frames; shrink its frames to 4 to make it infeasible
    frames[1] = 4
    terms = ctc_terms(log_probs, frames, targets, lengths)
    assert terms.infeasible.tolist() == [False, True, False]
    assert int(terms.ntokens) == 3 + 2
    reference = F.ctc_loss(log_probs.transpose(0, 1), targets, frames, lengths, reduction="none", zero_infinity=True)
    torch.testing.assert_close(terms.per_utterance, reference * torch.tensor([1.0, 0.0, 1.0]))
    torch.testing.assert_close(terms.loss_sum, reference[0] + reference[2])
    # the infeasible one really is: torch gives it an infinite loss without zero_infinity
    raw = F.ctc_loss(log_probs.transpose(0, 1), targets, frames, lengths, reduction="none")
    assert torch.isinf(raw[1]) and torch.isfinite(raw[[0, 2]]).all()


def test_ctc_terms_boundary_feasible_and_gradient_free_when_excluded():
    log_probs = ctc_log_probs(torch.randn(2, 3, 4, requires_grad=True))
    targets = torch.tensor([[1, 1], [1, 2]])
    lengths = torch.tensor([2, 2])
    frames = torch.tensor([3, 2])  # "1 1" needs exactly 3; "1 2" exactly 2
    terms = ctc_terms(log_probs, frames, targets, lengths)
    assert not terms.infeasible.any()
    leaf = torch.randn(2, 3, 4, requires_grad=True)
    terms = ctc_terms(ctc_log_probs(leaf), torch.tensor([2, 2]), targets, lengths)
    assert terms.infeasible.tolist() == [True, False]
    terms.loss_sum.backward()
    assert leaf.grad[0].abs().sum() == 0 and leaf.grad[1].abs().sum() > 0


def test_ctc_log_probs_are_float32_under_autocast():
    logits = torch.randn(2, 4, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp = ctc_log_probs(logits.bfloat16())
    assert lp.dtype == torch.float32
    with pytest.raises(ValueError, match="float32"):
        ctc_terms(lp.bfloat16(), torch.tensor([4, 4]), torch.tensor([[1], [2]]), torch.tensor([1, 1]))


def test_multitask_weights_and_exact_single_task():
    s, g = torch.tensor(2.0), torch.tensor(6.0)
    assert multitask_ctc_loss(0.25, s, g) == pytest.approx(0.25 * 2 + 0.75 * 6)
    assert multitask_ctc_loss(1.0, s, None) is s
    assert multitask_ctc_loss(0.0, None, g) is g
    with pytest.raises(ValueError, match="grapheme"):
        multitask_ctc_loss(0.5, s, None)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        multitask_ctc_loss(1.5, s, g)


# ---------------------------------------------------------------- the whole model
def test_hierarchical_ctc_owns_heads_sizes_normalisation_and_frames():
    """One nn.Module: forward gives each head's log-probs and the frame lengths its config's geometry
    predicts; the waveform normalisation is the config's (scaled audio, same output when on)."""
    from kwav2vec.models.config import Wav2Vec2Config
    from kwav2vec.models.hierarchical import HierarchicalCTC

    torch.manual_seed(0)
    cfg = Wav2Vec2Config(conv_feature_layers="[(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16, 2, 2)] * 2",
                         encoder_layers=1, encoder_embed_dim=16, encoder_ffn_embed_dim=32, encoder_attention_heads=2,
                         conv_pos=8, conv_pos_groups=2, normalize=True)
    model = HierarchicalCTC(cfg)
    model.add_grapheme_head(7)
    model.add_syllable_head(11, num_layers=1)
    model.eval()
    assert model.vocab_sizes == {"grapheme": 7, "syllable": 11}
    audio, lengths = torch.randn(2, 4000), torch.tensor([4000, 2700])
    with torch.no_grad():
        log_probs, frames = model(audio, lengths)
        scaled, _ = model(audio * 5 + 0.1 * (torch.arange(4000) < lengths[:, None]), lengths)
    assert frames.tolist() == [cfg.frame_geometry.num_frames(n) for n in lengths.tolist()]
    assert log_probs["grapheme"].shape == (2, frames.max(), 7) and log_probs["syllable"].shape[-1] == 11
    torch.testing.assert_close(log_probs["grapheme"].exp().sum(-1), torch.ones(2, int(frames.max())))
    for h in log_probs:  # normalised inside the model: gain and offset of the real samples do not matter
        torch.testing.assert_close(scaled[h][1, : frames[1]], log_probs[h][1, : frames[1]], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="no head"):
        model(audio, lengths, heads=("phoneme",))
