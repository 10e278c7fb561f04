"""Decoders for CTC heads: greedy, pyctcdecode beam search, and the joint grapheme–syllable decoder."""

from kwav2vec.decoding.beam import BeamSearchConfig, BeamSearchDecoder, Hypothesis
from kwav2vec.decoding.greedy import best_path_ids, greedy_decode
from kwav2vec.decoding.joint import JointConfig, JointDecoder, rescore_nbest, union_nbest
from kwav2vec.decoding.scoring import ctc_log_likelihood, ctc_log_likelihood_heads

__all__ = [
    "BeamSearchConfig",
    "BeamSearchDecoder",
    "Hypothesis",
    "JointConfig",
    "JointDecoder",
    "best_path_ids",
    "ctc_log_likelihood",
    "ctc_log_likelihood_heads",
    "greedy_decode",
    "rescore_nbest",
    "union_nbest",
]
