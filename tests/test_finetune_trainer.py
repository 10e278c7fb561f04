"""HierarchicalFineTuner under a Lightning Trainer: freezing schedule, infeasible-target counts,
validation/test aggregation, self-contained checkpoints, init_from a Pretrainer checkpoint, and a
fast_dev_run on the demo corpus."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from test_finetune import TEST_OVERRIDES, TEXTS, make_batch, make_model, vocabularies
from torch.utils.data import DataLoader, Dataset

from kwav2vec import metrics
from kwav2vec.data.datamodule import FinetuneDataModule
from kwav2vec.lit.finetune import CHECKPOINT_KEY, HierarchicalFineTuner
from kwav2vec.lit.guards import NonFiniteGuard
from kwav2vec.lit.pretrain import Pretrainer

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"


class Batches(Dataset):
    """Ready-made batches, in order, cycled."""

    def __init__(self, batches: list[dict], n: int | None = None):
        self.batches, self.n = batches, n or len(batches)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return self.batches[i % len(self.batches)]


def loader(batches: list[dict], n: int | None = None) -> DataLoader:
    return DataLoader(Batches(batches, n), batch_size=None, num_workers=0)


def trainer(steps: int = 1, callbacks=(), **kw) -> pl.Trainer:
    return pl.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
        num_sanity_val_steps=0, **kw,
    )


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


class Snapshots(pl.Callback):
    def __init__(self):
        self.states: list[dict[str, torch.Tensor]] = []

    def _take(self, module):
        self.states.append({n: p.detach().clone() for n, p in module.named_parameters()})

    def on_train_start(self, trainer, pl_module):
        self._take(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._take(pl_module)


# ---------------------------------------------------------------- freezing
def test_frozen_parts_get_no_updates_while_frozen_and_do_after():
    torch.manual_seed(0)
    # weight decay on: a frozen parameter must not even decay
    model = make_model(0.5, freeze_backbone_updates=2, weight_decay=0.01, lr=1e-3, phase_ratio=(0.0, 1.0, 0.0))
    snaps = Snapshots()
    quiet(trainer(3, [snaps]).fit, model, loader([make_batch()], 3))
    s0, s1, s2, s3 = snaps.states

    def changed(a, b, prefix):
        keys = [k for k in a if k.startswith(prefix) and k != "model.backbone.mask_emb"]  # no masking: no gradient
        assert keys, prefix
        return [k for k in keys if not torch.equal(a[k], b[k])], keys

    for before, after in ((s0, s1), (s1, s2)):  # updates 1 and 2: heads only
        assert changed(before, after, "model.backbone.")[0] == []
        for head in ("model.heads.grapheme.", "model.heads.syllable."):
            moved, keys = changed(before, after, head)
            assert moved == keys
    moved, keys = changed(s2, s3, "model.backbone.")  # update 3: the backbone too, except the conv front end
    conv = [k for k in keys if k.startswith("model.backbone.feature_extractor.")]
    assert conv and not set(conv) & set(moved)
    assert set(moved) == set(keys) - set(conv)
    assert changed(s0, s3, "model.backbone.feature_extractor.")[0] == []


# ---------------------------------------------------------------- infeasible targets
def test_infeasible_targets_are_counted_and_left_out_of_the_loss():
    torch.manual_seed(0)
    long_text = "가나다라마바사 아자차카타파하"  # 30 jamo + boundary: cannot fit 19 frames; 15 syllables can
    texts = [*TEXTS, long_text]
    model = make_model(0.5)
    quiet(trainer(2).fit, model, loader([make_batch(texts)], 2))
    m = model.trainer.callback_metrics
    assert float(m["train/ctc_infeasible"]) == 1.0  # last step
    assert float(m["train/ctc_infeasible_epoch"]) == 2.0  # summed over the 2 steps
    assert float(m["train/ctc_infeasible_grapheme"]) == 2.0
    assert float(m["train/ctc_infeasible_syllable"]) == 0.0
    # the loss is that of the feasible utterances only, and finite
    model.eval()
    batch = make_batch(texts)
    log_probs, frames = model(batch["audio"], batch["audio_lengths"])
    _, terms, per_head = model._loss(log_probs, frames, batch)
    assert terms["grapheme"].infeasible.tolist() == [False] * 4 + [True]
    assert int(terms["grapheme"].ntokens) == int(batch["grapheme_lengths"][:4].sum())
    assert torch.isfinite(per_head["grapheme"]) and float(per_head["grapheme"].detach()) > 0


# ---------------------------------------------------------------- evaluation
def test_validation_and_test_metrics_are_corpus_rates_over_all_batches():
    torch.manual_seed(0)
    model = make_model(0.5)
    batches = [make_batch(TEXTS[:1], seconds=0.6, seed=1), make_batch(TEXTS[1:], seconds=0.4, seed=2)]
    results = quiet(trainer().validate, model, loader(batches), verbose=False)[0]
    hyps = {"grapheme": [], "syllable": []}
    refs = []
    for batch in batches:
        out = model.transcribe(batch["audio"], batch["audio_lengths"])
        for head in hyps:
            hyps[head] += out[head]
        refs += batch["texts"]
    _, s = vocabularies()
    for head in hyps:
        assert results[f"val/cer_{head}"] == pytest.approx(metrics.cer(refs, hyps[head]))
        assert results[f"val/wer_{head}"] == pytest.approx(metrics.wer(refs, hyps[head]))
        assert results[f"val/swer_{head}"] == pytest.approx(metrics.swer(refs, hyps[head]))
        assert results[f"val/jer_{head}"] == pytest.approx(metrics.jamo_error_rate(refs, hyps[head]))
        assert f"val/oov_recovery_{head}" in results and f"val/loss_{head}" in results
    assert results["val/cer"] == min(results["val/cer_grapheme"], results["val/cer_syllable"])
    assert results["val/loss"] == pytest.approx(0.5 * results["val/loss_grapheme"] + 0.5 * results["val/loss_syllable"])
    tester = trainer()
    test = quiet(tester.test, model, loader(batches), verbose=False)[0]
    assert test["test/cer_syllable"] == pytest.approx(results["val/cer_syllable"])
    assert any(isinstance(c, NonFiniteGuard) for c in tester.callbacks)  # from configure_callbacks


# ---------------------------------------------------------------- checkpoints
def test_checkpoint_alone_rebuilds_a_model_that_transcribes(tmp_path):
    torch.manual_seed(0)
    g, s = vocabularies()
    files = {"g": tmp_path / "g.json", "s": tmp_path / "s.json", "init": tmp_path / "backbone.pt"}
    g.save(files["g"])
    s.save(files["s"])
    donor = make_model(0.5)
    torch.save({"config": donor.config.to_dict(), "state_dict": donor.backbone.state_dict()}, files["init"])
    model = make_model(0.5, grapheme_vocabulary=str(files["g"]), syllable_vocabulary=str(files["s"]),
                       init_from=str(files["init"]))
    fit = trainer()
    quiet(fit.fit, model, loader([make_batch()]))
    ckpt = tmp_path / "ft.ckpt"
    fit.save_checkpoint(ckpt)
    for path in files.values():
        path.unlink()  # the checkpoint must not need any of them

    loaded = quiet(HierarchicalFineTuner.load_from_checkpoint, ckpt, map_location="cpu")
    assert loaded.grapheme_vocab == g and loaded.syllable_vocab == s and loaded.config == model.config
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    batch = make_batch()
    assert loaded.transcribe(batch["audio"]) == model.transcribe(batch["audio"])
    blob = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert blob["hyper_parameters"]["init_from"] is None
    assert blob[CHECKPOINT_KEY]["init_from"] == str(files["init"])
    # the logged hyper-parameters keep the paths as given
    assert model.hparams.grapheme_vocabulary == str(files["g"])

    # a fine-tuner checkpoint can also initialise another fine-tuning run (backbone only)
    again = make_model(1.0, model="base", init_from=str(ckpt))
    assert again.config.encoder_embed_dim == 128 and again.grapheme_head is None
    torch.testing.assert_close(again.backbone.state_dict()["encoder.layers.0.fc1.weight"],
                               model.backbone.state_dict()["encoder.layers.0.fc1.weight"])


def test_init_from_a_pretrainer_checkpoint(tmp_path):
    torch.manual_seed(0)
    pre = Pretrainer(model="tiny", model_overrides=TEST_OVERRIDES, warmup_steps=1, total_steps=1)
    batch = make_batch(TEXTS[:2], seconds=1.0)
    audio_only = {k: batch[k] for k in ("ids", "audio", "audio_lengths")}
    fit = trainer(limit_val_batches=0)
    quiet(fit.fit, pre, loader([audio_only]))
    ckpt = tmp_path / "pre.ckpt"
    fit.save_checkpoint(ckpt)
    model = make_model(0.5, model="base", model_overrides=None, init_from=str(ckpt))  # architecture from the file
    assert model.config.encoder_embed_dim == 128 and model.config.encoder_layers == 2
    ours = model.backbone.state_dict()
    for key, value in pre.model.state_dict().items():
        if not key.startswith(("quantizer.", "project_q.", "final_proj.")):
            torch.testing.assert_close(ours[key], value, rtol=0, atol=0, msg=key)


# ---------------------------------------------------------------- demo corpus
def test_fast_dev_run_on_the_demo_corpus_with_the_tiny_preset():
    datamodule = FinetuneDataModule(
        str(DEMO / "train.jsonl"), val_manifest=str(DEMO / "dev.jsonl"), max_samples_per_batch=100_000,
    )
    model = HierarchicalFineTuner(model="tiny", lr=1e-4)  # vocabularies come from the datamodule in setup
    fit = pl.Trainer(fast_dev_run=True, accelerator="cpu", devices=1, use_distributed_sampler=False,
                     enable_progress_bar=False, enable_model_summary=False)
    quiet(fit.fit, model, datamodule=datamodule)
    m = fit.callback_metrics
    assert model.grapheme_vocab == datamodule.grapheme_vocab and model.syllable_vocab == datamodule.syllable_vocab
    assert model.syllable_head.proj.out_features == datamodule.num_syllables
    for key in ("train/loss", "train/loss_grapheme", "train/loss_syllable", "train/ctc_infeasible",
                "val/cer", "val/cer_syllable", "val/cer_grapheme", "val/swer_grapheme", "val/jer_grapheme"):
        assert key in m and torch.isfinite(m[key]), key


def test_vocabulary_mismatch_with_the_datamodule_is_an_error():
    datamodule = FinetuneDataModule(str(DEMO / "train.jsonl"), max_samples_per_batch=100_000)
    model = make_model(0.5)  # a 4-text syllable vocabulary, not the demo corpus's
    with pytest.raises(ValueError, match="syllable vocabulary .* differs from the datamodule's"):
        quiet(trainer().fit, model, datamodule=datamodule)
