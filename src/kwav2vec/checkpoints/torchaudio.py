"""Import torchaudio `Wav2Vec2Model` state dicts, given the factory arguments that built them.

torchaudio's state dict does not say how the model was built: the `wav2vec2_model(...)` arguments
(`extractor_mode`, `extractor_conv_layer_config`, ..., `aux_num_out`) are needed too. They come from
one of:
- the file itself, saved as {"state_dict": ..., "factory_args": {...}} (optionally "labels", "normalize");
- a JSON object given separately (`factory_args=`);
- a torchaudio pipeline bundle name (`bundle="WAV2VEC2_ASR_BASE_960H"`): its `_params`, its waveform
  normalisation and, for ASR bundles, its labels (the bundle's downloaded .pth is the state dict).
The `aux` linear layer (ASR bundles) is a CTC head whose outputs are named by `labels` (blank first,
torchaudio's convention); it becomes the grapheme head or is dropped on request.

torchaudio has no mask embedding and no pretraining modules: they start fresh.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from kwav2vec.checkpoints.format import (
    PRETRAINING_PREFIXES,
    ConvertedCheckpoint,
    HeadCheckpoint,
    backbone_shapes,
    fresh_mask_emb,
)
from kwav2vec.checkpoints.pickles import load_foreign
from kwav2vec.checkpoints.renames import TORCHAUDIO_RULES, rename
from kwav2vec.checkpoints.statedict import SourceState, gather
from kwav2vec.checkpoints.vocab_map import SourceVocab, default_target, load_target_vocab, permute_rows
from kwav2vec.fileio import atomic_torch_save
from kwav2vec.models.config import BASE_CONV_LAYERS, Wav2Vec2Config
from kwav2vec.text.vocab import BLANK, UNK, WORD_BOUNDARY

EXPECTED = "a torchaudio wav2vec2_model state dict (.pt/.pth)"
FACTORY_ARGS = (
    "extractor_mode", "extractor_conv_layer_config", "extractor_conv_bias", "encoder_embed_dim",
    "encoder_projection_dropout", "encoder_pos_conv_kernel", "encoder_pos_conv_groups", "encoder_num_layers",
    "encoder_num_heads", "encoder_attention_dropout", "encoder_ff_interm_features", "encoder_ff_interm_dropout",
    "encoder_dropout", "encoder_layer_norm_first", "encoder_layer_drop", "aux_num_out",
)
_EXTRACTOR_MODES = {"group_norm": "default", "layer_norm": "layer_norm"}


def bundle_info(name: str) -> dict[str, Any]:
    """Factory args, normalisation and labels of a torchaudio pipeline bundle (no download)."""
    import torchaudio.pipelines as pipelines

    bundle = getattr(pipelines, name, None)
    if bundle is None or not hasattr(bundle, "_params"):
        raise ValueError(f"unknown torchaudio wav2vec 2.0 bundle {name!r} (e.g. WAV2VEC2_BASE, WAV2VEC2_ASR_BASE_960H)")
    info = {"factory_args": dict(bundle._params), "normalize": bool(getattr(bundle, "_normalize_waveform", False))}
    if hasattr(bundle, "get_labels"):
        info["labels"] = list(bundle.get_labels())
    return info


def backbone_config(args: dict[str, Any], normalize: bool, origin: str) -> Wav2Vec2Config:
    unknown = sorted(set(args) - set(FACTORY_ARGS))
    if unknown:
        raise ValueError(f"{origin}: factory arguments {unknown} are not wav2vec2_model's (WavLM/HuBERT variants "
                         f"are not supported); expected a subset of {list(FACTORY_ARGS)}")
    missing = sorted(set(FACTORY_ARGS) - set(args) - {"aux_num_out"})
    if missing:
        raise ValueError(f"{origin}: factory arguments missing: {missing}")
    mode = _EXTRACTOR_MODES.get(args["extractor_mode"])
    if mode is None:
        raise ValueError(f"{origin}: extractor_mode {args['extractor_mode']!r}, expected one of {list(_EXTRACTOR_MODES)}")
    layers = args["extractor_conv_layer_config"]
    conv = repr([tuple(int(v) for v in layer) for layer in layers]) if layers is not None else BASE_CONV_LAYERS
    cfg_args = dict(
        extractor_mode=mode, conv_feature_layers=conv, conv_bias=bool(args["extractor_conv_bias"]), normalize=normalize,
        encoder_embed_dim=int(args["encoder_embed_dim"]), dropout_input=float(args["encoder_projection_dropout"]),
        conv_pos=int(args["encoder_pos_conv_kernel"]), conv_pos_groups=int(args["encoder_pos_conv_groups"]),
        encoder_layers=int(args["encoder_num_layers"]), encoder_attention_heads=int(args["encoder_num_heads"]),
        attention_dropout=float(args["encoder_attention_dropout"]),
        encoder_ffn_embed_dim=int(args["encoder_ff_interm_features"]),
        activation_dropout=float(args["encoder_ff_interm_dropout"]), dropout=float(args["encoder_dropout"]),
        layer_norm_first=bool(args["encoder_layer_norm_first"]), encoder_layerdrop=float(args["encoder_layer_drop"]),
    )
    try:
        cfg = Wav2Vec2Config(**cfg_args)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{origin}: its config cannot be represented: {e}") from e
    if cfg.conv_dim == cfg.encoder_embed_dim:
        raise ValueError(f"{origin}: conv channels == encoder_embed_dim == {cfg.conv_dim}: torchaudio keeps a "
                         f"projection there, fairseq and we do not")
    return cfg


def _label_vocab(labels: list[str], origin: str) -> SourceVocab:
    roles = {"|": WORD_BOUNDARY, "<unk>": UNK}
    tokens = [BLANK] + [roles.get(t, t) for t in labels[1:]]
    return SourceVocab(tokens, list(labels), origin)


def import_torchaudio(
    path: str | os.PathLike,
    *,
    factory_args: dict[str, Any] | None = None,
    bundle: str | None = None,
    labels: list[str] | None = None,
    normalize: bool | None = None,
    drop_head: bool = False,
    grapheme_vocab: str | None = None,
) -> ConvertedCheckpoint:
    """Converts a torchaudio wav2vec 2.0 state dict.

    Args:
        path: `torch.save(model.state_dict())`, or a dict {"state_dict", "factory_args"[, "labels", "normalize"]}.
        factory_args: `wav2vec2_model` keyword arguments (override the file's).
        bundle: a torchaudio pipeline bundle name supplying factory args, normalisation and labels.
        labels: names of the `aux` head's outputs, blank first (override the file's / bundle's).
        normalize: whether the model expects normalised waveforms (default: file/bundle value, else False).
        drop_head: drop `aux` instead of keeping it as the grapheme head.
        grapheme_vocab: optional existing vocabulary JSON to map `aux` onto.
    """
    path = os.fspath(path)
    blob = load_foreign(path, EXPECTED)
    if not isinstance(blob, dict):
        raise ValueError(f"{path}: found a {type(blob).__name__}, expected {EXPECTED}")
    embedded: dict[str, Any] = {}
    if "state_dict" in blob and isinstance(blob["state_dict"], dict):
        embedded = {k: blob[k] for k in ("factory_args", "labels", "normalize") if k in blob}
        blob = blob["state_dict"]
    info = {**(bundle_info(bundle) if bundle else {}), **embedded}
    if factory_args is not None:
        info["factory_args"] = dict(factory_args)
    if labels is not None:
        info["labels"] = list(labels)
    if normalize is not None:
        info["normalize"] = normalize
    if "factory_args" not in info:
        raise ValueError(f"{path}: a torchaudio state dict does not say how the model was built; give the "
                         f"wav2vec2_model arguments (--factory-args JSON) or a bundle name (--bundle)")
    notes: list[str] = []
    if "normalize" not in info:
        notes.append("normalize not given: assuming the model takes raw audio (normalize=False)")
    cfg = backbone_config(info["factory_args"], bool(info.get("normalize", False)), path)
    state = SourceState(blob, origin=f"{path} (torchaudio wav2vec2_model)")
    notes += state.dtype_note()
    shapes = backbone_shapes(cfg)
    wanted = [k for k in shapes if k != "mask_emb" and not k.startswith(PRETRAINING_PREFIXES)]
    state_dict = gather(state, {k: rename(k, TORCHAUDIO_RULES) for k in wanted}, shapes)
    state_dict["mask_emb"] = fresh_mask_emb(cfg)
    notes.append("torchaudio has no mask embedding or pretraining modules: mask_emb, quantizer, project_q and "
                 "final_proj start fresh")

    heads = {}
    if "aux.weight" in state:
        if drop_head:
            state.ignore_prefix("aux.", "CTC head dropped on request")
            notes.append("dropped on request: aux")
        elif "labels" not in info:
            raise ValueError(f"{path}: has a CTC head (aux, {state.state['aux.weight'].shape[0]} outputs); give its "
                             f"labels (--labels FILE, blank first, or --bundle) or use --drop-head")
        else:
            source = _label_vocab(info["labels"], f"aux with {len(info['labels'])} labels")
            target = load_target_vocab(grapheme_vocab, "grapheme") if grapheme_vocab else default_target(source, "grapheme")
            w, b, n = permute_rows(state.take("aux.weight"), state.take("aux.bias"), source, target)
            notes += n
            heads["grapheme"] = HeadCheckpoint({"proj.weight": w.float().contiguous(), "proj.bias": b.float().contiguous()},
                                               target, {"dropout": 0.0})
    state.finish()
    return ConvertedCheckpoint(cfg, state_dict, heads, source=f"torchaudio {path}", notes=notes)


def save_for_import(model: torch.nn.Module, factory_args: dict[str, Any], path: str | os.PathLike, **extra: Any) -> None:
    """Writes a torchaudio model in the self-describing form `import_torchaudio` reads."""
    atomic_torch_save({"state_dict": model.state_dict(), "factory_args": dict(factory_args), **extra}, path)
