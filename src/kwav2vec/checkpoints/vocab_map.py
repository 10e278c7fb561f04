"""Output vocabularies of foreign CTC heads -> our `Vocabulary`, and the head rows permuted to match.

Our vocabularies fix ids 0 `<blank>`, 1 `<unk>`, 2 `|` (word boundary), then the symbols. A foreign
head's rows are described by a `SourceVocab`: for each row, the token of ours it stands for, or None
when the row has no counterpart and is dropped.

fairseq (`dict.ltr.txt`, `add_dict.ltr.txt`; `fairseq.data.Dictionary`): rows 0..3 are the specials
`<s>`, `<pad>`, `</s>`, `<unk>`, then the file's symbols in file order (one `symbol count` a line).
fairseq's CTC uses `<s>` (row 0) as the blank, so `<s>` -> `<blank>`; `<unk>` -> `<unk>`; `|` -> `|`;
`<pad>` and `</s>` are never CTC targets (fairseq strips them from targets), so their rows are dropped.
Their trained logits are very low, so dropping them changes the softmax by a negligible amount.

Hugging Face (`vocab.json` + config): the CTC blank is `pad_token_id`; `unk_token` -> `<unk>`,
`word_delimiter_token` -> `|`; `bos`/`eos` tokens (`<s>`, `</s>`) are dropped like fairseq's.

Target: by default a new Vocabulary holding every source symbol in source order (nothing lost); or an
existing one (e.g. the `vocab_grapheme.json` beside a training manifest): source symbols it lacks are
dropped, and its symbols the source lacks get new rows (weight 0, bias = the lowest source bias, so
they start unlikely but trainable). Every drop and addition is reported.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from kwav2vec.text.vocab import BLANK, SPECIALS, UNK, WORD_BOUNDARY, Vocabulary

FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # fairseq Dictionary ids 0..3
_FAIRSEQ_ROLE = {"<s>": BLANK, "<pad>": None, "</s>": None, "<unk>": UNK}
_OVERWRITE_FLAG = "#fairseq:overwrite"


@dataclass
class SourceVocab:
    """Rows of a foreign head: `tokens[i]` is our token for row i, or None (row dropped)."""

    tokens: list[str | None]
    names: list[str]  # the source's own spelling of each row (for messages)
    origin: str

    def __len__(self) -> int:
        return len(self.tokens)


def read_fairseq_dict(path: str | os.PathLike) -> list[str]:
    """All rows of a fairseq Dictionary file: the 4 specials, then each line's symbol."""
    path = os.fspath(path)
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as e:
        raise FileNotFoundError(f"fairseq dictionary {path!r}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 fairseq dictionary ({e})") from e
    symbols = list(FAIRSEQ_SPECIALS)
    seen = set(symbols)
    for n, line in enumerate(lines, 1):
        parts = line.rstrip().rsplit(" ", 1)
        overwrite = False
        if len(parts) == 2 and parts[1] == _OVERWRITE_FLAG:
            overwrite = True
            parts = parts[0].rsplit(" ", 1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or not parts[0]:
            raise ValueError(f"{path}:{n}: expected '<symbol> <count>' as in fairseq's dict.ltr.txt, got {line!r}")
        symbol = parts[0]
        if symbol in seen and not overwrite:
            raise ValueError(f"{path}:{n}: duplicate symbol {symbol!r} (fairseq would refuse it too)")
        if symbol not in seen:
            symbols.append(symbol)
            seen.add(symbol)
    return symbols


def fairseq_source_vocab(symbols: list[str], origin: str) -> SourceVocab:
    tokens = [_FAIRSEQ_ROLE[s] if s in _FAIRSEQ_ROLE else s for s in symbols]
    return SourceVocab(tokens, list(symbols), origin)


def hf_source_vocab(
    vocab: dict[str, int], *, blank_id: int, unk_token: str | None, word_delimiter: str | None,
    drop_tokens: tuple[str, ...], origin: str,
) -> SourceVocab:
    """Rows of a Hugging Face CTC head from its tokenizer's `vocab.json` ({token: id})."""
    ids = sorted(vocab.values())
    if ids != list(range(len(ids))):
        raise ValueError(f"{origin}: vocab.json ids must be 0..{len(ids) - 1} without gaps")
    names = [""] * len(ids)
    for token, i in vocab.items():
        names[i] = token
    tokens: list[str | None] = []
    for i, name in enumerate(names):
        if i == blank_id:
            tokens.append(BLANK)
        elif name == unk_token:
            tokens.append(UNK)
        elif name == word_delimiter:
            tokens.append(WORD_BOUNDARY)
        elif name in drop_tokens:
            tokens.append(None)
        else:
            tokens.append(name)
    return SourceVocab(tokens, names, origin)


def default_target(source: SourceVocab, kind: str) -> Vocabulary:
    """A Vocabulary with every symbol of the source, in source order."""
    symbols = [t for t in source.tokens if t is not None and t not in SPECIALS]
    bad = [s for s in symbols if len(s) != 1 or s.isspace()]
    if bad:
        raise ValueError(f"{source.origin}: symbols {bad[:10]!r} are not single characters; a kwav2vec "
                         "vocabulary holds one character (jamo or syllable) per token")
    return Vocabulary(symbols, kind)  # type: ignore[arg-type]


def load_target_vocab(path: str | os.PathLike, kind: str) -> Vocabulary:
    vocab = Vocabulary.load(path)
    if vocab.kind != kind:
        raise ValueError(f"{os.fspath(path)}: a {vocab.kind} vocabulary, but the {kind} head needs a {kind} one")
    return vocab


def permute_rows(
    weight: torch.Tensor, bias: torch.Tensor, source: SourceVocab, target: Vocabulary
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Head (V_src, D) weight and (V_src,) bias -> target vocabulary order (V, D), (V,), plus notes."""
    if weight.shape[0] != len(source) or bias.shape != (len(source),):
        raise ValueError(
            f"{source.origin}: the head has {weight.shape[0]} output rows but the dictionary describes "
            f"{len(source)} (fairseq: 4 specials + one per line); is this the dictionary it was trained with?"
        )
    row_of = {}
    for i, token in enumerate(source.tokens):
        if token is not None:
            row_of.setdefault(token, i)
    w = torch.zeros(len(target), weight.shape[1], dtype=weight.dtype)
    b = torch.full((len(target),), float(bias.min()), dtype=bias.dtype)
    added = []
    for j, token in enumerate(target.tokens):
        if token in row_of:
            w[j] = weight[row_of[token]]
            b[j] = bias[row_of[token]]
        else:
            added.append(token)
    kept = set(target.tokens)
    dropped = [source.names[i] for i, t in enumerate(source.tokens) if t is None or t not in kept]
    notes = []
    if dropped:
        notes.append(f"{source.origin}: dropped {len(dropped)} row(s) without a counterpart: {dropped[:20]}")
    if added:
        notes.append(f"{source.origin}: {len(added)} target token(s) had no trained row and start fresh: {added[:20]}")
    return w, b, notes


def read_hf_vocab(path: str | os.PathLike) -> dict[str, int]:
    try:
        data = json.loads(open(path, encoding="utf-8").read())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{os.fspath(path)}: cannot read the tokenizer vocabulary: {e}") from e
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        if len(data) != 1:  # multilingual tokenizers: {lang: vocab}
            raise ValueError(f"{os.fspath(path)}: a multi-language vocab.json ({sorted(data)[:5]}); not supported")
        data = next(iter(data.values()))
    if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
        raise ValueError(f"{os.fspath(path)}: expected a JSON object {{token: id}}")
    return data
