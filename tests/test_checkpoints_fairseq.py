"""fairseq checkpoints built in the test (fairseq's key names and cfg / legacy args), imported exactly.

Covers: pretrained (cfg and legacy Namespace, old weight-norm spelling, pickled foreign classes that
are not installed), fine-tuned CTC (head dropped, or kept through its dictionary), K-wav2vec
multi-task (`additional_layer.{i}` + `proj2` -> our SyllableHead, rows permuted from `dict.ltr.txt`
/ `add_dict.ltr.txt`), and the errors for unknown / missing keys, missing or wrong dictionaries.
"""

from __future__ import annotations

import argparse
import sys
import types

import pytest
import torch

from kwav2vec.checkpoints import (
    KeyMismatchError,
    build_backbone,
    head_module,
    import_fairseq,
    load_converted,
    save_converted,
)
from kwav2vec.checkpoints.vocab_map import read_fairseq_dict
from kwav2vec.models.config import Wav2Vec2Config
from kwav2vec.models.transformer import TransformerEncoderLayer
from kwav2vec.models.wav2vec2 import Wav2Vec2Model
from kwav2vec.text.vocab import Vocabulary

CONV = "[(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16, 2, 2)] * 2"
MODEL_FIELDS = dict(
    extractor_mode="default", conv_feature_layers=CONV, conv_bias=False, encoder_layers=2, encoder_embed_dim=32,
    encoder_ffn_embed_dim=64, encoder_attention_heads=4, activation_fn="gelu", layer_norm_first=False, conv_pos=8,
    conv_pos_groups=4, dropout=0.1, attention_dropout=0.1, activation_dropout=0.0, encoder_layerdrop=0.05,
    dropout_input=0.1, dropout_features=0.1, final_dim=16, latent_vars=8, latent_groups=2, latent_dim=0,
    logit_temp=0.1, num_negatives=5, mask_prob=0.65, mask_length=10, feature_grad_mult=0.1,
)
# fairseq-only fields a real cfg carries (harmless, or defaults of options we do not implement)
FAIRSEQ_ONLY = dict(
    _name="wav2vec2", quantize_targets=True, quantize_input=False, same_quantizer=False, target_glu=False,
    quantizer_depth=1, quantizer_factor=3, layer_type="transformer", pos_conv_depth=1, mask_selection="static",
    mask_other=0.0, no_mask_overlap=False, mask_min_space=1, require_same_masks=True, mask_dropout=0.0,
    mask_channel_length=10, mask_channel_prob=0.0, mask_channel_before=False, mask_channel_selection="static",
    mask_channel_other=0.0, no_mask_channel_overlap=False, mask_channel_min_space=1, negatives_from_everywhere=False,
    cross_sample_negatives=0, codebook_negatives=0, latent_temp=[2.0, 0.5, 0.999995], max_positions=100000,
    checkpoint_activations=False, required_seq_len_multiple=2, crop_seq_to_multiple=1, fp16=True,
)
GRAPHEME_DICT = "| 120\nᄋ 90\nᅡ 80\nᆫ 50\nᄀ 40\nX 3\n"  # fairseq rows: <s> <pad> </s> <unk> | ᄋ ᅡ ᆫ ᄀ X
SYLLABLE_DICT = "| 120\n안 30\n가 20\n나 10\n"


