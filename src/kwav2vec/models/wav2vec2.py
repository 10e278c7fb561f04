"""The wav2vec 2.0 backbone: feature encoder -> projection -> masking -> transformer, plus the
quantizer and projections of the self-supervised task.

Attribute names mirror fairseq's `Wav2Vec2Model` (feature_extractor, layer_norm, post_extract_proj,
mask_emb, quantizer, project_q, encoder, final_proj) so a fairseq state dict maps 1:1 (the only
rename is torch's weight-norm parametrization: fairseq `encoder.pos_conv.0.weight_g/_v` are our
`encoder.pos_conv.0.parametrizations.weight.original0/1`).

Two entry points:
- `encode(waveforms, lengths, ...)` -> contextual frames for fine-tuning / inference;
- `forward(waveforms, lengths, ...)` -> `PretrainOutput` (contrastive logits etc.) for pretraining.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kwav2vec.models.config import Wav2Vec2Config
from kwav2vec.models.cpu import Dropout, plain
from kwav2vec.models.feature_encoder import ConvFeatureEncoder
from kwav2vec.models.losses import contrastive_logits
from kwav2vec.models.masking import apply_channel_mask, compute_mask_indices, sample_negatives
from kwav2vec.models.quantizer import GumbelVectorQuantizer
from kwav2vec.models.transformer import TransformerEncoder

NORMALIZE_EPS = 1e-5  # fairseq normalizes with F.layer_norm(wav, wav.shape), whose eps is 1e-5


class GradMultiply(torch.autograd.Function):
    """Identity forward, gradient scaled by `scale` (fairseq's feature_grad_mult)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


@dataclass
class PretrainOutput:
    """Everything the pretraining losses and logs need. M = masked frames per utterance."""

    logits: torch.Tensor  # (B, M, 1 + K) float32, positive at index 0
    x: torch.Tensor  # (B, T, D) transformer output (all frames)
    projected: torch.Tensor  # (B, M, F) final_proj of x at the masked frames
    targets: torch.Tensor  # (B, M, F) project_q of the quantized unmasked features (positives)
    codes: torch.Tensor  # (B, M, G) codebook entries of the targets
    mask: torch.Tensor  # (B, T) bool, True = masked (never in padding)
    negative_indices: torch.Tensor  # (B, M, K) distractor indices into the M masked frames
    frame_lengths: torch.Tensor  # (B,)
    features_pen: torch.Tensor  # () float32 mean squared conv feature over real frames
    code_perplexity: torch.Tensor  # ()
    prob_perplexity: torch.Tensor  # ()
    temperature: float
    num_vars: int  # G * V


class Wav2Vec2Model(nn.Module):
    """wav2vec 2.0 (fairseq `Wav2Vec2Model` with quantized targets), plain nn.Module."""

    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        self.cfg = cfg
        embed = cfg.conv_dim
        D = cfg.encoder_embed_dim
        self.feature_extractor = ConvFeatureEncoder(cfg.conv_layers, cfg.extractor_mode, cfg.conv_bias)
        self.layer_norm = nn.LayerNorm(embed)
        self.post_extract_proj = nn.Linear(embed, D) if embed != D else None
        self.dropout_input = Dropout(cfg.dropout_input)
        self.dropout_features = Dropout(cfg.dropout_features)
        self.mask_emb = nn.Parameter(torch.empty(D).uniform_())
        self.quantizer = GumbelVectorQuantizer(embed, cfg.latent_vars, cfg.latent_groups, cfg.vq_dim, cfg.latent_temp)
        self.project_q = nn.Linear(cfg.vq_dim, cfg.final_dim_)
        self.encoder = TransformerEncoder(
            D,
            cfg.encoder_ffn_embed_dim,
            cfg.encoder_layers,
            cfg.encoder_attention_heads,
            conv_pos=cfg.conv_pos,
            conv_pos_groups=cfg.conv_pos_groups,
            dropout=cfg.dropout,
            attention_dropout=cfg.attention_dropout,
            activation_dropout=cfg.activation_dropout,
            layer_norm_first=cfg.layer_norm_first,
            layerdrop=cfg.encoder_layerdrop,
        )
        self.final_proj = nn.Linear(D, cfg.final_dim_)

    # ------------------------------------------------------------------ lengths and features
    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """(B,) samples -> (B,) frames: floor((L - kernel) / stride) + 1 through every conv layer."""
        return self.feature_extractor.output_lengths(torch.as_tensor(lengths))

    def set_num_updates(self, num_updates: int) -> None:
        """Anneals the Gumbel temperature (call once per optimizer step)."""
        self.quantizer.set_num_updates(num_updates)

    def remove_pretraining_modules(self) -> None:
        """Drops quantizer and projections (fine-tuning does not use them; saves memory)."""
        self.quantizer = None
        self.project_q = None
        self.final_proj = None

    def _check_inputs(self, waveforms: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        if waveforms.dim() != 2:
            raise ValueError(f"waveforms must be (B, S) float audio, got shape {tuple(waveforms.shape)}")
        if not waveforms.is_floating_point():
            raise ValueError(f"waveforms must be floating point, got {waveforms.dtype}")
        B, S = waveforms.shape
        if lengths is None:
            lengths = torch.full((B,), S, dtype=torch.long, device=waveforms.device)
        if lengths.shape != (B,):
            raise ValueError(f"lengths must have shape ({B},) for waveforms {tuple(waveforms.shape)}, "
                             f"got {tuple(lengths.shape)}")
        lengths = lengths.to(device=waveforms.device, dtype=torch.long)
        too_long = (lengths > S).nonzero().flatten().tolist()
        if too_long:
            raise ValueError(f"lengths {lengths.tolist()} exceed the padded length S={S} (utterances {too_long})")
        short = (lengths < self.feature_extractor.receptive_field).nonzero().flatten().tolist()
        if short:
            raise ValueError(
                f"utterances {short} have {[int(lengths[i]) for i in short]} samples, fewer than the "
                f"{self.feature_extractor.receptive_field} one frame needs (waveforms {tuple(waveforms.shape)})"
            )
        return lengths

    def _normalize(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Zero mean, unit variance per utterance over its own samples; padding stays zero."""
        valid = torch.arange(waveforms.shape[1], device=waveforms.device) < lengths[:, None]  # (B, S)
        # Under plain_pytorch() (the ONNX export) the sums run in float64: onnxruntime's ReduceSum
        # adds sequentially, which over the demo's 40,000-sample utterances left the normalised
        # waveform 6e-5 off in float32 (PyTorch's pairwise sums: 1e-6 off), and the log-probs 4e-4.
        w = waveforms.to(torch.float64 if plain() else torch.float32) * valid
        n = lengths.to(w.dtype).unsqueeze(1)
        mean = w.sum(1, keepdim=True) / n
        var = (((w - mean) * valid) ** 2).sum(1, keepdim=True) / n
        return (((w - mean) * torch.rsqrt(var + NORMALIZE_EPS)) * valid).to(waveforms.dtype)

    def _features(self, waveforms: torch.Tensor, lengths: torch.Tensor, penalty: bool = True):
        """-> features (B, T, C) after layer_norm, frame lengths (B,), padding mask (B, T), feature penalty
        (None unless `penalty`)."""
        if self.cfg.normalize:
            waveforms = self._normalize(waveforms, lengths)
        mult = self.cfg.feature_grad_mult
        if mult > 0:
            features, frames = self.feature_extractor(waveforms, lengths)  # (B, T, C)
            if mult != 1.0 and torch.is_grad_enabled():
                features = GradMultiply.apply(features, mult)
        else:
            with torch.no_grad():
                features, frames = self.feature_extractor(waveforms, lengths)
        T = features.shape[1]
        padding_mask = torch.arange(T, device=features.device) >= frames[:, None]  # (B, T) True = pad
        features_pen = None
        if penalty:  # fairseq's L2 penalty on the raw conv features, here over real frames only
            sq = features.float().pow(2).mean(-1)  # (B, T)
            features_pen = sq.masked_fill(padding_mask, 0.0).sum() / frames.sum().clamp(min=1)
        features = self.layer_norm(features)  # (B, T, C)
        return features, frames, padding_mask, features_pen

    def _project(self, features: torch.Tensor) -> torch.Tensor:
        x = self.post_extract_proj(features) if self.post_extract_proj is not None else features
        return self.dropout_input(x)  # (B, T, D)

    # ------------------------------------------------------------------ fine-tuning / inference
    def encode(
        self,
        waveforms: torch.Tensor,
        lengths: torch.Tensor | None = None,
        *,
        mask_time_prob: float = 0.0,
        mask_time_length: int = 10,
        mask_channel_prob: float = 0.0,
        mask_channel_length: int = 64,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Contextual representations for fine-tuning and inference.

        Args:
            waveforms: (B, S) float audio at 16 kHz, zero-padded.
            lengths: (B,) real sample counts (None = all S).
            mask_time_prob / mask_time_length: span masking with `mask_emb` (training mode only).
            mask_channel_prob / mask_channel_length: channel spans zeroed (training mode only).
        Returns:
            x (B, T, D) (frames at or beyond frame_lengths are padding: ignore them) and frame_lengths (B,).
        """
        lengths = self._check_inputs(waveforms, lengths)
        features, frames, padding_mask, _ = self._features(waveforms, lengths, penalty=False)
        x = self._project(features)
        if self.training and mask_time_prob > 0:
            mask = compute_mask_indices(
                x.shape[:2], frames, mask_time_prob, mask_time_length,
                min_masks=self.cfg.mask_min_masks, require_same_masks=self.cfg.require_same_masks,
            )
            x = torch.where(mask.unsqueeze(-1), self.mask_emb.to(x.dtype), x)
        if self.training and mask_channel_prob > 0:
            x = apply_channel_mask(x, mask_channel_prob, mask_channel_length)
        x = self.encoder(x, padding_mask)
        return x, frames

    # ------------------------------------------------------------------ pretraining
    def forward(
        self,
        waveforms: torch.Tensor,
        lengths: torch.Tensor | None = None,
        *,
        mask_indices: torch.Tensor | None = None,
        negative_indices: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> PretrainOutput:
        """Pretraining forward: masks, quantizes, contrasts.

        Args:
            waveforms: (B, S) float audio, zero-padded; lengths: (B,) real sample counts.
            mask_indices: optional (B, T) bool mask to use instead of sampling one; every utterance must
                mask the same number M >= 2 of frames, none in padding.
            negative_indices: optional (B, M, K) distractor indices into each utterance's masked frames.
            generator: optional torch.Generator for the mask and distractor draws.
        """
        if self.quantizer is None:
            raise RuntimeError("pretraining modules were removed (remove_pretraining_modules)")
        lengths = self._check_inputs(waveforms, lengths)
        features, frames, padding_mask, features_pen = self._features(waveforms, lengths)
        B, T, C = features.shape
        x = self._project(features)

        if mask_indices is None:
            mask = compute_mask_indices(
                (B, T), frames, self.cfg.mask_prob, self.cfg.mask_length,
                min_masks=self.cfg.mask_min_masks, require_same_masks=True,
                device=x.device, generator=generator,
            )
        else:
            mask = self._check_mask(mask_indices.to(x.device), padding_mask)
        counts = mask.sum(1)
        M = int(counts[0]) if B else 0
        if bool((counts != M).any()):
            raise ValueError(f"every utterance must mask the same number of frames, got {counts.tolist()}")
        x = torch.where(mask.unsqueeze(-1), self.mask_emb.to(x.dtype), x)
        if self.training and self.cfg.mask_channel_prob > 0:  # fairseq applies it after the time mask
            x = apply_channel_mask(x, self.cfg.mask_channel_prob, self.cfg.mask_channel_length, generator)
        x = self.encoder(x, padding_mask)  # (B, T, D)

        # targets: quantize the unmasked features at the masked frames only (dropout is elementwise,
        # so dropping out only the selected frames is the same as fairseq's dropout over all of them)
        q = self.quantizer(self.dropout_features(features[mask]))  # x: (B*M, vq)
        targets = self.project_q(q.x.to(self.project_q.weight.dtype)).view(B, M, -1)  # (B, M, F)
        codes = q.codes.view(B, M, -1)

        if negative_indices is None:
            K = self.cfg.num_negatives
            negative_indices = sample_negatives(B, M, K, device=x.device, generator=generator)
        else:
            negative_indices = negative_indices.to(device=x.device, dtype=torch.long)
            if negative_indices.dim() != 3 or negative_indices.shape[:2] != (B, M):
                raise ValueError(f"negative_indices must be (B, M, K) = ({B}, {M}, K), got {tuple(negative_indices.shape)}")
            if negative_indices.numel() and (int(negative_indices.min()) < 0 or int(negative_indices.max()) >= M):
                raise ValueError(f"negative_indices must lie in [0, {M}) (the masked frames of each utterance)")

        projected = self.final_proj(x[mask].view(B, M, -1))  # (B, M, F)
        logits = contrastive_logits(projected, targets, negative_indices, self.cfg.logit_temp,
                                    codes if self.cfg.same_code_negatives == "mask" else None)
        return PretrainOutput(
            logits=logits, x=x, projected=projected, targets=targets, codes=codes, mask=mask,
            negative_indices=negative_indices, frame_lengths=frames, features_pen=features_pen,
            code_perplexity=q.code_perplexity, prob_perplexity=q.prob_perplexity,
            temperature=q.temperature, num_vars=q.num_vars,
        )

    @staticmethod
    def _check_mask(mask: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        if mask.shape != padding_mask.shape:
            raise ValueError(f"mask_indices must be (B, T) = {tuple(padding_mask.shape)}, got {tuple(mask.shape)}")
        mask = mask.bool()
        bad = (mask & padding_mask).any(1).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"mask_indices mask padding frames in utterances {bad}")
        return mask
