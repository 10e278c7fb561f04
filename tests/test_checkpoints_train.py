"""Converted checkpoints as starting points (Pretrainer, HierarchicalFineTuner) and `kwav2vec convert`.

- "continue pretraining English BASE on Korean audio": Pretrainer(init_from=converted.ckpt) starts from
  the imported weights (quantizer included) and trains a few steps;
- "fine-tune from it": HierarchicalFineTuner(init_from=converted.ckpt) likewise; a K-wav2vec import's
  stored heads (vocabularies, syllable depth, weights) become the fine-tuner's heads and give the same
  logits, also after a checkpoint round trip; `init_heads=False` starts new heads;
- the CLI converts each kind, exports, and names the file and the expected kind on wrong input.
"""

from __future__ import annotations

import math
import warnings

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from kwav2vec.checkpoints import build_backbone, head_module, load_converted
from kwav2vec.checkpoints.cli import main as convert_main
from kwav2vec.checkpoints.format import load_head_weights
from kwav2vec.checkpoints.reader import read_model_checkpoint
from kwav2vec.lit.pretrain import Pretrainer
from kwav2vec.models.config import Wav2Vec2Config
from kwav2vec.models.transformer import TransformerEncoderLayer
from kwav2vec.models.wav2vec2 import Wav2Vec2Model
from kwav2vec.text.vocab import Vocabulary

CONV = "[(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16, 2, 2)] * 2"
FIELDS = dict(extractor_mode="layer_norm", conv_feature_layers=CONV, conv_bias=True, encoder_layers=1,
              encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4, layer_norm_first=False,
              conv_pos=8, conv_pos_groups=4, final_dim=16, latent_vars=8, latent_groups=2, num_negatives=4,
              mask_prob=0.5, mask_length=3)
GRAPHEMES = "| 9\nᄋ 9\nᅡ 9\nᆫ 9\nᄀ 9\n"
SYLLABLES = "| 9\n안 9\n가 9\n"


def fairseq_blob(multitask: bool) -> dict:
    """A fairseq checkpoint in the layout of `wav2vec_small.pt` (pretrained) or a K-wav2vec multi-task one."""
    torch.manual_seed(0)
    cfg = Wav2Vec2Config(**FIELDS)
    state = {k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v"): v
             for k, v in Wav2Vec2Model(cfg).state_dict().items()}
    pre_cfg = {"model": {"_name": "wav2vec2", "quantize_targets": True, **FIELDS}, "task": {"normalize": True}}
    if not multitask:
        return {"cfg": pre_cfg, "model": state}
    model = {"w2v_encoder.w2v_model." + k: v for k, v in state.items() if not k.startswith(("quantizer.", "project_q.", "final_proj."))}
    for k, v in TransformerEncoderLayer(32, 64, 4).state_dict().items():
        model[f"w2v_encoder.additional_layer.0.{k}"] = v
    model.update({"w2v_encoder.proj.weight": torch.randn(9, 32), "w2v_encoder.proj.bias": torch.randn(9),
                  "w2v_encoder.proj2.weight": torch.randn(7, 32), "w2v_encoder.proj2.bias": torch.randn(7)})
    asr = {"_name": "wav2vec_ctc2", "w2v_args": pre_cfg, "additional_layers": 1, "final_dropout": 0.0}
    return {"cfg": {"model": asr, "task": {"normalize": True}}, "model": model}


class Repeat(Dataset):
    def __init__(self, batch: dict, n: int):
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return self.batch


def tones(batch: int, samples: int) -> torch.Tensor:
    t = torch.arange(samples) / 16000
    f = torch.tensor([220.0, 330.0, 440.0, 550.0])[:batch, None]
    return torch.sin(2 * math.pi * f * t) + 0.05 * torch.randn(batch, samples)


def fit(module: pl.LightningModule, batch: dict, steps: int) -> pl.Trainer:
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, DataLoader(Repeat(batch, steps), batch_size=None, num_workers=0))
    return trainer


