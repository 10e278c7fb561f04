"""Evaluation outputs: per-utterance TSV, metrics summary (JSON) and a printed table.

TSV columns (one file per decoder, utterances in manifest order, UTF-8, header line):

    id  ref  hyp  char_errors  ref_chars

`ref`/`hyp` are in the form the metrics score them in (NFC, single spaces; a tab or newline
inside a transcript would break the format and cannot occur after that normalisation), so
`sum(char_errors) / sum(ref_chars)` over the file is exactly the summary's CER, and every metric
of the summary can be recomputed from the file with `kwav2vec.metrics`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from rapidfuzz.distance import Levenshtein

from kwav2vec.fileio import atomic_open, atomic_write_text
from kwav2vec.metrics import cer, jamo_error_rate, normalize_for_scoring, oov_recovery_counts, swer, wer

TSV_COLUMNS = ("id", "ref", "hyp", "char_errors", "ref_chars")


@dataclass(frozen=True)
class Row:
    id: str
    ref: str
    hyp: str

    @property
    def char_errors(self) -> int:
        return Levenshtein.distance(self.ref, self.hyp)

    @property
    def ref_chars(self) -> int:
        return len(self.ref)


def scored_rows(ids: Sequence[str], refs: Sequence[str], hyps: Sequence[str]) -> list[Row]:
    """Rows with both sides in scoring form (NFC, single spaces)."""
    return [
        Row(uid, normalize_for_scoring(ref), normalize_for_scoring(hyp))
        for uid, ref, hyp in zip(ids, refs, hyps, strict=True)
    ]


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


def metrics_summary(rows: Sequence[Row], known_syllables: Collection[str]) -> dict[str, float | int | None]:
    """All metrics of `kwav2vec.metrics` over the rows (empty references are not allowed there:
    the caller keeps them out and counts them)."""
    refs, hyps = [r.ref for r in rows], [r.hyp for r in rows]
    recovered, oov_total = oov_recovery_counts(refs, hyps, known_syllables)
    return {
        "utterances": len(rows),
        "cer": cer(refs, hyps),
        "wer": wer(refs, hyps),
        "swer": swer(refs, hyps),
        "jamo_error_rate": jamo_error_rate(refs, hyps),
        # None (JSON null) when the references hold no syllable outside the vocabulary
        "oov_recovery": recovered / oov_total if oov_total else None,
        "oov_syllables": oov_total,
        "oov_recovered": recovered,
        "char_errors": sum(r.char_errors for r in rows),
        "ref_chars": sum(r.ref_chars for r in rows),
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
