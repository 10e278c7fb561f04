"""Korean text layer: jamo decomposition, transcript normalization, CTC vocabularies."""

from kwav2vec.text.hangul import WORD_BOUNDARY, compose, decompose
from kwav2vec.text.normalize import NormalizationResult, NormalizerConfig, TranscriptError, normalize
from kwav2vec.text.vocab import Vocabulary

__all__ = [
    "WORD_BOUNDARY",
    "NormalizationResult",
    "NormalizerConfig",
    "TranscriptError",
    "Vocabulary",
    "compose",
    "decompose",
    "normalize",
]