def test_continue_pretraining_from_an_imported_fairseq_checkpoint(tmp_path):
    torch.save(fairseq_blob(multitask=False), tmp_path / "wav2vec_small.pt")
    assert convert_main(["--from", "fairseq", str(tmp_path / "wav2vec_small.pt"), str(tmp_path / "base.ckpt")]) == 0
    ck = load_converted(tmp_path / "base.ckpt")
    module = Pretrainer(init_from=str(tmp_path / "base.ckpt"), warmup_steps=1, total_steps=3)
    assert module.config == ck.config and module.config.normalize is True
    for key in ("quantizer.vars", "encoder.layers.0.fc1.weight", "mask_emb"):  # the imported weights
        assert torch.equal(module.model.state_dict()[key], ck.state_dict[key]), key
    before = module.model.encoder.layers[0].fc1.weight.detach().clone()
    batch = {"ids": ["a", "b"], "audio": tones(2, 8000), "audio_lengths": torch.tensor([8000, 8000])}
    trainer = fit(module, batch, 3)
    assert trainer.global_step == 3 and math.isfinite(float(trainer.callback_metrics["train/loss"]))
    assert not torch.equal(module.model.encoder.layers[0].fc1.weight, before)


def test_finetune_from_an_imported_kwav2vec_checkpoint(tmp_path):
    finetune = pytest.importorskip("kwav2vec.lit.finetune")
    torch.save(fairseq_blob(multitask=True), tmp_path / "kwav2vec.pt")
    (tmp_path / "dict.ltr.txt").write_text(GRAPHEMES, encoding="utf-8")
    (tmp_path / "add_dict.ltr.txt").write_text(SYLLABLES, encoding="utf-8")
    assert convert_main(["--from", "fairseq", str(tmp_path / "kwav2vec.pt"), str(tmp_path / "k.ckpt"),
                         "--dict", str(tmp_path / "dict.ltr.txt"), "--add-dict", str(tmp_path / "add_dict.ltr.txt")]) == 0
    ck = load_converted(tmp_path / "k.ckpt")
    heads = read_model_checkpoint(tmp_path / "k.ckpt").heads
    for kind in ("grapheme", "syllable"):  # written beside it for the data module (--data.<kind>_vocab)
        assert Vocabulary.load(tmp_path / f"k.vocab_{kind}.json") == heads[kind].vocab
    options = dict(mask_prob=0.0, mask_channel_prob=0.0, layerdrop=0.0, activation_dropout=0.0, total_steps=2, lr=1e-4)

    # no vocabulary or depth given: the stored heads supply them (1 syllable layer, not the default 2)
    module = finetune.HierarchicalFineTuner(init_from=str(tmp_path / "k.ckpt"), **options)
    assert torch.equal(module.backbone.state_dict()["encoder.layers.0.fc2.weight"], ck.state_dict["encoder.layers.0.fc2.weight"])
    assert module.grapheme_vocab == heads["grapheme"].vocab and module.syllable_vocab == heads["syllable"].vocab
    assert len(module.syllable_head.layers) == 1 and module.hparams.syllable_layers == 1
    for kind in ("grapheme", "syllable"):
        for key, value in heads[kind].state_dict.items():
            assert torch.equal(getattr(module, f"{kind}_head").state_dict()[key], value), (kind, key)
    with pytest.raises(ValueError, match="vocabulary"):
        load_head_weights(module.grapheme_head, "grapheme", heads["grapheme"], Vocabulary.grapheme())
    audio = tones(2, 8000)
    lengths = torch.tensor([8000, 7000])

    def syllable_outputs(m) -> tuple[torch.Tensor, torch.Tensor]:
        m.eval()
        with torch.no_grad():
            log_probs, frames = m(audio, lengths)
        return log_probs["syllable"], torch.arange(log_probs["syllable"].shape[1]) < frames[:, None]

    ours, valid = syllable_outputs(module)
    with torch.no_grad():
        x, _ = build_backbone(ck).eval().encode(audio, lengths)
        ref = head_module("syllable", heads["syllable"], ck.config).eval()(x, ~valid).float().log_softmax(-1)
    torch.testing.assert_close(ours[valid], ref[valid], atol=1e-4, rtol=1e-4)

    # new heads when asked; a training vocabulary other than the stored head's is refused, naming the way out
    fresh = finetune.HierarchicalFineTuner(init_from=str(tmp_path / "k.ckpt"), init_heads=False,
                                           grapheme_vocabulary=heads["grapheme"].vocab.to_dict(),
                                           syllable_vocabulary=heads["syllable"].vocab.to_dict(), **options)
    assert len(fresh.syllable_head.layers) == 2
    assert not torch.equal(fresh.grapheme_head.proj.weight, module.grapheme_head.proj.weight)
    other = Vocabulary.grapheme().to_dict()
    with pytest.raises(ValueError, match="init_heads=False"):
        finetune.HierarchicalFineTuner(init_from=str(tmp_path / "k.ckpt"), grapheme_vocabulary=other, **options)

    g, s = heads["grapheme"].vocab, heads["syllable"].vocab
    graphemes = torch.tensor([g.encode("안"), g.encode("가") + [0]])  # padded with the blank id
    syllables = torch.tensor([s.encode("안"), s.encode("가")])
    batch = {"ids": ["a", "b"], "audio": audio, "audio_lengths": lengths, "graphemes": graphemes,
             "grapheme_lengths": torch.tensor([3, 2]), "syllables": syllables, "syllable_lengths": torch.tensor([1, 1]),
             "texts": ["안", "가"]}
    module.train()
    trainer = fit(module, batch, 2)
    assert trainer.global_step == 2 and math.isfinite(float(trainer.callback_metrics["train/loss"]))
    # the checkpoint rebuilds the 1-layer head without the converted file
    trainer.save_checkpoint(tmp_path / "ft.ckpt")
    (tmp_path / "k.ckpt").unlink()
    restored = finetune.HierarchicalFineTuner.load_from_checkpoint(tmp_path / "ft.ckpt")
    assert len(restored.syllable_head.layers) == 1
    torch.testing.assert_close(syllable_outputs(restored)[0], syllable_outputs(module)[0])


