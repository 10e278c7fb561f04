"""`kwav2vec convert --to hf` of what users train: fine-tuner and Pretrainer Lightning checkpoints.

Fine-tuner -> Hugging Face directory: `Wav2Vec2ForCTC` loads with no missing or unexpected keys and
its logits equal our grapheme head's within 1e-4; `AutoProcessor` loads a Wav2Vec2Processor; the
syllable head and both vocabularies lie beside it, and `convert --from hf` reads the directory back
into both heads with logits within 1e-4 of the original model's. Pretrainer -> `Wav2Vec2ForPreTraining`.
Both architectures: post-LN with the group-norm extractor (equal-length batches: transformers' group
norm counts padding) and pre-LN with the layer-norm extractor (padded batches).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from kwav2vec.checkpoints import build_backbone, head_module, load_converted  # noqa: E402
from kwav2vec.checkpoints.cli import main as convert  # noqa: E402
from kwav2vec.lit.checkpoint_io import save_module_checkpoint  # noqa: E402
from kwav2vec.lit.finetune import HierarchicalFineTuner  # noqa: E402
from kwav2vec.lit.pretrain import Pretrainer  # noqa: E402
from kwav2vec.text.vocab import Vocabulary  # noqa: E402

ATOL = 1e-4
ARCH = {
    "postLN-group": dict(extractor_mode="default", layer_norm_first=False, conv_bias=False),
    "preLN-layer": dict(extractor_mode="layer_norm", layer_norm_first=True, conv_bias=True),
}
TINY = dict(
    encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=2,
    conv_pos=8, conv_pos_groups=4, final_dim=16, latent_vars=8, latent_dim=16,
    conv_feature_layers="[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2",
)


def lightning_checkpoint(module, path: Path) -> Path:
    """Saved as Lightning's checkpointing does, through the module's on_save_checkpoint."""
    return Path(save_module_checkpoint(module, path, global_step=7))


def finetuner(arch: str, folder: Path) -> HierarchicalFineTuner:
    torch.manual_seed(0)
    Vocabulary.grapheme().save(folder / "vocab_grapheme.json")
    Vocabulary.syllables_from_texts(["안녕 하세요", "반갑 습니다"]).save(folder / "vocab_syllable.json")
    model = HierarchicalFineTuner(
        model="tiny", model_overrides={**TINY, **ARCH[arch]}, syllable_layers=1, layerdrop=0.0, final_dropout=0.1,
        grapheme_vocabulary=str(folder / "vocab_grapheme.json"), syllable_vocabulary=str(folder / "vocab_syllable.json"),
    )
    with torch.no_grad():  # trained-looking heads: random output projections, not the zero init
        for head in (model.grapheme_head, model.syllable_head):
            head.proj.weight.normal_(0, 0.5)
            head.proj.bias.normal_(0, 0.5)
    return model.eval()


def batch(arch: str):
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([6400, 6400]) if arch == "postLN-group" else torch.tensor([6400, 4800])
    audio = torch.randn(2, 6400, generator=g) * (torch.arange(6400) < lengths[:, None])
    mask = None if arch == "postLN-group" else (torch.arange(6400) < lengths[:, None]).long()
    return audio, lengths, mask


@pytest.mark.parametrize("arch", list(ARCH))
def test_finetuner_checkpoint_exports_to_transformers_and_back(tmp_path, arch, capsys):
    model = finetuner(arch, tmp_path)
    ckpt = lightning_checkpoint(model, tmp_path / "best.ckpt")
    out = tmp_path / "hf_model"
    assert convert(["--to", "hf", str(ckpt), str(out)]) == 0
    assert "syllable head" in capsys.readouterr().out

    audio, lengths, mask = batch(arch)
    with torch.no_grad():
        ours, frames = model(audio, lengths)
        x, _ = model.backbone.encode(audio, lengths)
        our_logits = model.grapheme_head(x)
    valid = torch.arange(frames.max()) < frames[:, None]

    ctc, info = transformers.Wav2Vec2ForCTC.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    processor = transformers.AutoProcessor.from_pretrained(str(out))
    assert type(processor).__name__ == "Wav2Vec2Processor"
    # the user's path: the processor pads (and normalises, for a model trained on normalised audio)
    inputs = processor([a[:n].numpy() for a, n in zip(audio, lengths, strict=True)], sampling_rate=16000,
                       return_tensors="pt", padding=True)
    assert ("attention_mask" in inputs) == (mask is not None)
    with torch.no_grad():
        ref = ctc.eval()(**inputs).logits
    torch.testing.assert_close(ref[valid], our_logits[valid], atol=ATOL, rtol=ATOL)
    assert processor.tokenizer.convert_ids_to_tokens(list(range(5))) == model.grapheme_vocab.tokens[:5]
    heads = json.loads((out / "kwav2vec_heads.json").read_text(encoding="utf-8"))
    assert Vocabulary.from_dict(heads["heads"]["syllable"]["vocab"]) == model.syllable_vocab

    back = tmp_path / "back.ckpt"
    assert convert(["--from", "hf", str(out), str(back)]) == 0
    ck = load_converted(back)
    assert ck.heads["grapheme"].vocab == model.grapheme_vocab and ck.heads["syllable"].vocab == model.syllable_vocab
    backbone = build_backbone(ck).eval()
    with torch.no_grad():
        y, frames2 = backbone.encode(audio, lengths)
        padding = torch.arange(y.shape[1]) >= frames2[:, None]
        for name in ("grapheme", "syllable"):
            head = head_module(name, ck.heads[name], ck.config).eval()
            logp = torch.log_softmax(head(y, padding) if name == "syllable" else head(y), -1)
            torch.testing.assert_close(logp[valid], ours[name][valid], atol=ATOL, rtol=ATOL, msg=name)
    # the round-tripped file fine-tunes on with both stored heads
    again = HierarchicalFineTuner(init_from=str(back), layerdrop=0.0).eval()
    with torch.no_grad():
        for name, logp in again(audio, lengths)[0].items():
            torch.testing.assert_close(logp[valid], ours[name][valid], atol=ATOL, rtol=ATOL, msg=name)


def test_pretrainer_checkpoint_exports_to_wav2vec2_for_pretraining(tmp_path):
    torch.manual_seed(2)
    model = Pretrainer(model="tiny", model_overrides={**TINY, **ARCH["preLN-layer"]}).eval()
    ckpt = lightning_checkpoint(model, tmp_path / "last.ckpt")
    assert convert(["--to", "hf", str(ckpt), str(tmp_path / "hf")]) == 0
    hf, info = transformers.Wav2Vec2ForPreTraining.from_pretrained(str(tmp_path / "hf"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert not (tmp_path / "hf" / "kwav2vec_heads.json").exists()
    audio, lengths, _ = batch("preLN-layer")
    extractor = transformers.AutoFeatureExtractor.from_pretrained(str(tmp_path / "hf"))
    inputs = extractor([a[:n].numpy() for a, n in zip(audio, lengths, strict=True)], sampling_rate=16000,
                       return_tensors="pt", padding=True)
    with torch.no_grad():
        x, frames = model.model.encode(audio, lengths)
        ref = hf.eval().wav2vec2(**inputs).last_hidden_state
    valid = torch.arange(x.shape[1]) < frames[:, None]
    torch.testing.assert_close(ref[valid], x[valid], atol=ATOL, rtol=ATOL)
    sd = hf.state_dict()
    assert torch.equal(sd["quantizer.codevectors"], model.model.state_dict()["quantizer.vars"])


def test_export_names_a_file_that_is_not_a_kwav2vec_checkpoint(tmp_path, capsys):
    bad = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, bad)
    assert convert(["--to", "hf", str(bad), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "not a kwav2vec checkpoint" in err and err.count("\n") == 1
