"""`kwav2vec pretrain` and `kwav2vec finetune`: LightningCLI programs with our defaults.

    kwav2vec pretrain fit --config conf/pretrain/tiny.yaml --config conf/data/demo_pretrain.yaml
    kwav2vec finetune fit --config conf/finetune/mtl.yaml --config conf/data/demo.yaml \
        --trainer.max_steps 2000

Every `__init__` argument of the LightningModule and DataModule is a flag (`--model.lr`,
`--data.max_samples_per_batch`, ...) and a YAML key. Defaults chosen here:
- logs and checkpoints under `--trainer.default_root_dir` (default runs/<job>/) with the CSV logger; `--trainer.logger WandbLogger` logs to wandb, offline
  unless WANDB_MODE says otherwise (no login needed), `--trainer.logger TensorBoardLogger` too;
- checkpoints sealed with a checksum and written atomically (temporary file + rename): `step-N.ckpt`
  and `last.ckpt` on the `--checkpoint.every_n_train_steps` / `train_time_interval` /
  `every_n_epochs` schedule (default every 10 minutes) whatever the metrics, `best-<metric>-...ckpt`
  by `--checkpoint.monitor` (val/cer when fine-tuning, val/loss when pretraining) at validation; a
  warning when saves could be more than `--max_checkpoint_gap` minutes apart; `--ckpt_path last`
  resumes from the newest checkpoint that verifies (lit/checkpointing.py);
- `use_distributed_sampler: false`, because our batch sampler shards by rank itself.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import yaml
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger

from kwav2vec.checkpoints.reader import torch_load
from kwav2vec.lit.checkpoint_io import AtomicCheckpointIO
from kwav2vec.lit.checkpointing import (
    DEFAULT_MAX_GAP_MINUTES,
    CheckpointGapWarning,
    resolve_last,
    split_checkpoint_config,
)

RUNS = "runs"  # default_root_dir is runs/<job>, the default CSV logger's directory too
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
        # One ModelCheckpoint configuration, split into a periodic and a monitored callback when the
        # Trainer is built (_instantiate_trainer); filename: of the best checkpoints (default
        # best-<metric>-<value>-step<N>).
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": self.monitor,
                "checkpoint.mode": "min",
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": 1,
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_argument("--max_checkpoint_gap", type=float, default=DEFAULT_MAX_GAP_MINUTES,
                            help="warn when the checkpoint schedule could leave the run unsaved for longer "
                                 "than this many minutes")

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Any:
        # the parsed `--checkpoint` ModelCheckpoint -> PeriodicCheckpoint (+ the monitored one)
        args = self._get(self.config, "checkpoint", default=None)
        if args is not None:
            args = dict(args.get("init_args", args))
            split = split_checkpoint_config(args)
            parsed = self._get(self.config_init, "checkpoint", default=None)
            callbacks = [c for c in callbacks if c is not parsed] + split
            gap = self._get(self.config, "max_checkpoint_gap", default=DEFAULT_MAX_GAP_MINUTES)
            callbacks.append(CheckpointGapWarning(split[0], gap))
        return super()._instantiate_trainer(config, callbacks)

    def _run_subcommand(self, subcommand: str) -> None:
        # `--ckpt_path last`: the newest checkpoint that verifies, in any version folder of the run
        config = self.config_init[subcommand]
        if config.get("ckpt_path") == "last":
            config["ckpt_path"] = resolve_last(self.trainer)
        super()._run_subcommand(subcommand)

    def _parse_ckpt_path(self) -> None:
        """Lightning 2.6 reads `--ckpt_path`'s hyper-parameters into the model's config (so `finetune
        test --ckpt_path X` builds the architecture and vocabularies X stores, whatever preset the
        recipe names) with a bare torch.load: a damaged, empty or foreign file first gets one error
        naming it here."""
        sub = self.config.get("subcommand")
        path = self.config[sub].get("ckpt_path") if sub else None
        if path and path not in ("last", "best", "hpc", "registry"):
            kind = "fine-tuner" if self.job == "finetune" else "Pretrainer"
            blob = torch_load(path, f"{kind} checkpoint (--ckpt_path)", mmap=True)
            if not (isinstance(blob, dict) and "state_dict" in blob):
                found = sorted(blob)[:10] if isinstance(blob, dict) else type(blob).__name__
                raise ValueError(f"{path}: not a Lightning checkpoint (found {found}); --ckpt_path takes a "
                                 f"checkpoint that `kwav2vec {self.job} fit` wrote")
            del blob
        super()._parse_ckpt_path()

    def instantiate_trainer(self, **kwargs: Any):
        trainer_config = self._get(self.config_init, "trainer", default={}) or {}
        if not trainer_config.get("plugins"):
            kwargs.setdefault("plugins", [AtomicCheckpointIO()])
        logger = self._root_dir_logger(trainer_config)
        if logger is not None:
            kwargs["logger"] = logger
        return super().instantiate_trainer(**kwargs)

    def _root_dir_logger(self, trainer_config: dict) -> CSVLogger | None:
        """Lightning's convention: logs and checkpoints under `--trainer.default_root_dir`. Our default
        logger writes to runs/<job>/version_N (= the default root dir); given another root DIR and no
        logger directory of the user's, the default logger moves to DIR/version_N."""
        root = trainer_config.get("default_root_dir")
        logger = trainer_config.get("logger")
        default_root = os.path.join(RUNS, self.job)
        if root is None or os.path.normpath(str(root)) == os.path.normpath(default_root):
            return None
        if type(logger) is not CSVLogger or os.path.normpath(logger.root_dir) != os.path.normpath(default_root):
            return None  # a logger (or a logger directory) the user chose
        return CSVLogger(save_dir=str(root), name="")


def check_config_files(argv: list[str]) -> None:
    """Parses every `--config FILE` as YAML first, so a syntax error names its file (jsonargparse's
    message names only a line and column "in <unicode string>")."""
    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    files += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for path in files:
        if not os.path.isfile(path):
            continue  # jsonargparse names a missing file itself
        try:
            with open(path, encoding="utf-8") as f:
                yaml.safe_load(f)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e)
            raise ValueError(f"{path}: not valid YAML{where}: {problem}") from e
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not a UTF-8 text file ({e})") from e


def run(job: str, argv: list[str]) -> int:
    module_path, data_path, monitor = JOBS[job]
    check_config_files(argv)
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
                "default_root_dir": os.path.join(RUNS, job),
                "logger": {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": RUNS, "name": job},
                },
                "callbacks": [LearningRateMonitor(logging_interval="step")],
                "use_distributed_sampler": False,
            },
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
        )
    finally:  # errors become one line in kwav2vec.cli.main (the traceback with --debug)
        sys.argv = saved_argv
    return 0


def pretrain_main(argv: list[str]) -> int:
    return run("pretrain", argv)


def finetune_main(argv: list[str]) -> int:
    return run("finetune", argv)
