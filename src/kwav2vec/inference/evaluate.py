"""`kwav2vec evaluate CKPT MANIFEST`: decode a labelled manifest and score it.

    kwav2vec evaluate runs/finetune/.../last.ckpt data/demo/test.jsonl --decoder greedy joint:union joint:rescore
    kwav2vec evaluate CKPT test.jsonl --decoder joint --trainer.accelerator gpu --trainer.devices 4 --trainer.strategy ddp
    kwav2vec evaluate CKPT dev.jsonl --tune-weight      # set the joint weights on a validation split

`--tune-weight` scores every joint decoder (both, when none is named) at the syllable weights
0, 0.1, ..., 1 in the same pass, stores the best per mode in the checkpoint (or the ONNX export's
JSON), and later runs use it when `--syllable-weight` is not given (`kwav2vec.inference.tune`).
Tune on a validation split, never on the test split you report.

One forward pass feeds every decoder given. Writes to --out (default runs/evaluate/<manifest name>):
- `<decoder>.tsv`: id, ref, hyp, char_errors, ref_chars per utterance, in manifest order
  (see `kwav2vec.inference.report`);
- `summary.json`: run info, and under "decoders" per decoder: "cer", "wer", "swer",
  "jamo_error_rate", "oov_recovery" (known syllables = the checkpoint's syllable vocabulary; null
  when the references have none outside it) with its counts, "char_errors"/"ref_chars", and
  "timing" (decoding seconds, real-time factors, utterances/s).
Prints a table per run. Seconds are compute seconds summed over ranks; RTF = seconds / audio seconds
(`decode_rtf`: the decoder alone, `total_rtf`: forward pass + decoder).

Utterances whose reference is empty after normalisation are left out (their error rate is
undefined) and listed. Utterances whose audio cannot be read are listed in the summary and on
stderr, the rest is scored, and the exit code is 1. So is it when a clip is shorter than one frame: it
is scored with an empty hypothesis (listed under "too_short" in the summary and warned about).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kwav2vec.data.audio import SAMPLE_RATE
from kwav2vec.data.manifest import ManifestError, read_manifest
from kwav2vec.inference.backend import add_backend_arguments, load_model, predict
from kwav2vec.inference.decoders import MultiDecoder, check_heads, parse_decoders, weighted_name
from kwav2vec.inference.predict import (
    Source,
    add_prediction_arguments,
    chunk_config,
    command_parser,
    quiet_lightning,
    segment_config,
    too_short_message,
)
from kwav2vec.inference.report import (
    char_errors,
    format_table,
    metrics_summary,
    scored_rows,
    write_json,
    write_tsv,
)
from kwav2vec.inference.tune import GRID, joint_names, store_weights, syllable_weights, tune
from kwav2vec.metrics import normalize_for_scoring

PROG = "kwav2vec evaluate"


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(PROG, __doc__)
    parser.add_argument("manifest", help="JSONL manifest with `norm` transcripts")
    parser.add_argument("--out", default=None, help="output folder (default: runs/evaluate/<manifest name>)")
    parser.add_argument("--audio-root", default=None, help="folder relative audio paths are resolved against")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--tune-weight", action="store_true",
                        help="choose the joint decoders' syllable weight on this (validation) manifest and "
                        "store it in the checkpoint")
    add_backend_arguments(parser)
    add_prediction_arguments(parser, multiple_decoders=True)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    quiet_lightning()
    try:
        names = parse_decoders(args.decoder, args.head, args.joint_mode)
        if args.tune_weight and not joint_names(names):
            names += ["joint-union", "joint-rescore"]
        chunk_config(args), segment_config(args)  # bad --chunk/--stride/--pause... seconds: an option error
        entries = read_manifest(args.manifest, audio_root=args.audio_root, require_norm=True)
        model = load_model(args)
        check_heads(names, model.heads_used)
    except (ValueError, FileNotFoundError, ImportError, ManifestError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2

    # each reference is put in scoring form once, here; the sources carry it in that form
    refs = [normalize_for_scoring(e.norm or "") for e in entries]
    empty = [e.id for e, ref in zip(entries, refs, strict=True) if not ref]
    kept = [(e, ref) for e, ref in zip(entries, refs, strict=True) if ref]
    if not kept:
        print(f"{PROG}: error: {args.manifest}: no utterance with a non-empty reference", file=sys.stderr)
        return 2
    sources = [Source(i, e.id, e.path, e.num_samples, ref) for i, (e, ref) in enumerate(kept)]

    weights = syllable_weights(args.syllable_weight, model)

    def make_decoder(module) -> MultiDecoder:
        return MultiDecoder(
            names, module.grapheme_vocab, module.syllable_vocab, beam_width=args.beam_width,
            syllable_weight=weights, num_processes=args.decode_workers, beam_backend=args.beam_backend,
            weight_grid=GRID if args.tune_weight else (),
        )

    gathered, wall, world_size = predict(model, sources, make_decoder, args, progress_bar=not args.no_progress)
    if gathered is None:  # not rank 0: rank 0 writes and prints
        return 0

    results = {u.index: u for part in gathered for u in part.utterances}
    skipped = sorted((s for part in gathered for s in part.skipped), key=lambda s: s["index"])
    too_short = sorted((c for part in gathered for c in part.too_short), key=lambda c: c["index"])
    order = sorted(results)
    audio_seconds = sum(results[i].num_samples for i in order) / SAMPLE_RATE
    forward_seconds = sum(part.forward_seconds for part in gathered)
    out_dir = Path(args.out or os.path.join("runs", "evaluate", Path(args.manifest).stem))
    out_dir.mkdir(parents=True, exist_ok=True)

    known = model.syllable_vocab.symbols
    decoders = {}
    for name in names:
        rows = scored_rows(
            [sources[i].id for i in order], [sources[i].ref for i in order],
            [results[i].decoded[name].text for i in order], known, refs_normalized=True,
        )
        write_tsv(out_dir / f"{name}.tsv", rows)
        decode_seconds = sum(part.decode_seconds.get(name, 0.0) for part in gathered)
        compute = forward_seconds + decode_seconds
        decoders[name] = {
            "tsv": f"{name}.tsv",
            **(metrics_summary(rows) if rows else {}),
            "timing": {
                "decode_seconds": decode_seconds,
                "decode_rtf": decode_seconds / audio_seconds if audio_seconds else None,
                "total_rtf": compute / audio_seconds if audio_seconds else None,
                "utterances_per_second": len(order) / compute if compute else None,
            },
        }
    summary = {
        "checkpoint": os.path.abspath(args.checkpoint),
        "manifest": os.path.abspath(args.manifest),
        "utterances": len(kept) + len(empty),
        "scored": len(order),
        "skipped": skipped,
        "too_short": too_short,
        "empty_references": empty,
        "audio_seconds": audio_seconds,
        "forward_seconds": forward_seconds,
        "forward_rtf": forward_seconds / audio_seconds if audio_seconds else None,
        "wall_seconds": wall,
        "world_size": world_size,
        "ranks": [
            {"rank": part.rank, "utterances": len(part.utterances), "skipped": len(part.skipped),
             "batches": part.batches, "forward_seconds": part.forward_seconds}
            for part in gathered
        ],
        "beam_width": args.beam_width,
        "beam_backend": args.beam_backend,
        "syllable_weight": weights,
        "known_syllables": len(known),
        "decoders": decoders,
    }
    if args.tune_weight:
        summary["tuning"] = tune_and_store(args, names, sources, results, order, weights)
    write_json(out_dir / "summary.json", summary)

    print(f"{args.manifest}: {len(order)} utterances, {audio_seconds:.1f} s of audio, "
          f"{world_size} process(es), {wall:.1f} s wall")
    if order:
        print(format_table(decoders))
    print(f"wrote {out_dir}/summary.json and {', '.join(f'{n}.tsv' for n in names)}")
    if empty:
        print(f"{PROG}: left out {len(empty)} utterance(s) with an empty reference: {', '.join(empty[:5])}",
              file=sys.stderr)
    for s in skipped:
        print(f"{PROG}: cannot read {s['path']} (utterance {s['id']}): {s['reason']}: {s['detail']}", file=sys.stderr)
    for c in too_short:
        print(f"{PROG}: warning: {c['path']} (utterance {c['id']}): {too_short_message(c['num_samples'])}; "
              "scored as an empty hypothesis", file=sys.stderr)
    return 1 if skipped or too_short or not order else 0


def tune_and_store(args, names, sources, results, order, current) -> dict:
    """Character errors of every joint decoder at every GRID weight -> the chosen weights, stored."""
    refs = [sources[i].ref for i in order]  # in scoring form already
    errors = {
        name: {w: char_errors(refs, [results[i].decoded[weighted_name(name, w)].text for i in order]) for w in GRID}
        for name in joint_names(names)
    }
    chosen = tune(errors)
    before = current if isinstance(current, dict) else {"union": current, "rescore": current}
    modes = {**before, **chosen}  # a mode not decoded keeps its weight
    ref_chars = sum(len(r) for r in refs)
    record = {"tuned_on": os.path.abspath(args.manifest), "utterances": len(order),
              "cer": {name: errors[name][chosen[name.split("-", 1)[1]]] / ref_chars for name in errors}}
    store_weights(args.checkpoint, modes, record)
    for name, by_weight in errors.items():
        curve = "  ".join(f"{w:g}:{e / ref_chars:.3f}" for w, e in by_weight.items())
        print(f"{name}: CER by syllable weight  {curve}")
    print(f"stored syllable weights {modes} in {args.checkpoint} (tuned on {args.manifest})")
    return {"weights": modes, "errors": {n: {f"{w:g}": e for w, e in d.items()} for n, d in errors.items()},
            "ref_chars": ref_chars, **record}
