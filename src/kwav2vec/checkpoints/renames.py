"""Our backbone key -> a foreign library's key, by ordered regex rules (Hugging Face, torchaudio).

Each rule set is written from our side: every key of our model is translated once, the translation
must exist in the source (checked by `statedict.gather`), and whatever in the source is left over is
reported by `SourceState.finish`. Weight-norm spellings are resolved later by `SourceState.take`, so
rules translate our `parametrizations.weight.original0/1` names as they are.
"""

from __future__ import annotations

import re

Rules = list[tuple[re.Pattern[str], str]]


def compile_rules(pairs: list[tuple[str, str]]) -> Rules:
    return [(re.compile(f"^{pattern}$"), template) for pattern, template in pairs]


def rename(key: str, rules: Rules, *, prefix: str = "") -> str:
    """The foreign key for our `key` (first matching rule), with `prefix` prepended."""
    for pattern, template in rules:
        m = pattern.match(key)
        if m:
            return prefix + m.expand(template)
    raise KeyError(f"no rename rule for our key {key!r}")


# Hugging Face transformers `Wav2Vec2Model` (+ `Wav2Vec2ForPreTraining`'s quantizer and projections,
# which sit outside the `wav2vec2.` prefix: give them as keys starting with "/" to skip the prefix).
HF_RULES = compile_rules([
    (r"mask_emb", r"masked_spec_embed"),
    (r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)", r"feature_extractor.conv_layers.\1.conv.\2"),
    (r"feature_extractor\.conv_layers\.(\d+)\.2(?:\.1)?\.(weight|bias)", r"feature_extractor.conv_layers.\1.layer_norm.\2"),
    (r"layer_norm\.(weight|bias)", r"feature_projection.layer_norm.\1"),
    (r"post_extract_proj\.(weight|bias)", r"feature_projection.projection.\1"),
    (r"encoder\.pos_conv\.0\.(.+)", r"encoder.pos_conv_embed.conv.\1"),
    (r"encoder\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.(weight|bias)", r"encoder.layers.\1.attention.\2_proj.\3"),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", r"encoder.layers.\1.layer_norm.\2"),
    (r"encoder\.layers\.(\d+)\.fc1\.(weight|bias)", r"encoder.layers.\1.feed_forward.intermediate_dense.\2"),
    (r"encoder\.layers\.(\d+)\.fc2\.(weight|bias)", r"encoder.layers.\1.feed_forward.output_dense.\2"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"encoder.layers.\1.final_layer_norm.\2"),
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.layer_norm.\1"),
    (r"quantizer\.vars", r"/quantizer.codevectors"),
    (r"quantizer\.weight_proj\.(weight|bias)", r"/quantizer.weight_proj.\1"),
    (r"project_q\.(weight|bias)", r"/project_q.\1"),
    (r"final_proj\.(weight|bias)", r"/project_hid.\1"),
])

# torchaudio `torchaudio.models.Wav2Vec2Model` (no mask embedding, no pretraining modules)
TORCHAUDIO_RULES = compile_rules([
    (r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)", r"feature_extractor.conv_layers.\1.conv.\2"),
    (r"feature_extractor\.conv_layers\.(\d+)\.2(?:\.1)?\.(weight|bias)", r"feature_extractor.conv_layers.\1.layer_norm.\2"),
    (r"layer_norm\.(weight|bias)", r"encoder.feature_projection.layer_norm.\1"),
    (r"post_extract_proj\.(weight|bias)", r"encoder.feature_projection.projection.\1"),
    (r"encoder\.pos_conv\.0\.(.+)", r"encoder.transformer.pos_conv_embed.conv.\1"),
    (r"encoder\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.(weight|bias)", r"encoder.transformer.layers.\1.attention.\2_proj.\3"),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", r"encoder.transformer.layers.\1.layer_norm.\2"),
    (r"encoder\.layers\.(\d+)\.fc1\.(weight|bias)", r"encoder.transformer.layers.\1.feed_forward.intermediate_dense.\2"),
    (r"encoder\.layers\.(\d+)\.fc2\.(weight|bias)", r"encoder.transformer.layers.\1.feed_forward.output_dense.\2"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"encoder.transformer.layers.\1.final_layer_norm.\2"),
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.transformer.layer_norm.\1"),
])


def hf_key(key: str, prefix: str) -> str:
    """Hugging Face key for our backbone key; `prefix` ("wav2vec2." or "") applies to backbone modules."""
    name = rename(key, HF_RULES)
    return name[1:] if name.startswith("/") else prefix + name
