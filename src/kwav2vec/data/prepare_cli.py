"""`kwav2vec prepare CORPUS SRC --out DIR`: build a JSONL manifest, rejects, report and vocabularies.

    kwav2vec prepare ksponspeech /data/KsponSpeech --out data/kspon --split train --form phonetic
    kwav2vec prepare ksponspeech /data/KsponSpeech --out data/kspon --split eval_clean
    kwav2vec prepare zeroth /data/zeroth_korean --out data/zeroth --split test
    kwav2vec prepare folder my_recordings/ --out data/mine
    kwav2vec prepare tsv list.tsv --out data/mine --split dev
    kwav2vec prepare tsv list.tsv --out data/mine --columns path,text,speaker   (a listing without a header)
    kwav2vec prepare fairseq manifests/train.tsv --out data/imported      (reads .wrd or .ltr beside it)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CORPORA = ("ksponspeech", "zeroth", "folder", "tsv", "fairseq")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kwav2vec prepare",
        description="Check a corpus and write {split}.jsonl, {split}.rejects.jsonl, {split}.report.json "
        "(and vocab_grapheme.json / vocab_syllable.json for the training split) into --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("corpus", choices=CORPORA)
    p.add_argument("src", help="corpus folder (ksponspeech, zeroth, folder) or listing file (tsv, fairseq .tsv)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--split", default="train",
                   help="output name; for ksponspeech also which part (train, dev, eval_clean, eval_other), "
                   "for zeroth train/test select train_data_01/test_data_01")
    p.add_argument("--trn", help="ksponspeech: a .trn script list (`path :: text`) instead of the .txt files")
    p.add_argument("--audio-root", help="tsv: folder relative paths are relative to (default: the listing's)")
    p.add_argument("--delimiter", help="tsv: column separator (default: tab, comma for .csv)")
    p.add_argument("--columns", help="tsv: names of the columns of a listing without a header row, e.g. "
                   "path,text,speaker (path/audio = the audio, text/transcript = the transcript, others are "
                   "kept as metadata)")
    p.add_argument("--unlabeled", action="store_true", help="audio only (pretraining); transcripts are ignored")
    t = p.add_argument_group("transcripts")
    t.add_argument("--form", choices=("phonetic", "spelling"), default="phonetic",
                   help="which side of KsponSpeech's (spelling)/(phonetic) dual transcriptions to keep")
    t.add_argument("--digits", choices=("keep", "drop", "error"), default="keep",
                   help="utterances with digits: keep them, or reject them (drop and error both reject here)")
    t.add_argument("--latin", choices=("keep", "drop", "error"), default="keep", help="likewise for Latin letters")
    t.add_argument("--markup", action=argparse.BooleanOptionalAction, default=None,
                   help="interpret KsponSpeech markup (default: only for ksponspeech)")
    a = p.add_argument_group("audio")
    a.add_argument("--min-duration", type=float, default=0.0, help="seconds; shorter audio is rejected")
    a.add_argument("--max-duration", type=float, default=None, help="seconds; longer audio is rejected")
    a.add_argument("--min-samples", type=int, default=400,
                   help="shorter audio is rejected (400 = the conv front end's receptive field)")
    a.add_argument("--samples-per-frame", type=int, default=320, help="conv stride, for the CTC feasibility check")
    v = p.add_argument_group("outputs")
    v.add_argument("--vocab", action=argparse.BooleanOptionalAction, default=None,
                   help="build vocabularies from this split (default: when --split is train)")
    v.add_argument("--vocab-min-count", type=int, default=1, help="syllables seen fewer times map to <unk>")
    v.add_argument("--fairseq", action="store_true", help="also write fairseq {split}.tsv/.ltr/.wrd")
    v.add_argument("--workers", type=int, default=1, help="processes reading audio")
    v.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    # Imported here so `kwav2vec prepare --help` answers at once.
    from kwav2vec.data.corpora.folder import folder_candidates
    from kwav2vec.data.corpora.kspon import ksponspeech_candidates
    from kwav2vec.data.corpora.tsv import tsv_candidates
    from kwav2vec.data.fairseq_manifest import read_fairseq_manifest
    from kwav2vec.data.prepare import Candidate, PrepareError, PrepareOptions, prepare_corpus
    from kwav2vec.models.config import STANDARD_GEOMETRY, FrameGeometry
    from kwav2vec.text.normalize import NormalizerConfig

    src = Path(args.src)
    if not src.exists():
        print(f"kwav2vec prepare: {src} does not exist", file=sys.stderr)
        return 2
    markup = args.markup if args.markup is not None else args.corpus == "ksponspeech"
    options = PrepareOptions(
        normalizer=NormalizerConfig(form=args.form, digits=args.digits, latin=args.latin,
                                    unsupported="drop", malformed="drop", markup=markup),
        unlabeled=args.unlabeled,
        min_samples=args.min_samples,
        min_duration=args.min_duration,
        max_duration=args.max_duration,
        geometry=FrameGeometry(STANDARD_GEOMETRY.receptive_field, args.samples_per_frame),
        build_vocab=args.vocab,
        vocab_min_count=args.vocab_min_count,
        fairseq=args.fairseq,
        workers=args.workers,
        progress=not args.no_progress,
    )
    try:
        if args.corpus == "ksponspeech":
            candidates = ksponspeech_candidates(src, args.split, args.trn)
        elif args.corpus == "zeroth":
            from kwav2vec.data.corpora.zeroth import zeroth_candidates

            candidates = zeroth_candidates(src, args.split)
        elif args.corpus == "folder":
            candidates = folder_candidates(src)
        elif args.corpus == "tsv":
            candidates = tsv_candidates(src, args.audio_root, args.delimiter, args.columns)
        else:
            candidates = [Candidate(e.id, e.path, text=e.text) for e in read_fairseq_manifest(src)]
        report = prepare_corpus(candidates, args.out, args.split, options, corpus=args.corpus, source=str(src))
    except PrepareError as err:  # nothing accepted: nothing written
        print(f"kwav2vec prepare: {err}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as err:
        print(f"kwav2vec prepare: {err}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0
