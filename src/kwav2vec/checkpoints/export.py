"""Export a converted/trained kwav2vec checkpoint to a Hugging Face transformers directory.

Writes what `Wav2Vec2ForCTC.from_pretrained` / `Wav2Vec2ForPreTraining.from_pretrained` (and the
matching processor) read, without needing transformers installed:
- `config.json` (model_type wav2vec2; `pad_token_id` = our blank 0, which transformers' CTC loss uses
  as the blank; no bos/eos: a CTC head has none),
- `model.safetensors` (pos-conv weight norm in the `weight_g`/`weight_v` spelling, which every
  transformers version reads),
- `preprocessor_config.json` (`do_normalize` = our `normalize`; attention masks for layer-norm
  extractors only, as transformers recommends),
- with the grapheme head: `vocab.json` ({token: id}, our ids unchanged), `tokenizer_config.json`
  (`<blank>` as pad token, `|` as word delimiter, `<unk>`), `special_tokens_map.json`.
The CTC tokenizer decodes our jamo tokens to conjoining jamo; NFC-normalise its text to get syllables.

- with a processor: `processor_class` Wav2Vec2Processor in both configs, so `AutoProcessor` loads one.
- `kwav2vec_heads.json` (`HEADS_FILE`) and, with a syllable head, `kwav2vec_syllable_head.safetensors`:
  what no transformers class holds (it has no model with two CTC heads). The JSON is
  {"format": "kwav2vec-hf-heads", "version": 1, "heads": {name: {"vocab": Vocabulary.to_dict(),
  "options": head constructor options, "weights": file}}}: the grapheme head's weights are the
  ForCTC `lm_head` in model.safetensors, the syllable head's the SyllableHead state dict in its own
  file. `kwav2vec convert --from hf` reads both back (checkpoints/huggingface.py).

Reported, not silently lost: our padding-aware "default"-mode group norm (transformers includes batch
padding in that norm's statistics, so padded batches differ there; unpadded input is identical).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from kwav2vec.checkpoints.format import ConvertedCheckpoint, backbone_shapes
from kwav2vec.checkpoints.renames import hf_key
from kwav2vec.checkpoints.statedict import G_NEW, G_OLD, V_NEW, V_OLD
from kwav2vec.fileio import atomic_write_bytes, atomic_write_text
from kwav2vec.models.config import SAMPLE_RATE
from kwav2vec.text.vocab import BLANK, UNK, WORD_BOUNDARY

HEADS_FILE = "kwav2vec_heads.json"
HEADS_FORMAT, HEADS_VERSION = "kwav2vec-hf-heads", 1
SYLLABLE_WEIGHTS_FILE = "kwav2vec_syllable_head.safetensors"
ARCHITECTURES = {"ctc": "Wav2Vec2ForCTC", "pretraining": "Wav2Vec2ForPreTraining", "model": "Wav2Vec2Model"}
HF_FINETUNE_MASK_TIME_PROB = 0.05  # transformers' default SpecAugment for a ForCTC config


def _choose(ckpt: ConvertedCheckpoint, arch: str) -> str:
    if arch == "auto":
        arch = "ctc" if "grapheme" in ckpt.heads else "pretraining" if ckpt.has_pretraining_modules else "model"
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown export architecture {arch!r}; choose auto, {', '.join(ARCHITECTURES)}")
    if arch == "ctc" and "grapheme" not in ckpt.heads:
        raise ValueError(f"{ckpt.source}: Wav2Vec2ForCTC needs a grapheme head, and this checkpoint has none")
    if arch == "pretraining":
        missing = [p for p in ("quantizer.vars", "project_q.weight", "final_proj.weight") if p not in ckpt.state_dict]
        if missing:
            raise ValueError(f"{ckpt.source}: Wav2Vec2ForPreTraining needs the pretraining modules; missing {missing}")
    return arch


def hf_config(ckpt: ConvertedCheckpoint, arch: str) -> dict[str, Any]:
    cfg = ckpt.config
    layers = cfg.conv_layers
    head = ckpt.heads.get("grapheme")
    mask_time_prob = cfg.mask_prob if arch == "pretraining" else HF_FINETUNE_MASK_TIME_PROB
    config: dict[str, Any] = {
        "architectures": [ARCHITECTURES[arch]],
        "model_type": "wav2vec2",
        "conv_dim": [c for c, _, _ in layers],
        "conv_kernel": [k for _, k, _ in layers],
        "conv_stride": [s for _, _, s in layers],
        "num_feat_extract_layers": len(layers),
        "conv_bias": cfg.conv_bias,
        "feat_extract_norm": "group" if cfg.extractor_mode == "default" else "layer",
        "feat_extract_activation": "gelu",
        "hidden_size": cfg.encoder_embed_dim,
        "num_hidden_layers": cfg.encoder_layers,
        "num_attention_heads": cfg.encoder_attention_heads,
        "intermediate_size": cfg.encoder_ffn_embed_dim,
        "hidden_act": "gelu",
        "num_conv_pos_embeddings": cfg.conv_pos,
        "num_conv_pos_embedding_groups": cfg.conv_pos_groups,
        "do_stable_layer_norm": cfg.layer_norm_first,
        "layer_norm_eps": 1e-5,
        "hidden_dropout": cfg.dropout,
        "attention_dropout": cfg.attention_dropout,
        "activation_dropout": cfg.activation_dropout,
        "feat_proj_dropout": cfg.dropout_input,
        "feat_quantizer_dropout": cfg.dropout_features,
        "final_dropout": float(head.options.get("dropout", 0.0)) if head else 0.0,
        "layerdrop": cfg.encoder_layerdrop,
        "apply_spec_augment": True,
        "mask_time_prob": mask_time_prob,
        "mask_time_length": cfg.mask_length,
        "mask_time_min_masks": cfg.mask_min_masks,
        "mask_feature_prob": cfg.mask_channel_prob,
        "mask_feature_length": cfg.mask_channel_length,
        "mask_feature_min_masks": 0,
        "num_codevectors_per_group": cfg.latent_vars,
        "num_codevector_groups": cfg.latent_groups,
        "codevector_dim": cfg.vq_dim,
        "proj_codevector_dim": cfg.final_dim_,
        "contrastive_logits_temperature": cfg.logit_temp,
        "num_negatives": cfg.num_negatives,
        "diversity_loss_weight": 0.1,
        "use_weighted_layer_sum": False,
        "add_adapter": False,
        "ctc_loss_reduction": "mean",
        "ctc_zero_infinity": True,
        "pad_token_id": 0,  # our CTC blank; transformers' CTC loss takes the blank from here
        "bos_token_id": None,
        "eos_token_id": None,
    }
    if head is not None:
        config["vocab_size"] = len(head.vocab)
    return config


def hf_state_dict(ckpt: ConvertedCheckpoint, arch: str, with_mask_emb: bool) -> tuple[dict[str, torch.Tensor], list[str]]:
    cfg, notes = ckpt.config, []
    prefix = "" if arch == "model" else "wav2vec2."
    pretraining = ("quantizer.", "project_q.", "final_proj.")
    out: dict[str, torch.Tensor] = {}
    for key, tensor in ckpt.state_dict.items():
        if key.startswith(pretraining) and arch != "pretraining":
            continue
        if key == "mask_emb" and not with_mask_emb:
            continue
        name = hf_key(key, prefix)
        name = name.replace(G_NEW, G_OLD).replace(V_NEW, V_OLD)
        out[name] = tensor.detach().float().contiguous().clone()
    if cfg.conv_dim == cfg.encoder_embed_dim:  # transformers always projects; ours is absent when sizes agree
        out[prefix + "feature_projection.projection.weight"] = torch.eye(cfg.encoder_embed_dim)
        out[prefix + "feature_projection.projection.bias"] = torch.zeros(cfg.encoder_embed_dim)
        notes.append("conv width == model width: wrote an identity feature projection")
    if arch == "ctc":
        head = ckpt.heads["grapheme"].state_dict
        out["lm_head.weight"] = head["proj.weight"].detach().float().contiguous().clone()
        out["lm_head.bias"] = head["proj.bias"].detach().float().contiguous().clone()
    return out, notes


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def export_huggingface(ckpt: ConvertedCheckpoint, directory: str | os.PathLike, *, arch: str = "auto") -> list[str]:
    """Writes `ckpt` as a transformers directory; returns notes on what could not be carried over.

    Args:
        ckpt: a converted checkpoint (`load_converted`).
        directory: output directory (created; existing files of the same names are replaced).
        arch: "auto" (ForCTC with a grapheme head, else ForPreTraining with the pretraining modules,
            else Model), "ctc", "pretraining" or "model".
    """
    try:
        from safetensors.torch import save
    except ImportError as e:
        raise ImportError("writing model.safetensors needs the safetensors package: pip install safetensors") from e

    def save_file(state: dict[str, torch.Tensor], path: str, metadata: dict[str, str]) -> None:
        atomic_write_bytes(path, save(state, metadata=metadata))  # safetensors' own save_file is not atomic

    arch = _choose(ckpt, arch)
    shapes = backbone_shapes(ckpt.config)
    unexpected = sorted(set(ckpt.state_dict) - set(shapes))
    if unexpected:
        raise ValueError(f"{ckpt.source}: keys not in the backbone: {unexpected[:10]}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = hf_config(ckpt, arch)
    with_mask_emb = config["mask_time_prob"] > 0 or config["mask_feature_prob"] > 0
    state, notes = hf_state_dict(ckpt, arch, with_mask_emb)
    if ckpt.config.extractor_mode == "default":
        notes.append("group-norm extractor: transformers normalises over batch padding too; pass unpadded "
                     "audio (batch size 1 or equal lengths) for outputs identical to kwav2vec's")
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    _write_json(directory / "config.json", config)
    _write_json(directory / "preprocessor_config.json", {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "feature_size": 1,
        "sampling_rate": SAMPLE_RATE,
        "padding_value": 0.0,
        "padding_side": "right",
        "do_normalize": ckpt.config.normalize,
        "return_attention_mask": ckpt.config.extractor_mode == "layer_norm",
        **({"processor_class": "Wav2Vec2Processor"} if arch == "ctc" else {}),
    })
    if arch == "ctc":
        vocab = ckpt.heads["grapheme"].vocab
        _write_json(directory / "vocab.json", {t: i for i, t in enumerate(vocab.tokens)})
        special = {"unk_token": UNK, "pad_token": BLANK}
        _write_json(directory / "special_tokens_map.json", special)
        _write_json(directory / "tokenizer_config.json", {
            "tokenizer_class": "Wav2Vec2CTCTokenizer",
            **special,
            "bos_token": None,
            "eos_token": None,
            "word_delimiter_token": WORD_BOUNDARY,
            "do_lower_case": False,
            "replace_word_delimiter_char": " ",
            "processor_class": "Wav2Vec2Processor",
        })
    notes += _write_heads(ckpt, directory, arch, save_file)
    return notes


def _write_heads(ckpt: ConvertedCheckpoint, directory: Path, arch: str, save_file) -> list[str]:
    """`HEADS_FILE` (+ the syllable head's weights): the heads as kwav2vec builds them. A stale file
    of an earlier export into the same directory is removed, so the directory never pairs this
    model with another model's heads."""
    heads: dict[str, Any] = {}
    grapheme = ckpt.heads.get("grapheme")
    if grapheme is not None and arch == "ctc":
        heads["grapheme"] = {"vocab": grapheme.vocab.to_dict(), "options": dict(grapheme.options),
                             "weights": "model.safetensors lm_head"}
    syllable = ckpt.heads.get("syllable")
    weights = directory / SYLLABLE_WEIGHTS_FILE
    if syllable is not None:
        state = {k: v.detach().float().contiguous().clone() for k, v in syllable.state_dict.items()}
        save_file(state, str(weights), metadata={"format": "pt"})
        heads["syllable"] = {"vocab": syllable.vocab.to_dict(), "options": dict(syllable.options),
                             "weights": SYLLABLE_WEIGHTS_FILE}
    elif weights.exists():
        weights.unlink()
    if heads:
        _write_json(directory / HEADS_FILE, {"format": HEADS_FORMAT, "version": HEADS_VERSION, "heads": heads})
    elif (directory / HEADS_FILE).exists():
        (directory / HEADS_FILE).unlink()
    if syllable is not None:
        return [f"the syllable head has no transformers class: written to {SYLLABLE_WEIGHTS_FILE} with its "
                f"vocabulary in {HEADS_FILE} (kwav2vec convert --from hf reads both back)"]
    return []
