"""HierarchicalFineTuner as a module: overfitting, exact single-task losses, gradient flow,
evaluation counts, predict_step, init_from. (Trainer-driven tests: test_finetune_trainer.py.)"""

from __future__ import annotations

import math
import random
import warnings

import pytest
import torch
import torch.nn.functional as F

from kwav2vec import metrics
from kwav2vec.checkpoints.reader import read_model_checkpoint
from kwav2vec.data.collate import pad_1d
from kwav2vec.lit.finetune import HierarchicalFineTuner
from kwav2vec.metrics import ErrorCounts
from kwav2vec.models.config import preset
from kwav2vec.models.wav2vec2 import Wav2Vec2Model
from kwav2vec.text.vocab import Vocabulary

SR = 16000
TEXTS = ["가나 다", "라마", "바사 아자", "차카"]
# the tiny preset, narrower still (64 conv channels, 2 x 128-dim layers): these tests are about the
# fine-tuner, and the conv front end at 16 kHz is what a CPU step spends its time on
TEST_OVERRIDES = {
    "conv_feature_layers": "[(64, 10, 5)] + [(64, 3, 2)] * 4 + [(64, 2, 2)] * 2",
    "encoder_layers": 2,
    "encoder_embed_dim": 128,
    "encoder_ffn_embed_dim": 256,
    "conv_pos": 16,
    "conv_pos_groups": 4,
}


def vocabularies(texts=TEXTS) -> tuple[Vocabulary, Vocabulary]:
    return Vocabulary.grapheme(), Vocabulary.syllables_from_texts(texts)


def make_model(mtl_weight: float = 0.5, texts=TEXTS, **kwargs) -> HierarchicalFineTuner:
    g, s = vocabularies(texts)
    args = dict(
        model="tiny", model_overrides=TEST_OVERRIDES, grapheme_vocabulary=g.to_dict(),
        syllable_vocabulary=s.to_dict(), mtl_weight=mtl_weight, syllable_layers=1, mask_prob=0.0,
        mask_channel_prob=0.0, layerdrop=0.0, activation_dropout=0.0, total_steps=1000,
    )
    args.update(kwargs)
    return HierarchicalFineTuner(**args)


def make_batch(texts=TEXTS, seconds: float = 0.4, seed: int = 0) -> dict:
    """One two-tone 'utterance' per text (distinct pitches, slow amplitude wobble) plus noise, and the
    contract's fine-tuning batch keys."""
    g, s = vocabularies(TEXTS)
    n = int(seconds * SR)
    t = torch.arange(n) / SR
    gen = torch.Generator().manual_seed(seed)
    tones = [(300.0 + 170 * i, 900.0 + 430 * i) for i in range(len(texts))]
    audio = torch.stack([
        torch.sin(2 * math.pi * f1 * t) + 0.5 * torch.sin(2 * math.pi * f2 * t) * torch.sin(2 * math.pi * 3 * t)
        for f1, f2 in tones
    ]) + 0.05 * torch.randn(len(texts), n, generator=gen)
    graphemes, grapheme_lengths = pad_1d([torch.tensor(g.encode(x)) for x in texts], 0)
    syllables, syllable_lengths = pad_1d([torch.tensor(s.encode(x)) for x in texts], 0)
    return {
        "ids": [f"utt{i}" for i in range(len(texts))], "audio": audio,
        "audio_lengths": torch.full((len(texts),), n, dtype=torch.long),
        "graphemes": graphemes, "grapheme_lengths": grapheme_lengths,
        "syllables": syllables, "syllable_lengths": syllable_lengths, "texts": list(texts),
    }


