"""wav2vec 2.0 backbone and pretraining components (plain nn.Modules: no Lightning, no file I/O)."""

from kwav2vec.models.config import Wav2Vec2Config, preset
from kwav2vec.models.wav2vec2 import PretrainOutput, Wav2Vec2Model

__all__ = ["PretrainOutput", "Wav2Vec2Config", "Wav2Vec2Model", "preset"]
