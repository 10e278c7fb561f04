"""Non-finite losses and gradients: the step is skipped (parameters and optimizer state untouched)
and counted (`train/skipped_nonfinite`), and after `max_consecutive` skipped steps in a row the run
stops with `NonFiniteStepsError` naming the utterances (pretraining and fine-tuning). Mixed
precision: under torch.autocast(bfloat16) on CPU the quantizer, the contrastive logits, log-softmax,
CTC and the losses compute in float32."""

from __future__ import annotations

import logging
import math

import lightning.pytorch as pl
import pytest
import torch
from robust_utils import (
    MODEL_OVERRIDES,
    TEXTS,
    finetuner,
    one_thread,  # noqa: F401 (a fixture)
    parameters,
    pretrainer,
    trainer,
)
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader

from kwav2vec.data.collate import pad_1d
from kwav2vec.data.prepare import build_vocabularies
from kwav2vec.lit.guards import NonFiniteGuard, NonFiniteStepsError
from kwav2vec.models.config import preset
from kwav2vec.models.ctc_loss import ctc_terms
from kwav2vec.models.losses import contrastive_logits, pretraining_loss
from kwav2vec.models.quantizer import GumbelVectorQuantizer
from kwav2vec.models.wav2vec2 import Wav2Vec2Model

pytestmark = pytest.mark.usefixtures("one_thread")

SR = 16000


GRAPHEMES, SYLLABLES = build_vocabularies(TEXTS)


def batch(tag: str, seed: int, nan: bool = False, B: int = 2, S: int = 8000) -> dict:
    """A pretraining batch with fine-tuning targets too (tones with made-up transcripts)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(S) / SR
    audio = torch.sin(2 * math.pi * (200 + 300 * torch.rand(B, 1, generator=g)) * t) + 0.1 * torch.randn(
        B, S, generator=g
    )
    if nan:
        audio[1, 1234] = float("nan")  # one bad sample in one utterance poisons the whole step
    texts = [TEXTS[(seed + i) % len(TEXTS)] for i in range(B)]
    graphemes = pad_1d([torch.tensor(GRAPHEMES.encode(t)) for t in texts], 0)
    syllables = pad_1d([torch.tensor(SYLLABLES.encode(t)) for t in texts], 0)
    return {
        "ids": [f"{tag}-{i}" for i in range(B)],
        "audio": audio,
        "audio_lengths": torch.full((B,), S),
        "graphemes": graphemes[0],
        "grapheme_lengths": graphemes[1],
        "syllables": syllables[0],
        "syllable_lengths": syllables[1],
        "texts": texts,
    }


def batches(pattern: str) -> DataLoader:
    """'g' = good batch, 'n' = a batch with a NaN sample."""
    items = [batch(f"{c}{i}", i, nan=c == "n") for i, c in enumerate(pattern)]
    return DataLoader(items, batch_size=None)


class Watch(pl.Callback):
    """Parameters and Adam step counts before and after every step."""

    def __init__(self) -> None:
        self.before: list[dict[str, torch.Tensor]] = []
        self.after: list[dict[str, torch.Tensor]] = []
        self.adam_steps: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.before.append(parameters(pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after.append(parameters(pl_module))
        state = trainer.optimizers[0].state.get(next(pl_module.parameters()), {})
        self.adam_steps.append(float(state.get("step", 0)))

    def changed(self, i: int) -> bool:
        return any(not torch.equal(self.before[i][k], self.after[i][k]) for k in self.before[i])


def test_a_nan_batch_is_skipped_counted_and_named(tmp_path, caplog):
    torch.manual_seed(0)
    module, watch = pretrainer(10), Watch()
    t = trainer(tmp_path, 4, [NonFiniteGuard(max_consecutive=3), watch], gradient_clip_val=10.0)
    with caplog.at_level(logging.WARNING, logger="kwav2vec.lit.guards"):
        t.fit(module, batches("gngg"))
    assert t.global_step == 4
    assert watch.changed(0) and not watch.changed(1) and watch.changed(2) and watch.changed(3)
    assert watch.adam_steps == [1, 1, 2, 3]  # no optimizer update at all for the skipped step
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert float(t.callback_metrics["train/skipped_nonfinite"]) == 1.0
    assert "n1-0, n1-1" in caplog.text and "optimizer step skipped" in caplog.text


def test_too_many_in_a_row_stop_the_run_naming_the_utterances(tmp_path):
    torch.manual_seed(0)
    guard = NonFiniteGuard(max_consecutive=2)
    t = trainer(tmp_path, 6, [guard])
    # n1 alone is tolerated (the count resets at g2), n4 and n5 in a row are not
    with pytest.raises(
        NonFiniteStepsError, match=r"2 consecutive .*step 4: n4-0, n4-1; step 5: n5-0, n5-1"
    ) as err:
        t.fit(pretrainer(10), batches("gnggnng"))
    assert "n1-" not in str(err.value)
    assert guard.skipped_total == 3 and t.global_step == 5


def test_the_pretrainer_guards_itself(tmp_path):
    """As shipped, without callbacks passed by the caller (the fine-tuner returns its guard from
    configure_callbacks; the Pretrainer should too)."""
    torch.manual_seed(0)
    module = pretrainer(10)
    t = trainer(tmp_path, 2, [])
    t.fit(module, batches("gn"))
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert float(t.callback_metrics["train/skipped_nonfinite"]) == 1.0


def _finetuner():
    return finetuner(10, grapheme_vocabulary=GRAPHEMES, syllable_vocabulary=SYLLABLES)


def test_the_finetuner_skips_counts_and_names_a_nan_batch(tmp_path, caplog):
    """As shipped: the fine-tuner brings its own NonFiniteGuard (configure_callbacks)."""
    torch.manual_seed(0)
    module, watch = _finetuner(), Watch()
    t = trainer(tmp_path, 3, [watch])
    with caplog.at_level(logging.WARNING, logger="kwav2vec.lit.guards"):
        t.fit(module, batches("gng"))
    assert watch.changed(0) and not watch.changed(1) and watch.changed(2)
    assert float(t.callback_metrics["train/skipped_nonfinite"]) == 1.0
    assert "n1-0, n1-1" in caplog.text


def test_the_finetuner_stops_after_its_limit_of_nan_steps_in_a_row(tmp_path):
    torch.manual_seed(0)
    module = _finetuner()
    (guard,) = [c for c in module.configure_callbacks() if isinstance(c, NonFiniteGuard)]
    limit = guard.max_consecutive
    with pytest.raises(
        NonFiniteStepsError, match=rf"{limit} consecutive .*step {limit}: n{limit}-0, n{limit}-1\."
    ):
        trainer(tmp_path, limit + 2, []).fit(module, batches("g" + "n" * limit + "g"))


# ----------------------------------------------------------------------------- mixed precision
class DtypeLog(TorchDispatchMode):
    """Records (op name, output dtype, inside the quantizer?) of every op that reaches the kernels,
    i.e. after autocast chose the precision."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, torch.dtype, bool]] = []
        self.in_quantizer = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(o, torch.Tensor) and o.is_floating_point():
                self.ops.append((func.overloadpacket.__name__, o.dtype, self.in_quantizer))
        return out

    def watch(self, module: torch.nn.Module) -> None:
        module.register_forward_pre_hook(lambda *_: setattr(self, "in_quantizer", True))
        module.register_forward_hook(lambda *_: setattr(self, "in_quantizer", False))


