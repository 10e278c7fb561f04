"""Typed configuration of the wav2vec 2.0 backbone, with fairseq field names and presets.

Field names and defaults follow fairseq's `Wav2Vec2Config` (fairseq/models/wav2vec/wav2vec2.py) so that a
fairseq checkpoint's `cfg.model` maps onto it field by field. Fields fairseq has but we do not implement
(conformer layers, quantized inputs, codebook/cross-sample negatives, non-static mask selection, ...)
are left out on purpose: an importer meeting a non-default value for one of them must refuse the
checkpoint rather than silently run a different model.
"""

from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass

SAMPLE_RATE = 16000  # Hz: every preset expects 16 kHz audio


@dataclass(frozen=True)
class FrameGeometry:
    """How the conv front end turns samples into frames; the model config determines it
    (`Wav2Vec2Config.frame_geometry`) and every consumer (the datasets' length filters, the CTC
    feasibility check, chunked inference) asks for it instead of keeping its own constants."""

    receptive_field: int = 400  # samples one frame needs (25 ms for every preset's stack)
    samples_per_frame: int = 320  # total stride: samples between frames (20 ms)

    def num_frames(self, num_samples: int) -> int:
        """Frames the conv stack makes of `num_samples` samples (0 below one frame); equal to the
        layer-by-layer output length for any stack, since floor(floor(x) / s) = floor(x / s)."""
        n = int(num_samples)
        return 0 if n < self.receptive_field else (n - self.receptive_field) // self.samples_per_frame + 1

    @classmethod
    def of(cls, conv_layers: list[tuple[int, int, int]]) -> FrameGeometry:
        field, jump = 1, 1
        for _, kernel, stride in conv_layers:
            field += (kernel - 1) * jump
            jump *= stride
        return cls(receptive_field=field, samples_per_frame=jump)


# every preset and every imported checkpoint we know of (fairseq, Hugging Face, torchaudio) has it
STANDARD_GEOMETRY = FrameGeometry()

BASE_CONV_LAYERS = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] + [(512, 2, 2)]"
# The tiny preset keeps BASE's strides (320 samples = 20 ms a frame) but with 128 channels: the conv
# front end dominates the cost at 16 kHz on a CPU (a 5 M-parameter model on 2 CPU threads, measured
# 2026-11: 0.6 s a step with 128 channels against 1.3 s with 256).
TINY_CONV_LAYERS = "[(128, 10, 5)] + [(128, 3, 2)] * 4 + [(128, 2, 2)] + [(128, 2, 2)]"


