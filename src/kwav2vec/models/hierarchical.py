"""The fine-tuned model as one `nn.Module` (K-wav2vec's hierarchical CTC): a wav2vec 2.0 backbone,
its config, and a `ModuleDict` of CTC heads over the backbone's frames, "grapheme" (jamo) and/or
"syllable". `HierarchicalFineTuner` holds one and adds only loss, logging and optimisation;
export and inference use it as it is.

    model = HierarchicalCTC(cfg)
    model.add_grapheme_head(vocab_size=70, final_dropout=0.0)
    model.add_syllable_head(vocab_size=2000, num_layers=2)
    log_probs, frames = model(audio, lengths)   # ({"grapheme": (B, T, 70), "syllable": (B, T, 2000)}, (B,))

State-dict keys: `backbone.*` (Wav2Vec2Model's), `heads.grapheme.*`, `heads.syllable.*`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import nn

from kwav2vec.models.config import Wav2Vec2Config
from kwav2vec.models.ctc_loss import ctc_log_probs
from kwav2vec.models.heads import GraphemeHead, SyllableHead
from kwav2vec.models.wav2vec2 import Wav2Vec2Model

HEAD_NAMES = ("grapheme", "syllable")


class HierarchicalCTC(nn.Module):
    """Backbone + CTC heads. Heads are added after construction because their sizes come from the
    vocabularies, which a trainer may only learn in `setup`.

    Args:
        config: the backbone's Wav2Vec2Config (dropouts, layerdrop and `feature_grad_mult` as
            fine-tuning sets them).
    """

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        self.config = config
        self.backbone = Wav2Vec2Model(config)
        self.heads = nn.ModuleDict()  # name -> GraphemeHead | SyllableHead, in the order added

    # ------------------------------------------------------------------ heads
    def add_grapheme_head(self, vocab_size: int, final_dropout: float = 0.0) -> GraphemeHead:
        """Dropout + linear over the jamo vocabulary (fairseq `final_dropout` + `proj`)."""
        head = GraphemeHead(self.config.encoder_embed_dim, vocab_size, final_dropout)
        self.heads["grapheme"] = head
        return head

    def add_syllable_head(self, vocab_size: int, num_layers: int = 2, dropout: float = 0.0,
                          attention_dropout: float = 0.0, activation_dropout: float = 0.0,
                          final_dropout: float = 0.0) -> SyllableHead:
        """`num_layers` transformer layers of the backbone's width and layer-norm placement, then
        dropout + linear over the syllable vocabulary (K-wav2vec `additional_layer` + `proj2`)."""
        cfg = self.config
        head = SyllableHead(
            cfg.encoder_embed_dim, vocab_size, num_layers, cfg.encoder_ffn_embed_dim, cfg.encoder_attention_heads,
            dropout, attention_dropout, activation_dropout, cfg.layer_norm_first, final_dropout,
        )
        self.heads["syllable"] = head
        return head

    @property
    def vocab_sizes(self) -> dict[str, int]:
        """Output size V of each head added."""
        return {name: head.proj.out_features for name, head in self.heads.items()}

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        audio: torch.Tensor,
        lengths: torch.Tensor | None = None,
        *,
        heads: Sequence[str] | None = None,
        freeze_backbone: bool = False,
        mask_time_prob: float = 0.0,
        mask_time_length: int = 10,
        mask_channel_prob: float = 0.0,
        mask_channel_length: int = 64,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """audio (B, S), lengths (B,) samples -> ({head: float32 log-probs (B, T, V)}, frame_lengths (B,)).

        `heads`: which heads, in that order (default: all, in the order added). Time / channel
        masking of the latent frames (fairseq `mask_prob`, `mask_channel_prob`, ...) acts in training
        mode only. `freeze_backbone` runs the backbone without autograd (the heads still learn)."""
        names = list(self.heads) if heads is None else list(heads)
        unknown = [h for h in names if h not in self.heads]
        if unknown:
            raise ValueError(f"no head {unknown}; this model has {list(self.heads)}")
        with torch.no_grad() if freeze_backbone else nullcontext():
            x, frames = self.backbone.encode(
                audio, lengths,
                mask_time_prob=mask_time_prob, mask_time_length=mask_time_length,
                mask_channel_prob=mask_channel_prob, mask_channel_length=mask_channel_length,
            )  # (B, T, D), (B,)
        padding_mask = torch.arange(x.shape[1], device=x.device) >= frames[:, None]  # (B, T) True = pad
        return {h: ctc_log_probs(self.heads[h](x, padding_mask)) for h in names}, frames
