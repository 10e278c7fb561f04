"""The converted-checkpoint format: one file every importer writes and every trainer starts from.

A `torch.save`d dict of plain types and tensors only (loadable with `weights_only=True`):

    {
      "format": "kwav2vec-backbone", "version": 1,
      "config": {...},             # Wav2Vec2Config.to_dict(): fairseq field names
      "state_dict": {...},         # Wav2Vec2Model state dict, our (= fairseq's) names; the pretraining-
                                   # only modules (quantizer, project_q, final_proj) may be absent
      "heads": {                   # optional, each optional
        "grapheme": {"state_dict": GraphemeHead keys, "vocab": Vocabulary.to_dict(), "options": {...}},
        "syllable": {"state_dict": SyllableHead keys, "vocab": Vocabulary.to_dict(), "options": {...}},
      },
      "source": "fairseq wav2vec_ctc2 /path/model.pt",   # where it came from
      "notes": ["...", ...],       # what the conversion dropped, initialised or could not reproduce
    }

"options" are the head constructor's arguments besides `embed_dim` and `vocab_size` (GraphemeHead:
`dropout`; SyllableHead: `num_layers`, `ffn_dim`, `num_heads`, dropouts, `layer_norm_first`,
`final_dropout`). Files are read by `kwav2vec.checkpoints.reader` (the only reader of model files),
so `Pretrainer(init_from=...)` and `HierarchicalFineTuner(init_from=...)` take them as they are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from kwav2vec.checkpoints.integrity import seal
from kwav2vec.fileio import atomic_torch_save
from kwav2vec.models.config import Wav2Vec2Config
from kwav2vec.models.heads import GraphemeHead, SyllableHead
from kwav2vec.models.wav2vec2 import Wav2Vec2Model
from kwav2vec.text.vocab import Vocabulary

FORMAT_NAME = "kwav2vec-backbone"
FORMAT_VERSION = 1
HEAD_NAMES = ("grapheme", "syllable")
# Modules only pretraining uses: a fine-tuned source does not have them (fairseq removes them).
PRETRAINING_PREFIXES = ("quantizer.", "project_q.", "final_proj.")


@dataclass
class HeadCheckpoint:
    state_dict: dict[str, torch.Tensor]  # the head module's own keys (e.g. "proj.weight")
    vocab: Vocabulary
    options: dict[str, Any] = field(default_factory=dict)  # constructor kwargs besides embed_dim, vocab_size


@dataclass
class ConvertedCheckpoint:
    config: Wav2Vec2Config
    state_dict: dict[str, torch.Tensor]
    heads: dict[str, HeadCheckpoint] = field(default_factory=dict)
    source: str = ""
    notes: list[str] = field(default_factory=list)
    # what the file was (`reader.bundle_from_blob`): "converted", "backbone", "finetuner" or
    # "pretrainer"; not written: a saved bundle is a converted file
    kind: str = "converted"

    @property
    def has_pretraining_modules(self) -> bool:
        return any(k.startswith(PRETRAINING_PREFIXES) for k in self.state_dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "state_dict": self.state_dict,
            "heads": {
                name: {"state_dict": h.state_dict, "vocab": h.vocab.to_dict(), "options": dict(h.options)}
                for name, h in self.heads.items()
            },
            "source": self.source,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, blob: Any, origin: str = "<dict>") -> ConvertedCheckpoint:
        if not isinstance(blob, dict) or blob.get("format") != FORMAT_NAME:
            found = (f"format {blob.get('format')!r}, keys {sorted(blob)[:12]}" if isinstance(blob, dict)
                     else type(blob).__name__)
            raise ValueError(
                f"{origin}: not a converted kwav2vec checkpoint (expected a dict with format {FORMAT_NAME!r}, "
                f"found {found}); convert it first with `kwav2vec convert --from ...`"
            )
        if blob.get("version") != FORMAT_VERSION:
            raise ValueError(f"{origin}: unsupported {FORMAT_NAME} version {blob.get('version')!r} "
                             f"(this kwav2vec reads version {FORMAT_VERSION})")
        try:
            config = Wav2Vec2Config.from_dict(dict(blob["config"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{origin}: invalid 'config': {e}") from e
        heads = {}
        for name, head in (blob.get("heads") or {}).items():
            if name not in HEAD_NAMES:
                raise ValueError(f"{origin}: unknown head {name!r}; expected one of {HEAD_NAMES}")
            vocab = Vocabulary.from_dict(head["vocab"], source=f"{origin} heads.{name}.vocab")
            heads[name] = HeadCheckpoint(dict(head["state_dict"]), vocab, dict(head.get("options") or {}))
        return cls(config, dict(blob["state_dict"]), heads, str(blob.get("source", "")), list(blob.get("notes", [])))


def save_converted(ckpt: ConvertedCheckpoint, path: str | os.PathLike) -> None:
    """Writes `ckpt` sealed with its checksum (`integrity.seal`) and atomically (`fileio`): an
    interrupted conversion or a full disk leaves no half file."""
    atomic_torch_save(seal(ckpt.to_dict()), path)


# ---------------------------------------------------------------- shapes and modules
def backbone_shapes(cfg: Wav2Vec2Config) -> dict[str, torch.Size]:
    """Every backbone state-dict key and its shape, from a weightless (meta-device) model."""
    with torch.device("meta"):
        model = Wav2Vec2Model(cfg)
    return {k: v.shape for k, v in model.state_dict().items()}


def fresh_mask_emb(cfg: Wav2Vec2Config, seed: int = 0) -> torch.Tensor:
    """fairseq's initialisation of the mask embedding (uniform [0, 1)), for sources that lack one."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(cfg.encoder_embed_dim, generator=g)