@dataclass
class Wav2Vec2Config:
    # --- feature encoder (conv front end) ---
    extractor_mode: str = "default"  # "default": group norm on conv 0 only; "layer_norm": LN in every block
    conv_feature_layers: str = BASE_CONV_LAYERS  # python list of (channels, kernel, stride), as in fairseq
    conv_bias: bool = False  # bias in the conv layers (True for LARGE)
    feature_grad_mult: float = 1.0  # scales gradients into the feature encoder (0.1 for BASE pretraining)
    # fairseq task.normalize: zero-mean unit-variance waveform per utterance (over its own samples only).
    # Part of the model because a checkpoint is only valid with the normalization it was trained with.
    normalize: bool = False
    # --- transformer ---
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"  # the only activation fairseq's wav2vec 2.0 checkpoints use
    layer_norm_first: bool = False  # False: post-LN (BASE); True: pre-LN "stable layer norm" (LARGE)
    conv_pos: int = 128  # kernel size of the convolutional relative positional embedding
    conv_pos_groups: int = 16  # groups of that convolution
    # --- dropouts ---
    dropout: float = 0.1  # transformer residual dropout
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0  # after the FFN activation
    encoder_layerdrop: float = 0.0  # probability of skipping a whole transformer layer in training
    dropout_input: float = 0.0  # after post_extract_proj (before masking)
    dropout_features: float = 0.0  # on the unmasked features that are quantized into targets
    # --- quantizer and contrastive task ---
    final_dim: int = 0  # dim of the contrastive space; <= 0 means encoder_embed_dim
    latent_vars: int = 320  # V: entries per codebook group
    latent_groups: int = 2  # G: codebook groups
    latent_dim: int = 0  # codeword dim (concatenated over groups); <= 0 means final_dim
    latent_temp: tuple[float, float, float] = (2.0, 0.5, 0.999995)  # Gumbel (start, end, decay per update)
    logit_temp: float = 0.1  # cosine similarity is divided by this
    num_negatives: int = 100  # distractors per masked frame, from masked frames of the same utterance
    # A distractor quantized to the positive's codes: "mask" drops it (logit -inf, as fairseq and
    # transformers do); "keep" scores it like any other. Masking makes a collapsed codebook (one code
    # for every frame) a contrastive loss of exactly 0, the global minimum, which small codebooks on
    # small corpora fall into (see kwav2vec.models.losses); keeping it makes that state chance level.
    same_code_negatives: str = "mask"
    # --- masking (pretraining; fine-tuning passes its own probabilities to `encode`) ---
    mask_prob: float = 0.65  # fraction of frames chosen as span *starts* (about 49% of frames end masked)
    mask_length: int = 10  # span length in frames
    mask_min_masks: int = 2  # at least this many spans per utterance (fairseq hard-codes min_masks=2)
    require_same_masks: bool = True  # every utterance of a batch gets the same number of masked frames
    mask_channel_prob: float = 0.0  # pretraining channel masking (off in every fairseq recipe)
    mask_channel_length: int = 10

    def __post_init__(self) -> None:
        # YAML / jsonargparse hand lists; fairseq checkpoints may hand strings.
        if isinstance(self.latent_temp, str):
            self.latent_temp = ast.literal_eval(self.latent_temp)
        self.latent_temp = tuple(float(t) for t in self.latent_temp)
        if len(self.latent_temp) != 3:
            raise ValueError(f"latent_temp must be (start, end, decay), got {self.latent_temp!r}")
        if self.same_code_negatives not in ("mask", "keep"):
            raise ValueError(f"same_code_negatives must be 'mask' or 'keep', got {self.same_code_negatives!r}")
        if self.extractor_mode not in ("default", "layer_norm"):
            raise ValueError(f"extractor_mode must be 'default' or 'layer_norm', got {self.extractor_mode!r}")
        if self.activation_fn != "gelu":
            raise ValueError(f"only activation_fn='gelu' is implemented, got {self.activation_fn!r}")
        if self.encoder_embed_dim % self.encoder_attention_heads:
            raise ValueError(
                f"encoder_embed_dim {self.encoder_embed_dim} is not divisible by "
                f"encoder_attention_heads {self.encoder_attention_heads}"
            )
        if self.encoder_embed_dim % self.conv_pos_groups:
            raise ValueError(
                f"encoder_embed_dim {self.encoder_embed_dim} is not divisible by conv_pos_groups {self.conv_pos_groups}"
            )
        if self.vq_dim % self.latent_groups:
            raise ValueError(f"codeword dim {self.vq_dim} is not divisible by latent_groups {self.latent_groups}")
        _ = self.conv_layers  # parse now so a bad string fails at construction

    # --- derived values ---
    @property
    def conv_layers(self) -> list[tuple[int, int, int]]:
        """`conv_feature_layers` parsed: [(channels, kernel, stride), ...]."""
        try:
            layers = eval(self.conv_feature_layers, {"__builtins__": {}}, {})  # fairseq's format: list arithmetic
        except Exception as e:  # noqa: BLE001 - re-raised with the offending string
            raise ValueError(f"cannot parse conv_feature_layers {self.conv_feature_layers!r}: {e}") from e
        layers = [tuple(int(v) for v in layer) for layer in layers]
        if not layers or any(len(layer) != 3 for layer in layers):
            raise ValueError(f"conv_feature_layers must be a list of (dim, kernel, stride): {self.conv_feature_layers!r}")
        return layers

    @property
    def conv_dim(self) -> int:
        """Channels of the last conv layer (fairseq's `self.embed`)."""
        return self.conv_layers[-1][0]

    @property
    def frame_geometry(self) -> FrameGeometry:
        """Receptive field and samples per frame of the conv stack (`STANDARD_GEOMETRY` for every preset)."""
        return FrameGeometry.of(self.conv_layers)

    @property
    def frame_stride(self) -> int:
        """Samples between consecutive output frames (320 = 20 ms at 16 kHz for every preset)."""
        return self.frame_geometry.samples_per_frame

    @property
    def final_dim_(self) -> int:
        return self.final_dim if self.final_dim > 0 else self.encoder_embed_dim

    @property
    def vq_dim(self) -> int:
        return self.latent_dim if self.latent_dim > 0 else self.final_dim_

    def replace(self, **overrides) -> Wav2Vec2Config:
        """A copy with some fields changed; unknown names raise a TypeError listing them."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unknown Wav2Vec2Config field(s) {unknown}; known: {sorted(names)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["latent_temp"] = list(self.latent_temp)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Wav2Vec2Config:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown Wav2Vec2Config field(s) {unknown}")
        return cls(**d)


def _presets() -> dict[str, Wav2Vec2Config]:
    return {
        # A few M parameters, designed to learn on a CPU: pre-LN, layer-norm extractor, 128 conv channels.
        "tiny": Wav2Vec2Config(
            extractor_mode="layer_norm",
            conv_feature_layers=TINY_CONV_LAYERS,
            conv_bias=True,
            normalize=True,
            encoder_layers=4,
            encoder_embed_dim=256,
            encoder_ffn_embed_dim=1024,
            encoder_attention_heads=4,
            layer_norm_first=True,
            conv_pos=64,
            conv_pos_groups=16,
            dropout=0.1,
            # dropout on attention weights forces the materialised (B, H, T, T) attention path, several
            # times slower on CPU than the fused kernel; LARGE does without it too
            attention_dropout=0.0,
            final_dim=128,
            latent_vars=64,
            latent_groups=2,
            num_negatives=50,
            # 128 codewords: one per frame is within reach of a small corpus, and with fairseq's
            # masking it scores a contrastive loss of 0 (measured: collapse on a second corpus)
            same_code_negatives="keep",
            feature_grad_mult=1.0,
        ),
        # fairseq wav2vec_small (examples/wav2vec/config/pretraining/wav2vec2_base_librispeech.yaml).
        "base": Wav2Vec2Config(
            final_dim=256,
            encoder_layerdrop=0.05,
            dropout_input=0.1,
            dropout_features=0.1,
            feature_grad_mult=0.1,
        ),
        # fairseq wav2vec2_large_librivox.yaml (LV-60 style, "stable layer norm").
        "large": Wav2Vec2Config(
            extractor_mode="layer_norm",
            conv_bias=True,
            normalize=True,
            encoder_layers=24,
            encoder_embed_dim=1024,
            encoder_ffn_embed_dim=4096,
            encoder_attention_heads=16,
            layer_norm_first=True,
            dropout=0.0,
            attention_dropout=0.0,
            final_dim=768,
            latent_temp=(2.0, 0.1, 0.999995),
        ),
    }


def preset(name: str, **overrides) -> Wav2Vec2Config:
    """The named preset ("tiny" | "base" | "large"), optionally with some fields overridden."""
    presets = _presets()
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
    cfg = presets[name]
    return cfg.replace(**overrides) if overrides else cfg
