"""The torch beam-search backend for one head: `ctc_prefix_beam_search` as a drop-in for BeamSearchDecoder.

Same configuration (BeamSearchConfig: beam width, token and beam pruning, nbest) and the same
output (NFC Hypothesis lists with details "acoustic" = the summed CTC path score and "lm" = 0), but
the search runs batched on the log-probs' device. Language models and hotwords stay with
pyctcdecode: asking this backend for them is an error, not a silent fallback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from kwav2vec.decoding.beam import BeamSearchConfig, BeamSearchDecoder, Hypothesis, nfc_text
from kwav2vec.decoding.prefix_search import NBest, ctc_prefix_beam_search
from kwav2vec.decoding.scoring import check_emissions

if TYPE_CHECKING:
    from kwav2vec.text.vocab import Vocabulary

BACKENDS = ("pyctcdecode", "torch")


def pyctcdecode_only(config: BeamSearchConfig) -> list[str]:
    """The settings of `config` only the pyctcdecode backend implements."""
    asked = {
        "kenlm_model_path": config.kenlm_model_path is not None,
        "unigrams": config.unigrams is not None,
        "hotwords": bool(config.hotwords),
        "prune_history": config.prune_history,
    }
    return [name for name, on in asked.items() if on]


class TorchBeamSearchDecoder:
    """Batched torch CTC prefix beam search over one head's log-probabilities.

    >>> decoder = TorchBeamSearchDecoder(vocab, BeamSearchConfig(beam_width=100))
    >>> texts = decoder.decode(log_probs.cuda(), lengths)  # searched on the GPU
    """

    def __init__(self, vocab: Vocabulary, config: BeamSearchConfig = BeamSearchConfig()) -> None:
        unsupported = pyctcdecode_only(config)
        if unsupported:
            raise ValueError(
                f"{', '.join(unsupported)}: only the pyctcdecode beam backend supports language models, "
                "hotwords and history pruning (use --beam-backend pyctcdecode)"
            )
        self.vocab = vocab
        self.config = config
        self._labels = vocab.ctc_labels()
        self._grapheme = vocab.kind == "grapheme"

    def search(self, log_probs: Tensor, lengths: Tensor, *, name: str = "log_probs") -> NBest:
        """Tensor n-best lists (ids, scores, best-path alignments) of (B, T, V) log-probs, (B,) lengths."""
        check_emissions(log_probs, lengths, name=name, vocab_size=len(self.vocab))
        c = self.config
        return ctc_prefix_beam_search(
            log_probs, lengths, beam_width=c.beam_width, beam_prune_logp=c.beam_prune_logp,
            token_min_logp=c.token_min_logp, nbest=c.nbest, blank_id=self.vocab.blank_id,
            space_id=self.vocab.word_boundary_id,
        )

    def to_text(self, ids: list[int]) -> str:
        """A hypothesis' label ids as NFC syllables (pyctcdecode's labels joined, then recomposed)."""
        return nfc_text("".join(self._labels[i] for i in ids), self._grapheme)

    def hypotheses(self, nbest: NBest, limit: int | None = None) -> list[list[Hypothesis]]:
        """Hypothesis lists per utterance, best first, at most `limit` long (None: all); only those
        are turned into text."""
        scores = nbest.scores.tolist()
        return [
            [Hypothesis(self.to_text(ids), s, {"acoustic": s, "lm": 0.0})
             for ids, s in zip(row[:limit], scores[b], strict=False)]
            for b, row in enumerate(nbest.token_lists())
        ]

    def nbest(
        self, log_probs: Tensor, lengths: Tensor, *, name: str = "log_probs", limit: int | None = None
    ) -> list[list[Hypothesis]]:
        """N-best list per utterance, best first, at most `limit` long. log_probs: (B, T, V); lengths: (B,)."""
        return self.hypotheses(self.search(log_probs, lengths, name=name), limit)

    def decode(self, log_probs: Tensor, lengths: Tensor) -> list[str]:
        """Best transcript per utterance ("" when the search found nothing but blanks)."""
        return [hyps[0].text if hyps else "" for hyps in self.nbest(log_probs, lengths)]

    def close(self) -> None:
        """Nothing to release (no process pool); here so both backends can be closed alike."""

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def beam_searcher(
    vocab: Vocabulary, config: BeamSearchConfig, backend: str
) -> BeamSearchDecoder | TorchBeamSearchDecoder:
    """One head's beam search with the named backend ("pyctcdecode" or "torch")."""
    if backend not in BACKENDS:
        raise ValueError(f"beam backend must be one of {BACKENDS}, got {backend!r}")
    return TorchBeamSearchDecoder(vocab, config) if backend == "torch" else BeamSearchDecoder(vocab, config)
