"""Checkpoint conversion: import fairseq / Hugging Face / torchaudio / K-wav2vec wav2vec 2.0 checkpoints
into kwav2vec's converted-checkpoint format (`format.py`), and export that format to Hugging Face.

- `import_fairseq(path, drop_head=..., dict_path=..., add_dict_path=...)`
- `import_huggingface(directory, drop_head=...)`
- `import_torchaudio(path, factory_args=... | bundle=..., labels=...)`
- `export_huggingface(ckpt, directory, arch="auto")`
- `save_converted` / `load_converted` / `build_backbone` / `head_module`
- `read_model_checkpoint(path)`: any model file of ours (converted, fine-tuner, Pretrainer) in one load
  (`reader.py`, the only reader of model files); `load_backbone_weights(model, bundle_or_path)`
"""

from kwav2vec.checkpoints.export import export_huggingface
from kwav2vec.checkpoints.fairseq import import_fairseq
from kwav2vec.checkpoints.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    ConvertedCheckpoint,
    HeadCheckpoint,
    build_backbone,
    head_module,
    save_converted,
)
from kwav2vec.checkpoints.huggingface import import_huggingface
from kwav2vec.checkpoints.reader import load_backbone_weights, load_converted, read_model_checkpoint
from kwav2vec.checkpoints.statedict import KeyMismatchError
from kwav2vec.checkpoints.torchaudio import import_torchaudio

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "ConvertedCheckpoint", "HeadCheckpoint", "KeyMismatchError",
    "build_backbone", "export_huggingface", "head_module", "import_fairseq", "import_huggingface",
    "import_torchaudio", "load_backbone_weights", "load_converted", "read_model_checkpoint", "save_converted",
]