# ---------------------------------------------------------------- CLI
def test_cli_messages_name_the_file_and_the_expected_kind(tmp_path, capsys):
    torch.save(fairseq_blob(multitask=False), tmp_path / "w2v.pt")
    assert convert_main(["--from", "fairseq", str(tmp_path / "w2v.pt"), str(tmp_path / "ours.ckpt")]) == 0
    out = capsys.readouterr().out
    assert "1 layers x 32" in out and "wrote" in out

    cases = [
        (["--from", "hf", str(tmp_path / "w2v.pt"), str(tmp_path / "x.ckpt")], "w2v.pt: not a directory (expected a Hugging Face"),
        (["--from", "fairseq", str(tmp_path), str(tmp_path / "x.ckpt")], "is a directory, expected a fairseq"),
        (["--from", "fairseq", str(tmp_path / "ours.ckpt"), str(tmp_path / "x.ckpt")], "ours.ckpt: not a fairseq checkpoint"),
        (["--to", "hf", str(tmp_path / "w2v.pt"), str(tmp_path / "hf")], "w2v.pt: not a kwav2vec checkpoint (expected a fine-tuner or Pretrainer checkpoint"),
        (["--from", "torchaudio", str(tmp_path / "ours.ckpt"), str(tmp_path / "x.ckpt")], "does not say how the model was built"),
        (["--from", "fairseq", str(tmp_path / "missing.pt"), str(tmp_path / "x.ckpt")], "missing.pt: no such file"),
    ]
    (tmp_path / "text.pt").write_text("not a checkpoint")
    cases.append((["--from", "fairseq", str(tmp_path / "text.pt"), str(tmp_path / "x.ckpt")], "text.pt: not a torch checkpoint"))
    for argv, message in cases:
        assert convert_main(argv) == 1, argv
        err = capsys.readouterr().err
        assert message in err, (argv, err)
    with pytest.raises(SystemExit):
        convert_main(["--from", "hf", "--dict", "d.txt", "a", "b"])  # --dict belongs to fairseq
    assert "only applies to --from fairseq" in capsys.readouterr().err


def test_cli_export_through_the_kwav2vec_command(tmp_path, capsys):
    pytest.importorskip("safetensors")
    from kwav2vec.cli import main as kwav2vec_main

    torch.save(fairseq_blob(multitask=False), tmp_path / "w2v.pt")
    assert kwav2vec_main(["convert", "--from", "fairseq", str(tmp_path / "w2v.pt"), str(tmp_path / "ours.ckpt")]) == 0
    assert kwav2vec_main(["convert", "--to", "hf", str(tmp_path / "ours.ckpt"), str(tmp_path / "hf")]) == 0
    assert {p.name for p in (tmp_path / "hf").iterdir()} == {"config.json", "model.safetensors", "preprocessor_config.json"}
    assert "Wav2Vec2ForPreTraining" in (tmp_path / "hf" / "config.json").read_text()
    assert "wrote" in capsys.readouterr().out
