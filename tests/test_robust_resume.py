"""Exact resume through a real Lightning Trainer, pretraining and fine-tuning: a run killed after k
steps (mid-epoch, or right after an epoch's last batch) and resumed from its last checkpoint
(`Trainer.fit(ckpt_path=...)`) sees the same batches and computes bit-identical losses and weights
as an uninterrupted run, on CPU. The losses only match when the RNG states (masks,
distractors, Gumbel noise, dropout) are resumed too: `RNGStateCallback`.

Batch-order resume alone (including the `estimated_stepping_batches` trap and worker prefetch) is
tested by the data stream in tests/test_data_resume.py; here it is the whole training state."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from robust_utils import (
    StepRecorder,
    finetune_corpus,
    finetune_data,
    finetuner,
    one_thread,  # noqa: F401 (a fixture)
    parameters,
    pretrain_corpus,
    pretrain_data,
    pretrainer,
    trainer,
)

from kwav2vec.lit.checkpoint_io import AtomicCheckpointIO
from kwav2vec.lit.rng_state import RNGStateCallback

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # expected here: each run has its own checkpoint folder, the control run leaves RNGStateCallback out
    pytest.mark.filterwarnings(
        "ignore:The dirpath has changed", "ignore:Be aware that when using `ckpt_path`"
    ),
]

TOTAL = 10  # steps: more than one epoch of 8 batches
MID = 4  # killed mid-epoch, after the checkpoint of step 4


class Killed(RuntimeError):
    pass


class KillAt(pl.Callback):
    """Dies at the start of the step after global step `k`, i.e. after the checkpoint of step `k` was written."""

    def __init__(self, k: int) -> None:
        self.k = k

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.k:
            raise Killed(f"simulated crash at step {self.k}")


def _run(root, make_module, make_data, *, stop=None, ckpt_path=None, rng=True):
    """A run of TOTAL steps; with `stop`: checkpointed at step `stop` (last.ckpt) and killed right after."""
    pl.seed_everything(0, verbose=False)
    module, data, rec = make_module(), make_data(), StepRecorder()
    # The modules bring RNGStateCallback themselves (configure_callbacks); the control run without
    # it takes it out of that list.
    callbacks = [rec]
    if not rng:
        own = module.configure_callbacks()
        module.configure_callbacks = lambda: [c for c in own if not isinstance(c, RNGStateCallback)]
    if stop is not None:
        ckpt = ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=stop, save_top_k=0, save_last=True)
        callbacks += [ckpt, KillAt(stop)]
    t = trainer(root, TOTAL, callbacks, plugins=[AtomicCheckpointIO()])
    if stop is None:
        t.fit(module, datamodule=data, ckpt_path=ckpt_path)
    else:
        with pytest.raises(Killed):
            t.fit(module, datamodule=data)
    return rec, module, root / "ckpt" / "last.ckpt"


JOBS = {
    "pretrain": (pretrain_corpus, pretrain_data, pretrainer),
    "finetune": (finetune_corpus, finetune_data, finetuner),
}


@pytest.fixture(scope="module", params=list(JOBS))
def runs(request, tmp_path_factory):
    """An uninterrupted run, and runs killed and resumed mid-epoch and right after an epoch's last
    batch (where the next batch comes from a new DataLoader iterator), with RNGStateCallback."""
    corpus, data_module, lit_module = JOBS[request.param]
    root = tmp_path_factory.mktemp(f"resume_{request.param}")
    manifest = corpus(root / "data")

    def module():
        return lit_module(TOTAL)

    def data():
        return data_module(manifest)

    probe = data()
    probe.setup("fit")
    per_epoch = len(probe.train_dataloader())
    assert MID < per_epoch < TOTAL - 1
    result = {"full": _run(root / "full", module, data), "factories": (root, module, data)}
    for name, stop in (("mid-epoch", MID), ("epoch-end", per_epoch)):
        killed = _run(root / f"{name}-killed", module, data, stop=stop)
        resumed = _run(root / f"{name}-resumed", module, data, ckpt_path=killed[2])
        result[name] = (stop, killed, resumed)
    return result


@pytest.mark.parametrize("where", ["mid-epoch", "epoch-end"])
def test_resume_sees_the_same_batches(runs, where):
    full = runs["full"][0]
    stop, (killed, _, _), (resumed, _, _) = runs[where]
    assert len(full.steps) == TOTAL and len(killed.steps) == stop
    assert killed.ids == full.ids[:stop]
    assert resumed.ids == full.ids[stop:]
    assert [s[0] for s in resumed.steps] == list(range(stop + 1, TOTAL + 1))  # global steps continue


@pytest.mark.parametrize("where", ["mid-epoch", "epoch-end"])
def test_resume_computes_the_same_losses_and_weights(runs, where):
    full, full_module, _ = runs["full"]
    stop, (killed, _, _), (resumed, resumed_module, _) = runs[where]
    assert killed.losses == full.losses[:stop]
    # bitwise: same batches, same random draws, same arithmetic
    assert resumed.losses == full.losses[stop:]
    for name, value in parameters(full_module).items():
        torch.testing.assert_close(parameters(resumed_module)[name], value, rtol=0, atol=0, msg=name)


def test_without_rng_states_the_resumed_losses_differ(runs):
    """The control for the test above: it can fail. Without RNGStateCallback the batches still match
    but the masks/distractors/dropout do not, so the losses differ."""
    full = runs["full"][0]
    _, (_, _, ckpt), _ = runs["mid-epoch"]
    root, module, data = runs["factories"]
    blob = torch.load(ckpt, map_location="cpu", weights_only=True)  # RNG states load as plain data
    assert any("RNGStateCallback" in key for key in blob["callbacks"])
    resumed, _, _ = _run(root / "resumed_no_rng", module, data, ckpt_path=ckpt, rng=False)
    assert resumed.ids == full.ids[MID:]
    assert resumed.losses != full.losses[MID:]


# Without RNGStateCallback resumed runs draw other masks/dropout (see the control test above), so
# both modules bring it themselves, whoever builds the Trainer.
def test_the_pretrainer_brings_its_rng_state_callback():
    assert any(isinstance(c, RNGStateCallback) for c in pretrainer(TOTAL).configure_callbacks())


def test_the_finetuner_brings_its_rng_state_callback():
    assert any(isinstance(c, RNGStateCallback) for c in finetuner(TOTAL).configure_callbacks())


@pytest.mark.parametrize("job", list(JOBS))
def test_configure_optimizers_does_not_build_the_train_dataloader(tmp_path, monkeypatch, job):
    """Lightning 2.x trap: `trainer.estimated_stepping_batches` in configure_optimizers builds the train
    dataloader before Lightning restores its position. Our DataModules survive it (their own
    state_dict, tests/test_data_resume.py), but a plain DataLoader would not: keep the modules off it."""
    if job == "pretrain":
        module = pretrainer(TOTAL)
    else:
        folder = finetune_corpus(tmp_path / "data", lengths=[6400]).parent
        module = finetuner(
            TOTAL,
            grapheme_vocabulary=str(folder / "vocab_grapheme.json"),
            syllable_vocabulary=str(folder / "vocab_syllable.json"),
        )
    t = trainer(tmp_path, TOTAL)
    calls = []
    monkeypatch.setattr(pl.Trainer, "estimated_stepping_batches", property(lambda self: calls.append(1) or 1))
    module.trainer = t  # configure_optimizers reads hparams and max_steps only
    assert module.configure_optimizers()["optimizer"] is not None
    assert calls == []
