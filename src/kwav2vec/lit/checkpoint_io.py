"""Lightning checkpoints that a killed process or a full disk cannot leave half-written, and that
carry a checksum every load verifies.

Saving: the checkpoint dict is sealed with the digest of its contents (`checkpoints.integrity`) and
written through `kwav2vec.fileio.atomic_open` (temporary file in the same folder, fsync, rename):
a process killed at any point leaves the previous checkpoint or the new one under the final name,
and an OSError while writing (ENOSPC) is re-raised naming the file and saying the previous one is
unchanged. (Lightning's own writer goes through fsspec, whose guarantees depend on the file system
implementation and version; we do not rely on them for local paths.)

Loading (`--ckpt_path`, `trainer.fit(ckpt_path=...)`): `read_checkpoint`, which refuses a damaged,
empty or unreadable file with one line naming it and the newest intact checkpoint beside it.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch  # noqa: F401 - the writer's torch.save; tests patch it as checkpoint_io.torch.save
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from kwav2vec.checkpoints.integrity import describe_intact_beside, read_checkpoint, seal
from kwav2vec.fileio import atomic_torch_save, remove_stale_temp_files, temp_prefix

# kept under their old names: tests and callers import them from here
_temp_prefix = temp_prefix
__all__ = ["AtomicCheckpointIO", "atomic_torch_save", "remove_stale_temp_files"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO plugin: local checkpoints are sealed, written with `atomic_torch_save`
    and verified when read. Remote paths (s3://, gs://, ...) fall back to Lightning's reader and
    writer (still sealed, so a local copy of them verifies)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__}.save_checkpoint got storage_options={storage_options!r}; "
                "this plugin does not take any"
            )
        sealed = seal(checkpoint)
        if not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(sealed, path)
            return
        try:
            atomic_torch_save(sealed, path)
        except OSError as err:  # e.g. ENOSPC: say which checkpoint a resume can still use
            raise OSError(err.errno, f"{err.strerror}{describe_intact_beside(path)}") from err

    def load_checkpoint(self, path, map_location: Any = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict:
        if not isinstance(get_filesystem(path), LocalFileSystem):
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        return read_checkpoint(path, "a Lightning checkpoint to resume from (.ckpt)", map_location=map_location,
                               weights_only=weights_only)


def module_from_checkpoint(cls: type[pl.LightningModule], checkpoint: dict[str, Any], path: str | None = None):
    """`cls.load_from_checkpoint(path)` from checkpoint contents already read (and verified), so a
    file is loaded once: the same steps as Lightning's loader after its `torch.load` (migration of
    older Lightning layouts, hyper-parameters -> `__init__`, `on_load_checkpoint`, strict state dict).
    Lightning has no public entry point for contents in memory; these two helpers are its own."""
    from lightning.pytorch.core.saving import _load_state
    from lightning.pytorch.utilities.migration.utils import _pl_migrate_checkpoint

    checkpoint = _pl_migrate_checkpoint(checkpoint, checkpoint_path=path)
    checkpoint.setdefault(cls.CHECKPOINT_HYPER_PARAMS_KEY, {})
    return _load_state(cls, checkpoint)


def save_module_checkpoint(module: pl.LightningModule, path, global_step: int = 0) -> str:
    """A checkpoint of `module` written outside a Trainer (tests, benchmarks, a model built by
    hand), with the contents `load_from_checkpoint` and our readers need: state dict, hyper-parameters,
    the module's `on_save_checkpoint` additions and the Lightning version; sealed and written
    atomically, as the Trainer's checkpoints are. Returns the path as a string."""
    import lightning

    checkpoint = {"state_dict": module.state_dict(), module.CHECKPOINT_HYPER_PARAMS_KEY: dict(module.hparams),
                  "global_step": global_step, "pytorch-lightning_version": lightning.__version__}
    module.on_save_checkpoint(checkpoint)
    atomic_torch_save(seal(checkpoint), path)
    return str(path)
