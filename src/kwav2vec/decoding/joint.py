"""Joint grapheme–syllable decoding: the two heads' n-best lists combined into one.

The searches themselves, and running both heads on a batch, are `kwav2vec.decoding.multi.MultiDecoder`'s
(decoders "joint-union" and "joint-rescore"); this module holds the two combination rules:

- ``union``: K-wav2vec's rule (JoungheeKim/K-wav2vec, inference/beam_search.py, BeamDecoder.decode):
  every hypothesis NFC-normalised, the union of both lists, and
  score(y) = log((1 − w)·P_g(y) + w·P_s(y)) with each list's own pyctcdecode `logit_score`;
  a text absent from a list gets probability 0 from it; equal texts within a list add up.
  Sorted with Python's stable sort, grapheme entries first, as theirs. Only texts some head
  proposed can win, with each head's beam score (pruned, summed over spacing variants).
- ``rescore``: every candidate of both lists is scored by BOTH heads with the exact CTC
  log-likelihood of its label sequence (syllable ids; jamo ids of its decomposition), all
  candidates of a batch and both heads in one trie-shared CTC forward pass on the log-probs'
  device (`kwav2vec.decoding.scoring`), combined as
  λ·log p_syll + (1 − λ)·log p_graph + β·(number of syllables) + μ·LM(text).

Out-of-vocabulary syllables in ``rescore``: the syllable head can only say `<unk>`, so a
candidate's syllable-id form maps every syllable outside its vocabulary to `<unk>` (and the
"⁇" the syllable beam prints for `<unk>` is itself unknown to both vocabularies, so it maps to
`<unk>` too). "안녕 뷁" from the grapheme beam and "안녕 ⁇" from the syllable beam therefore
get the same syllable score, while the grapheme head gives the real spelling a much higher score
than a jamo `<unk>`: for any λ < 1 the spelled-out text wins. At λ = 1 the two tie exactly and
ties are broken by the sum of both heads' log-likelihoods, so the spelled-out text still wins
(the score is then exactly the syllable head's).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from kwav2vec.decoding.beam import Hypothesis
from kwav2vec.decoding.scoring import ctc_log_likelihood_heads

if TYPE_CHECKING:
    from kwav2vec.text.vocab import Vocabulary

MODES = ("union", "rescore")
NEG_INF = float("-inf")


@dataclass(frozen=True)
class JointConfig:
    """How the two heads' n-best lists are combined."""

    mode: str = "union"  # "union" (K-wav2vec's rule) or "rescore" (exact CTC scores from both heads)
    # The syllable head's share: w in union (K-wav2vec's --add-weight, default 0.5), λ in rescore.
    # 0 trusts only the grapheme head, 1 only the syllable head.
    syllable_weight: float = 0.5
    length_bonus: float = 0.0  # rescore: β per syllable (non-space character) of the candidate
    lm_weight: float = 0.0  # rescore: μ, weight of lm_scorer(text) (natural log), needs an lm_scorer
    candidates_per_head: int | None = None  # rescore: only the top-k of each head's list (None: all)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not 0.0 <= self.syllable_weight <= 1.0:
            raise ValueError(f"syllable_weight must lie in [0, 1], got {self.syllable_weight}")
        if self.mode == "union" and (
            self.length_bonus or self.lm_weight or self.candidates_per_head is not None
        ):
            raise ValueError("length_bonus, lm_weight and candidates_per_head apply to mode='rescore' only")
        if self.candidates_per_head is not None and self.candidates_per_head < 1:
            raise ValueError(f"candidates_per_head must be >= 1 or None, got {self.candidates_per_head}")


def _logaddexp(a: float, b: float) -> float:
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


def _log_weight(weight: float) -> float:
    return math.log(weight) if weight > 0 else NEG_INF


def union_nbest(
    grapheme: Sequence[Hypothesis], syllable: Sequence[Hypothesis], syllable_weight: float = 0.5
) -> list[Hypothesis]:
    """K-wav2vec's joint rule on one utterance's two n-best lists (see the module docstring).

    Uses each hypothesis' details["acoustic"] (pyctcdecode's logit_score, as K-wav2vec's
    beam_output[-2]); texts are expected NFC, as BeamSearchDecoder produces them.
    """
    log_w = {"grapheme": _log_weight(1.0 - syllable_weight), "syllable": _log_weight(syllable_weight)}
    # text -> {"score", "grapheme", "syllable"}; insertion order (grapheme list first) breaks ties.
    table: dict[str, dict[str, float]] = {}
    for head, hyps in (("grapheme", grapheme), ("syllable", syllable)):
        for hyp in hyps:
            entry = table.setdefault(hyp.text, {"score": NEG_INF, "grapheme": NEG_INF, "syllable": NEG_INF})
            acoustic = hyp.details["acoustic"]
            entry["score"] = _logaddexp(entry["score"], log_w[head] + acoustic)
            entry[head] = _logaddexp(entry[head], acoustic)
    ranked = sorted(table.items(), key=lambda item: item[1]["score"], reverse=True)  # stable, like theirs
    return [
        Hypothesis(text, e["score"], {"grapheme": e["grapheme"], "syllable": e["syllable"]})
        for text, e in ranked
    ]


