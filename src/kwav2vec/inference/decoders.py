"""Several decoders over one forward pass: which to run, and running them on a batch of log-probs.

A decoder is named `<kind>-<variant>`:

    greedy-grapheme  greedy-syllable   best path of one head (kwav2vec.decoding.greedy)
    beam-grapheme    beam-syllable     beam search of one head: torch prefix search
                                       (kwav2vec.decoding.torch_beam) or pyctcdecode (.beam)
    joint-union      joint-rescore     both heads' beam searches, combined (kwav2vec.decoding.joint)

On the command line `greedy`, `beam` and `joint` take their variant from `--head` and
`--joint-mode`; `greedy:syllable` or `joint-rescore` name it directly.

Work is shared: a batch's grapheme beam search runs once even when `beam-grapheme`,
`joint-union` and `joint-rescore` all need it. Time is still charged per decoder as if it ran
alone (the searches it needs + its own step), so the figures of one decoder do not depend on
which others ran with it. The sum over decoders can therefore exceed the wall-clock time.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from kwav2vec.decoding.beam import BeamSearchConfig, BeamSearchDecoder, Hypothesis, PoolOwner, run_searches
from kwav2vec.decoding.greedy import best_path_ids
from kwav2vec.decoding.joint import JointConfig, rescore_nbest_weights, union_nbest
from kwav2vec.decoding.torch_beam import BACKENDS, beam_searcher
from kwav2vec.text.vocab import Vocabulary

KINDS = ("greedy", "beam", "joint")
HEADS = ("grapheme", "syllable")
JOINT_MODES = ("union", "rescore")
# Without a language model the torch search is the faster one on CPU too (bench/decode.py,
# README "Development"); pyctcdecode stays for KenLM and hotwords.
DEFAULT_BEAM_BACKEND = "torch"


def parse_decoders(specs: Iterable[str], head: str = "grapheme", joint_mode: str = "union") -> list[str]:
    """Canonical decoder names from command-line specs, in order, without duplicates.

    >>> parse_decoders(["greedy", "joint", "beam:syllable"], head="grapheme", joint_mode="rescore")
    ['greedy-grapheme', 'joint-rescore', 'beam-syllable']
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if joint_mode not in JOINT_MODES:
        raise ValueError(f"joint mode must be one of {JOINT_MODES}, got {joint_mode!r}")
    names: list[str] = []
    for spec in specs:
        kind, _, variant = spec.replace(":", "-").partition("-")
        allowed = JOINT_MODES if kind == "joint" else HEADS
        if kind not in KINDS or (variant and variant not in allowed):
            raise ValueError(
                f"unknown decoder {spec!r}: use greedy, beam or joint, optionally with a variant "
                f"(greedy:syllable, beam:grapheme, joint:rescore, ...)"
            )
        name = f"{kind}-{variant or (joint_mode if kind == 'joint' else head)}"
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError("no decoder given")
    return names


@dataclass
class Decoded:
    """One utterance's result from one decoder."""

    text: str  # best hypothesis ("" when nothing but blanks)
    score: float  # its log-domain score (greedy: best-path log-probability)
    nbest: list[Hypothesis]  # best first, at most `nbest` long (greedy: just the best path)


