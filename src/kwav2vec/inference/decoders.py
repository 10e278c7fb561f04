"""The command-line side of decoding: the options that choose and configure the decoders.

The decoders themselves, and the names they go by, live in `kwav2vec.decoding.multi` (one
orchestrator for the CLI, the tests and the benchmarks); they are re-exported here for the
inference commands.
"""

from __future__ import annotations

from kwav2vec.decoding.joint import MODES as JOINT_MODES
from kwav2vec.decoding.multi import (
    DEFAULT_BEAM_BACKEND,
    HEADS,
    KINDS,
    Decoded,
    MultiDecoder,
    check_heads,
    parse_decoders,
    weighted_name,
)
from kwav2vec.decoding.torch_beam import BACKENDS

__all__ = [
    "DEFAULT_BEAM_BACKEND",
    "HEADS",
    "JOINT_MODES",
    "KINDS",
    "Decoded",
    "MultiDecoder",
    "add_decoder_arguments",
    "check_heads",
    "parse_decoders",
    "weighted_name",
]


def add_decoder_arguments(parser, *, multiple: bool) -> None:
    """--decoder, --head, --joint-mode, --syllable-weight, --beam-width, --beam-backend, --decode-workers."""
    parser.add_argument(
        "--decoder", nargs="+" if multiple else None, default=["greedy"] if multiple else "greedy",
        metavar="NAME",
        help="greedy, beam or joint, optionally with a variant: greedy:syllable, beam:grapheme, joint:rescore"
        + (" (several share one forward pass)" if multiple else "") + " (default: greedy)",
    )
    parser.add_argument("--head", choices=HEADS, default="grapheme",
                        help="head of greedy/beam when not named in --decoder (default: grapheme)")
    parser.add_argument("--joint-mode", choices=JOINT_MODES, default="union",
                        help="joint combination when not named in --decoder: union (K-wav2vec) or rescore "
                        "(exact CTC scores of both heads) (default: union)")
    parser.add_argument("--syllable-weight", type=float, default=None,
                        help="joint decoders: the syllable head's weight w / λ in [0, 1] (default: the "
                        "weight `evaluate --tune-weight` stored in the checkpoint, else 0.5)")
    parser.add_argument("--beam-width", type=int, default=100,
                        help="beam width of every beam search (default: 100, as K-wav2vec)")
    parser.add_argument("--beam-backend", choices=BACKENDS, default=DEFAULT_BEAM_BACKEND,
                        help="beam searches: torch (batched, on the model's device) or pyctcdecode "
                        f"(CPU, --decode-workers processes) (default: {DEFAULT_BEAM_BACKEND})")
    parser.add_argument("--decode-workers", type=int, default=0,
                        help="processes for the pyctcdecode searches of a batch (default: 0, in-process)")