def load_backbone_state(model: Wav2Vec2Model, state: dict[str, torch.Tensor], origin: str) -> list[str]:
    """Loads `state` into `model` (in place): every parameter must be in it except the pretraining-only
    modules (PRETRAINING_PREFIXES: a fine-tuned source lacks them, they keep their initialisation);
    an unknown key is an error. Returns the keys left missing."""
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(PRETRAINING_PREFIXES)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{origin}: state_dict does not match the backbone; missing {missing[:10]}"
            f"{'...' if len(missing) > 10 else ''}, unexpected {result.unexpected_keys[:10]}"
        )
    return list(result.missing_keys)


def build_backbone(ckpt: ConvertedCheckpoint) -> Wav2Vec2Model:
    """The backbone with the checkpoint's weights; absent pretraining-only modules keep a fresh init."""
    model = Wav2Vec2Model(ckpt.config)
    load_backbone_state(model, ckpt.state_dict, ckpt.source or "checkpoint")
    return model


def head_module(name: str, head: HeadCheckpoint, cfg: Wav2Vec2Config) -> torch.nn.Module:
    """The head `name` ("grapheme" | "syllable") built from its options, weights loaded strictly."""
    if name == "grapheme":
        module = GraphemeHead(cfg.encoder_embed_dim, len(head.vocab), **head.options)
    elif name == "syllable":
        module = SyllableHead(cfg.encoder_embed_dim, len(head.vocab), **head.options)
    else:
        raise ValueError(f"unknown head {name!r}; expected one of {HEAD_NAMES}")
    module.load_state_dict(head.state_dict, strict=True)
    return module


# ---------------------------------------------------------------- for trainers starting from a file
def load_head_weights(module: torch.nn.Module, name: str, head: HeadCheckpoint, vocab: Vocabulary,
                      origin: str = "checkpoint") -> None:
    """Copies a stored head into a built GraphemeHead / SyllableHead; its vocabulary must be `vocab`.

    The output rows are only meaningful for the vocabulary they were trained (or permuted) for, so a
    different vocabulary is an error rather than a silent mismatch.
    """
    if head.vocab != vocab:
        diff = [t for t in head.vocab.tokens if t not in vocab][:10]
        raise ValueError(
            f"{origin}: the stored {name} head is for a {len(head.vocab)}-token vocabulary, the model's has "
            f"{len(vocab)} tokens (stored-only tokens {diff}); convert with --{name}-vocab pointing at the "
            f"training vocabulary, or start a new head"
        )
    try:
        result = module.load_state_dict(head.state_dict, strict=False)
    except RuntimeError as e:  # size mismatches
        raise ValueError(f"{origin}: the stored {name} head does not fit the model's: {e}") from e
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{origin}: the stored {name} head does not fit the model's (e.g. a different number "
                         f"of layers): missing {result.missing_keys[:10]}, unexpected {result.unexpected_keys[:10]}")
