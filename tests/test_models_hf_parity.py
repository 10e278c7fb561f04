"""Parity with Hugging Face `Wav2Vec2ForPreTraining` (random init, tiny configs, both architectures).

HF weights are copied into our model, both get the same mask and distractors, and in eval mode
(no dropout, argmax quantizer) contextual outputs, quantized targets, contrastive logits and the
summed contrastive loss must agree. Where the two differ on purpose (fairseq semantics we follow):
HF quantizes every frame and we only the masked ones (identical per-frame targets in eval);
HF has no feature penalty; our "default"-mode group norm ignores batch padding, so that
architecture is compared on an unpadded batch.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from kwav2vec.models.config import Wav2Vec2Config  # noqa: E402
from kwav2vec.models.masking import compute_mask_indices, sample_negatives  # noqa: E402
from kwav2vec.models.wav2vec2 import Wav2Vec2Model  # noqa: E402

CONV = [(32, 10, 5), (32, 3, 2), (32, 3, 2), (32, 3, 2), (32, 3, 2), (32, 2, 2), (32, 2, 2)]


def configs(stable: bool):
    ours = Wav2Vec2Config(
        extractor_mode="layer_norm" if stable else "default",
        conv_feature_layers=repr(CONV),
        conv_bias=stable,
        encoder_layers=2, encoder_embed_dim=48, encoder_ffn_embed_dim=96, encoder_attention_heads=4,
        layer_norm_first=stable, conv_pos=16, conv_pos_groups=4,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        final_dim=24, latent_vars=12, latent_groups=2, num_negatives=7, logit_temp=0.1,
    )
    hf = transformers.Wav2Vec2Config(
        conv_dim=[c for c, _, _ in CONV], conv_kernel=[k for _, k, _ in CONV], conv_stride=[s for _, _, s in CONV],
        conv_bias=stable, feat_extract_norm="layer" if stable else "group", do_stable_layer_norm=stable,
        hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        feat_quantizer_dropout=0.0, final_dropout=0.0, layerdrop=0.0,
        num_codevectors_per_group=12, num_codevector_groups=2, codevector_dim=24, proj_codevector_dim=24,
        num_negatives=7, contrastive_logits_temperature=0.1, mask_time_prob=0.5,
        attn_implementation="eager",
    )
    return ours, hf


def copy_hf_weights(hf, ours: Wav2Vec2Model, stable: bool) -> None:
    """HF `Wav2Vec2ForPreTraining` state dict -> our module names (test-local mapping)."""
    sd = hf.state_dict()
    out = {}
    for i in range(len(CONV)):
        src = f"wav2vec2.feature_extractor.conv_layers.{i}"
        out[f"feature_extractor.conv_layers.{i}.0.weight"] = sd[f"{src}.conv.weight"]
        if stable:
            out[f"feature_extractor.conv_layers.{i}.0.bias"] = sd[f"{src}.conv.bias"]
            for p in ("weight", "bias"):
                out[f"feature_extractor.conv_layers.{i}.2.1.{p}"] = sd[f"{src}.layer_norm.{p}"]
        elif i == 0:
            for p in ("weight", "bias"):
                out[f"feature_extractor.conv_layers.0.2.{p}"] = sd[f"{src}.layer_norm.{p}"]
    pairs = {
        "wav2vec2.feature_projection.layer_norm": "layer_norm",
        "wav2vec2.feature_projection.projection": "post_extract_proj",
        "wav2vec2.encoder.layer_norm": "encoder.layer_norm",
        "project_hid": "final_proj",
        "project_q": "project_q",
        "quantizer.weight_proj": "quantizer.weight_proj",
    }
    for i in range(2):
        src, dst = f"wav2vec2.encoder.layers.{i}", f"encoder.layers.{i}"
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            pairs[f"{src}.attention.{n}"] = f"{dst}.self_attn.{n}"
        pairs[f"{src}.layer_norm"] = f"{dst}.self_attn_layer_norm"
        pairs[f"{src}.feed_forward.intermediate_dense"] = f"{dst}.fc1"
        pairs[f"{src}.feed_forward.output_dense"] = f"{dst}.fc2"
        pairs[f"{src}.final_layer_norm"] = f"{dst}.final_layer_norm"
    for src, dst in pairs.items():
        for p in ("weight", "bias"):
            out[f"{dst}.{p}"] = sd[f"{src}.{p}"]
    pos = "wav2vec2.encoder.pos_conv_embed.conv"
    out["encoder.pos_conv.0.bias"] = sd[f"{pos}.bias"]
    out["encoder.pos_conv.0.parametrizations.weight.original0"] = sd[f"{pos}.parametrizations.weight.original0"]
    out["encoder.pos_conv.0.parametrizations.weight.original1"] = sd[f"{pos}.parametrizations.weight.original1"]
    out["mask_emb"] = sd["wav2vec2.masked_spec_embed"]
    out["quantizer.vars"] = sd["quantizer.codevectors"]
    ours.load_state_dict(out, strict=True)  # strict: every one of our parameters is covered


@pytest.mark.parametrize("stable", [False, True], ids=["postLN-groupnorm", "preLN-layernorm"])
def test_pretraining_parity_with_huggingface(stable):
    torch.manual_seed(0)
    cfg, hf_cfg = configs(stable)
    hf = transformers.Wav2Vec2ForPreTraining(hf_cfg).eval()
    ours = Wav2Vec2Model(cfg).eval()
    copy_hf_weights(hf, ours, stable)

    lengths = [6400, 4000, 5600] if stable else [6400, 6400, 6400]
    audio = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        audio[i, :n] = torch.randn(n)
    L = torch.tensor(lengths)
    frames = ours.frame_lengths(L)
    T = int(ours.frame_lengths(torch.tensor([audio.shape[1]])))
    gen = torch.Generator().manual_seed(1)
    mask = compute_mask_indices((len(lengths), T), frames, 0.5, 3, min_masks=2, generator=gen)
    B, M = mask.shape[0], int(mask.sum(1)[0])
    neg = sample_negatives(B, M, cfg.num_negatives, generator=gen)  # (B, M, K) into masked frames
    # the same distractors as HF's flat (B, T, K) indices into B*T frames
    hf_neg = torch.zeros(B, T, cfg.num_negatives, dtype=torch.long)
    for b in range(B):
        pos = mask[b].nonzero().flatten()
        hf_neg[b, pos] = b * T + pos[neg[b]]

    attention_mask = (torch.arange(audio.shape[1]) < L[:, None]).long() if stable else None
    with torch.no_grad():
        out = ours(audio, L, mask_indices=mask, negative_indices=neg)
        hf_out = hf(audio, attention_mask=attention_mask, mask_time_indices=mask, sampled_negative_indices=hf_neg)
        hf_hidden = hf.wav2vec2(audio, attention_mask=attention_mask, mask_time_indices=mask).last_hidden_state

    valid = torch.arange(T) < frames[:, None]
    torch.testing.assert_close(out.x[valid], hf_hidden[valid], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.targets, hf_out.projected_quantized_states[mask].view(B, M, -1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.projected, hf_out.projected_states[mask].view(B, M, -1), atol=1e-4, rtol=1e-4)

    # HF's logits, built the way its forward builds them, at the masked frames: (1+K, B, T) -> (B, M, 1+K)
    q = hf_out.projected_quantized_states
    negs = q.reshape(-1, q.shape[-1])[hf_neg.view(-1)].view(B, T, -1, q.shape[-1]).permute(2, 0, 1, 3)
    hf_logits = transformers.Wav2Vec2ForPreTraining.compute_contrastive_logits(q[None], negs, hf_out.projected_states, 0.1)
    neg_is_pos = (q == negs).all(-1)
    hf_logits[1:][neg_is_pos] = float("-inf")
    hf_logits = hf_logits.permute(1, 2, 0)[mask].view(B, M, -1)
    finite = torch.isfinite(hf_logits)
    assert torch.equal(finite, torch.isfinite(out.logits))  # same distractors ruled out as the positive
    torch.testing.assert_close(out.logits[finite], hf_logits[finite], atol=1e-4, rtol=1e-4)
    # and HF's own summed contrastive loss
    ce = torch.nn.functional.cross_entropy(out.logits.reshape(B * M, -1), torch.zeros(B * M, dtype=torch.long),
                                           reduction="sum")
    torch.testing.assert_close(ce, hf_out.contrastive_loss, atol=1e-3, rtol=1e-5)