def test_bf16_autocast_keeps_quantizer_logits_and_losses_in_fp32():
    torch.manual_seed(0)
    model = Wav2Vec2Model(preset("tiny", **MODEL_OVERRIDES)).train()
    b = batch("x", 0)
    log = DtypeLog()
    log.watch(model.quantizer)
    with torch.autocast("cpu", dtype=torch.bfloat16), log:
        out = model(b["audio"], b["audio_lengths"])
        terms = pretraining_loss(out)
    # autocast was really on: the transformer ran in bf16
    assert any(
        name in ("addmm", "mm", "bmm", "linear") and dtype == torch.bfloat16 for name, dtype, _ in log.ops
    )
    quantizer_ops = [(n, d) for n, d, inside in log.ops if inside]
    assert quantizer_ops and all(d == torch.float32 for _, d in quantizer_ops), sorted(set(quantizer_ops))
    softmaxes = [
        (n, d) for n, d, _ in log.ops if n in ("_log_softmax", "_softmax", "nll_loss_forward", "nll_loss")
    ]
    assert softmaxes and all(d == torch.float32 for _, d in softmaxes), softmaxes
    assert out.logits.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in terms.values()), {k: v.dtype for k, v in terms.items()}
    terms["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_quantizer_and_contrastive_logits_are_identical_with_and_without_autocast():
    """Computing in fp32 is not the same as computing in bf16 and casting the result up: the values
    must be bit-identical to a run without autocast."""
    torch.manual_seed(0)
    q = GumbelVectorQuantizer(64, 32, 2, 32, (2.0, 0.5, 0.999995)).eval()
    x = torch.randn(50, 64)
    plain = q(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = q(x)
    assert torch.equal(plain.x, mixed.x) and torch.equal(plain.prob_perplexity, mixed.prob_perplexity)
    pred, tgt = torch.randn(2, 9, 16), torch.randn(2, 9, 16)
    neg = torch.randint(0, 9, (2, 9, 4))
    ref = contrastive_logits(pred, tgt, neg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = contrastive_logits(pred.bfloat16(), tgt.bfloat16(), neg)
    assert got.dtype == torch.float32
    torch.testing.assert_close(
        got, contrastive_logits(pred.bfloat16().float(), tgt.bfloat16().float(), neg), rtol=0, atol=0
    )
    assert not torch.equal(got, ref)  # the inputs were bf16: only the computation is fp32


def test_bf16_autocast_keeps_ctc_log_softmax_and_loss_in_fp32():
    torch.manual_seed(0)
    module = _finetuner().train()
    b = batch("x", 0)
    log = DtypeLog()
    with torch.autocast("cpu", dtype=torch.bfloat16), log:
        log_probs, frames = module(b["audio"], b["audio_lengths"])
        terms = {h: ctc_terms(lp, frames, b[f"{h}s"], b[f"{h}_lengths"]) for h, lp in log_probs.items()}
    assert any(
        name in ("addmm", "mm", "bmm", "linear") and dtype == torch.bfloat16 for name, dtype, _ in log.ops
    )
    log_softmax = [d for n, d, _ in log.ops if n == "_log_softmax"]
    ctc = [d for n, d, _ in log.ops if "ctc_loss" in n]
    assert len(log_softmax) == 2 and set(log_softmax) == {torch.float32}  # one per head
    assert ctc and set(ctc) == {torch.float32}
    assert all(lp.dtype == torch.float32 for lp in log_probs.values())
    assert all(t.loss_sum.dtype == torch.float32 and torch.isfinite(t.loss_sum) for t in terms.values())
