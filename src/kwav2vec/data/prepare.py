"""Corpus preparation shared by every corpus: check each utterance, write the manifest, the
rejects, the report and (for a training split) the vocabularies.

A corpus module only lists `Candidate`s (id, audio file, transcript or transcript file); this
module reads every audio file once (that is how corrupt, truncated, silent or too-short files are
found, and how `num_samples` at 16 kHz is known exactly), normalizes every transcript and checks
that CTC can align it with the audio. Each utterance ends up in exactly one of two files:

    {split}.jsonl          accepted utterances (the manifest, format in data/manifest.py)
    {split}.rejects.jsonl  {"id", "audio", "reason", "detail"} per excluded utterance
    {split}.report.json    counts per reject reason, resampled/downmixed counts, hours, options

Reject reasons: audio:missing, audio:empty, audio:unreadable, audio:truncated, audio:silent,
audio:too-short, audio:too-long, audio:dangling-symlink, audio:symlink-loop, audio:format-mismatch
(a RIFF/WAV header in a headerless `.pcm`), transcript:missing, transcript:<TranscriptError reason>
(empty, digits, latin, unsupported, malformed, ...), ctc-infeasible, duplicate-id, and the listers'
own: listing:empty-path (tsv), listing:malformed-line (zeroth).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from kwav2vec.data.audio import SAMPLE_RATE, AudioError, is_silent, load_audio_with_info
from kwav2vec.data.dataset import ctc_min_frames
from kwav2vec.data.fairseq_manifest import write_fairseq_manifest
from kwav2vec.data.manifest import (
    GRAPHEME_VOCAB_FILE,
    SYLLABLE_VOCAB_FILE,
    ManifestEntry,
    manifest_audio_path,
    write_manifest,
)
from kwav2vec.fileio import atomic_write_text, fsync_dir, pid_alive
from kwav2vec.models.config import STANDARD_GEOMETRY, FrameGeometry
from kwav2vec.text.hangul import MODERN_JAMO
from kwav2vec.text.normalize import NormalizerConfig, TranscriptError, normalize
from kwav2vec.text.vocab import Vocabulary

log = logging.getLogger(__name__)

TEXT_ENCODINGS = ("utf-8", "cp949")  # KsponSpeech ships CP949; everything else is UTF-8


@dataclass(frozen=True)
class Candidate:
    """One utterance as a corpus lists it."""

    id: str
    audio: str  # absolute path
    text: str | None = None  # raw transcript, when the listing carries it
    text_path: str | None = None  # else: a file holding it (UTF-8 or CP949)
    meta: dict | None = None  # other columns of a listing, kept in the manifest line as "meta"
    problem: tuple[str, str] | None = None  # (reason, detail): the lister already knows it is a reject


@dataclass(frozen=True)
class PrepareOptions:
    normalizer: NormalizerConfig = NormalizerConfig()
    unlabeled: bool = False  # audio only (pretraining manifests): transcripts are not read
    min_samples: int = STANDARD_GEOMETRY.receptive_field  # shorter audio is rejected (too short for one frame)
    min_duration: float = 0.0  # seconds; the larger of this and min_samples applies
    max_duration: float | None = None  # seconds; longer audio is rejected
    # for the CTC feasibility check; a model with another conv stack refilters in its datamodule
    geometry: FrameGeometry = STANDARD_GEOMETRY
    silence_threshold: float = 1e-4  # peak amplitude below this is "silent"
    build_vocab: bool | None = None  # None: build vocabularies for a split named "train"
    vocab_min_count: int = 1  # syllables seen fewer times are left to <unk>
    fairseq: bool = False  # also write {split}.tsv/.ltr/.wrd
    workers: int = 1  # processes reading audio
    progress: bool = True  # tqdm progress bar

    @property
    def min_length(self) -> int:
        return max(self.min_samples, round(self.min_duration * SAMPLE_RATE))


@dataclass
class Outcome:
    """Result of checking one candidate: an accepted entry or a reject, plus notes to count."""

    entry: dict | None = None
    reject: dict | None = None
    notes: list[str] = field(default_factory=list)  # "resampled:8000", "downmixed:2", "text-changed", ...


def read_text_file(path: str | os.PathLike) -> tuple[str, str]:
    """(text, encoding) of a transcript file, trying UTF-8 then CP949 (a CP949 Hangul byte pair is
    never valid UTF-8, so the order is safe)."""
    data = Path(path).read_bytes()
    for encoding in TEXT_ENCODINGS:
        try:
            return data.decode(encoding).lstrip("\ufeff"), encoding
        except UnicodeDecodeError:
            continue
    raise UnicodeDecodeError("utf-8/cp949", data, 0, len(data), f"{path} is neither UTF-8 nor CP949")


_GRAPHEMES = Vocabulary.grapheme()
_SYLLABLES = Vocabulary([], "syllable")  # tokenize only


def check_candidate(c: Candidate, manifest_dir: str, options: PrepareOptions) -> Outcome:
    """Read and check one utterance (runs in worker processes)."""
    out = Outcome()
    audio_field = manifest_audio_path(c.audio, manifest_dir)

    def reject(reason: str, detail: str) -> Outcome:
        out.reject = {"id": c.id, "audio": c.audio, "reason": reason, "detail": detail}
        return out

    if c.problem is not None:
        return reject(*c.problem)
    try:
        wav, info = load_audio_with_info(c.audio)
    except AudioError as err:
        return reject(f"audio:{err.reason}", err.detail)
    if info.sample_rate != SAMPLE_RATE:
        out.notes.append(f"resampled:{info.sample_rate}")
    if info.channels > 1:
        out.notes.append(f"downmixed:{info.channels}")
    n = len(wav)
    if n < options.min_length:
        return reject("audio:too-short", f"{n} samples < {options.min_length}")
    if options.max_duration is not None and n > options.max_duration * SAMPLE_RATE:
        return reject("audio:too-long", f"{n / SAMPLE_RATE:.2f} s > {options.max_duration} s")
    if is_silent(wav, options.silence_threshold):
        return reject("audio:silent", f"peak amplitude below {options.silence_threshold}")
    entry = {"id": c.id, "audio": audio_field, "num_samples": n, "sample_rate": info.sample_rate}
    if c.meta:
        entry["meta"] = dict(c.meta)
    if options.unlabeled:
        out.entry = entry
        return out

    text = c.text
    if text is None and c.text_path is not None:
        try:
            text, encoding = read_text_file(c.text_path)
        except FileNotFoundError:
            return reject("transcript:missing", f"no transcript file {c.text_path}")
        except (OSError, UnicodeDecodeError) as err:
            return reject("transcript:unreadable", str(err))
        out.notes.append(f"encoding:{encoding}")
    if text is None:
        return reject("transcript:missing", "no transcript")
    text = " ".join(text.split())  # newlines, CRLF, tabs
    try:
        result = normalize(text, options.normalizer)
    except TranscriptError as err:
        return reject(f"transcript:{err.reason}", str(err))
    if result.text is None:
        return reject(f"transcript:{result.reason}", result.detail or "; ".join(result.changes))
    if result.changes:
        out.notes.append("text-changed")
    frames = options.geometry.num_frames(n)
    need = max(ctc_min_frames(_GRAPHEMES.tokenize(result.text)), ctc_min_frames(_SYLLABLES.tokenize(result.text)))
    if need > frames:
        return reject("ctc-infeasible", f"{need} CTC steps needed, the audio gives {frames} frames")
    out.entry = {**entry, "text": text, "norm": result.text}
    return out


@dataclass
class PrepareReport:
    corpus: str
    split: str
    source: str
    manifest: str
    total: int = 0
    accepted: int = 0
    rejected: int = 0
    hours: float = 0.0
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)  # resampled:<rate>, downmixed:<channels>, ...
    vocab: dict[str, int] = field(default_factory=dict)  # vocabulary sizes when built
    files: list[str] = field(default_factory=list)
    options: dict = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"{self.corpus} {self.split}: {self.accepted} of {self.total} utterances accepted "
            f"({self.hours:.2f} h), {self.rejected} rejected",
        ]
        lines += [f"  rejected {reason:<24} {n}" for reason, n in sorted(self.rejects_by_reason.items())]
        lines += [f"  note     {note:<24} {n}" for note, n in sorted(self.notes.items())]
        lines += [f"  vocab    {kind:<24} {n} tokens" for kind, n in self.vocab.items()]
        lines += [f"  wrote {f}" for f in self.files]
        return "\n".join(lines)


class PrepareError(ValueError):
    """Preparation that found nothing to write; nothing was written (previous outputs untouched)."""


def _failure(corpus: str, split: str, source: str, out_dir: Path, total: int, rejects: list[dict]) -> PrepareError:
    """What a preparation that accepts nothing found, with counts and a few examples."""
    untouched = f"nothing written, the outputs in {out_dir} are as they were"
    if total == 0:
        return PrepareError(f"{corpus} {split}: no audio found in {source}: no utterance listed ({untouched})")
    reasons = Counter(r["reason"] for r in rejects)
    counts = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items()))
    examples = "; ".join(f"{r['id']}: {r['reason']} ({r['detail']})" for r in rejects[:3])
    if set(reasons) == {"transcript:missing"}:
        return PrepareError(f"{corpus} {split}: no transcripts: none of the {total} audio files in {source} has one "
                            f"(e.g. {examples}); for an audio-only manifest use --unlabeled ({untouched})")
    if all(r.startswith("audio:missing") for r in reasons):
        return PrepareError(f"{corpus} {split}: no audio found in {source}: the {total} listed files are missing "
                            f"(e.g. {examples}) ({untouched})")
    return PrepareError(f"{corpus} {split}: all {total} utterances in {source} were rejected ({counts}; e.g. "
                        f"{examples}) ({untouched})")


def _staging_dir(out_dir: Path, split: str) -> Path:
    """A fresh `.{split}.staging-<pid>` folder in `out_dir`; those of killed runs are removed."""
    prefix = f".{split}.staging-"
    for old in out_dir.glob(f"{prefix}*"):
        pid = old.name[len(prefix):]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    staging = out_dir / f"{prefix}{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def prepare_corpus(
    candidates: Iterable[Candidate], out_dir: str | os.PathLike, split: str, options: PrepareOptions,
    *, corpus: str, source: str,
) -> PrepareReport:
    """Check every candidate and write manifest, rejects, report (and vocabularies, fairseq files).

    All of a split's outputs are written to a staging folder inside `out_dir` and moved into place
    (one `os.replace` each) only when everything was written; the manifest goes last, so a reader
    that sees the new manifest sees the new vocabularies too. When nothing is accepted (no audio
    found, no transcripts, everything rejected) PrepareError says what was found, with counts, and
    nothing in `out_dir` changes.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    candidates = list(candidates)
    manifest_path = out_dir / f"{split}.jsonl"
    report = PrepareReport(corpus, split, str(source), str(manifest_path), total=len(candidates))
    report.options = _jsonable(asdict(options))

    accepted: list[dict] = []
    rejects: list[dict] = []
    notes: Counter[str] = Counter()
    seen: set[str] = set()
    for c, outcome in zip(candidates, _check_all(candidates, str(out_dir), options), strict=True):
        notes.update(outcome.notes)
        if outcome.entry is not None and c.id in seen:
            outcome = Outcome(reject={"id": c.id, "audio": c.audio, "reason": "duplicate-id",
                                      "detail": "an earlier utterance has the same id"})
        if outcome.entry is not None:
            seen.add(c.id)
            accepted.append(outcome.entry)
        else:
            rejects.append(outcome.reject)
    if not accepted:
        raise _failure(corpus, split, str(source), out_dir, len(candidates), rejects)

    staging = _staging_dir(out_dir, split)
    try:
        written = _write_outputs(staging, out_dir, split, options, report, accepted, rejects, notes)
        # manifest last: its presence means the rest of this run's files are in place
        for name in sorted(written, key=lambda n: n == manifest_path.name):
            os.replace(staging / name, out_dir / name)
        fsync_dir(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _write_outputs(staging: Path, out_dir: Path, split: str, options: PrepareOptions, report: PrepareReport,
                   accepted: list[dict], rejects: list[dict], notes: Counter[str]) -> list[str]:
    """Writes every output into `staging` (report.files names their final places); returns the names."""
    names = [f"{split}.jsonl", f"{split}.rejects.jsonl"]
    write_manifest(staging / names[0], accepted)
    write_manifest(staging / names[1], rejects)
    report.accepted, report.rejected = len(accepted), len(rejects)
    report.hours = sum(e["num_samples"] for e in accepted) / SAMPLE_RATE / 3600
    report.rejects_by_reason = dict(sorted(Counter(r["reason"] for r in rejects).items()))
    report.notes = dict(sorted(notes.items()))

    build_vocab = options.build_vocab if options.build_vocab is not None else split == "train"
    if build_vocab and not options.unlabeled:
        for name, vocab in zip((GRAPHEME_VOCAB_FILE, SYLLABLE_VOCAB_FILE),
                               build_vocabularies([e["norm"] for e in accepted], options.vocab_min_count), strict=True):
            vocab.save(staging / name)
            report.vocab[vocab.kind] = len(vocab)
            names.append(name)
    if options.fairseq:
        entries = [ManifestEntry(e["id"], e["audio"], e["num_samples"], e["sample_rate"], e.get("text"),
                                 e.get("norm"), path=os.path.join(out_dir, e["audio"])) for e in accepted]
        root = os.path.commonpath([e.path for e in entries])
        root = root if os.path.isdir(root) else os.path.dirname(root)
        names += [Path(p).name for p in write_fairseq_manifest(entries, staging, split, root=root)]
    names.append(f"{split}.report.json")
    report.files = [str(out_dir / n) for n in names]
    atomic_write_text(staging / names[-1], json.dumps(asdict(report), ensure_ascii=False, indent=1) + "\n")
    return names


def build_vocabularies(texts: Sequence[str], min_count: int = 1) -> tuple[Vocabulary, Vocabulary]:
    """Grapheme vocabulary (all modern jamo, plus digits/Latin letters the texts keep) and syllable
    vocabulary (characters seen at least `min_count` times) of normalized training texts."""
    extra = sorted({t for text in texts for t in _GRAPHEMES.tokenize(text)} - set(MODERN_JAMO) - {"|"})
    return Vocabulary.grapheme(extra), Vocabulary.syllables_from_texts(texts, min_count)


def _check_all(candidates: list[Candidate], manifest_dir: str, options: PrepareOptions):
    bar = dict(total=len(candidates), desc="checking audio", unit="utt", disable=not options.progress)
    if options.workers <= 1:
        yield from tqdm((check_candidate(c, manifest_dir, options) for c in candidates), **bar)
        return
    # One torch thread per worker: forked children that run OpenMP regions the parent already
    # used can deadlock (GNU OpenMP is not fork-safe); PyTorch's DataLoader workers do the same.
    with ProcessPoolExecutor(options.workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        n = len(candidates)
        results = pool.map(check_candidate, candidates, [manifest_dir] * n, [options] * n,
                           chunksize=max(1, min(256, n // (options.workers * 8) or 1)))
        yield from tqdm(results, **bar)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj if isinstance(obj, (str, int, float, bool, type(None))) else str(obj)
