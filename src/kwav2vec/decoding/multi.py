"""The one decoding orchestrator: greedy, beam and joint decoders over one forward pass.

A decoder is named `<kind>-<variant>`:

    greedy-grapheme  greedy-syllable   best path of one head (kwav2vec.decoding.greedy)
    beam-grapheme    beam-syllable     beam search of one head: torch prefix search
                                       (kwav2vec.decoding.torch_beam) or pyctcdecode (.beam)
    joint-union      joint-rescore     both heads' beam searches, combined (kwav2vec.decoding.joint)

`parse_decoders` turns command-line specs into these names (`greedy`, `beam` and `joint` take their
variant from a default head and joint mode; `greedy:syllable` or `joint-rescore` name it directly).
`MultiDecoder` runs any set of them on a batch; the CLI (`transcribe`, `evaluate`), the tests and
`bench/decode.py` all decode through it.

Work is shared: a batch's grapheme beam search runs once even when `beam-grapheme`,
`joint-union` and `joint-rescore` all need it. Time is still charged per decoder as if it ran
alone (the searches it needs + its own step), so the figures of one decoder do not depend on
which others ran with it. The sum over decoders can therefore exceed the wall-clock time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from kwav2vec.decoding.beam import BeamSearchConfig, BeamSearchDecoder, Hypothesis, PoolOwner, run_searches
from kwav2vec.decoding.greedy import best_path_ids
from kwav2vec.decoding.joint import MODES as JOINT_MODES
from kwav2vec.decoding.joint import JointConfig, rescore_nbest_weights, union_nbest
from kwav2vec.decoding.scoring import check_emissions
from kwav2vec.decoding.torch_beam import BACKENDS, beam_searcher
from kwav2vec.text.vocab import Vocabulary

KINDS = ("greedy", "beam", "joint")
HEADS = ("grapheme", "syllable")
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


def heads_needed(name: str) -> tuple[str, ...]:
    """The heads whose log-probs decoder `name` reads."""
    kind, variant = name.split("-")
    return HEADS if kind == "joint" else (variant,)


def check_heads(names: Sequence[str], heads_built: Sequence[str]) -> None:
    """ValueError when a decoder needs a head the checkpoint does not have (λ = 0 or 1 models)."""
    for name in names:
        missing = [h for h in heads_needed(name) if h not in heads_built]
        if missing:
            raise ValueError(
                f"decoder {name!r} needs the {' and '.join(missing)} head, but the checkpoint only has "
                f"{' and '.join(heads_built)}"
            )


def weighted_name(name: str, weight: float) -> str:
    """The output name of joint decoder `name` at syllable weight `weight`: joint-rescore@0.3."""
    return f"{name}@{weight:g}"


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
        grapheme_vocab, syllable_vocab: the checkpoint's vocabularies (None for a head it does not have).
        beam_width: beam width of every beam search (single-head and joint alike); shorthand for
            `beam=BeamSearchConfig(beam_width=...)` (default 100, as K-wav2vec).
        beam: the whole search configuration instead: one for both heads, or {"grapheme": ...,
            "syllable": ...} (pyctcdecode backend: KenLM, hotwords). Its `nbest` caps the n-best
            lists the joint decoders combine.
        nbest: hypotheses kept per utterance and decoder (None: every candidate).
        syllable_weight: the joint decoders' w (union) / λ (rescore): one value for both, or one per
            mode ({"union": w, "rescore": λ}, as `evaluate --tune-weight` stores them).
        length_bonus, lm_weight, candidates_per_head: joint-rescore's β, μ and top-k per head
            (`kwav2vec.decoding.joint.JointConfig`).
        lm_scorer: text -> natural-log LM score, needed when lm_weight is set.
        weight_grid: also decode every joint decoder at each of these weights, as outputs named
            `<decoder>@<weight>` (`weighted_name`); the beam searches and CTC scores are shared.
        num_processes: pyctcdecode worker processes (0: search in this process).
        beam_backend: "torch" (batched search on the log-probs' device) or "pyctcdecode".

    >>> with MultiDecoder(["greedy-grapheme", "joint-rescore"], g_vocab, s_vocab, beam_width=16) as dec:
    ...     texts = [d.text for d in dec.decode(grapheme_log_probs, syllable_log_probs, lengths)["joint-rescore"]]
    """

    def __init__(
        self,
        names: Sequence[str],
        grapheme_vocab: Vocabulary | None,
        syllable_vocab: Vocabulary | None,
        *,
        beam_width: int | None = None,
        beam: BeamSearchConfig | Mapping[str, BeamSearchConfig] | None = None,
        nbest: int | None = 1,
        syllable_weight: float | Mapping[str, float] = 0.5,
        length_bonus: float = 0.0,
        lm_weight: float = 0.0,
        candidates_per_head: int | None = None,
        lm_scorer: Callable[[str], float] | None = None,
        num_processes: int = 0,
        beam_backend: str = DEFAULT_BEAM_BACKEND,
        weight_grid: Sequence[float] = (),
    ) -> None:
        super().__init__(num_processes)
        if beam_backend not in BACKENDS:
            raise ValueError(f"beam backend must be one of {BACKENDS}, got {beam_backend!r}")
        for head, vocab in (("grapheme", grapheme_vocab), ("syllable", syllable_vocab)):
            # None: a single-task model (or ONNX export) without that head
            if vocab is not None and vocab.kind != head:
                raise ValueError(
                    "MultiDecoder needs a grapheme and a syllable vocabulary, in that order, got "
                    f"{getattr(grapheme_vocab, 'kind', None)!r} and {getattr(syllable_vocab, 'kind', None)!r}"
                )
        if beam is not None and beam_width is not None:
            raise ValueError("give beam_width or beam, not both (beam_width is BeamSearchConfig(beam_width=...))")
        if nbest is not None and nbest < 1:
            raise ValueError(f"nbest must be >= 1 or None, got {nbest}")
        if lm_weight and lm_scorer is None:
            raise ValueError("lm_weight is set but no lm_scorer was given")
        for name in names:
            parse_decoders([name])  # raises on a malformed name
        check_heads(names, [h for h, v in (("grapheme", grapheme_vocab), ("syllable", syllable_vocab)) if v is not None])
        self.names = list(names)
        self.vocabs = {"grapheme": grapheme_vocab, "syllable": syllable_vocab}
        self.nbest = nbest
        self.lm_scorer = lm_scorer
        weights = syllable_weight if isinstance(syllable_weight, Mapping) else dict.fromkeys(JOINT_MODES, syllable_weight)
        self.joint_configs = {
            "union": JointConfig(mode="union", syllable_weight=weights["union"]),
            "rescore": JointConfig(
                mode="rescore", syllable_weight=weights["rescore"], length_bonus=length_bonus,
                lm_weight=lm_weight, candidates_per_head=candidates_per_head,
            ),
        }
        self.weight_grid = [float(w) for w in weight_grid]
        for w in self.weight_grid:
            JointConfig(syllable_weight=w)  # raises outside [0, 1]
        # every output of `decode`: the decoders, then each joint decoder at each grid weight
        self.output_names = self.names + [
            weighted_name(name, w) for name in self.names if name.startswith("joint-") for w in self.weight_grid
        ]
        # The joint decoders need each head's whole beam (their candidates), not only the top nbest.
        if beam is None:
            beam = BeamSearchConfig(beam_width=100 if beam_width is None else beam_width)
        configs = beam if isinstance(beam, Mapping) else dict.fromkeys(HEADS, beam)
        needed = {h for name in self.names if not name.startswith("greedy-") for h in heads_needed(name)}
        self._text_limit = None if any(n.startswith("joint-") for n in self.names) else self.nbest
        self.searchers = {
            head: beam_searcher(self.vocabs[head], configs[head], beam_backend) for head in HEADS if head in needed
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
        if any(name.startswith("joint-") for name in self.names):
            self._check_joint(grapheme_log_probs, syllable_log_probs, lengths)
        out: dict[str, list[Decoded]] = {}
        searches: dict[str, tuple[list[list[Hypothesis]], float]] = {}

        def search(head: str) -> tuple[list[list[Hypothesis]], float]:
            if head not in searches:
                start = time.perf_counter()
                searcher, name = self.searchers[head], f"{head}_log_probs"
                if isinstance(searcher, BeamSearchDecoder):
                    raw = run_searches(self.pool, searcher.jobs(log_probs[head], lengths, name=name))
                    nbest = [searcher.hypotheses(r) for r in raw]
                else:  # text only for what is returned, unless a joint decoder needs every candidate
                    nbest = searcher.nbest(log_probs[head], lengths, name=name, limit=self._text_limit)
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
                out[name] = [self._decoded(hyps) for hyps in nbest]
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
                        self.lm_scorer,
                    )
                out[name] = [self._decoded(hyps) for hyps in joints[0]]
                for w, joint in zip(self.weight_grid, joints[1:], strict=True):
                    out[weighted_name(name, w)] = [self._decoded(hyps) for hyps in joint]
                self.seconds[name] += g_seconds + s_seconds + time.perf_counter() - start
        return out

    def _check_joint(self, grapheme_log_probs: Tensor | None, syllable_log_probs: Tensor | None, lengths: Tensor) -> None:
        """The joint decoders read both heads on the same frames: check that before any search."""
        for head, lp in (("grapheme", grapheme_log_probs), ("syllable", syllable_log_probs)):
            if lp is None:
                raise ValueError(f"the joint decoders need both heads, got no {head} log-probs")
            check_emissions(lp, lengths, name=f"{head}_log_probs", vocab_size=len(self.vocabs[head]))
        assert grapheme_log_probs is not None and syllable_log_probs is not None
        if grapheme_log_probs.shape[:2] != syllable_log_probs.shape[:2]:
            raise ValueError(
                "both heads must share (B, T) frames: grapheme_log_probs "
                f"{tuple(grapheme_log_probs.shape)} vs syllable_log_probs {tuple(syllable_log_probs.shape)}"
            )

    def _decoded(self, hyps: list[Hypothesis]) -> Decoded:
        hyps = hyps[: self.nbest]
        if not hyps:
            return Decoded("", float("-inf"), [])
        return Decoded(hyps[0].text, hyps[0].score, hyps)

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
