"""The one reader of kwav2vec's model files: a converted import, a plain backbone file, a fine-tuner
checkpoint or a Pretrainer checkpoint, turned into one in-memory `ConvertedCheckpoint` (config,
backbone state, heads with their vocabularies and constructor options) in a single `torch.load`.

    read_model_checkpoint("runs/finetune/version_0/checkpoints/last.ckpt")  # HierarchicalFineTuner
    read_model_checkpoint("runs/pretrain/version_0/checkpoints/last.ckpt")  # Pretrainer
    read_model_checkpoint("english_base.ckpt")                              # `kwav2vec convert --from`

Every consumer goes through it: `init_from` of both trainers (`load_backbone_weights` puts the
bundle's backbone into a built model), `convert --to hf`, and `load_converted`.

Lightning checkpoints are recognised by their state-dict prefixes: `model.backbone.` (+
`model.heads.grapheme.`, `model.heads.syllable.`: its `HierarchicalCTC`) for the fine-tuner, `model.`
alone for the Pretrainer; fine-tuner checkpoints written before the fine-tuner held a
`HierarchicalCTC` (`backbone.`, `grapheme_head.`, `syllable_head.`) are read through
`upgrade_finetuner_state`, which the fine-tuner's `on_load_checkpoint` applies too. The fine-tuner stores its resolved
backbone config and both vocabularies in its hyper-parameters (`HierarchicalFineTuner.on_save_checkpoint`),
so its file needs no other; a Pretrainer's config is rebuilt from its preset and overrides, or from
the `init_from` file it took its architecture from (that file is then read too: one load per file).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from kwav2vec.checkpoints.format import (
    FORMAT_NAME,
    ConvertedCheckpoint,
    HeadCheckpoint,
    load_backbone_state,
)
from kwav2vec.checkpoints.integrity import read_checkpoint
from kwav2vec.models.config import Wav2Vec2Config, preset
from kwav2vec.models.wav2vec2 import Wav2Vec2Model
from kwav2vec.text.vocab import Vocabulary

# Lightning state-dict prefixes of the fine-tuner's backbone and heads (its `HierarchicalCTC` is `model`)
FINETUNER_BACKBONE = "model.backbone."
HEAD_PREFIXES = {"grapheme": "model.heads.grapheme.", "syllable": "model.heads.syllable."}
# the layout of fine-tuner checkpoints written before: old prefix -> current one
LEGACY_FINETUNER_PREFIXES = {"backbone.": FINETUNER_BACKBONE, "grapheme_head.": HEAD_PREFIXES["grapheme"],
                             "syllable_head.": HEAD_PREFIXES["syllable"]}
# Config fields that fix the shapes or the computation of the weights; a checkpoint whose config
# differs in one of them cannot be loaded into a model built with another.
ARCHITECTURE_FIELDS = (
    "extractor_mode", "conv_feature_layers", "conv_bias", "normalize", "encoder_layers", "encoder_embed_dim",
    "encoder_ffn_embed_dim", "encoder_attention_heads", "layer_norm_first", "conv_pos", "conv_pos_groups",
    "final_dim", "latent_vars", "latent_groups", "latent_dim",
)
MODEL_EXPECTED = "kwav2vec checkpoint (fine-tuner, Pretrainer or converted .ckpt)"
CONVERTED_EXPECTED = "converted kwav2vec checkpoint (from `kwav2vec convert --from ...`)"


def torch_load(path: str | os.PathLike, what: str, *, mmap: bool = False) -> Any:
    """The contents of one of our model files, read and verified by `integrity.read_checkpoint`
    (weights_only, on the CPU): a missing, empty, unreadable or damaged file, or a directory, gets
    one line naming it and saying a `what` was expected (instead of torch's EOFError, "Please file
    an issue", ...)."""
    return read_checkpoint(path, f"a {what}", mmap=mmap)


def read_model_checkpoint(path: str | os.PathLike, *, what: str = MODEL_EXPECTED,
                          mmap: bool = False) -> ConvertedCheckpoint:
    """Any model file of ours -> a `ConvertedCheckpoint`, in one load (`mmap`: tensors stay in the
    page cache instead of a copy in RAM). `what` names the file's role in the error of a file that
    cannot be read. Raises ValueError naming the file for anything else (a fairseq or Hugging Face
    file must be converted with `--from` first)."""
    path = os.fspath(path)
    return bundle_from_blob(torch_load(path, what, mmap=mmap), path)


def bundle_from_blob(blob: Any, path: str) -> ConvertedCheckpoint:
    """The `ConvertedCheckpoint` of the contents of a file `read_model_checkpoint` accepts. Its
    `kind` says which of them it was: "converted", "backbone", "finetuner" or "pretrainer"."""
    if isinstance(blob, dict) and blob.get("format") == FORMAT_NAME:
        return ConvertedCheckpoint.from_dict(blob, origin=path)
    if is_lightning_checkpoint(blob):
        cfg, state = lightning_backbone(blob, path)
        finetuner = is_finetuner_state(blob["state_dict"])
        heads = _finetuner_heads(blob, cfg, path) if finetuner else {}
        kind = "HierarchicalFineTuner" if finetuner else "Pretrainer"
        step = blob.get("global_step")
        return ConvertedCheckpoint(cfg, state, heads, source=f"kwav2vec {kind} {path}"
                                   + (f" (step {step})" if step is not None else ""),
                                   kind="finetuner" if finetuner else "pretrainer")
    if isinstance(blob, dict) and "config" in blob and "state_dict" in blob:
        # a plain {"config", "state_dict"} backbone file (an older importer, or written by hand)
        try:
            cfg = Wav2Vec2Config.from_dict(dict(blob["config"]))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: invalid 'config': {e}") from e
        return ConvertedCheckpoint(cfg, dict(blob["state_dict"]), {}, source=f"backbone file {path}", kind="backbone")
    found = sorted(blob)[:10] if isinstance(blob, dict) else type(blob).__name__
    raise ValueError(
        f"{path}: not a kwav2vec checkpoint (expected a fine-tuner or Pretrainer checkpoint, or a file written "
        f"by `kwav2vec convert --from ...`; found {found}, neither a backbone file ({{'config', 'state_dict'}}) "
        "nor a Lightning checkpoint); convert other formats first with `kwav2vec convert --from`"
    )


def load_converted(path: str | os.PathLike) -> ConvertedCheckpoint:
    """A file written by `save_converted`, and only such a file (weights_only: no code runs while loading)."""
    path = os.fspath(path)
    return ConvertedCheckpoint.from_dict(torch_load(path, CONVERTED_EXPECTED), origin=path)


def load_backbone_weights(model: Wav2Vec2Model, source: str | os.PathLike | ConvertedCheckpoint,
                          origin: str | os.PathLike | None = None) -> list[str]:
    """Loads the backbone of `source` (a path, read here, or a bundle already read) into `model`,
    in place; `origin` names it in messages (default: the path, or the bundle's source).

    The file's architecture fields must equal the model's. Every model parameter must be in the file,
    except the pretraining-only modules (quantizer, project_q, final_proj), which keep their
    initialisation when absent. Unknown keys in the file are an error. Returns the keys left missing.
    """
    if isinstance(source, ConvertedCheckpoint):
        bundle, name = source, os.fspath(origin) if origin is not None else source.source
    else:
        bundle, name = read_model_checkpoint(source), os.fspath(origin if origin is not None else source)
    cfg = bundle.config
    diff = {f: (getattr(cfg, f), getattr(model.cfg, f)) for f in ARCHITECTURE_FIELDS
            if getattr(cfg, f) != getattr(model.cfg, f)}
    if diff:
        details = ", ".join(f"{k}: file {a!r} vs model {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"{name}: architecture differs from the model ({details})")
    return load_backbone_state(model, bundle.state_dict, name)


# ------------------------------------------------------------------ Lightning checkpoints
def is_lightning_checkpoint(blob: Any) -> bool:
    return isinstance(blob, dict) and "state_dict" in blob and "hyper_parameters" in blob


def is_finetuner_state(state: dict[str, Any]) -> bool:
    """A HierarchicalFineTuner's state dict, current or legacy layout (not a Pretrainer's)."""
    return any(k.startswith((FINETUNER_BACKBONE, *LEGACY_FINETUNER_PREFIXES)) for k in state)


def upgrade_finetuner_state(state: dict[str, Any]) -> dict[str, Any]:
    """A fine-tuner state dict in the current layout: legacy top-level `backbone.` / `grapheme_head.` /
    `syllable_head.` keys renamed under `model.` (values and order kept; a new dict)."""
    def upgraded(key: str) -> str:
        for old, new in LEGACY_FINETUNER_PREFIXES.items():
            if key.startswith(old):
                return new + key[len(old):]
        return key

    return {upgraded(k): v for k, v in state.items()}


def lightning_backbone(blob: dict, path: str) -> tuple[Wav2Vec2Config, dict[str, torch.Tensor]]:
    """(config, backbone state dict) of a Lightning checkpoint of our Pretrainer or fine-tuner."""
    hp, state = blob["hyper_parameters"], blob["state_dict"]
    if is_finetuner_state(state):  # a HierarchicalFineTuner
        if not isinstance(hp.get("backbone_config"), dict):
            raise ValueError(f"{path}: fine-tuner checkpoint without 'backbone_config' in its hyper-parameters")
        cfg, prefix = Wav2Vec2Config.from_dict(dict(hp["backbone_config"])), FINETUNER_BACKBONE
        state = upgrade_finetuner_state(state)
    elif any(k.startswith("model.") for k in state):  # a Pretrainer: rebuild its config as it did
        overrides = dict(hp.get("model_overrides") or {})
        if hp.get("init_from"):
            # the Pretrainer took its architecture from that file, so it must still be readable
            try:
                cfg = read_model_checkpoint(hp["init_from"]).config
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
    hp, state = blob["hyper_parameters"], upgrade_finetuner_state(blob["state_dict"])
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