class MultiDecoder(PoolOwner):
    """Runs the named decoders on batches of both heads' log-probabilities.

    Args:
        names: canonical decoder names (see `parse_decoders`).
        grapheme_vocab, syllable_vocab: the checkpoint's vocabularies.
        beam_width: beam width of every beam search (single-head and joint alike).
        nbest: hypotheses kept per utterance and decoder.
        syllable_weight: the joint decoders' w (union) / λ (rescore): one value for both, or one per
            mode ({"union": w, "rescore": λ}, as `evaluate --tune-weight` stores them).
        weight_grid: also decode every joint decoder at each of these weights, as outputs named
            `<decoder>@<weight>` (`weighted_name`); the beam searches and CTC scores are shared.
        num_processes: pyctcdecode worker processes (0: search in this process).
        beam_backend: "torch" (batched search on the log-probs' device) or "pyctcdecode".
    """

    def __init__(
        self,
        names: Sequence[str],
        grapheme_vocab: Vocabulary,
        syllable_vocab: Vocabulary,
        *,
        beam_width: int = 100,
        nbest: int = 1,
        syllable_weight: float | dict[str, float] = 0.5,
        num_processes: int = 0,
        beam_backend: str = DEFAULT_BEAM_BACKEND,
        weight_grid: Sequence[float] = (),
    ) -> None:
        super().__init__(num_processes)
        if beam_backend not in BACKENDS:
            raise ValueError(f"beam backend must be one of {BACKENDS}, got {beam_backend!r}")
        for name in names:
            parse_decoders([name])  # raises on a malformed name
        self.names = list(names)
        self.vocabs = {"grapheme": grapheme_vocab, "syllable": syllable_vocab}
        self.nbest = nbest
        weights = syllable_weight if isinstance(syllable_weight, dict) else dict.fromkeys(JOINT_MODES, syllable_weight)
        self.joint_configs = {mode: JointConfig(mode=mode, syllable_weight=weights[mode]) for mode in JOINT_MODES}
        self.weight_grid = [float(w) for w in weight_grid]
        for w in self.weight_grid:
            JointConfig(syllable_weight=w)  # raises outside [0, 1]
        # every output of `decode`: the decoders, then each joint decoder at each grid weight
        self.output_names = self.names + [
            weighted_name(name, w) for name in self.names if name.startswith("joint-") for w in self.weight_grid
        ]
        needed: set[str] = set()  # heads whose beam search some decoder uses
        for name in names:
            kind, variant = name.split("-")
            needed.update(HEADS if kind == "joint" else (variant,) if kind == "beam" else ())
        # The joint decoders need each head's whole beam (their candidates), not only the top nbest.
        config = BeamSearchConfig(beam_width=beam_width)
        self.searchers = {
            head: beam_searcher(self.vocabs[head], config, beam_backend) for head in HEADS if head in needed
        }
        self.seconds: dict[str, float] = {name: 0.0 for name in names}  # decoding time charged per decoder

    def decode(
        self, grapheme_log_probs: Tensor | None, syllable_log_probs: Tensor | None, lengths: Tensor
    ) -> dict[str, list[Decoded]]:
        """Every decoder's results for a batch: name -> one `Decoded` per utterance.

        Log-probs (B, T, Vg) and (B, T, Vs) on any device; lengths (B,) valid frames. An
        utterance with 0 frames (audio shorter than one frame) decodes to "". A single-task model
        (lambda 0 or 1) passes None for the head it does not have.
        """
        log_probs = {"grapheme": grapheme_log_probs, "syllable": syllable_log_probs}
        present = next(lp for lp in log_probs.values() if lp is not None)
        lengths = lengths.to(present.device)
        out: dict[str, list[Decoded]] = {}
        searches: dict[str, tuple[list[list[Hypothesis]], float]] = {}

        def search(head: str) -> tuple[list[list[Hypothesis]], float]:
            if head not in searches:
                start = time.perf_counter()
                searcher, name = self.searchers[head], f"{head}_log_probs"
                if isinstance(searcher, BeamSearchDecoder):
                    raw = run_searches(self.pool, searcher.jobs(log_probs[head], lengths, name=name))
                    nbest = [searcher.hypotheses(r) for r in raw]
                else:
                    nbest = searcher.nbest(log_probs[head], lengths, name=name)
                searches[head] = (nbest, time.perf_counter() - start)
            return searches[head]

        for name in self.names:
            kind, variant = name.split("-")
            if kind == "greedy":
                start = time.perf_counter()
                out[name] = self._greedy(log_probs[variant], lengths, self.vocabs[variant])
                self.seconds[name] += time.perf_counter() - start
            elif kind == "beam":
                nbest, seconds = search(variant)
                out[name] = [_decoded(hyps[: self.nbest]) for hyps in nbest]
                self.seconds[name] += seconds
            else:
                (g_nbest, g_seconds), (s_nbest, s_seconds) = search("grapheme"), search("syllable")
                start = time.perf_counter()
                weights = [self.joint_configs[variant].syllable_weight, *self.weight_grid]
                if variant == "union":
                    joints = [[union_nbest(g, s, w) for g, s in zip(g_nbest, s_nbest, strict=True)] for w in weights]
                else:
                    joints = rescore_nbest_weights(
                        g_nbest, s_nbest, grapheme_log_probs, syllable_log_probs, lengths,
                        self.vocabs["grapheme"], self.vocabs["syllable"], weights, self.joint_configs["rescore"],
                    )
                out[name] = [_decoded(hyps[: self.nbest]) for hyps in joints[0]]
                for w, joint in zip(self.weight_grid, joints[1:], strict=True):
                    out[weighted_name(name, w)] = [_decoded(hyps[: self.nbest]) for hyps in joint]
                self.seconds[name] += g_seconds + s_seconds + time.perf_counter() - start
        return out

    @staticmethod
    def _greedy(log_probs: Tensor, lengths: Tensor, vocab: Vocabulary) -> list[Decoded]:
        ids = best_path_ids(log_probs, lengths, vocab.blank_id)
        T = log_probs.shape[1]
        valid = torch.arange(T, device=log_probs.device)[None, :] < lengths[:, None]  # (B, T)
        # Best-path log-probability: the score of the single alignment greedy decoding picks.
        scores = (log_probs.max(dim=-1).values.float() * valid).sum(dim=1).tolist()  # (B,)
        results = []
        for row, score in zip(ids, scores, strict=True):
            text = " ".join(vocab.decode(row).split())
            results.append(Decoded(text, score, [Hypothesis(text, score, {"acoustic": score})]))
        return results


def weighted_name(name: str, weight: float) -> str:
    """The output name of joint decoder `name` at syllable weight `weight`: joint-rescore@0.3."""
    return f"{name}@{weight:g}"


def _decoded(hyps: list[Hypothesis]) -> Decoded:
    if not hyps:
        return Decoded("", float("-inf"), [])
    return Decoded(hyps[0].text, hyps[0].score, hyps)


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


def check_heads(names: Sequence[str], heads_built: Sequence[str]) -> None:
    """ValueError when a decoder needs a head the checkpoint does not have (λ = 0 or 1 models)."""
    for name in names:
        kind, variant = name.split("-")
        needed = HEADS if kind == "joint" else (variant,)
        missing = [h for h in needed if h not in heads_built]
        if missing:
            raise ValueError(
                f"decoder {name!r} needs the {' and '.join(missing)} head, but the checkpoint only has "
                f"{' and '.join(heads_built)}"
            )
