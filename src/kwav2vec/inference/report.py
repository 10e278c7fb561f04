"""Evaluation outputs: per-utterance TSV, metrics summary (JSON) and a printed table.

TSV columns (one file per decoder, utterances in manifest order, UTF-8, header line):

    id  ref  hyp  char_errors  ref_chars

`ref`/`hyp` are in the form the metrics score them in (NFC, single spaces; a tab or newline
inside a transcript would break the format and cannot occur after that normalisation), so
`sum(char_errors) / sum(ref_chars)` over the file is exactly the summary's CER, and every metric
of the summary can be recomputed from the file with `kwav2vec.metrics`. Each row is scored once
(`metrics.ErrorCounts.of`), and the summary adds the rows' counts up.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from kwav2vec.fileio import atomic_open, atomic_write_text
from kwav2vec.metrics import ErrorCounts, normalize_for_scoring

TSV_COLUMNS = ("id", "ref", "hyp", "char_errors", "ref_chars")


@dataclass(frozen=True)
class Row:
    """One scored utterance, `ref` and `hyp` in scoring form; `counts`: its error counts (computed
    here when not given, without OOV counts)."""

    id: str
    ref: str
    hyp: str
    counts: ErrorCounts = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.counts is None:
            object.__setattr__(self, "counts", ErrorCounts.of(self.ref, self.hyp))

    @property
    def char_errors(self) -> int:
        return self.counts.char_errors

    @property
    def ref_chars(self) -> int:
        return self.counts.ref_chars


def scored_rows(ids: Sequence[str], refs: Sequence[str], hyps: Sequence[str],
                known_syllables: Collection[str] | None = None, *, refs_normalized: bool = False) -> list[Row]:
    """Rows with both sides in scoring form (NFC, single spaces), each scored once (with OOV
    counts against `known_syllables` when given). `refs_normalized`: the references are already
    in scoring form (not normalised again). References must not be empty in scoring form."""
    known = set(known_syllables) if known_syllables is not None else None
    rows = []
    for uid, ref, hyp in zip(ids, refs, hyps, strict=True):
        ref, hyp = (ref if refs_normalized else normalize_for_scoring(ref)), normalize_for_scoring(hyp)
        rows.append(Row(uid, ref, hyp, ErrorCounts.of(ref, hyp, known)))
    return rows


def char_errors(refs: Sequence[str], hyps: Sequence[str]) -> int:
    """Summed CER edit distance of references already in scoring form and raw hypotheses (all
    that weight tuning compares: the other counts are not computed)."""
    return sum(ErrorCounts.chars(ref, normalize_for_scoring(hyp)).char_errors
               for ref, hyp in zip(refs, hyps, strict=True))


def write_tsv(path: str | os.PathLike, rows: Sequence[Row]) -> None:
    """Write the per-utterance TSV atomically (`kwav2vec.fileio`). Tabs and line breaks inside an id
    (the only field that can hold them) are written as spaces."""
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\t".join(TSV_COLUMNS) + "\n")
        for r in rows:
            uid = " ".join(r.id.replace("\t", " ").splitlines())
            f.write(f"{uid}\t{r.ref}\t{r.hyp}\t{r.char_errors}\t{r.ref_chars}\n")


def read_tsv(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a TSV written by `write_tsv`, as dicts keyed by `TSV_COLUMNS`."""
    with open(path, encoding="utf-8", newline="\n") as f:
        lines = f.read().split("\n")
    header = tuple(lines[0].split("\t"))
    if header != TSV_COLUMNS:
        raise ValueError(f"{os.fspath(path)}: expected header {TSV_COLUMNS}, got {header}")
    rows = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != len(TSV_COLUMNS):
            raise ValueError(f"{os.fspath(path)}:{lineno}: expected {len(TSV_COLUMNS)} tab-separated fields, got {len(fields)}")
        rows.append(dict(zip(TSV_COLUMNS, fields, strict=True)))
    return rows


def metrics_summary(rows: Sequence[Row]) -> dict[str, float | int | None]:
    """All metrics of `kwav2vec.metrics` over the rows, from their summed counts (OOV recovery
    against the known syllables the rows were scored with). Empty references are not allowed
    there: the caller keeps them out and counts them."""
    if not rows:
        raise ValueError("no rows to summarise")
    total = sum((r.counts for r in rows), ErrorCounts())
    rates = total.rates()
    return {
        "utterances": len(rows),
        "cer": rates["cer"],
        "wer": rates["wer"],
        "swer": rates["swer"],
        "jamo_error_rate": rates["jer"],
        # None (JSON null) when the references hold no syllable outside the vocabulary
        "oov_recovery": total.oov_recovered / total.oov_total if total.oov_total else None,
        "oov_syllables": total.oov_total,
        "oov_recovered": total.oov_recovered,
        "char_errors": total.char_errors,
        "ref_chars": total.ref_chars,
    }


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Atomically (`kwav2vec.fileio`); NaN is refused (not JSON)."""
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=2, allow_nan=False) + "\n")


def _percent(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def format_table(decoders: dict[str, dict]) -> str:
    """One line per decoder: error rates in %, OOV recovery, decoding time and real-time factors."""
    header = ("decoder", "CER%", "WER%", "sWER%", "JER%", "OOV-rec%", "decode s", "RTF dec", "RTF total")
    lines = [header]
    for name, d in decoders.items():
        m, t = d, d["timing"]  # metrics at the top level of each decoder's entry
        lines.append((
            name, _percent(m["cer"]), _percent(m["wer"]), _percent(m["swer"]), _percent(m["jamo_error_rate"]),
            f"{_percent(m['oov_recovery'])} ({m['oov_recovered']}/{m['oov_syllables']})",
            f"{t['decode_seconds']:.2f}", f"{t['decode_rtf']:.4f}", f"{t['total_rtf']:.4f}",
        ))
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
           for row in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
