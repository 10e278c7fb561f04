"""Decoders for CTC heads: greedy, beam search (torch prefix search or pyctcdecode), and the joint
grapheme–syllable decoder, all run through one orchestrator, `MultiDecoder` (decoding/multi.py)."""

from kwav2vec.decoding.beam import BeamSearchConfig, BeamSearchDecoder, Hypothesis
from kwav2vec.decoding.greedy import best_path_ids, greedy_decode
from kwav2vec.decoding.joint import JointConfig, rescore_nbest, union_nbest
from kwav2vec.decoding.multi import Decoded, MultiDecoder, check_heads, parse_decoders, weighted_name
from kwav2vec.decoding.prefix_search import NBest, ctc_prefix_beam_search
from kwav2vec.decoding.scoring import ctc_log_likelihood, ctc_log_likelihood_heads
from kwav2vec.decoding.torch_beam import TorchBeamSearchDecoder

__all__ = [
    "BeamSearchConfig",
    "BeamSearchDecoder",
    "Decoded",
    "Hypothesis",
    "JointConfig",
    "MultiDecoder",
    "NBest",
    "TorchBeamSearchDecoder",
    "best_path_ids",
    "check_heads",
    "ctc_prefix_beam_search",
    "ctc_log_likelihood",
    "ctc_log_likelihood_heads",
    "greedy_decode",
    "parse_decoders",
    "rescore_nbest",
    "union_nbest",
    "weighted_name",
]
