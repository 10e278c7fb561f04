"""Import Hugging Face transformers wav2vec 2.0 directories (no transformers needed).

A directory holds `config.json` and `model.safetensors` or `pytorch_model.bin` (or their sharded
`*.index.json` forms), optionally the tokenizer (`vocab.json`, `tokenizer_config.json`) and the feature
extractor (`preprocessor_config.json`). The model class is recognised from the weights:
- `Wav2Vec2Model`: backbone keys at the top level;
- `Wav2Vec2ForCTC`: backbone under `wav2vec2.`, CTC head `lm_head` over the tokenizer's vocabulary;
- `Wav2Vec2ForPreTraining`: backbone under `wav2vec2.`, plus `quantizer.{codevectors,weight_proj}`,
  `project_q`, `project_hid` (= our final_proj).
Both architectures: post-LN with a group-norm extractor ("group", BASE) and pre-LN "stable layer
norm" with a layer-norm extractor (LARGE), with or without conv bias.

`config.json` omits values equal to transformers' defaults, so the defaults are spelled out below.
Waveform normalisation is not part of an HF model: it is the feature extractor's `do_normalize`
(`preprocessor_config.json`), which becomes our `normalize`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from kwav2vec.checkpoints.export import HEADS_FILE, HEADS_FORMAT, HEADS_VERSION, SYLLABLE_WEIGHTS_FILE
from kwav2vec.checkpoints.format import (
    PRETRAINING_PREFIXES,
    ConvertedCheckpoint,
    HeadCheckpoint,
    backbone_shapes,
    fresh_mask_emb,
)
from kwav2vec.checkpoints.integrity import read_checkpoint
from kwav2vec.checkpoints.renames import hf_key
from kwav2vec.checkpoints.statedict import SourceState, gather
from kwav2vec.checkpoints.vocab_map import (
    default_target,
    hf_source_vocab,
    load_target_vocab,
    permute_rows,
    read_hf_vocab,
)
from kwav2vec.models.config import SAMPLE_RATE, Wav2Vec2Config
from kwav2vec.models.heads import SyllableHead
from kwav2vec.text.vocab import Vocabulary

EXPECTED = "a Hugging Face wav2vec 2.0 directory (config.json + model.safetensors or pytorch_model.bin)"
# transformers' Wav2Vec2Config defaults for every field we read (config.json leaves defaults out)
HF_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
    "hidden_act": "gelu", "hidden_dropout": 0.1, "activation_dropout": 0.1, "attention_dropout": 0.1,
    "feat_proj_dropout": 0.0, "feat_quantizer_dropout": 0.0, "final_dropout": 0.1, "layerdrop": 0.1,
    "layer_norm_eps": 1e-5, "feat_extract_norm": "group", "feat_extract_activation": "gelu",
    "conv_dim": [512] * 7, "conv_stride": [5, 2, 2, 2, 2, 2, 2], "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_bias": False, "num_conv_pos_embeddings": 128, "num_conv_pos_embedding_groups": 16,
    "do_stable_layer_norm": False, "mask_time_prob": 0.05, "mask_feature_prob": 0.0,
    "num_codevectors_per_group": 320, "num_codevector_groups": 2, "contrastive_logits_temperature": 0.1,
    "num_negatives": 100, "codevector_dim": 256, "proj_codevector_dim": 256, "use_weighted_layer_sum": False,
    "pad_token_id": 0, "add_adapter": False, "adapter_attn_dim": None,
}
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, what our model uses
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _read_json(path: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read {what}: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: {what} must be a JSON object")
    return data


def _load_weight_file(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as e:  # listed under the dev extra; plain installs may lack it
            raise ImportError(f"reading {path} needs the safetensors package: pip install safetensors") from e
        return load_file(path, device="cpu")
    return read_checkpoint(path, "a Hugging Face weight file (pytorch_model.bin)", foreign=True, beside=False)


def read_hf_weights(directory: str) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        if not name.endswith(".index.json"):
            return _load_weight_file(path)
        index = _read_json(path, "the weight index")
        shards = sorted(set((index.get("weight_map") or {}).values()))
        if not shards:
            raise ValueError(f"{path}: no 'weight_map' in the index")
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(_load_weight_file(os.path.join(directory, shard)))
        return state
    raise FileNotFoundError(f"{directory}: no weights ({', '.join(WEIGHT_FILES)}); expected {EXPECTED}")


def backbone_config(c: dict[str, Any], normalize: bool, origin: str, identity_projection: bool = False) -> Wav2Vec2Config:
    """transformers Wav2Vec2Config (as a dict, defaults filled) -> ours; refuses what we do not implement."""
    refuse = []
    if c["hidden_act"] != "gelu" or c["feat_extract_activation"] != "gelu":
        refuse.append(f"activations hidden_act={c['hidden_act']!r}, feat_extract_activation={c['feat_extract_activation']!r} (need gelu)")
    if c["add_adapter"] or c["adapter_attn_dim"]:
        refuse.append("adapters (add_adapter / adapter_attn_dim)")
    if c["use_weighted_layer_sum"]:
        refuse.append("use_weighted_layer_sum")
    if abs(float(c["layer_norm_eps"]) - LAYER_NORM_EPS) > 1e-12:
        refuse.append(f"layer_norm_eps={c['layer_norm_eps']} (ours is {LAYER_NORM_EPS})")
    if c["feat_extract_norm"] not in ("group", "layer"):
        refuse.append(f"feat_extract_norm={c['feat_extract_norm']!r}")
    dims, kernels, strides = list(c["conv_dim"]), list(c["conv_kernel"]), list(c["conv_stride"])
    if not len(dims) == len(kernels) == len(strides):
        refuse.append(f"conv_dim/conv_kernel/conv_stride of different lengths {len(dims)}/{len(kernels)}/{len(strides)}")
    elif dims[-1] == c["hidden_size"] and not identity_projection:
        refuse.append(f"conv_dim[-1] == hidden_size == {dims[-1]}: transformers keeps a projection there, "
                      f"fairseq and we do not")
    if refuse:
        raise ValueError(f"{origin}: cannot import: {'; '.join(refuse)}")
    try:
        return Wav2Vec2Config(
            extractor_mode="default" if c["feat_extract_norm"] == "group" else "layer_norm",
            conv_feature_layers=repr([tuple(int(v) for v in t) for t in zip(dims, kernels, strides, strict=True)]),
            conv_bias=bool(c["conv_bias"]),
            normalize=normalize,
            encoder_layers=int(c["num_hidden_layers"]),
            encoder_embed_dim=int(c["hidden_size"]),
            encoder_ffn_embed_dim=int(c["intermediate_size"]),
            encoder_attention_heads=int(c["num_attention_heads"]),
            layer_norm_first=bool(c["do_stable_layer_norm"]),
            conv_pos=int(c["num_conv_pos_embeddings"]),
            conv_pos_groups=int(c["num_conv_pos_embedding_groups"]),
            dropout=float(c["hidden_dropout"]),
            attention_dropout=float(c["attention_dropout"]),
            activation_dropout=float(c["activation_dropout"]),
            encoder_layerdrop=float(c["layerdrop"]),
            dropout_input=float(c["feat_proj_dropout"]),
            dropout_features=float(c["feat_quantizer_dropout"]),
            final_dim=int(c["proj_codevector_dim"]),
            latent_vars=int(c["num_codevectors_per_group"]),
            latent_groups=int(c["num_codevector_groups"]),
            latent_dim=int(c["codevector_dim"]),
            logit_temp=float(c["contrastive_logits_temperature"]),
            num_negatives=int(c["num_negatives"]),
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"{origin}: its config cannot be represented: {e}") from e


def _normalize_setting(directory: str, notes: list[str]) -> bool:
    path = os.path.join(directory, "preprocessor_config.json")
    if not os.path.isfile(path):
        notes.append("no preprocessor_config.json: assuming the model takes raw audio (normalize=False)")
        return False
    pre = _read_json(path, "the feature extractor config")
    rate = pre.get("sampling_rate", SAMPLE_RATE)
    if rate != SAMPLE_RATE:
        raise ValueError(f"{path}: sampling_rate {rate}, but kwav2vec models take {SAMPLE_RATE} Hz audio")
    return bool(pre.get("do_normalize", True))  # transformers' Wav2Vec2FeatureExtractor default


def _ctc_head(directory: str, c: dict, state: SourceState, vocab_path: str | None, notes: list[str]) -> HeadCheckpoint:
    vocab_file = os.path.join(directory, "vocab.json")
    if not os.path.isfile(vocab_file):
        raise ValueError(f"{directory}: has a CTC head (lm_head) but no vocab.json to name its outputs; "
                         f"use --drop-head to start new heads")
    tok_file = os.path.join(directory, "tokenizer_config.json")
    tok = _read_json(tok_file, "the tokenizer config") if os.path.isfile(tok_file) else {}

    def token(name: str, default: str | None) -> str | None:
        value = tok.get(name, default)
        return value.get("content") if isinstance(value, dict) else value  # AddedToken dicts

    drop = tuple(t for t in (token("bos_token", "<s>"), token("eos_token", "</s>")) if t)
    source = hf_source_vocab(read_hf_vocab(vocab_file), blank_id=int(c["pad_token_id"]),
                             unk_token=token("unk_token", "<unk>"), word_delimiter=token("word_delimiter_token", "|"),
                             drop_tokens=drop, origin=f"lm_head with {vocab_file}")
    target = load_target_vocab(vocab_path, "grapheme") if vocab_path else default_target(source, "grapheme")
    w, b, n = permute_rows(state.take("lm_head.weight"), state.take("lm_head.bias"), source, target)
    notes += n
    return HeadCheckpoint({"proj.weight": w.float().contiguous(), "proj.bias": b.float().contiguous()}, target,
                          {"dropout": float(c["final_dropout"])})


def _is_identity_projection(weights: dict[str, torch.Tensor], prefix: str) -> bool:
    w, b = weights.get(prefix + "weight"), weights.get(prefix + "bias")
    if w is None or b is None or w.ndim != 2 or w.shape[0] != w.shape[1]:
        return False
    return bool(torch.equal(w.float(), torch.eye(w.shape[0])) and not b.float().any())


def read_stored_heads(directory: str) -> dict[str, tuple[Vocabulary, dict[str, Any]]]:
    """{head: (vocabulary, options)} from the `HEADS_FILE` our exporter writes; {} without one."""
    path = os.path.join(directory, HEADS_FILE)
    if not os.path.isfile(path):
        return {}
    blob = _read_json(path, "kwav2vec's heads file")
    if blob.get("format") != HEADS_FORMAT or blob.get("version") != HEADS_VERSION:
        raise ValueError(f"{path}: expected format {HEADS_FORMAT!r} version {HEADS_VERSION}, found "
                         f"{blob.get('format')!r} version {blob.get('version')!r}")
    out = {}
    for name, head in (blob.get("heads") or {}).items():
        if name not in ("grapheme", "syllable"):
            raise ValueError(f"{path}: unknown head {name!r}")
        out[name] = (Vocabulary.from_dict(head["vocab"], source=f"{path} heads.{name}.vocab"),
                     dict(head.get("options") or {}))
    return out


def _syllable_head(directory: str, stored: tuple[Vocabulary, dict[str, Any]], cfg: Wav2Vec2Config) -> HeadCheckpoint:
    vocab, options = stored
    path = os.path.join(directory, SYLLABLE_WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"{directory}: {HEADS_FILE} names a syllable head but {SYLLABLE_WEIGHTS_FILE} is missing")
    weights = {k: v.float().contiguous() for k, v in _load_weight_file(path).items()}
    expected = SyllableHead(cfg.encoder_embed_dim, len(vocab), **options).state_dict()
    bad = sorted(set(expected) ^ set(weights)) + [k for k in expected if k in weights
                                                  and expected[k].shape != weights[k].shape]
    if bad:
        raise ValueError(f"{path}: does not fit a syllable head of {len(vocab)} outputs with options {options} "
                         f"(mismatched keys {bad[:8]})")
    return HeadCheckpoint(weights, vocab, options)


def import_huggingface(
    directory: str | os.PathLike, *, drop_head: bool = False, grapheme_vocab: str | None = None,
    normalize: bool | None = None,
) -> ConvertedCheckpoint:
    """Converts a transformers Wav2Vec2Model / ForCTC / ForPreTraining directory.

    Args:
        directory: the `save_pretrained` directory.
        drop_head: drop `lm_head` (e.g. English letters) instead of keeping it as the grapheme head.
        grapheme_vocab: optional existing vocabulary JSON to map `lm_head` onto (default: its vocab.json).
        normalize: whether the model expects normalised waveforms (default: the feature extractor's
            `do_normalize` from preprocessor_config.json, else False).
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise ValueError(f"{directory}: not a directory (expected {EXPECTED})")
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"{directory}: no config.json (expected {EXPECTED})")
    raw = _read_json(config_path, "the model config")
    if raw.get("model_type") != "wav2vec2":
        raise ValueError(f"{config_path}: model_type {raw.get('model_type')!r}, expected 'wav2vec2'")
    c = {**HF_DEFAULTS, **{k: v for k, v in raw.items() if k in HF_DEFAULTS}}
    notes: list[str] = []
    if normalize is None:
        normalize = _normalize_setting(directory, notes)
    weights = read_hf_weights(directory)
    prefix = "wav2vec2." if any(k.startswith("wav2vec2.") for k in weights) else ""
    # transformers always projects the features; with conv width == model width we have no projection,
    # so only an identity one (what our exporter writes for such models) can be imported
    identity = _is_identity_projection(weights, prefix + "feature_projection.projection.")
    cfg = backbone_config(c, normalize, config_path, identity_projection=identity)
    state = SourceState(weights, origin=f"{directory} (Hugging Face wav2vec2)")
    notes += state.dtype_note()
    if identity and cfg.conv_dim == cfg.encoder_embed_dim:
        state.ignore_prefix(prefix + "feature_projection.projection.", "identity projection (conv width == model width)")
    pretraining = "quantizer.codevectors" in state
    kind = "Wav2Vec2ForPreTraining" if pretraining else "Wav2Vec2ForCTC" if "lm_head.weight" in state else "Wav2Vec2Model"

    shapes = backbone_shapes(cfg)
    wanted = [k for k in shapes if pretraining or not k.startswith(PRETRAINING_PREFIXES)]
    has_mask_emb = prefix + "masked_spec_embed" in state
    if not has_mask_emb:  # transformers only creates it when mask_time_prob or mask_feature_prob > 0
        wanted.remove("mask_emb")
        notes.append("no masked_spec_embed in the source: mask_emb starts fresh (uniform, as fairseq)")
    state_dict = gather(state, {k: hf_key(k, prefix) for k in wanted}, shapes)
    if not has_mask_emb:
        state_dict["mask_emb"] = fresh_mask_emb(cfg)
    if not pretraining:
        notes.append(f"{kind} source: quantizer, project_q and final_proj start fresh if pretraining continues")

    stored = {} if drop_head else read_stored_heads(directory)
    heads = {}
    if "lm_head.weight" in state:
        if drop_head:
            state.ignore_prefix("lm_head.", "CTC head dropped on request")
            notes.append("dropped on request: lm_head")
        elif "grapheme" in stored and grapheme_vocab is None:
            # our own export: the stored vocabulary and options give back exactly the exported head
            vocab, options = stored["grapheme"]
            heads["grapheme"] = HeadCheckpoint({"proj.weight": state.take("lm_head.weight").float().contiguous(),
                                                "proj.bias": state.take("lm_head.bias").float().contiguous()},
                                               vocab, options)
            if len(vocab) != heads["grapheme"].state_dict["proj.weight"].shape[0]:
                raise ValueError(f"{directory}/{HEADS_FILE}: the grapheme vocabulary has {len(vocab)} tokens, "
                                 f"lm_head {heads['grapheme'].state_dict['proj.weight'].shape[0]} outputs")
        else:
            heads["grapheme"] = _ctc_head(directory, c, state, grapheme_vocab, notes)
    if "syllable" in stored:
        heads["syllable"] = _syllable_head(directory, stored["syllable"], cfg)
        notes.append(f"syllable head read from {SYLLABLE_WEIGHTS_FILE} ({HEADS_FILE})")
    state.finish()
    return ConvertedCheckpoint(cfg, state_dict, heads, source=f"huggingface {kind} {directory}", notes=notes)
