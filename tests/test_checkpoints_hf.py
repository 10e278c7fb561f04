"""Hugging Face import and export against transformers itself (random init, tiny configs).

Import: `save_pretrained` directories of Wav2Vec2ForPreTraining / ForCTC / Model, both architectures,
with and without conv bias -> our backbone (and grapheme head) give transformers' outputs within
1e-4 on the same audio (eval mode). Export: our checkpoint -> directory -> transformers
`from_pretrained` (no missing or unexpected keys) -> outputs and ForCTC logits equal ours within 1e-4.
"Default"-mode (group norm) models are compared on equal-length batches: transformers' group norm
includes batch padding in its statistics and ours does not (see models/feature_encoder.py).
"""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from kwav2vec.checkpoints import (  # noqa: E402
    KeyMismatchError,
    build_backbone,
    export_huggingface,
    head_module,
    import_huggingface,
    load_converted,
    save_converted,
)

CONV = [(16, 10, 5), (16, 3, 2), (16, 3, 2), (16, 3, 2), (16, 3, 2), (16, 2, 2), (16, 2, 2)]
VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", "E", "T", "A"]  # transformers' English CTC layout
ATOL = 1e-4


def hf_config(stable: bool, conv_bias: bool, **kw):
    return transformers.Wav2Vec2Config(
        conv_dim=[c for c, _, _ in CONV], conv_kernel=[k for _, k, _ in CONV], conv_stride=[s for _, _, s in CONV],
        conv_bias=conv_bias, feat_extract_norm="layer" if stable else "group", do_stable_layer_norm=stable,
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4, codevector_dim=16, proj_codevector_dim=12,
        num_codevectors_per_group=8, num_negatives=5, vocab_size=len(VOCAB), pad_token_id=0, final_dropout=0.05,
        **kw,
    )


def save_hf(model, path, with_tokenizer: bool = False, do_normalize: bool | None = None) -> str:
    model.save_pretrained(path)
    if with_tokenizer:
        (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(VOCAB)}))
    if do_normalize is not None:
        (path / "preprocessor_config.json").write_text(json.dumps({"sampling_rate": 16000, "do_normalize": do_normalize}))
    return str(path)


def audio_batch(stable: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([4000, 3100, 3600]) if stable else torch.tensor([4000, 4000, 4000])
    audio = torch.randn(3, 4000, generator=g) * (torch.arange(4000) < lengths[:, None])
    mask = (torch.arange(4000) < lengths[:, None]).long() if stable else None
    return audio, lengths, mask


@pytest.mark.parametrize("stable,conv_bias,cls", [
    (False, False, "Wav2Vec2ForPreTraining"),
    (False, True, "Wav2Vec2ForCTC"),
    (True, False, "Wav2Vec2ForCTC"),
    (True, True, "Wav2Vec2ForPreTraining"),
    (True, True, "Wav2Vec2Model"),
], ids=["postLN-group-nobias-pretraining", "postLN-group-bias-ctc", "preLN-layer-nobias-ctc",
        "preLN-layer-bias-pretraining", "preLN-layer-bias-model"])
def test_import_matches_transformers(tmp_path, stable, conv_bias, cls):
    torch.manual_seed(0)
    hf = getattr(transformers, cls)(hf_config(stable, conv_bias)).eval()
    directory = save_hf(hf, tmp_path / "hf", with_tokenizer=True)
    ck = import_huggingface(directory)
    assert ck.config.layer_norm_first == stable and ck.config.conv_bias == conv_bias
    assert ck.has_pretraining_modules == (cls == "Wav2Vec2ForPreTraining")
    ours = build_backbone(ck).eval()
    audio, lengths, mask = audio_batch(stable)
    backbone = hf if cls == "Wav2Vec2Model" else hf.wav2vec2
    with torch.no_grad():
        x, frames = ours.encode(audio, lengths)
        ref = backbone(audio, attention_mask=mask).last_hidden_state
    valid = torch.arange(x.shape[1]) < frames[:, None]
    torch.testing.assert_close(x[valid], ref[valid], atol=ATOL, rtol=ATOL)
    if cls == "Wav2Vec2ForCTC":
        head = ck.heads["grapheme"]
        assert head.vocab.tokens == ["<blank>", "<unk>", "|", "E", "T", "A"]  # <s>, </s> dropped
        with torch.no_grad():
            logits = head_module("grapheme", head, ck.config).eval()(x)
            ref_logits = hf(audio, attention_mask=mask).logits
        torch.testing.assert_close(logits[valid], ref_logits[valid][:, [0, 3, 4, 5, 6, 7]], atol=ATOL, rtol=ATOL)
    if cls == "Wav2Vec2ForPreTraining":
        sd = hf.state_dict()
        assert torch.equal(ck.state_dict["quantizer.vars"], sd["quantizer.codevectors"])
        assert torch.equal(ck.state_dict["final_proj.weight"], sd["project_hid.weight"])
        assert ck.config.vq_dim == 16 and ck.config.final_dim_ == 12


def test_legacy_weight_norm_spelling_normalize_and_drop_head(tmp_path):
    torch.manual_seed(1)
    hf = transformers.Wav2Vec2ForCTC(hf_config(False, False)).eval()
    directory = save_hf(hf, tmp_path / "hf", do_normalize=True)
    weights = tmp_path / "hf" / "model.safetensors"
    state = safetensors_torch.load_file(str(weights))
    pos = "wav2vec2.encoder.pos_conv_embed.conv."
    state[pos + "weight_g"] = state.pop(pos + "parametrizations.weight.original0")
    state[pos + "weight_v"] = state.pop(pos + "parametrizations.weight.original1")
    safetensors_torch.save_file(state, str(weights), metadata={"format": "pt"})

    with pytest.raises(ValueError, match="no vocab.json.*--drop-head"):
        import_huggingface(directory)
    ck = import_huggingface(directory, drop_head=True)
    assert ck.heads == {} and ck.config.normalize is True
    assert torch.equal(ck.state_dict["encoder.pos_conv.0.parametrizations.weight.original1"], state[pos + "weight_v"])
    ours = build_backbone(ck).eval()
    audio, lengths, _ = audio_batch(False)
    normalized = (audio - audio.mean(1, keepdim=True)) / torch.sqrt(audio.var(1, unbiased=False, keepdim=True) + 1e-5)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(audio, lengths)[0], hf.wav2vec2(normalized).last_hidden_state,
                                   atol=ATOL, rtol=ATOL)


