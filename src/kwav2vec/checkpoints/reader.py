"""One reader for every model file kwav2vec writes: a converted import, a fine-tuner checkpoint or a
Pretrainer checkpoint, turned into one in-memory `ConvertedCheckpoint` (config, backbone state,
heads with their vocabularies and constructor options).

    read_model_checkpoint("runs/finetune/version_0/checkpoints/last.ckpt")  # HierarchicalFineTuner
    read_model_checkpoint("runs/pretrain/version_0/checkpoints/last.ckpt")  # Pretrainer
    read_model_checkpoint("english_base.ckpt")                              # `kwav2vec convert --from`

Lightning checkpoints are recognised by their state-dict prefixes: `backbone.` (+ `grapheme_head.`,
`syllable_head.`) for the fine-tuner, `model.` for the Pretrainer. The fine-tuner stores its resolved
backbone config and both vocabularies in its hyper-parameters (`HierarchicalFineTuner.on_save_checkpoint`),
so its file needs no other; a Pretrainer's config is rebuilt from its preset and overrides, or from
the `init_from` file it took its architecture from.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from kwav2vec.checkpoints.format import FORMAT_NAME, ConvertedCheckpoint, HeadCheckpoint
from kwav2vec.checkpoints.integrity import read_checkpoint
from kwav2vec.models.config import Wav2Vec2Config, preset
from kwav2vec.text.vocab import Vocabulary

# Lightning state-dict prefixes of the fine-tuner's heads -> our head names
HEAD_PREFIXES = {"grapheme": "grapheme_head.", "syllable": "syllable_head."}


def torch_load(path: str | os.PathLike, what: str, *, mmap: bool = False) -> Any:
    """The contents of one of our model files, read and verified by `integrity.read_checkpoint`
    (weights_only, on the CPU): a missing, empty, unreadable or damaged file, or a directory, gets
    one line naming it and saying a `what` was expected (instead of torch's EOFError, "Please file
    an issue", ...)."""
    return read_checkpoint(path, f"a {what}", mmap=mmap)


def backbone_from_blob(blob: Any, origin: str) -> tuple[Wav2Vec2Config, dict[str, torch.Tensor]]:
    """(config, state_dict) of the contents of a backbone file (see `read_backbone_checkpoint`)."""
    if not isinstance(blob, dict) or "state_dict" not in blob or "config" not in blob:
        found = sorted(blob) if isinstance(blob, dict) else type(blob).__name__
        raise ValueError(f"{origin}: expected a dict with keys 'config' and 'state_dict', found {found}")
    try:
        cfg = Wav2Vec2Config.from_dict(dict(blob["config"]))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{origin}: invalid 'config': {e}") from e
    return cfg, blob["state_dict"]


def read_backbone_checkpoint(path: str | os.PathLike) -> tuple[Wav2Vec2Config, dict[str, torch.Tensor]]:
    """Reads a backbone file written by our importers: a dict with "config" (Wav2Vec2Config fields)
    and "state_dict" (our module names). Returns (config, state_dict)."""
    return backbone_from_blob(torch_load(path, "backbone checkpoint"), os.fspath(path))


def is_lightning_checkpoint(blob: Any) -> bool:
    return isinstance(blob, dict) and "state_dict" in blob and "hyper_parameters" in blob


def lightning_backbone(blob: dict, path: str) -> tuple[Wav2Vec2Config, dict[str, torch.Tensor]]:
    """(config, backbone state dict) of a Lightning checkpoint of our Pretrainer or fine-tuner."""
    hp, state = blob["hyper_parameters"], blob["state_dict"]
    if any(k.startswith("backbone.") for k in state):  # a HierarchicalFineTuner
        if not isinstance(hp.get("backbone_config"), dict):
            raise ValueError(f"{path}: fine-tuner checkpoint without 'backbone_config' in its hyper-parameters")
        cfg, prefix = Wav2Vec2Config.from_dict(dict(hp["backbone_config"])), "backbone."
    elif any(k.startswith("model.") for k in state):  # a Pretrainer: rebuild its config as it did
        overrides = dict(hp.get("model_overrides") or {})
        if hp.get("init_from"):
            # the Pretrainer took its architecture from that file, so it must still be readable
            try:
                cfg, _ = read_backbone_checkpoint(hp["init_from"])
            except (FileNotFoundError, ValueError) as e:
                raise ValueError(
                    f"{path}: this Pretrainer checkpoint took its architecture from init_from="
                    f"{hp['init_from']!r}, which cannot be read ({e}); restore that file or convert the "
                    "checkpoint to a backbone file"
                ) from e
            cfg = cfg.replace(**overrides) if overrides else cfg
        else:
            cfg = preset(hp.get("model", "base"), **overrides)
        prefix = "model."
    else:
        raise ValueError(f"{path}: Lightning checkpoint with neither 'model.' nor 'backbone.' weights")
    return cfg, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _finetuner_heads(blob: dict, cfg: Wav2Vec2Config, path: str) -> dict[str, HeadCheckpoint]:
    """The built heads of a fine-tuner checkpoint with their vocabularies and constructor options
    (the same arguments `HierarchicalFineTuner._build_heads` passes)."""
    hp, state = blob["hyper_parameters"], blob["state_dict"]
    heads: dict[str, HeadCheckpoint] = {}
    for name, prefix in HEAD_PREFIXES.items():
        weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not weights:
            continue
        vocab_blob = hp.get(f"{name}_vocabulary")
        if not isinstance(vocab_blob, dict):
            raise ValueError(f"{path}: the {name} head's vocabulary is not stored in the checkpoint")
        vocab = Vocabulary.from_dict(vocab_blob, source=f"{path} hyper_parameters.{name}_vocabulary")
        final_dropout = float(hp.get("final_dropout", 0.0))
        if name == "grapheme":
            options: dict[str, Any] = {"dropout": final_dropout}
        else:
            options = {
                "num_layers": int(hp.get("syllable_layers", 2)), "ffn_dim": cfg.encoder_ffn_embed_dim,
                "num_heads": cfg.encoder_attention_heads, "dropout": float(hp.get("dropout", 0.0)),
                "attention_dropout": float(hp.get("attention_dropout", 0.0)),
                "activation_dropout": float(hp.get("activation_dropout", 0.0)),
                "layer_norm_first": cfg.layer_norm_first, "final_dropout": final_dropout,
            }
        heads[name] = HeadCheckpoint(weights, vocab, options)
    return heads


def read_model_checkpoint(path: str | os.PathLike) -> ConvertedCheckpoint:
    """Any model file of ours -> a `ConvertedCheckpoint`, in one load. Raises ValueError naming the
    file for anything else (a fairseq or Hugging Face file must be converted with `--from` first)."""
    path = os.fspath(path)
    blob = torch_load(path, "kwav2vec checkpoint (fine-tuner, Pretrainer or converted .ckpt)")
    if isinstance(blob, dict) and blob.get("format") == FORMAT_NAME:
        return ConvertedCheckpoint.from_dict(blob, origin=path)
    if is_lightning_checkpoint(blob):
        cfg, state = lightning_backbone(blob, path)
        finetuner = any(k.startswith("backbone.") for k in blob["state_dict"])
        heads = _finetuner_heads(blob, cfg, path) if finetuner else {}
        kind = "HierarchicalFineTuner" if finetuner else "Pretrainer"
        step = blob.get("global_step")
        return ConvertedCheckpoint(cfg, dict(state), heads, source=f"kwav2vec {kind} {path}"
                                   + (f" (step {step})" if step is not None else ""))
    found = (f"a dict with keys {sorted(blob)[:10]}" if isinstance(blob, dict) else type(blob).__name__)
    raise ValueError(
        f"{path}: not a kwav2vec checkpoint (expected a fine-tuner or Pretrainer checkpoint, or a file written "
        f"by `kwav2vec convert --from ...`; found {found}); convert other formats first with `kwav2vec convert --from`"
    )