def fairseq_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict in fairseq's spelling (torch.nn.utils.weight_norm's weight_g / weight_v)."""
    out = {}
    for k, v in state.items():
        k = k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v")
        out[k] = v.clone()
    return out


def pretrained_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    cfg = Wav2Vec2Config(**MODEL_FIELDS)
    state = fairseq_names(Wav2Vec2Model(cfg).state_dict())
    return {k: torch.randn_like(v) for k, v in state.items()}  # distinct values: placement is checkable


def pretrained_cfg(normalize: bool = False) -> dict:
    return {"_name": None, "common": {"fp16": True, "seed": 1},
            "task": {"_name": "audio_pretraining", "data": "/data", "normalize": normalize, "sample_rate": 16000},
            "model": {**MODEL_FIELDS, **FAIRSEQ_ONLY}}


def finetuned_blob(multitask: bool, n_extra: int = 2, seed: int = 1) -> dict:
    torch.manual_seed(seed)
    w2v = {k: v for k, v in pretrained_state(seed).items() if not k.startswith(("quantizer.", "project_q.", "final_proj."))}
    model = {"w2v_encoder.w2v_model." + k: v for k, v in w2v.items()}
    D = MODEL_FIELDS["encoder_embed_dim"]
    model["w2v_encoder.proj.weight"] = torch.randn(10, D)  # 4 fairseq specials + 6 GRAPHEME_DICT lines
    model["w2v_encoder.proj.bias"] = torch.randn(10)
    asr = {"_name": "wav2vec_ctc2" if multitask else "wav2vec_ctc", "w2v_path": "/x/wav2vec_small.pt",
           "w2v_args": pretrained_cfg(), "final_dropout": 0.1, "dropout": 0.0, "attention_dropout": 0.0,
           "activation_dropout": 0.1, "layerdrop": 0.1, "apply_mask": True, "mask_prob": 0.5, "normalize": False,
           "freeze_finetune_updates": 0, "feature_grad_mult": 0.0}
    if multitask:
        asr["additional_layers"] = n_extra
        for i in range(n_extra):
            layer = TransformerEncoderLayer(D, MODEL_FIELDS["encoder_ffn_embed_dim"], 4)
            for k, v in layer.state_dict().items():
                model[f"w2v_encoder.additional_layer.{i}.{k}"] = torch.randn_like(v)
        model["w2v_encoder.proj2.weight"] = torch.randn(8, D)  # 4 specials + 4 SYLLABLE_DICT lines
        model["w2v_encoder.proj2.bias"] = torch.randn(8)
    return {"cfg": {"model": asr, "task": {"_name": "audio_multitraining", "normalize": False, "labels": "ltr"}},
            "model": model, "optimizer_history": [{"criterion_name": "CtcCriterion", "num_updates": 10}],
            "extra_state": {"epoch": 3}}


@pytest.fixture
def dicts(tmp_path):
    g, s = tmp_path / "dict.ltr.txt", tmp_path / "add_dict.ltr.txt"
    g.write_text(GRAPHEME_DICT, encoding="utf-8")
    s.write_text(SYLLABLE_DICT, encoding="utf-8")
    return str(g), str(s)


def save(blob, path) -> str:
    torch.save(blob, path)
    return str(path)


# ---------------------------------------------------------------- pretrained
def test_pretrained_cfg_imports_every_tensor_in_place(tmp_path):
    state = pretrained_state()
    path = save({"cfg": pretrained_cfg(normalize=True), "model": state, "extra_state": {}}, tmp_path / "w2v.pt")
    ck = import_fairseq(path)
    assert ck.config.encoder_layers == 2 and ck.config.final_dim == 16 and ck.config.normalize is True
    assert ck.config.latent_temp == (2.0, 0.5, 0.999995) and ck.config.feature_grad_mult == 0.1
    assert ck.heads == {} and ck.has_pretraining_modules
    renamed = {k.replace("weight_g", "parametrizations.weight.original0").replace("weight_v", "parametrizations.weight.original1"): k
               for k in state}
    assert set(ck.state_dict) == set(renamed)
    for ours, theirs in renamed.items():
        assert torch.equal(ck.state_dict[ours], state[theirs]), ours
    build_backbone(ck)  # every key fits the model


def test_legacy_args_namespace_and_foreign_pickled_classes(tmp_path, monkeypatch):
    # a meter class from a library that is not installed when the checkpoint is read
    pkg, mod = types.ModuleType("fakeseq"), types.ModuleType("fakeseq.meters")

    class AverageMeter:
        def __init__(self):
            self.avg = 1.5

    AverageMeter.__module__, AverageMeter.__qualname__ = "fakeseq.meters", "AverageMeter"
    mod.AverageMeter = AverageMeter
    monkeypatch.setitem(sys.modules, "fakeseq", pkg)
    monkeypatch.setitem(sys.modules, "fakeseq.meters", mod)
    fields = {**MODEL_FIELDS, "latent_temp": "(2,0.5,0.999995)", "quantize_targets": True}
    args = argparse.Namespace(arch="wav2vec2", task="audio_pretraining", normalize=False, lr=[0.0005],
                              optimizer="adam", max_update=400000, **fields)
    state = pretrained_state()
    path = save({"args": args, "model": state, "extra_state": {"train_meters": {"loss": AverageMeter()}}},
                tmp_path / "legacy.pt")
    monkeypatch.delitem(sys.modules, "fakeseq.meters")
    monkeypatch.delitem(sys.modules, "fakeseq")

    ck = import_fairseq(path)
    assert ck.config.latent_temp == (2.0, 0.5, 0.999995) and ck.config.conv_feature_layers == CONV
    assert torch.equal(ck.state_dict["encoder.pos_conv.0.parametrizations.weight.original1"], state["encoder.pos_conv.0.weight_v"])


def test_unknown_and_missing_keys_are_listed(tmp_path):
    state = pretrained_state()
    state["encoder.layers.2.fc1.weight"] = torch.zeros(64, 32)  # a layer the config does not have
    path = save({"cfg": pretrained_cfg(), "model": state}, tmp_path / "extra.pt")
    with pytest.raises(KeyMismatchError, match=r"encoder\.layers\.2\.fc1\.weight"):
        import_fairseq(path)
    state = pretrained_state()
    del state["encoder.layer_norm.weight"], state["mask_emb"]
    path = save({"cfg": pretrained_cfg(), "model": state}, tmp_path / "missing.pt")
    with pytest.raises(KeyMismatchError, match=r"2 key\(s\) missing: encoder\.layer_norm\.weight, mask_emb"):
        import_fairseq(path)


def test_architectures_we_do_not_implement_are_refused(tmp_path):
    cfg = pretrained_cfg()
    cfg["model"]["layer_type"] = "conformer"
    path = save({"cfg": cfg, "model": pretrained_state()}, tmp_path / "conformer.pt")
    with pytest.raises(ValueError, match="layer_type"):
        import_fairseq(path)
    cfg = pretrained_cfg()
    cfg["model"]["_name"] = "hubert"
    path = save({"cfg": cfg, "model": pretrained_state()}, tmp_path / "hubert.pt")
    with pytest.raises(ValueError, match="'hubert' is not one we import"):
        import_fairseq(path)


# ---------------------------------------------------------------- fine-tuned
def test_finetuned_head_dropped_or_kept_through_its_dictionary(tmp_path, dicts):
    blob = finetuned_blob(multitask=False)
    path = save(blob, tmp_path / "ft.pt")
    with pytest.raises(ValueError, match="--dict dict.ltr.txt.*--drop-head"):
        import_fairseq(path)

    dropped = import_fairseq(path, drop_head=True)
    assert dropped.heads == {} and not dropped.has_pretraining_modules
    assert torch.equal(dropped.state_dict["encoder.layers.1.fc2.weight"],
                       blob["model"]["w2v_encoder.w2v_model.encoder.layers.1.fc2.weight"])

    ck = import_fairseq(path, dict_path=dicts[0])
    head = ck.heads["grapheme"]
    assert head.vocab.tokens == ["<blank>", "<unk>", "|", "ᄋ", "ᅡ", "ᆫ", "ᄀ", "X"]
    assert head.options == {"dropout": 0.1}
    W, b = blob["model"]["w2v_encoder.proj.weight"], blob["model"]["w2v_encoder.proj.bias"]
    fairseq_rows = {t: i for i, t in enumerate(read_fairseq_dict(dicts[0]))}
    expected_rows = [fairseq_rows["<s>"], fairseq_rows["<unk>"]] + [fairseq_rows[t] for t in head.vocab.tokens[2:]]
    assert expected_rows == [0, 3, 4, 5, 6, 7, 8, 9]  # <pad> (1) and </s> (2) dropped: never CTC targets
    assert torch.equal(head.state_dict["proj.weight"], W[expected_rows])
    assert torch.equal(head.state_dict["proj.bias"], b[expected_rows])
    assert any("<pad>" in n and "</s>" in n for n in ck.notes)


def test_finetuned_head_onto_an_existing_vocabulary(tmp_path, dicts):
    blob = finetuned_blob(multitask=False)
    path = save(blob, tmp_path / "ft.pt")
    vocab_path = tmp_path / "vocab_grapheme.json"
    target = Vocabulary.grapheme()
    target.save(vocab_path)
    ck = import_fairseq(path, dict_path=dicts[0], grapheme_vocab=str(vocab_path))
    head = ck.heads["grapheme"]
    assert head.vocab == target
    W, b = blob["model"]["w2v_encoder.proj.weight"], blob["model"]["w2v_encoder.proj.bias"]
    w = head.state_dict["proj.weight"]
    assert torch.equal(w[target.token_to_id("ᆫ")], W[7]) and torch.equal(w[target.blank_id], W[0])
    fresh = target.token_to_id("ᄁ")  # not in the fairseq dictionary: new row, zero weight, lowest bias
    assert torch.equal(w[fresh], torch.zeros_like(w[fresh])) and head.state_dict["proj.bias"][fresh] == b.min()
    assert any("'X'" in n for n in ck.notes)  # the Latin X has no place in the jamo vocabulary


def test_wrong_dictionary_size_is_an_error(tmp_path, dicts):
    path = save(finetuned_blob(multitask=False), tmp_path / "ft.pt")
    short = tmp_path / "short.txt"
    short.write_text("| 1\nᄋ 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="10 output rows but the dictionary describes 6"):
        import_fairseq(path, dict_path=str(short))
    bad = tmp_path / "bad.txt"
    bad.write_text("| 1\nᄋ\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.txt:2: expected '<symbol> <count>'"):
        import_fairseq(path, dict_path=str(bad))


def test_kwav2vec_multitask_both_heads_in_place(tmp_path, dicts):
    blob = finetuned_blob(multitask=True)
    path = save(blob, tmp_path / "kwav2vec.pt")
    with pytest.raises(ValueError, match="--add-dict"):
        import_fairseq(path, dict_path=dicts[0])
    ck = import_fairseq(path, dict_path=dicts[0], add_dict_path=dicts[1])
    m = blob["model"]
    # exact matching: K-wav2vec's extra layers stay out of the backbone's layers 0-1
    assert torch.equal(ck.state_dict["encoder.layers.0.fc1.weight"], m["w2v_encoder.w2v_model.encoder.layers.0.fc1.weight"])
    syl = ck.heads["syllable"]
    assert syl.vocab.kind == "syllable" and syl.vocab.tokens == ["<blank>", "<unk>", "|", "안", "가", "나"]
    assert syl.options["num_layers"] == 2 and syl.options["dropout"] == 0.0 and syl.options["final_dropout"] == 0.1
    for i in range(2):
        for name in ("self_attn.q_proj.weight", "self_attn.out_proj.bias", "self_attn_layer_norm.weight", "fc1.weight",
                     "fc2.bias", "final_layer_norm.bias"):
            assert torch.equal(syl.state_dict[f"layers.{i}.{name}"], m[f"w2v_encoder.additional_layer.{i}.{name}"])
    assert torch.equal(syl.state_dict["proj.weight"], m["w2v_encoder.proj2.weight"][[0, 3, 4, 5, 6, 7]])

    # the saved file round-trips and both heads rebuild strictly; the syllable head computes
    # K-wav2vec's additional layers + proj2
    out = tmp_path / "k.ckpt"
    save_converted(ck, out)
    ck2 = load_converted(out)
    assert ck2.heads["syllable"].vocab == syl.vocab and ck2.source.startswith("fairseq wav2vec_ctc2")
    backbone = build_backbone(ck2).eval()
    syllable = head_module("syllable", ck2.heads["syllable"], ck2.config).eval()
    head_module("grapheme", ck2.heads["grapheme"], ck2.config)
    x = torch.randn(1, 7, 32)
    ref = x
    for i in range(2):
        layer = TransformerEncoderLayer(32, 64, 4, 0.0, 0.0, 0.0).eval()
        layer.load_state_dict({k[len(f"w2v_encoder.additional_layer.{i}."):]: v for k, v in m.items()
                               if k.startswith(f"w2v_encoder.additional_layer.{i}.")})
        ref = layer(ref)
    ref = ref @ m["w2v_encoder.proj2.weight"].T + m["w2v_encoder.proj2.bias"]
    with torch.no_grad():
        torch.testing.assert_close(syllable(x), ref[..., [0, 3, 4, 5, 6, 7]], atol=1e-5, rtol=1e-5)
    assert backbone.cfg.encoder_layers == 2


def test_kwav2vec_drop_head_keeps_the_backbone_only(tmp_path):
    path = save(finetuned_blob(multitask=True), tmp_path / "kwav2vec.pt")
    ck = import_fairseq(path, drop_head=True)
    assert ck.heads == {}
    assert any("additional_layer" in n for n in ck.notes)


def test_legacy_finetuned_args_with_w2v_args_namespace(tmp_path, dicts):
    blob = finetuned_blob(multitask=False)
    w2v = argparse.Namespace(arch="wav2vec2", normalize=False, **{**MODEL_FIELDS, "latent_temp": "(2,0.5,0.999995)"})
    blob["args"] = argparse.Namespace(arch="wav2vec_ctc", w2v_args=w2v, final_dropout=0.2, normalize=False)
    del blob["cfg"]
    path = save(blob, tmp_path / "legacy_ft.pt")
    ck = import_fairseq(path, dict_path=dicts[0])
    assert ck.heads["grapheme"].options == {"dropout": 0.2} and ck.config.encoder_embed_dim == 32


def test_cfg_pickled_as_omegaconf_containers_without_omegaconf(tmp_path, monkeypatch):
    """Some checkpoints pickle the cfg as OmegaConf objects; they are read back as plain dicts."""
    modules = {name: types.ModuleType(name) for name in ("omegaconf", "omegaconf.dictconfig", "omegaconf.nodes")}

    class DictConfig:  # pickles its content the way OmegaConf does: a state dict with "_content"
        def __init__(self, content):
            self._content = content

        def __getstate__(self):
            return {"_content": self._content, "_metadata": None, "_parent": None}

    class AnyNode:
        def __init__(self, value):
            self._val = value

        def __getstate__(self):
            return {"_val": self._val, "_metadata": None, "_parent": None}

    for cls, module in ((DictConfig, "omegaconf.dictconfig"), (AnyNode, "omegaconf.nodes")):
        cls.__module__, cls.__qualname__ = module, cls.__name__
        setattr(modules[module], cls.__name__, cls)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)

    def wrap(d):
        return DictConfig({k: wrap(v) if isinstance(v, dict) else AnyNode(v) for k, v in d.items()})

    path = save({"cfg": wrap(pretrained_cfg(normalize=True)), "model": pretrained_state()}, tmp_path / "omega.pt")
    for name in modules:
        monkeypatch.delitem(sys.modules, name)
    ck = import_fairseq(path)
    assert ck.config.normalize is True and ck.config.encoder_ffn_embed_dim == 64