def test_unknown_keys_and_foreign_models_are_refused(tmp_path):
    torch.manual_seed(2)
    hf = transformers.Wav2Vec2ForSequenceClassification(hf_config(True, True, classifier_proj_size=8)).eval()
    directory = save_hf(hf, tmp_path / "cls")
    with pytest.raises(KeyMismatchError, match=r"classifier\.bias.*projector\.weight"):
        import_huggingface(directory)
    cfg = json.loads((tmp_path / "cls" / "config.json").read_text())
    cfg["model_type"] = "hubert"
    (tmp_path / "cls" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model_type 'hubert', expected 'wav2vec2'"):
        import_huggingface(directory)


@pytest.mark.parametrize("stable", [False, True], ids=["postLN-group", "preLN-layer"])
def test_export_loads_in_transformers_with_equal_outputs(tmp_path, stable):
    torch.manual_seed(3)
    hf = transformers.Wav2Vec2ForCTC(hf_config(stable, stable)).eval()
    directory = save_hf(hf, tmp_path / "src", with_tokenizer=True)
    save_converted(import_huggingface(directory), tmp_path / "ours.ckpt")
    ck = load_converted(tmp_path / "ours.ckpt")
    ours = build_backbone(ck).eval()
    head = head_module("grapheme", ck.heads["grapheme"], ck.config).eval()
    audio, lengths, mask = audio_batch(stable, seed=4)

    notes = export_huggingface(ck, tmp_path / "ctc")
    assert any("group-norm" in n for n in notes) == (not stable)
    ctc, info = transformers.Wav2Vec2ForCTC.from_pretrained(str(tmp_path / "ctc"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ctc.eval()
    assert ctc.config.pad_token_id == 0 and ctc.config.vocab_size == len(ck.heads["grapheme"].vocab)
    with torch.no_grad():
        x, frames = ours.encode(audio, lengths)
        logits = head(x)
        ref = ctc(audio, attention_mask=mask).logits
    valid = torch.arange(x.shape[1]) < frames[:, None]
    torch.testing.assert_close(logits[valid], ref[valid], atol=ATOL, rtol=ATOL)
    tokenizer = transformers.Wav2Vec2CTCTokenizer.from_pretrained(str(tmp_path / "ctc"))
    assert len(tokenizer) == ctc.config.vocab_size and tokenizer.pad_token_id == 0
    assert tokenizer.decode([3, 3, 0, 3, 2, 4, 5]) == "EE TA"  # blank 0 separates the repeated E

    # Wav2Vec2Model export of the same backbone (no pretraining modules in a ForCTC source)
    export_huggingface(ck, tmp_path / "model", arch="model")
    bare = transformers.Wav2Vec2Model.from_pretrained(str(tmp_path / "model")).eval()
    with torch.no_grad():
        torch.testing.assert_close(bare(audio, attention_mask=mask).last_hidden_state[valid], x[valid], atol=ATOL, rtol=ATOL)
    with pytest.raises(ValueError, match="needs the pretraining modules"):
        export_huggingface(ck, tmp_path / "pt", arch="pretraining")


def test_export_for_pretraining_round_trip(tmp_path):
    torch.manual_seed(5)
    hf = transformers.Wav2Vec2ForPreTraining(hf_config(True, True)).eval()
    ck = import_huggingface(save_hf(hf, tmp_path / "src"))
    export_huggingface(ck, tmp_path / "out")
    back, info = transformers.Wav2Vec2ForPreTraining.from_pretrained(str(tmp_path / "out"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ref = hf.state_dict()
    for key, value in back.state_dict().items():
        torch.testing.assert_close(value, ref[key], atol=0, rtol=0, msg=key)