def rescore_nbest(
    grapheme_nbest: Sequence[Sequence[Hypothesis]],
    syllable_nbest: Sequence[Sequence[Hypothesis]],
    grapheme_log_probs: Tensor,
    syllable_log_probs: Tensor,
    lengths: Tensor,
    grapheme_vocab: Vocabulary,
    syllable_vocab: Vocabulary,
    config: JointConfig = JointConfig(mode="rescore"),
    lm_scorer: Callable[[str], float] | None = None,
) -> list[list[Hypothesis]]:
    """Rescore the union of both heads' candidates with exact CTC log-likelihoods from both heads.

    grapheme_log_probs: (B, T, Vg), syllable_log_probs: (B, T, Vs), lengths: (B,) shared frames.
    One computation for every candidate of every utterance and both heads, on the log-probs'
    device (`kwav2vec.decoding.scoring`). Infeasible candidates (more labels than frames allow) score -inf.
    """
    return rescore_nbest_weights(
        grapheme_nbest, syllable_nbest, grapheme_log_probs, syllable_log_probs, lengths,
        grapheme_vocab, syllable_vocab, [config.syllable_weight], config, lm_scorer,
    )[0]


def rescore_nbest_weights(
    grapheme_nbest: Sequence[Sequence[Hypothesis]],
    syllable_nbest: Sequence[Sequence[Hypothesis]],
    grapheme_log_probs: Tensor,
    syllable_log_probs: Tensor,
    lengths: Tensor,
    grapheme_vocab: Vocabulary,
    syllable_vocab: Vocabulary,
    weights: Sequence[float],
    config: JointConfig = JointConfig(mode="rescore"),
    lm_scorer: Callable[[str], float] | None = None,
) -> list[list[list[Hypothesis]]]:
    """`rescore_nbest` at each λ in `weights` (config.syllable_weight is ignored) -> one result per
    weight. The CTC likelihoods, the costly part, are computed once for all of them: this is what
    tuning λ on a validation split (`kwav2vec evaluate --tune-weight`) runs."""
    B = grapheme_log_probs.shape[0]
    if not (len(grapheme_nbest) == len(syllable_nbest) == B):
        raise ValueError(
            f"need one n-best list per utterance and head: B={B}, got {len(grapheme_nbest)} grapheme and "
            f"{len(syllable_nbest)} syllable lists"
        )
    if config.lm_weight and lm_scorer is None:
        raise ValueError("lm_weight is set but no lm_scorer was given")
    for lam in weights:
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"syllable weights must lie in [0, 1], got {lam}")
    k = config.candidates_per_head
    texts = [
        list(dict.fromkeys(h.text for h in (*g[:k], *s[:k])))
        for g, s in zip(grapheme_nbest, syllable_nbest, strict=True)
    ]
    device = syllable_log_probs.device
    ll_syllable, ll_grapheme = ctc_log_likelihood_heads(
        [
            (
                syllable_log_probs,
                lengths,
                [[syllable_vocab.encode_key(t) for t in ts] for ts in texts],
                syllable_vocab.blank_id,
            ),
            (
                grapheme_log_probs,
                lengths,
                [[grapheme_vocab.encode_key(t) for t in ts] for ts in texts],
                grapheme_vocab.blank_id,
            ),
        ]
    )
    flat_texts = [t for ts in texts for t in ts]
    lm = (
        [lm_scorer(t) for t in flat_texts]
        if lm_scorer is not None and config.lm_weight
        else [0.0] * len(flat_texts)
    )
    bonus = (
        config.length_bonus * torch.tensor([len(t.replace(" ", "")) for t in flat_texts], device=device)
        if config.length_bonus else None
    )
    results = []
    for lam in weights:
        # A head with weight 0 is left out entirely (0 · -inf would be NaN).
        score = torch.zeros_like(ll_syllable)
        if lam > 0:
            score = score + lam * ll_syllable
        if lam < 1:
            score = score + (1 - lam) * ll_grapheme
        if bonus is not None:
            score = score + bonus
        if config.lm_weight:
            score = score + config.lm_weight * torch.tensor(lm, dtype=score.dtype, device=device)
        rows = list(zip(flat_texts, score.tolist(), ll_grapheme.tolist(), ll_syllable.tolist(), lm, strict=True))
        out, start = [], 0
        for ts in texts:
            utterance = rows[start : start + len(ts)]
            start += len(ts)
            # Exact ties (at λ = 1 an OOV spelling and "⁇" share one syllable score) go to the
            # candidate both heads like better together; then to the earlier one (stable sort).
            utterance.sort(key=lambda r: (r[1], r[2] + r[3]), reverse=True)
            out.append(
                [
                    Hypothesis(t, s, {"grapheme": g, "syllable": y, "lm": m})
                    for t, s, g, y, m in utterance
                ]
            )
        results.append(out)
    return results
