"""CTC beam search for one head through pyctcdecode, with an optional reusable process pool.

What pyctcdecode does with our labels (checked against pyctcdecode 0.5 decoder.py):
- `vocab.ctc_labels()` already uses its conventions: "" is the blank, " " the word delimiter,
  "⁇" the unknown token, so `Alphabet.build_alphabet` keeps the labels as they are.
- It takes one (T, V) numpy array per utterance and re-applies log-softmax (a no-op on
  log-probabilities), clipping at log(1e-15); padding frames must be cut off beforehand.
- Beams are merged by text, so a beam's `logit_score` sums the paths of every label sequence with
  that text (including ones with extra or leading/trailing spaces), minus whatever was pruned.
- Output text has single spaces; for a grapheme head it is a jamo string, composed here to NFC
  syllables. Hotwords and KenLM unigrams are matched against that jamo text, so they are
  decomposed for a grapheme head.
- Pools must fork: pyctcdecode keeps language models in a class-level dict that workers inherit,
  and it silently falls back to sequential decoding for a spawn context.
"""

from __future__ import annotations

import logging
import multiprocessing
import unicodedata
import warnings
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.pool import Pool
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from kwav2vec.decoding.scoring import check_emissions
from kwav2vec.text.hangul import compose, decompose

if TYPE_CHECKING:
    from kwav2vec.text.vocab import Vocabulary

# One raw search result: (text as pyctcdecode wrote it, logit_score, combined score with LM/hotwords).
RawBeam = tuple[str, float, float]
# A unit of work for a pool worker: (pyctcdecode decoder, (T, V) float32 log-probs, decode_beams kwargs).
SearchJob = tuple[Any, np.ndarray, dict[str, Any]]


@dataclass(frozen=True)
class Hypothesis:
    """One transcript candidate."""

    text: str  # NFC syllables, single spaces (a grapheme head's jamo recomposed)
    score: float  # log-domain ranking score of the decoder that produced it
    # Per-head parts of the score. Beam search: "acoustic" (pyctcdecode's logit_score, summed CTC
    # path log-probs) and "lm" (LM + length + hotword bonus; 0 without them). Joint decoder:
    # "grapheme" and "syllable" (-inf where a head did not propose/cannot emit it), plus "lm".
    details: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class BeamSearchConfig:
    """pyctcdecode settings for one head (defaults: K-wav2vec's beam 100, pyctcdecode's others)."""

    beam_width: int = 100  # beams kept per frame (K-wav2vec decodes with 100)
    beam_prune_logp: float = -10.0  # drop beams this far (log) below the best one
    token_min_logp: float = -5.0  # tokens below this log-prob are skipped unless they are the frame's argmax
    # Merge beams sharing their LM history: faster, but fewer distinct n-best entries.
    prune_history: bool = False
    nbest: int | None = None  # keep at most this many hypotheses per utterance (None: all, <= beam_width)
    kenlm_model_path: str | None = None  # KenLM model over this head's beam text (jamo words for graphemes)
    unigrams: tuple[str, ...] | None = None  # the LM's vocabulary (decomposed for a grapheme head)
    alpha: float = 0.5  # LM weight (shallow fusion)
    beta: float = 1.5  # word insertion bonus (used with an LM)
    hotwords: tuple[str, ...] = ()  # words to favour (decomposed for a grapheme head)
    hotword_weight: float = 10.0

    def __post_init__(self) -> None:
        if self.beam_width < 1:
            raise ValueError(f"beam_width must be >= 1, got {self.beam_width}")
        if self.nbest is not None and self.nbest < 1:
            raise ValueError(f"nbest must be >= 1 or None, got {self.nbest}")