def step(model: HierarchicalFineTuner, batch: dict) -> torch.Tensor:
    """The Lightning training step outside a Trainer (`self.log` is then a no-op that warns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.training_step(batch, 0)


# ---------------------------------------------------------------- construction
def test_heads_built_per_weight_and_sized_by_vocabularies():
    g, s = vocabularies()
    both = make_model(0.5)
    assert both.grapheme_head.proj.out_features == len(g) and both.syllable_head.proj.out_features == len(s)
    assert len(both.syllable_head.layers) == 1
    assert both.syllable_head.layers[0].fc1.in_features == both.config.encoder_embed_dim
    assert make_model(0.0).syllable_head is None and make_model(1.0).grapheme_head is None
    # fine-tuning drops the pretraining-only modules and freezes the conv front end by default
    assert both.backbone.quantizer is None and both.backbone.final_proj is None
    assert not any(p.requires_grad for p in both.backbone.feature_extractor.parameters())
    assert both.config.feature_grad_mult == 0.0
    with pytest.raises(ValueError, match="mtl_weight"):
        make_model(1.5)
    with pytest.raises(ValueError, match="expected a grapheme vocabulary"):
        make_model(0.5, grapheme_vocabulary=s.to_dict())


def test_without_vocabularies_the_heads_wait_for_setup():
    model = make_model(grapheme_vocabulary=None, syllable_vocabulary=None)
    assert model.grapheme_head is None and model.syllable_head is None
    with pytest.raises(RuntimeError, match="not built yet"):
        model.transcribe(make_batch()["audio"])


# ---------------------------------------------------------------- losses
def _reference_ctc(log_probs: torch.Tensor, frames, targets, lengths) -> torch.Tensor:
    """Single-task CTC, fairseq-normalised: sum over utterances / target tokens."""
    loss = F.ctc_loss(log_probs.transpose(0, 1), targets, frames, lengths, blank=0, reduction="sum",
                      zero_infinity=True)
    return loss / lengths.sum()


@pytest.mark.parametrize("mtl_weight", [0.0, 1.0])
def test_single_task_weights_give_exactly_single_task_ctc(mtl_weight):
    torch.manual_seed(0)
    model = make_model(mtl_weight).eval()  # eval: no dropout, so two forwards agree
    batch = make_batch()
    loss = step(model, batch)
    log_probs, frames = model(batch["audio"], batch["audio_lengths"])
    head = "syllable" if mtl_weight == 1.0 else "grapheme"
    assert list(log_probs) == [head]
    targets, lengths = {"grapheme": ("graphemes", "grapheme_lengths"), "syllable": ("syllables", "syllable_lengths")}[head]
    expected = _reference_ctc(log_probs[head], frames, batch[targets], batch[lengths])
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)


def test_mixed_weight_combines_the_two_ctc_losses():
    torch.manual_seed(0)
    model = make_model(0.3).eval()
    batch = make_batch()
    loss = step(model, batch)
    log_probs, frames = model(batch["audio"], batch["audio_lengths"])
    g = _reference_ctc(log_probs["grapheme"], frames, batch["graphemes"], batch["grapheme_lengths"])
    s = _reference_ctc(log_probs["syllable"], frames, batch["syllables"], batch["syllable_lengths"])
    torch.testing.assert_close(loss, 0.3 * s + 0.7 * g, rtol=1e-6, atol=0)


def test_gradients_reach_backbone_and_both_heads():
    torch.manual_seed(0)
    model = make_model(0.5, mask_prob=0.3, freeze_feature_encoder=False).train()
    batch = make_batch()
    log_probs, frames = model(batch["audio"], batch["audio_lengths"])
    _, terms, per_head = model._loss(log_probs, frames, batch)
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    for head, other in (("grapheme", "syllable_head"), ("syllable", "grapheme_head")):
        grads = torch.autograd.grad(per_head[head], backbone + list(getattr(model, f"{head}_head").parameters()),
                                    retain_graph=True, allow_unused=True)
        assert all(g is not None for g in grads), f"{head} loss leaves parameters without gradient"
        # each head's loss reaches the deepest backbone parameters, conv front end included
        conv = model.backbone.feature_extractor.conv_layers[0][0].weight
        assert torch.autograd.grad(per_head[head], conv, retain_graph=True)[0].abs().sum() > 0
        # and never the other head
        unrelated = torch.autograd.grad(per_head[head], list(getattr(model, other).parameters()),
                                        retain_graph=True, allow_unused=True)
        assert all(g is None for g in unrelated)
    loss = step(model, batch)
    loss.backward()
    named = dict(model.named_parameters())
    no_grad = [n for n, p in named.items() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not no_grad, f"no gradient for {no_grad}"


# ---------------------------------------------------------------- overfitting
def test_overfitting_one_batch_drives_both_heads_to_cer_zero():
    """Four 0.4 s utterances, a narrow tiny backbone from scratch, constant lr 5e-3: both heads
    transcribe the batch exactly (greedy, eval mode) within 200 updates (typically 55-100)."""
    torch.manual_seed(0)
    model = make_model(0.5, lr=5e-3, phase_ratio=(0.0, 1.0, 0.0))
    batch = make_batch()
    optimizer = model.configure_optimizers()["optimizer"]
    first = None
    for update in range(1, 201):
        model.train()
        loss = step(model, batch)
        first = float(loss.detach()) if first is None else first
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if update % 5 == 0:
            out = model.transcribe(batch["audio"], batch["audio_lengths"])
            if out["grapheme"] == TEXTS and out["syllable"] == TEXTS:
                break
    assert metrics.cer(TEXTS, out["syllable"]) == 0.0, out
    assert metrics.cer(TEXTS, out["grapheme"]) == 0.0, out
    assert float(loss.detach()) < 0.1 * first


# ---------------------------------------------------------------- evaluation helpers
def test_error_counts_reproduce_the_corpus_metrics():
    rng = random.Random(0)
    syllables = "가나다라마바사아자차카타파하한국어음성인식"
    refs, hyps = [], []
    for _ in range(40):
        ref = " ".join("".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 4)))
        chars = list(ref)
        for _ in range(rng.randint(0, 3)):  # substitutions, deletions, insertions, space moves
            i = rng.randrange(len(chars))
            op = rng.random()
            if op < 0.3:
                chars[i] = rng.choice(syllables)
            elif op < 0.5:
                del chars[i]
            elif op < 0.7:
                chars.insert(i, rng.choice(syllables))
            else:
                chars.insert(i, " ")
        refs.append(ref)
        hyps.append("".join(chars))
    c = ErrorCounts().add(refs, hyps)
    assert c.utterances == 40 and not c.empty_refs
    assert c.char_errors / c.ref_chars == pytest.approx(metrics.cer(refs, hyps))
    assert c.word_errors / c.ref_words == pytest.approx(metrics.wer(refs, hyps))
    assert c.spaced_word_errors / c.ref_words == pytest.approx(metrics.swer(refs, hyps))
    assert c.jamo_errors / c.ref_jamo == pytest.approx(metrics.jamo_error_rate(refs, hyps))
    # summing counts over two halves gives the corpus rate, averaging the halves' rates would not
    a, b = ErrorCounts().add(refs[:5], hyps[:5]), ErrorCounts().add(refs[5:], hyps[5:])
    assert (a.char_errors + b.char_errors) / (a.ref_chars + b.ref_chars) == pytest.approx(metrics.cer(refs, hyps))


def test_predict_step_outputs_log_probs_lengths_and_ids():
    torch.manual_seed(0)
    model = make_model(0.5).eval()
    batch = make_batch()
    batch["audio_lengths"] = torch.tensor([6400, 5000, 4000, 6400])
    out = model.predict_step(batch, 0)
    g, s = vocabularies()
    assert out["ids"] == batch["ids"]
    B, T = 4, out["grapheme_log_probs"].shape[1]
    assert out["grapheme_log_probs"].shape == (B, T, len(g)) and out["syllable_log_probs"].shape == (B, T, len(s))
    assert out["grapheme_log_probs"].dtype == torch.float32
    assert out["frame_lengths"].tolist() == model.backbone.frame_lengths(batch["audio_lengths"]).tolist()
    torch.testing.assert_close(out["syllable_log_probs"].exp().sum(-1), torch.ones(B, T))
    from kwav2vec.decoding.greedy import greedy_decode

    texts = model.transcribe(batch["audio"], batch["audio_lengths"])
    assert greedy_decode(out["grapheme_log_probs"], out["frame_lengths"], g) == texts["grapheme"]
    single = make_model(0.0).eval().predict_step(batch, 0)
    assert single["syllable_log_probs"] is None and single["grapheme_log_probs"] is not None
    empty = {k: (v[:0] if torch.is_tensor(v) else v[:0]) for k, v in batch.items()}
    out = model.predict_step(empty, 0)
    assert out["ids"] == [] and out["grapheme_log_probs"].shape[0] == 0


# ---------------------------------------------------------------- init_from
def test_init_from_a_backbone_file(tmp_path):
    torch.manual_seed(1)
    cfg = preset("tiny", **TEST_OVERRIDES)
    source = Wav2Vec2Model(cfg)
    path = tmp_path / "backbone.pt"
    torch.save({"config": cfg.to_dict(), "state_dict": source.state_dict()}, path)
    model = make_model(init_from=str(path))
    ours = model.backbone.state_dict()
    for key, value in source.state_dict().items():
        if key.startswith(("quantizer.", "project_q.", "final_proj.")):
            assert key not in ours
        else:
            torch.testing.assert_close(ours[key], value, rtol=0, atol=0, msg=key)
    # the file's architecture wins over the preset's
    assert read_model_checkpoint(path).config == cfg and model.config.encoder_embed_dim == 128
    with pytest.raises(ValueError, match="architecture differs"):
        make_model(init_from=str(path), model_overrides={"encoder_layers": 3})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_model(init_from=str(tmp_path / "missing.pt"))
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="neither a backbone file"):
        make_model(init_from=str(tmp_path / "other.pt"))


def test_batch_errors_name_keys_and_utterances():
    model = make_model(0.5)
    batch = make_batch()
    with pytest.raises(KeyError, match="syllable_lengths"):
        step(model, {k: v for k, v in batch.items() if k != "syllable_lengths"})
    short = dict(batch, audio_lengths=torch.tensor([6400, 100, 6400, 6400]))
    with pytest.raises(ValueError, match=r"ids \['utt0', 'utt1'.*utterances \[1\] have \[100\] samples"):
        step(model, short)
    bad_targets = dict(batch, graphemes=batch["graphemes"][:2])
    with pytest.raises(ValueError, match=r"grapheme targets of the batch with ids \['utt0'.*targets must be"):
        step(model, bad_targets)
