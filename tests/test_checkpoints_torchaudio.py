"""torchaudio `wav2vec2_model(...)` random models import with output parity (eval mode, 1e-4)."""

from __future__ import annotations

import json

import pytest
import torch
import torchaudio

from kwav2vec.checkpoints import KeyMismatchError, build_backbone, head_module, import_torchaudio
from kwav2vec.checkpoints.torchaudio import bundle_info, save_for_import

CONV = [(16, 10, 5), (16, 3, 2), (16, 3, 2), (16, 3, 2), (16, 3, 2), (16, 2, 2), (16, 2, 2)]
LABELS = ["-", "|", "E", "T", "<unk>", "A"]  # torchaudio's ASR layout: blank first


def factory_args(stable: bool, aux: int | None) -> dict:
    return dict(
        extractor_mode="layer_norm" if stable else "group_norm", extractor_conv_layer_config=CONV,
        extractor_conv_bias=stable, encoder_embed_dim=32, encoder_projection_dropout=0.1, encoder_pos_conv_kernel=8,
        encoder_pos_conv_groups=4, encoder_num_layers=2, encoder_num_heads=4, encoder_attention_dropout=0.1,
        encoder_ff_interm_features=64, encoder_ff_interm_dropout=0.0, encoder_dropout=0.1,
        encoder_layer_norm_first=stable, encoder_layer_drop=0.05, aux_num_out=aux,
    )


@pytest.mark.parametrize("stable", [False, True], ids=["postLN-group", "preLN-layer"])
def test_import_matches_torchaudio(tmp_path, stable):
    torch.manual_seed(0)
    args = factory_args(stable, aux=len(LABELS))
    model = torchaudio.models.wav2vec2_model(**args).eval()
    save_for_import(model, args, tmp_path / "ta.pt", labels=LABELS)
    ck = import_torchaudio(tmp_path / "ta.pt")
    assert ck.config.layer_norm_first == stable and ck.config.dropout_input == 0.1
    assert ck.heads["grapheme"].vocab.tokens == ["<blank>", "<unk>", "|", "E", "T", "A"]
    ours = build_backbone(ck).eval()
    head = head_module("grapheme", ck.heads["grapheme"], ck.config).eval()

    lengths = torch.tensor([4000, 2900, 3500]) if stable else torch.tensor([4000, 4000, 4000])
    audio = torch.randn(3, 4000) * (torch.arange(4000) < lengths[:, None])
    with torch.no_grad():
        ref_logits, ref_frames = model(audio, lengths)
        ref = model.encoder(*model.feature_extractor(audio, lengths))  # the backbone output before aux
        x, frames = ours.encode(audio, lengths)
        logits = head(x)
    assert torch.equal(frames, ref_frames)
    valid = torch.arange(x.shape[1]) < frames[:, None]
    torch.testing.assert_close(x[valid], ref[valid], atol=1e-4, rtol=1e-4)
    # aux rows reordered to our vocabulary: <blank> <unk> | E T A  <-  - <unk> | E T A
    torch.testing.assert_close(logits[valid], ref_logits[valid][:, [0, 4, 1, 2, 3, 5]], atol=1e-4, rtol=1e-4)


def test_bare_state_dict_with_separate_factory_args(tmp_path):
    torch.manual_seed(1)
    args = factory_args(True, aux=None)
    model = torchaudio.models.wav2vec2_model(**args).eval()
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    with pytest.raises(ValueError, match="--factory-args JSON.*--bundle"):
        import_torchaudio(tmp_path / "bare.pth")
    ck = import_torchaudio(tmp_path / "bare.pth", factory_args=json.loads(json.dumps(args)), normalize=True)
    assert ck.config.normalize is True and ck.heads == {}
    ours = build_backbone(ck).eval()
    audio = torch.randn(2, 3000)
    normalized = (audio - audio.mean(1, keepdim=True)) / torch.sqrt(audio.var(1, unbiased=False, keepdim=True) + 1e-5)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(audio)[0], model(normalized)[0], atol=1e-4, rtol=1e-4)


def test_head_needs_labels_or_drop_and_keys_match_exactly(tmp_path):
    args = factory_args(False, aux=len(LABELS))
    model = torchaudio.models.wav2vec2_model(**args)
    save_for_import(model, args, tmp_path / "ta.pt")
    with pytest.raises(ValueError, match="--labels.*--drop-head"):
        import_torchaudio(tmp_path / "ta.pt")
    assert import_torchaudio(tmp_path / "ta.pt", drop_head=True).heads == {}
    wrong = dict(args, encoder_num_layers=1)  # the file holds 2 layers
    with pytest.raises(KeyMismatchError, match=r"encoder\.transformer\.layers\.1\."):
        import_torchaudio(tmp_path / "ta.pt", factory_args=wrong, drop_head=True)
    with pytest.raises(ValueError, match="encoder_num_buckets"):
        import_torchaudio(tmp_path / "ta.pt", factory_args=dict(args, encoder_num_buckets=320))


def test_bundle_supplies_args_normalisation_and_labels():
    info = bundle_info("WAV2VEC2_ASR_BASE_960H")
    assert info["factory_args"]["aux_num_out"] == len(info["labels"]) == 29 and info["labels"][0] == "-"
    assert bundle_info("WAV2VEC2_LARGE_LV60K")["normalize"] is True
    with pytest.raises(ValueError, match="unknown torchaudio"):
        bundle_info("NOT_A_BUNDLE")
