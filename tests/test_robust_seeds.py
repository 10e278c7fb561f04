"""Seeds: the same seed twice gives bit-identical losses and weights on CPU (model init, batch order,
crops, masks, distractors, Gumbel noise, dropout); another seed gives other losses."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
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

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 3


JOBS = {
    "pretrain": (pretrain_corpus, pretrain_data, pretrainer),
    "finetune": (finetune_corpus, finetune_data, finetuner),
}


def _fit(root, job: str, manifest, seed: int):
    _, data, lit_module = JOBS[job]
    pl.seed_everything(seed, verbose=False)
    module, rec = lit_module(STEPS), StepRecorder()
    # the data seed (batch packing, shuffles, crops) is the datamodule's own argument
    trainer(root, STEPS, [rec]).fit(module, datamodule=data(manifest, seed=seed))
    return rec, parameters(module)


@pytest.mark.parametrize("job", list(JOBS))
def test_same_seed_same_losses(tmp_path, job):
    manifest = JOBS[job][0](tmp_path / "data")
    (a, wa), (b, wb), (c, _) = (_fit(tmp_path / str(i), job, manifest, s) for i, s in enumerate((7, 7, 8)))
    assert len(a.steps) == STEPS
    assert a.steps == b.steps  # ids and losses, bitwise
    for name, value in wa.items():
        torch.testing.assert_close(wb[name], value, rtol=0, atol=0, msg=name)
    assert c.losses != a.losses
