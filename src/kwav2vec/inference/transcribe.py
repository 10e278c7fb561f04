"""`kwav2vec transcribe CKPT AUDIO...`: print the transcript of each audio file.

    kwav2vec transcribe model.ckpt a.wav b.flac c.ogg          # path<TAB>text per file, input order
    kwav2vec transcribe model.ckpt *.wav --decoder joint --joint-mode rescore --json --nbest 5

Any format, sample rate and channel count soundfile reads (and headerless 16 kHz 16-bit `.pcm`):
audio is resampled to 16 kHz and averaged to mono. `--json` prints one JSON document with the
n-best list of each file (text, score and the per-head parts of the score; -inf is written null).

A file that cannot be read is reported on stderr with its path and the reason, a clip shorter than
one 400-sample frame gets an empty transcript and a warning naming it; the other files are still
transcribed, and the exit code is 1 (2 for a bad checkpoint or option). Runs through
Lightning's predict loop, so `--trainer.devices/strategy/num_nodes` spread many files over devices.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import soundfile as sf

from kwav2vec.data.audio import PCM_DTYPE, PCM_SUFFIXES, SAMPLE_RATE, AudioError, load_audio
from kwav2vec.decoding.beam import Hypothesis
from kwav2vec.fileio import atomic_write_text
from kwav2vec.inference.backend import add_backend_arguments, load_model, predict
from kwav2vec.inference.decoders import MultiDecoder, check_heads, parse_decoders
from kwav2vec.inference.predict import (
    Source,
    add_prediction_arguments,
    chunk_config,
    command_parser,
    quiet_lightning,
    segment_config,
    too_short_message,
)
from kwav2vec.inference.subtitles import FORMATS, render, segments
from kwav2vec.inference.tune import syllable_weights

PROG = "kwav2vec transcribe"


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(PROG, __doc__)
    parser.add_argument("audio", nargs="+", help="audio files (WAV, FLAC, OGG, ... or 16 kHz 16-bit .pcm)")
    parser.add_argument("--json", action="store_true", help="print n-best lists with scores as JSON")
    parser.add_argument("--nbest", type=int, default=5, help="hypotheses per file with --json (default 5)")
    parser.add_argument("--progress", action="store_true",
                        help="show a progress bar, and the audio seconds done of each long file (stderr)")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="also write <audio name>.<format> per file into --out: subtitles (srt, vtt) or "
                        "segments (tsv, json) with word times")
    parser.add_argument("--out", default=".", help="folder of the --format files (default: .)")
    add_backend_arguments(parser)
    add_prediction_arguments(parser, multiple_decoders=False)
    return parser


def probe_num_samples(path: str) -> int:
    """Length at 16 kHz from the file header (no decoding); AudioError naming the file if unusable."""
    if not os.path.isfile(path):
        raise AudioError(path, "missing", "no such file")
    if path.lower().endswith(PCM_SUFFIXES):
        return os.path.getsize(path) // PCM_DTYPE.itemsize
    try:
        info = sf.info(path)
    except (sf.SoundFileError, RuntimeError, OSError):
        return len(load_audio(path))  # raises the data layer's AudioError (empty, unreadable, ...)
    return math.ceil(info.frames * SAMPLE_RATE / info.samplerate)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _hypothesis_json(h: Hypothesis) -> dict:
    return {"text": h.text, "score": _finite(h.score), "details": {k: _finite(v) for k, v in h.details.items()}}


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    quiet_lightning()
    errors: list[tuple[str, str]] = []  # (path, message) in input order
    sources = []
    for path in args.audio:
        try:
            sources.append(Source(len(sources), path, path, probe_num_samples(path)))
        except AudioError as err:
            errors.append((path, f"{err.reason}: {err.detail}"))
    try:
        if args.nbest < 1:
            raise ValueError(f"--nbest must be >= 1, got {args.nbest}")
        (name,) = parse_decoders([args.decoder], args.head, args.joint_mode)
        chunk_config(args), segment_config(args)  # bad --chunk/--stride/--pause... seconds: an option error
        model = load_model(args) if sources else None
        if model is not None:
            check_heads([name], model.heads_used)
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2

    results = {}
    if sources:
        def make_decoder(module) -> MultiDecoder:
            return MultiDecoder(
                [name], module.grapheme_vocab, module.syllable_vocab, beam_width=args.beam_width,
                nbest=args.nbest if args.json else 1, syllable_weight=syllable_weights(args.syllable_weight, module),
                num_processes=args.decode_workers, beam_backend=args.beam_backend,
            )

        gathered, _, _ = predict(model, sources, make_decoder, args, progress_bar=args.progress,
                                 times=args.json or args.format is not None)
        if gathered is None:  # not rank 0
            return 0
        results = {u.path: u for part in gathered for u in part.utterances}
        errors += [(s["path"], f"{s['reason']}: {s['detail']}") for part in gathered for s in part.skipped]
        short = {c["path"]: too_short_message(c["num_samples"]) for part in gathered for c in part.too_short}
    else:
        short = {}

    failed = dict(errors)
    if args.json:
        doc = {"decoder": name, "results": [], "errors": []}
        for path in args.audio:
            if path in failed:
                doc["errors"].append({"path": path, "error": failed[path]})
            elif path in results:
                u = results[path]
                d = u.decoded[name]
                doc["results"].append({
                    "path": path, "text": d.text, "score": _finite(d.score),
                    "seconds": u.num_samples / SAMPLE_RATE, "nbest": [_hypothesis_json(h) for h in d.nbest],
                    "words": u.words.get(name, ([], ""))[0], "times_from": u.words.get(name, ([], "not computed"))[1],
                    **({"warning": short[path]} if path in short else {}),
                })
        print(json.dumps(doc, ensure_ascii=False, indent=2))
    else:
        for path in args.audio:
            if path in results:
                print(f"{path}\t{results[path].decoded[name].text}")
    if args.format is not None:
        os.makedirs(args.out, exist_ok=True)
        for path in args.audio:
            if path in results:
                target = os.path.join(args.out, f"{os.path.splitext(os.path.basename(path))[0]}.{args.format}")
                atomic_write_text(target, render(args.format, segments(results[path].words.get(name, ([], ""))[0]),
                                                 source=path))
    for path, message in errors:
        print(f"{PROG}: cannot read {path}: {message}", file=sys.stderr)
    for path in args.audio:
        if path in short:
            print(f"{PROG}: warning: {path}: {short[path]}", file=sys.stderr)
    return 1 if errors or short else 0
