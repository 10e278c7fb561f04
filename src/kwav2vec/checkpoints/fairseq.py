"""Import fairseq wav2vec 2.0 checkpoints (.pt): pretrained, fine-tuned CTC, and K-wav2vec multi-task.

A fairseq checkpoint is a pickled dict with "model" (the state dict) and either "cfg" (hydra era: a
dict with "model", "task", ...) or the legacy "args" (one argparse.Namespace holding every option).
It is read without fairseq and without running pickled code (see `pickles.py`).

Three model types (cfg.model._name / args.arch):
- `wav2vec2`: the pretrained `Wav2Vec2Model`. Keys are ours 1:1 (our modules mirror fairseq's),
  quantizer / project_q / final_proj / mask_emb included, so pretraining can continue.
- `wav2vec_ctc`: fine-tuned. The backbone sits under `w2v_encoder.w2v_model.` (without the pretraining
  modules, which fairseq deletes); `w2v_encoder.proj` is the CTC head over the fine-tuning dictionary.
  Its config is the pretraining config saved inside as `w2v_args` (with the fine-tuning overrides).
- `wav2vec_ctc2` (K-wav2vec multi-task): additionally `w2v_encoder.additional_layer.{i}.*`, transformer
  layers on the backbone output, and `w2v_encoder.proj2`, the syllable CTC head after them; `proj`
  is the grapheme head. They become our GraphemeHead and SyllableHead (`layers.{i}.*`, `proj`), with the
  head rows permuted from the fairseq dictionaries (`dict.ltr.txt`, `add_dict.ltr.txt`) to our
  vocabulary ids (see `vocab_map.py`).

A CTC head is never guessed into a vocabulary: either its dictionary is given (and must have exactly
as many rows) or the head is dropped on request (`drop_head=True`).
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, fields
from typing import Any

import torch

from kwav2vec.checkpoints.format import (
    PRETRAINING_PREFIXES,
    ConvertedCheckpoint,
    HeadCheckpoint,
    backbone_shapes,
)
from kwav2vec.checkpoints.pickles import Opaque, load_foreign, plain
from kwav2vec.checkpoints.statedict import SourceState, gather
from kwav2vec.checkpoints.vocab_map import (
    default_target,
    fairseq_source_vocab,
    load_target_vocab,
    permute_rows,
    read_fairseq_dict,
)
from kwav2vec.models.config import Wav2Vec2Config
from kwav2vec.models.heads import SyllableHead

EXPECTED = "a fairseq wav2vec 2.0 checkpoint (.pt with 'model' and 'cfg' or 'args')"
FINETUNED_PREFIX = "w2v_encoder.w2v_model."
MODEL_TYPES = ("wav2vec2", "wav2vec_ctc", "wav2vec_ctc2")

_OUR_FIELDS = {f.name for f in fields(Wav2Vec2Config)} - {"normalize"}
# fairseq fields that change the network; our model only exists with these values
_ARCHITECTURE_VALUES = {
    "quantize_input": False, "target_glu": False, "layer_type": "transformer", "pos_conv_depth": 1,
    "quantizer_depth": 1, "conv_pos_batch_norm": False, "adp_num": -1,
}
# fairseq pretraining options we do not implement: imported weights are fine, but continuing
# pretraining here differs from fairseq's run when one of them was not at this default
_TRAINING_DEFAULTS = {
    "mask_selection": "static", "mask_other": 0, "no_mask_overlap": False, "mask_min_space": 1,
    "mask_channel_selection": "static", "mask_channel_other": 0, "no_mask_channel_overlap": False,
    "mask_channel_min_space": 1, "mask_channel_before": False, "negatives_from_everywhere": False,
    "cross_sample_negatives": 0, "codebook_negatives": 0, "mask_dropout": 0.0, "crop_seq_to_multiple": 1,
}
# fairseq fields without effect on the weights or the outputs (precision, memory, padding, unused paths)
_HARMLESS = {
    "_name", "fp16", "checkpoint_activations", "offload_activations", "min_params_to_wrap",
    "required_seq_len_multiple", "same_quantizer", "quantizer_factor", "max_positions",
    "depthwise_conv_kernel_size", "attn_type", "pos_enc_type", "adp_dim", "adp_act_fn", "adp_trf_idx",
    "quantize_targets",  # handled by looking at the weights
}


@dataclass
class FairseqSource:
    model_type: str  # one of MODEL_TYPES
    w2v: dict[str, Any]  # pretraining model fields (cfg.model or the legacy args)
    normalize: bool
    asr: dict[str, Any]  # fine-tuning model fields ({} for a pretrained checkpoint)
    legacy: bool  # fields came from an argparse.Namespace (holds every option of the run)


def _as_dict(obj: Any) -> dict[str, Any] | None:
    obj = plain(obj)
    if isinstance(obj, argparse.Namespace):
        return dict(vars(obj))
    if isinstance(obj, dict):
        return obj
    return None


def _model_and_task(blob_cfg: Any, path: str, what: str) -> tuple[dict, dict, bool]:
    """-> (model fields, task fields, legacy?) of a cfg dict or a legacy args Namespace."""
    obj = plain(blob_cfg)
    if isinstance(obj, argparse.Namespace):
        d = dict(vars(obj))
        return d, d, True
    if isinstance(obj, dict) and isinstance(_as_dict(obj.get("model")), dict):
        return _as_dict(obj["model"]), _as_dict(obj.get("task")) or {}, False
    if isinstance(obj, Opaque):
        raise ValueError(f"{path}: {what} is a pickled {obj!r} we cannot read without its library")
    raise ValueError(f"{path}: {what} is neither a cfg dict with 'model' nor an args Namespace "
                     f"(found {type(obj).__name__}); expected {EXPECTED}")


def read_source(blob: Any, path: str) -> FairseqSource:
    if not isinstance(blob, dict) or "model" not in blob or not isinstance(blob.get("model"), dict):
        found = sorted(blob)[:12] if isinstance(blob, dict) else type(blob).__name__
        raise ValueError(f"{path}: not a fairseq checkpoint (expected {EXPECTED}; found {found})")
    if blob.get("cfg") is not None:
        model, task, legacy = _model_and_task(blob["cfg"], path, "'cfg'")
        name = model.get("_name")
    elif blob.get("args") is not None:
        model, task, legacy = _model_and_task(blob["args"], path, "'args'")
        name = model.get("arch")
    else:
        raise ValueError(f"{path}: fairseq checkpoint without 'cfg' or 'args': its architecture is unknown")
    if name not in MODEL_TYPES:
        raise ValueError(f"{path}: fairseq model {name!r} is not one we import (expected one of {MODEL_TYPES})")
    if name == "wav2vec2":
        return FairseqSource(name, model, bool(task.get("normalize", False)), {}, legacy)
    w2v_args = model.get("w2v_args")
    if w2v_args is None:
        raise ValueError(f"{path}: fine-tuned checkpoint without 'w2v_args' (the pretraining config): the "
                         f"backbone's architecture is unknown; it was probably saved by a fairseq "
                         f"version we do not know")
    w2v, w2v_task, w2v_legacy = _model_and_task(w2v_args, path, "'w2v_args'")
    normalize = bool(w2v_task.get("normalize", w2v.get("normalize", model.get("normalize", False))))
    return FairseqSource(name, w2v, normalize, model, w2v_legacy)


def backbone_config(src: FairseqSource, path: str, notes: list[str]) -> Wav2Vec2Config:
    fields_ = src.w2v
    bad = {k: fields_[k] for k, v in _ARCHITECTURE_VALUES.items() if k in fields_ and fields_[k] != v}
    if bad:
        raise ValueError(f"{path}: architecture options we do not implement: {bad} "
                         f"(our model needs {({k: _ARCHITECTURE_VALUES[k] for k in bad})})")
    differ = {k: fields_[k] for k, v in _TRAINING_DEFAULTS.items() if k in fields_ and fields_[k] != v}
    if differ:
        notes.append(f"pretraining options not implemented here (weights unaffected; continued pretraining "
                     f"uses our static span masking instead): {differ}")
    if not src.legacy:  # a cfg's model section holds model fields only: report the ones we do not know
        unknown = sorted(set(fields_) - _OUR_FIELDS - set(_ARCHITECTURE_VALUES) - set(_TRAINING_DEFAULTS)
                         - _HARMLESS - {"normalize"})
        if unknown:
            notes.append(f"fairseq config fields not known to this importer (ignored): {unknown}")
    values = {k: fields_[k] for k in _OUR_FIELDS if k in fields_ and fields_[k] is not None}
    try:
        return Wav2Vec2Config(**values, normalize=src.normalize)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: its wav2vec 2.0 config cannot be represented: {e}") from e


def _head_vocab(dict_path: str, vocab_path: str | None, kind: str, weight, bias, origin: str):
    source = fairseq_source_vocab(read_fairseq_dict(dict_path), origin=f"{origin} with {dict_path}")
    target = load_target_vocab(vocab_path, kind) if vocab_path else default_target(source, kind)
    w, b, notes = permute_rows(weight, bias, source, target)
    return target, {"proj.weight": w, "proj.bias": b}, notes


def import_fairseq(
    path: str | os.PathLike,
    *,
    drop_head: bool = False,
    dict_path: str | None = None,
    add_dict_path: str | None = None,
    grapheme_vocab: str | None = None,
    syllable_vocab: str | None = None,
) -> ConvertedCheckpoint:
    """Converts a fairseq wav2vec 2.0 checkpoint.

    Args:
        path: the fairseq .pt file.
        drop_head: drop the CTC head(s) (English letters, say): the result is the backbone alone.
        dict_path: the fine-tuning dictionary of `w2v_encoder.proj` (fairseq `dict.ltr.txt`).
        add_dict_path: K-wav2vec's syllable dictionary of `w2v_encoder.proj2` (`add_dict.ltr.txt`).
        grapheme_vocab / syllable_vocab: optional existing vocabulary JSON files to map the heads onto;
            by default each head keeps all its dictionary's symbols, in dictionary order.
    """
    path = os.fspath(path)
    blob = load_foreign(path, EXPECTED)
    src = read_source(blob, path)
    notes: list[str] = []
    cfg = backbone_config(src, path, notes)
    state = SourceState(blob["model"], origin=f"{path} (fairseq {src.model_type})")
    notes += state.dtype_note()
    shapes = backbone_shapes(cfg)

    if src.model_type == "wav2vec2":
        prefix = ""
        if "quantizer.vars" not in state and "project_q.weight" in state:  # quantize_targets=False
            state.ignore_prefix("project_q.", "projects unquantized targets; our pretraining quantizes them")
            notes.append("trained without quantized targets: quantizer and project_q start fresh")
            wanted = [k for k in shapes if not k.startswith(("quantizer.", "project_q."))]
        else:
            wanted = list(shapes)
    else:
        prefix = FINETUNED_PREFIX
        wanted = [k for k in shapes if not k.startswith(PRETRAINING_PREFIXES)]
        notes.append("fine-tuned source: quantizer, project_q and final_proj were removed by fairseq; "
                     "continued pretraining starts them fresh")
    state_dict = gather(state, {k: prefix + k for k in wanted}, shapes)

    heads: dict[str, HeadCheckpoint] = {}
    if src.model_type != "wav2vec2":
        heads = _import_heads(state, src, cfg, path, notes, drop_head=drop_head, dict_path=dict_path,
                              add_dict_path=add_dict_path, grapheme_vocab=grapheme_vocab,
                              syllable_vocab=syllable_vocab)
    state.finish()
    return ConvertedCheckpoint(cfg, state_dict, heads, source=f"fairseq {src.model_type} {path}", notes=notes)


def _additional_layer_count(state: SourceState) -> int:
    found = {int(m.group(1)) for k in state.keys() if (m := re.match(r"w2v_encoder\.additional_layer\.(\d+)\.", k))}
    if found and found != set(range(len(found))):
        raise ValueError(f"{state.origin}: additional_layer indices {sorted(found)} are not 0..{len(found) - 1}")
    return len(found)


def _import_heads(state: SourceState, src: FairseqSource, cfg: Wav2Vec2Config, path: str, notes: list[str], *,
                  drop_head: bool, dict_path, add_dict_path, grapheme_vocab, syllable_vocab) -> dict:
    n_extra = _additional_layer_count(state)
    has_proj, has_proj2 = "w2v_encoder.proj.weight" in state, "w2v_encoder.proj2.weight" in state
    if drop_head:
        dropped = [p for p in ("w2v_encoder.proj.", "w2v_encoder.proj2.", "w2v_encoder.additional_layer.")
                   if state.ignore_prefix(p, "CTC head dropped on request")]
        if dropped:
            notes.append(f"dropped on request: {', '.join(p.rstrip('.') for p in dropped)}")
        return {}
    asr = src.asr
    final_dropout = float(asr.get("final_dropout", 0.0) or 0.0)
    heads: dict[str, HeadCheckpoint] = {}
    if has_proj:
        if dict_path is None:
            raise ValueError(f"{path}: has a CTC head (w2v_encoder.proj, {state.state['w2v_encoder.proj.weight'].shape[0]} "
                             f"outputs); pass its fairseq dictionary (--dict dict.ltr.txt) to keep it as the "
                             f"grapheme head, or --drop-head to start new heads")
        vocab, sd, n = _head_vocab(dict_path, grapheme_vocab, "grapheme", state.take("w2v_encoder.proj.weight"),
                                   state.take("w2v_encoder.proj.bias"), "w2v_encoder.proj")
        heads["grapheme"] = HeadCheckpoint(_float(sd), vocab, {"dropout": final_dropout})
        notes += n
    elif dict_path is not None:
        raise ValueError(f"{path}: --dict given but the checkpoint has no CTC head (w2v_encoder.proj)")
    if src.model_type == "wav2vec_ctc2" or has_proj2 or n_extra:
        heads["syllable"] = _syllable_head(state, src, cfg, path, notes, n_extra, add_dict_path, syllable_vocab,
                                           final_dropout)
    elif add_dict_path is not None:
        raise ValueError(f"{path}: --add-dict given but the checkpoint has no syllable head (w2v_encoder.proj2)")
    return heads


def _syllable_head(state, src, cfg, path, notes, n_extra, add_dict_path, vocab_path, final_dropout) -> HeadCheckpoint:
    if "w2v_encoder.proj2.weight" not in state:
        raise ValueError(f"{path}: K-wav2vec model without w2v_encoder.proj2 (its syllable head)")
    declared = src.asr.get("additional_layers")
    if declared is not None and int(declared) != n_extra:
        raise ValueError(f"{path}: config says additional_layers={declared} but the weights hold {n_extra}")
    if cfg.layer_norm_first and n_extra:
        raise ValueError(
            f"{path}: K-wav2vec syllable layers on a pre-LN backbone end without a LayerNorm, but our SyllableHead "
            f"adds one after pre-LN layers; importing would change its outputs"
        )
    if add_dict_path is None:
        raise ValueError(f"{path}: has a syllable CTC head (w2v_encoder.proj2); pass its dictionary "
                         f"(--add-dict add_dict.ltr.txt) or --drop-head")
    asr = src.asr
    options = {
        "num_layers": n_extra,
        "ffn_dim": cfg.encoder_ffn_embed_dim,
        "num_heads": cfg.encoder_attention_heads,
        # K-wav2vec builds these layers with the fine-tuning dropouts
        "dropout": float(asr.get("dropout", cfg.dropout)),
        "attention_dropout": float(asr.get("attention_dropout", cfg.attention_dropout)),
        "activation_dropout": float(asr.get("activation_dropout", cfg.activation_dropout)),
        "layer_norm_first": cfg.layer_norm_first,
        "final_dropout": final_dropout,
    }
    vocab, proj, n = _head_vocab(add_dict_path, vocab_path, "syllable", state.take("w2v_encoder.proj2.weight"),
                                 state.take("w2v_encoder.proj2.bias"), "w2v_encoder.proj2")
    notes += n
    with torch.device("meta"):
        shapes = SyllableHead(cfg.encoder_embed_dim, len(vocab), **options).state_dict()
    layer_keys = [k for k in shapes if k.startswith("layers.")]
    sd = gather(state, {k: "w2v_encoder.additional_layer." + k[len("layers."):] for k in layer_keys},
                {k: shapes[k].shape for k in layer_keys})
    sd.update(_float(proj))
    return HeadCheckpoint(sd, vocab, options)


def _float(sd: dict) -> dict:
    return {k: v.detach().float().clone().contiguous() for k, v in sd.items()}
