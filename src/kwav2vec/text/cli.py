"""`kwav2vec normalize`: normalize transcript lines and show their tokens, one output line per input line.

Rejected lines print ``REJECTED[<reason>] <where>: <why>`` in their place, so the output stays
aligned with the input; a count of rejections per reason goes to stderr at the end.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterable, Iterator

from kwav2vec.text.hangul import jamo_tokens
from kwav2vec.text.normalize import NormalizerConfig, TranscriptError, normalize

TRN_SEPARATOR = " :: "  # KsponSpeech scripts/*.trn: "<audio path> :: <transcript>"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kwav2vec normalize",
        description="Normalize Korean transcripts (KsponSpeech markup aware) and print text or tokens.",
    )
    parser.add_argument(
        "files", nargs="*", default=["-"], help="transcript files, one utterance a line ('-' = stdin)"
    )
    parser.add_argument(
        "--form",
        choices=["spelling", "phonetic"],
        default="phonetic",
        help="side of KsponSpeech '(A)/(B)' dual transcriptions to keep (default: phonetic)",
    )
    parser.add_argument("--digits", choices=["keep", "drop", "error"], default="keep")
    parser.add_argument("--latin", choices=["keep", "drop", "error"], default="keep")
    parser.add_argument(
        "--unsupported",
        choices=["drop", "error"],
        default="error",
        help="other scripts, standalone jamo (both reject the line; the reason shows which)",
    )
    parser.add_argument("--malformed", choices=["drop", "error"], default="error")
    parser.add_argument("--no-markup", action="store_true", help="do not interpret KsponSpeech markup")
    parser.add_argument(
        "--output",
        choices=["text", "jamo", "syllables"],
        default="text",
        help="normalized text, or space-separated grapheme / syllable tokens ('|' = word boundary)",
    )
    parser.add_argument(
        "--trn", action="store_true", help="lines are '<id> :: <text>' (KsponSpeech .trn); keep the id"
    )
    parser.add_argument(
        "--changes", action="store_true", help="print what was changed in each line to stderr"
    )
    parser.add_argument(
        "--encoding", default="utf-8", help="input encoding (KsponSpeech's own files are cp949)"
    )
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    config = NormalizerConfig(
        form=args.form,
        digits=args.digits,
        latin=args.latin,
        unsupported=args.unsupported,
        malformed=args.malformed,
        markup=not args.no_markup,
    )
    rejected: Counter[str] = Counter()
    total = 0
    try:
        for where, line in _read_lines(args.files, args.encoding):
            total += 1
            key, text = _split_trn(line) if args.trn else ("", line)
            try:
                result = normalize(text, config)
            except TranscriptError as error:
                rejected[error.reason] += 1
                print(f"REJECTED[{error.reason}] {where}: {error}")
                continue
            if args.changes and result.changes:
                print(f"{where}: " + "; ".join(result.changes), file=sys.stderr)
            if result.text is None:
                rejected[result.reason or "dropped"] += 1
                print(f"REJECTED[{result.reason}] {where}: {result.detail}")
                continue
            print(key + _render(result.text, args.output))
    except (OSError, LookupError, ValueError) as error:  # unreadable file, unknown or wrong encoding
        print(f"kwav2vec normalize: {error}", file=sys.stderr)
        return 2
    summary = ", ".join(f"{reason}: {count}" for reason, count in sorted(rejected.items())) or "none"
    print(f"{total} lines, {sum(rejected.values())} rejected ({summary})", file=sys.stderr)
    return 0


def _render(text: str, output: str) -> str:
    if output == "jamo":
        return " ".join(jamo_tokens(text))
    if output == "syllables":
        return " ".join("|".join(text.split()))
    return text


def _split_trn(line: str) -> tuple[str, str]:
    key, sep, text = line.partition(TRN_SEPARATOR)
    return (key + sep, text) if sep else ("", line)


def _read_lines(files: list[str], encoding: str) -> Iterator[tuple[str, str]]:
    """(location "file:line", line without its newline) for every line of every file."""
    for name in files:
        if name == "-":
            yield from _decode_lines("<stdin>", getattr(sys.stdin, "buffer", sys.stdin), encoding)
        else:
            with open(name, "rb") as handle:
                yield from _decode_lines(name, handle, encoding)


def _decode_lines(source: str, stream: Iterable[bytes | str], encoding: str) -> Iterator[tuple[str, str]]:
    # Decoding line by line (not through a text wrapper) lets an error name the exact line.
    for number, raw in enumerate(stream, start=1):
        if isinstance(raw, bytes):
            try:
                raw = raw.decode(encoding)
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{source}:{number}: not valid {encoding} ({error.reason}); "
                    "KsponSpeech's original files need --encoding cp949"
                ) from None
        yield f"{source}:{number}", raw.rstrip("\r\n")
