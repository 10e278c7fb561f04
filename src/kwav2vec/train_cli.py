"""`kwav2vec pretrain` and `kwav2vec finetune`: LightningCLI programs with our defaults.

    kwav2vec pretrain fit --config conf/pretrain/tiny.yaml --config conf/data/demo_pretrain.yaml
    kwav2vec finetune fit --config conf/finetune/mtl.yaml --config conf/data/demo.yaml \
        --trainer.max_steps 2000

Every `__init__` argument of the LightningModule and DataModule is a flag (`--model.lr`,
`--data.max_samples_per_batch`, ...) and a YAML key. Defaults chosen here:
- logs under runs/<job>/ with the CSV logger; `--trainer.logger WandbLogger` logs to wandb, offline
  unless WANDB_MODE says otherwise (no login needed), `--trainer.logger TensorBoardLogger` too;
- checkpoints written atomically (temporary file + rename), `last.ckpt` always kept, the best one by
  `--checkpoint.monitor` (val/cer when fine-tuning, val/loss when pretraining);
- `use_distributed_sampler: false`, because our batch sampler shards by rank itself.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from kwav2vec.lit.checkpoint_io import AtomicCheckpointIO

# job -> (LightningModule, DataModule, metric that picks the best checkpoint)
JOBS: dict[str, tuple[str, str, str]] = {
    "pretrain": ("kwav2vec.lit.pretrain.Pretrainer", "kwav2vec.data.datamodule.PretrainDataModule", "val/loss"),
    "finetune": (
        "kwav2vec.lit.finetune.HierarchicalFineTuner",
        "kwav2vec.data.datamodule.FinetuneDataModule",
        "val/cer",
    ),
}


def _import(path: str):
    module, name = path.rsplit(".", 1)
    return getattr(__import__(module, fromlist=[name]), name)


class KWav2VecCLI(LightningCLI):
    monitor: str = "val/loss"
    job: str = "pretrain"

    def subcommands(self) -> dict[str, set[str]]:
        # Pretraining has no test or predict step; fine-tuning has all four.
        allowed = {"pretrain": ("fit", "validate")}.get(self.job)
        return {k: v for k, v in LightningCLI.subcommands().items() if allowed is None or k in allowed}

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": self.monitor,
                "checkpoint.mode": "min",
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "best-{step}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )

    def instantiate_trainer(self, **kwargs: Any):
        trainer_config = self._get(self.config_init, "trainer", default={}) or {}
        if not trainer_config.get("plugins"):
            kwargs.setdefault("plugins", [AtomicCheckpointIO()])
        return super().instantiate_trainer(**kwargs)


def run(job: str, argv: list[str]) -> int:
    module_path, data_path, monitor = JOBS[job]
    # wandb never asks for a login from our command unless the user chose online mode.
    os.environ.setdefault("WANDB_MODE", "offline")
    cli_class = type(f"{job.title()}CLI", (KWav2VecCLI,), {"monitor": monitor, "job": job})
    # LightningCLI reads sys.argv itself; give it ours so `--help` names the right program.
    saved_argv, sys.argv = sys.argv, [f"kwav2vec {job}", *argv]
    try:
        cli_class(
            _import(module_path),
            _import(data_path),
            parser_kwargs={"prog": f"kwav2vec {job}"},
            trainer_defaults={
                "default_root_dir": f"runs/{job}",
                "logger": {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": "runs", "name": job},
                },
                "callbacks": [LearningRateMonitor(logging_interval="step")],
                "use_distributed_sampler": False,
            },
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
        )
    finally:
        sys.argv = saved_argv
    return 0


def pretrain_main(argv: list[str]) -> int:
    return run("pretrain", argv)


def finetune_main(argv: list[str]) -> int:
    return run("finetune", argv)