def _import_pyctcdecode() -> Any:
    """Import pyctcdecode without its import-time "kenlm python bindings are not installed" warning.

    Most decoding runs without a language model; asking for one without kenlm raises a clear
    ImportError in BeamSearchDecoder instead.
    """
    loggers = [logging.getLogger(f"pyctcdecode.{name}") for name in ("decoder", "language_model")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        import pyctcdecode
        import pyctcdecode.decoder
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    return pyctcdecode


def _search_job(job: SearchJob) -> list[RawBeam]:
    """Run one pyctcdecode search; module-level so pool workers can unpickle it."""
    decoder, logits, kwargs = job
    # Drop the KenLM state (not picklable) and word frames (not used) before crossing processes.
    return [
        (text, float(logit), float(combined))
        for text, _, _, logit, combined in decoder.decode_beams(logits, **kwargs)
    ]


def run_searches(pool: Pool | None, jobs: Sequence[SearchJob]) -> list[list[RawBeam]]:
    """All jobs, in order: through one `pool.map` (jobs of several heads share it), or in this process."""
    if pool is None or len(jobs) <= 1:
        return [_search_job(job) for job in jobs]
    return pool.map(_search_job, jobs)


def make_pool(num_processes: int) -> Pool | None:
    """A fork-context pool (pyctcdecode cannot use spawn), or None if the platform cannot fork."""
    if num_processes <= 0:
        return None
    try:
        context = multiprocessing.get_context("fork")
    except ValueError:
        warnings.warn(
            "multiprocessing 'fork' is unavailable on this platform; beam search runs sequentially",
            stacklevel=3,
        )
        return None
    return context.Pool(num_processes)


class PoolOwner:
    """A lazily started process pool, shut down by close(), `with`, or garbage collection.

    Started on first use, after the pyctcdecode decoders (and their language models) exist, so
    forked workers inherit them.
    """

    def __init__(self, num_processes: int = 0) -> None:
        if num_processes < 0:
            raise ValueError(f"num_processes must be >= 0, got {num_processes}")
        self.num_processes = num_processes
        self._pool: Pool | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def pool(self) -> Pool | None:
        if self._pool is None and self.num_processes > 0:
            self._pool = make_pool(self.num_processes)
            if self._pool is not None:
                self._finalizer = weakref.finalize(self, self._pool.terminate)
        return self._pool

    def close(self) -> None:
        """Stop the worker processes (idempotent); a later decode starts a new pool."""
        if self._pool is not None:
            assert self._finalizer is not None
            self._finalizer.detach()
            self._pool.close()
            self._pool.join()
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def nfc_text(beam_text: str, grapheme: bool) -> str:
    """A beam's text as NFC syllables (K-wav2vec NFC-normalises both heads' hypotheses)."""
    return unicodedata.normalize("NFC", compose(beam_text) if grapheme else beam_text)


def _numpy_rows(log_probs: Tensor, lengths: Tensor) -> list[np.ndarray]:
    """Per-utterance (T_b, V) float32 numpy views, padding frames cut off (one device copy per batch)."""
    array = log_probs.detach().float().cpu().numpy()  # (B, T, V)
    return [array[b, :n] for b, n in enumerate(lengths.tolist())]


class BeamSearchDecoder(PoolOwner):
    """pyctcdecode beam search over one head's log-probabilities, returning n-best lists.

    >>> with BeamSearchDecoder(vocab, BeamSearchConfig(beam_width=50), num_processes=2) as dec:
    ...     texts = dec.decode(log_probs, lengths)
    """

    def __init__(
        self, vocab: Vocabulary, config: BeamSearchConfig = BeamSearchConfig(), *, num_processes: int = 0
    ) -> None:
        super().__init__(num_processes)
        pyctcdecode = _import_pyctcdecode()

        self.vocab = vocab
        self.config = config
        self._grapheme = vocab.kind == "grapheme"
        if config.kenlm_model_path is not None and not hasattr(pyctcdecode.decoder, "kenlm"):
            raise ImportError(
                f"kenlm_model_path={config.kenlm_model_path!r} needs the kenlm Python bindings "
                "(pip install https://github.com/kpu/kenlm/archive/master.zip)"
            )
        unigrams = None if config.unigrams is None else [self._beam_form(u) for u in config.unigrams]
        self.ctc_decoder = pyctcdecode.build_ctcdecoder(
            labels=list(vocab.ctc_labels()),
            kenlm_model_path=config.kenlm_model_path,
            unigrams=unigrams,
            alpha=config.alpha,
            beta=config.beta,
        )
        self._kwargs: dict[str, Any] = dict(
            beam_width=config.beam_width,
            beam_prune_logp=config.beam_prune_logp,
            token_min_logp=config.token_min_logp,
            prune_history=config.prune_history,
            hotwords=[self._beam_form(h) for h in config.hotwords] or None,
            hotword_weight=config.hotword_weight,
        )

    def _beam_form(self, text: str) -> str:
        """Text as it appears in this head's beams (jamo for graphemes)."""
        return decompose(text) if self._grapheme else text

    def to_text(self, beam_text: str) -> str:
        """A beam's text as NFC syllables (K-wav2vec NFC-normalises both heads' hypotheses)."""
        return nfc_text(beam_text, self._grapheme)

    def jobs(self, log_probs: Tensor, lengths: Tensor, *, name: str = "log_probs") -> list[SearchJob]:
        """One search job per utterance of (B, T, V) log-probabilities with (B,) frame lengths."""
        check_emissions(log_probs, lengths, name=name, vocab_size=len(self.vocab))
        return [(self.ctc_decoder, rows, self._kwargs) for rows in _numpy_rows(log_probs, lengths)]

    def hypotheses(self, raw: list[RawBeam]) -> list[Hypothesis]:
        """pyctcdecode's sorted beams of one utterance as Hypothesis objects (at most config.nbest)."""
        return [
            Hypothesis(self.to_text(text), combined, {"acoustic": logit, "lm": combined - logit})
            for text, logit, combined in raw[: self.config.nbest]
        ]

    def nbest(self, log_probs: Tensor, lengths: Tensor) -> list[list[Hypothesis]]:
        """N-best list per utterance, best first. log_probs: (B, T, V); lengths: (B,)."""
        return [self.hypotheses(raw) for raw in run_searches(self.pool, self.jobs(log_probs, lengths))]

    def decode(self, log_probs: Tensor, lengths: Tensor) -> list[str]:
        """Best transcript per utterance ("" when the search found nothing but blanks)."""
        return [hyps[0].text if hyps else "" for hyps in self.nbest(log_probs, lengths)]
