"""Grapheme (jamo) and syllable vocabularies for CTC, saved as JSON with stable ids.

Ids 0..2 are fixed for every vocabulary: 0 ``<blank>`` (CTC blank, also the padding value of
target tensors, so ``pad_id == blank_id``), 1 ``<unk>``, 2 ``|`` (word boundary). The symbols
follow from id 3.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from kwav2vec.text.hangul import MODERN_JAMO, WORD_BOUNDARY, compose, decompose, jamo_tokens

BLANK = "<blank>"
UNK = "<unk>"
SPECIALS: tuple[str, ...] = (BLANK, UNK, WORD_BOUNDARY)
CTC_UNK_LABEL = "⁇"  # what pyctcdecode users (and K-wav2vec) print for an unknown token
FORMAT_VERSION = 1

Kind = Literal["grapheme", "syllable"]


class _KeyTable(dict):
    """A `str.translate` table that maps characters outside the vocabulary to `<unk>`."""

    def __init__(self, table: dict[int, str], unk: str) -> None:
        super().__init__(table)
        self.unk = unk

    def __missing__(self, codepoint: int) -> str:
        return self.unk


class Vocabulary:
    """Token <-> id mapping for one CTC head ("grapheme" = jamo, "syllable" = NFC characters)."""

    def __init__(self, symbols: Sequence[str], kind: Kind, counts: dict[str, int] | None = None) -> None:
        """`symbols` are the non-special tokens in id order (ids start at len(SPECIALS))."""
        if kind not in ("grapheme", "syllable"):
            raise ValueError(f"vocabulary kind {kind!r}: expected 'grapheme' or 'syllable'")
        tokens = list(SPECIALS) + list(symbols)
        bad = [s for s in symbols if not isinstance(s, str) or len(s) != 1 or s.isspace()]
        if bad:
            raise ValueError(f"vocabulary symbols must be single non-space characters, got {bad[:10]!r}")
        duplicates = sorted(t for t, n in Counter(tokens).items() if n > 1)
        if duplicates:
            raise ValueError(f"duplicate vocabulary tokens {duplicates[:10]!r}")
        self._kind: Kind = kind
        self._tokens = tokens
        self._ids = {t: i for i, t in enumerate(tokens)}
        # token character -> id character, for encode_key (every token but the specials is one character)
        self._key_table = _KeyTable({ord(t): chr(i) for t, i in self._ids.items() if len(t) == 1}, chr(self.unk_id))
        self.counts: dict[str, int] = dict(counts or {})  # training counts (syllable vocabularies)

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def grapheme(cls, extra_symbols: Iterable[str] = ()) -> Vocabulary:
        """All 67 conjoining jamo of modern syllables (19 initials, 21 medials, 27 finals).

        `extra_symbols` (e.g. digits or Latin letters kept by the normalizer) follow the jamo.
        """
        return cls(list(MODERN_JAMO) + [s for s in extra_symbols if s not in MODERN_JAMO], "grapheme")

    @classmethod
    def syllables_from_texts(cls, texts: Iterable[str], min_count: int = 1) -> Vocabulary:
        """Every character of the (normalized) texts seen at least `min_count` times.

        Sorted by count, most frequent first, ties by code point, so the same corpus always
        gives the same ids. Rarer characters are left to `<unk>`.
        """
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        counts: Counter[str] = Counter()
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"text {i} is {type(text).__name__}, expected str")
            counts.update(c for c in text if not c.isspace())
        if WORD_BOUNDARY in counts:
            raise ValueError(
                f"texts contain the word-boundary symbol {WORD_BOUNDARY!r}; normalize them first"
            )
        kept = sorted((c for c, n in counts.items() if n >= min_count), key=lambda c: (-counts[c], c))
        return cls(kept, "syllable", {c: counts[c] for c in kept})

    # --- properties ---------------------------------------------------------------------------

    @property
    def kind(self) -> Kind:
        return self._kind

    @property
    def tokens(self) -> list[str]:
        """All tokens in id order, specials included."""
        return list(self._tokens)

    @property
    def symbols(self) -> list[str]:
        """The non-special tokens (jamo or syllables) in id order."""
        return self._tokens[len(SPECIALS) :]

    @property
    def blank_id(self) -> int:
        return 0

    @property
    def pad_id(self) -> int:
        return 0  # padding shares the blank id: CTC never reads past target lengths

    @property
    def unk_id(self) -> int:
        return 1

    @property
    def word_boundary_id(self) -> int:
        return 2

    def __len__(self) -> int:
        return len(self._tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._ids

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and (self._kind, self._tokens) == (other._kind, other._tokens)

    def __repr__(self) -> str:
        return f"Vocabulary(kind={self._kind!r}, size={len(self)})"

    def token_to_id(self, token: str) -> int:
        return self._ids.get(token, self.unk_id)

    def id_to_token(self, index: int) -> str:
        return self._tokens[index]

    # --- text <-> ids -------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[str]:
        """Tokens of a normalized text; whitespace runs become one `|`, ends are trimmed."""
        if self._kind == "grapheme":
            return jamo_tokens(text)
        return list(WORD_BOUNDARY.join(text.split()))

    def encode(self, text: str) -> list[int]:
        """Ids of `tokenize(text)`; tokens outside the vocabulary map to `unk_id`."""
        unk = self.unk_id
        return [self._ids.get(t, unk) for t in self.tokenize(text)]

    def encode_key(self, text: str) -> str:
        """`encode(text)` as one string, id i as the character chr(i): the same ids several times
        faster (one `str.translate`), for code that hashes, sorts or compares id sequences."""
        words = text.split()
        if self._kind == "grapheme":
            return WORD_BOUNDARY.join(map(decompose, words)).translate(self._key_table)
        return WORD_BOUNDARY.join(words).translate(self._key_table)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a token-id sequence (no CTC collapsing: pass already collapsed ids).

        Blank and `<unk>` are dropped, `|` becomes a space (runs collapsed, ends trimmed) and a
        grapheme sequence is recomposed into syllables; orphan jamo stay as conjoining jamo.
        """
        size = len(self._tokens)
        pieces = []
        for index in ids:
            index = int(index)
            if not 0 <= index < size:
                raise ValueError(f"token id {index} outside the {self._kind} vocabulary of size {size}")
            if index in (self.blank_id, self.unk_id):
                continue
            pieces.append(" " if index == self.word_boundary_id else self._tokens[index])
        text = " ".join("".join(pieces).split())
        return compose(text) if self._kind == "grapheme" else text

    def ctc_labels(self) -> list[str]:
        """Labels for pyctcdecode: blank -> "", `|` -> " ", `<unk>` -> "⁇", others themselves."""
        mapping = {BLANK: "", UNK: CTC_UNK_LABEL, WORD_BOUNDARY: " "}
        return [mapping.get(t, t) for t in self._tokens]

    def oov_rate(self, text: str) -> float:
        """Share of the text's tokens (word boundaries excluded) missing from this vocabulary."""
        tokens = [t for t in self.tokenize(text) if t != WORD_BOUNDARY]
        if not tokens:
            raise ValueError(f"oov_rate of a text without tokens: {text!r}")
        return sum(t not in self._ids for t in tokens) / len(tokens)

    # --- persistence --------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "kind": self._kind,
            "tokens": self._tokens,
            "counts": self.counts,
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> Vocabulary:
        """Rebuild a vocabulary, checking the specials sit at their fixed ids."""
        try:
            kind, tokens = data["kind"], data["tokens"]
        except (KeyError, TypeError) as error:
            raise ValueError(f"{source}: not a kwav2vec vocabulary (missing {error})") from None
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{source}: unsupported vocabulary format_version {data.get('format_version')!r}"
            )
        if list(tokens[: len(SPECIALS)]) != list(SPECIALS):
            raise ValueError(f"{source}: first tokens must be {list(SPECIALS)}, got {list(tokens[:3])}")
        return cls(tokens[len(SPECIALS) :], kind, data.get("counts") or {})

    def save(self, path: str | Path) -> None:
        """Write JSON (UTF-8, characters unescaped so the file is readable)."""
        from kwav2vec.fileio import atomic_write_text  # (text/ imports nothing else of kwav2vec at load)

        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n")

    @classmethod
    def coerce(cls, value: str | os.PathLike | dict | Vocabulary | None, kind: Kind) -> Vocabulary | None:
        """A `kind` vocabulary from a JSON path, a `to_dict()` dict (as checkpoints store it) or a
        Vocabulary; None stays None. Another kind raises a ValueError."""
        if value is None or isinstance(value, Vocabulary):
            vocab = value
        elif isinstance(value, dict):
            vocab = cls.from_dict(value, source=f"{kind} vocabulary in the checkpoint hyper-parameters")
        else:
            vocab = cls.load(value)
        if vocab is not None and vocab.kind != kind:
            raise ValueError(f"expected a {kind} vocabulary, got a {vocab.kind} one ({value!r:.200})")
        return vocab

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read vocabulary {path}: {error}") from error
        return cls.from_dict(data, source=str(path))
