#!/usr/bin/env python3
"""Build the bundled synthetic Korean demo corpus (data/demo/) with espeak-ng.

Text: the Korean constitution and ten National Assembly bills shipped inside the konlpy wheel
(konlpy/data/corpus/{kolaw,kobill}), read straight from the zip, so no Java and no konlpy install.
Numbers are spelled out in Sino-Korean (제1조 -> 제일조, 2019 -> 이천십구), punctuation becomes word
breaks, and words with anything but Hangul syllables (Latin, Hanja, symbols) cut the text there.
The result is split into short utterances of 6-20 syllables, whose transcript is exactly the
string espeak-ng is asked to say.

Splits: `unlabeled` (pretraining audio, no transcript), `train`, `dev`, `test`; all texts are
distinct. The test split is chosen so that a few percent of its syllable occurrences are syllables
that never occur in train (the case K-wav2vec's grapheme path exists for), every other test
syllable occurs in train.

Audio: espeak-ng's Korean voice with a handful of voice variants, speed and pitch drawn per
utterance; resampled 22050 -> 16000 Hz, silence trimmed and re-padded, speech level set, light
white or pink noise added, then stored as 16-bit mono FLAC with only the top SIGNIFICANT_BITS bits
used. Below a ~30 dB noise floor the low bits are noise that FLAC cannot compress; zeroing them
(FLAC's "wasted bits") makes the files ~3x smaller, adding rounding noise about 33 dB below the
speech, which is why the whole corpus fits in ~20 MB. Everything is deterministic for a seed.

    python scripts/make_demo_corpus.py                      # rebuild data/demo (under a minute on 2 cores)
    python scripts/make_demo_corpus.py --train 1200 --out /tmp/demo_big --konlpy-wheel konlpy-0.6.0-py2.py3-none-any.whl

Needs espeak-ng (`apt-get install espeak-ng`); the committed corpus itself does not.
Without --konlpy-wheel, the wheel is looked up in --cache-dir and otherwise fetched there with
`pip download konlpy==0.6.0 --no-deps`. When kwav2vec's text layer is importable, the vocabularies
(vocab_grapheme.json, vocab_syllable.json from the train transcripts) are written beside the
manifests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import time
import unicodedata
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000  # Hz, what every kwav2vec model consumes
SPLITS = ("unlabeled", "train", "dev", "test")
LABELED = ("train", "dev", "test")
KONLPY_VERSION = "0.6.0"  # pinned: another release may ship other text and change the corpus
CONSTITUTION = "konlpy/data/corpus/kolaw/constitution.txt"
BILLS_DIR = "konlpy/data/corpus/kobill/"

# --- text -------------------------------------------------------------------------------------
MIN_SYLLABLES, MAX_SYLLABLES = 6, 20  # ~1.3-4.5 s at espeak's 0.18-0.25 s per syllable
TARGET_SYLLABLES = (7, 15)  # a chunk ends once it reaches a target drawn from this range
RARE_MAX_CHUNKS = 2  # a syllable in at most this many chunks may be held out of train for test
COMMON_MIN_CHUNKS = 5  # other syllables of an OOV-carrying test chunk must be this widespread
TEST_OOV_TARGET = 0.05  # share of test syllable occurrences unseen in train
MAX_DIGIT_SHARE = 0.25  # paragraphs with more digits than this are tables, skipped
BILL_WRAP_WIDTH = 28  # bill lines at least this long were hard-wrapped, join them to the next

# --- audio ------------------------------------------------------------------------------------
# Voice variants: three male, three female; few enough that a tiny CPU model can learn them.
VOICES = ("ko+m1", "ko+m3", "ko+m6", "ko+f1", "ko+f2", "ko+f4")
SPEED_WPM = (140, 190)  # espeak -s
PITCH = (35, 65)  # espeak -p (0-99)
LEVEL_DBFS = (-21.0, -17.0)  # RMS of the active speech frames, re full scale
NOISE_SNR_DB = (30.0, 40.0)  # added white/pink noise, re active speech; rounding adds ~33 dB more
SIGNIFICANT_BITS = 8  # of the 16 stored: step 2**-7 of full scale, rounding noise ~ -53 dBFS
PAD_SECONDS = (0.08, 0.20)  # silence (with noise) kept before and after the speech
FRAME = 320  # samples, 20 ms: frames for silence detection and speech level
SILENCE_DB = 40.0  # frames this far below the loudest frame are silence


# ==============================================================================================
# Numbers -> Sino-Korean words
# ==============================================================================================

DIGIT_WORDS = "영일이삼사오육칠팔구"
SMALL_UNITS = ("", "십", "백", "천")
LARGE_UNITS = ("", "만", "억", "조")


def _spell_group(value: int) -> str:
    """0 < value < 10000 -> e.g. 1234 -> 천이백삼십사 (a leading 일 before 십/백/천 is not said)."""
    out = []
    for position in range(3, -1, -1):
        digit = value // 10**position % 10
        if digit == 0:
            continue
        word = "" if digit == 1 and position > 0 else DIGIT_WORDS[digit]
        out.append(word + SMALL_UNITS[position])
    return "".join(out)


def spell_integer(digits: str) -> str:
    """Sino-Korean reading of a run of ASCII digits: "2019" -> 이천십구, "10000" -> 만, "0" -> 영.

    A run with a leading zero ("010") and runs beyond 조 are read digit by digit, as people do
    for codes and phone numbers.
    """
    if not digits.isascii() or not digits.isdigit():
        raise ValueError(f"spell_integer expects ASCII digits, got {digits!r}")
    if (len(digits) > 1 and digits[0] == "0") or len(digits) > 4 * len(LARGE_UNITS):
        return "".join(DIGIT_WORDS[int(d)] for d in digits)
    value = int(digits)
    if value == 0:
        return DIGIT_WORDS[0]
    words = []
    for index in range(len(LARGE_UNITS) - 1, -1, -1):
        group = value // 10000**index % 10000
        if group == 0:
            continue
        # 10000 is 만, not 일만; 1억 and 1조 keep their 일.
        spelled = "" if group == 1 and index == 1 else _spell_group(group)
        words.append(spelled + LARGE_UNITS[index])
    return "".join(words)


MAX_NUMBER_DIGITS = 12  # longer digit runs are table cells run together: cut, not read
BREAK = "\u0000"  # stands for an unsayable token; text is cut there, never spoken across it
_NUMBER = re.compile(r"(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(\s*%)?")


def spell_numbers(text: str) -> str:
    """Replace every number (with thousands commas, decimals, a percent sign) by its reading."""

    def reading(match: re.Match[str]) -> str:
        integer, fraction, percent = match.groups()
        integer = integer.replace(",", "")
        if len(integer) > MAX_NUMBER_DIGITS:
            return f" {BREAK} "
        words = spell_integer(integer)
        if fraction:
            words += "점" + "".join(DIGIT_WORDS[int(d)] for d in fraction)
        return words + ("퍼센트" if percent else "")

    return _NUMBER.sub(reading, text)


# ==============================================================================================
# Source text -> paragraphs -> utterance chunks
# ==============================================================================================

_CIRCLED = re.compile(r"[\u2460-\u24ff\u3250-\u32ff]")  # ① ② ... (paragraph numbers, not read)
_ENUMERATOR = re.compile(
    r"^\s*(?:\d+(?:의\d+)?|[가나다라마바사아자차카타파하])\s*\.\s+"
)  # "1.", "1의2.", "가." list labels
_DOTTED_NUMBER = re.compile(r"\d+(?:\s*[·ㆍ․⋅‧∙]\s*\d+)+")  # 3·1, 4·19: read digit-wise by convention
_QUOTED_YEAR = re.compile(r"[’'‘]\s*\d+")  # ’09 = 2009: ambiguous, not spelled
_SENTENCE_END = re.compile(r"[.?!。]")
_PAGE_NUMBER = re.compile(r"^\s*-\s*\d+\s*-\s*$")
_TABLE_START = re.compile(r"^\s*신\s*[·ㆍ]?\s*구조문\s*대비표")


def is_syllable(char: str) -> bool:
    return "\uac00" <= char <= "\ud7a3"


def syllables(text: str) -> list[str]:
    return [c for c in text if is_syllable(c)]


def constitution_paragraphs(text: str) -> list[str]:
    """One paragraph a line (the file is not hard-wrapped)."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def bill_paragraphs(text: str) -> list[str]:
    """Undo the bills' hard wrapping (at ~35 characters, mid-word unless the line ends in a space).

    The header (sponsors, dates) before 제안이유 and the old/new comparison tables (columns
    interleaved line by line) are skipped; page numbers and rule lines are dropped. A line joins
    the next one when it is long enough to have been wrapped, does not end a sentence, and the
    next one does not start a new indented paragraph; short lines are headings or table cells.
    """
    lines = text.replace("\x0c", "\n").splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("제안이유")), 0)
    paragraphs: list[str] = []
    current = ""
    in_table = False
    for line in lines[start:]:
        if _TABLE_START.match(line):
            in_table = True
        elif in_table and "비용추계" in line:
            in_table = False
        if in_table or not line.strip() or _PAGE_NUMBER.match(line) or "---" in line:
            continue
        ended = current.rstrip().endswith(".") or len(current.rstrip()) < BILL_WRAP_WIDTH
        if current and (ended or line[0].isspace()):
            paragraphs.append(current.strip())
            current = ""
        current += line  # a trailing space marks a word boundary at the wrap; none means mid-word
    if current.strip():
        paragraphs.append(current.strip())
    return paragraphs


def paragraph_segments(paragraph: str) -> Iterator[list[str]]:
    """Sayable word runs of one paragraph: sentences, cut again at every unsayable token."""
    text = unicodedata.normalize("NFC", paragraph)
    visible = [c for c in text if not c.isspace()]
    if sum(c.isdigit() for c in visible) > MAX_DIGIT_SHARE * len(visible):
        return  # a table row or a budget line: numbers, not prose
    text = _CIRCLED.sub(" ", text)
    text = _ENUMERATOR.sub(" ", text)
    text = _DOTTED_NUMBER.sub(f" {BREAK} ", text)
    text = _QUOTED_YEAR.sub(f" {BREAK} ", text)
    text = spell_numbers(text)
    for sentence in _SENTENCE_END.split(text):
        # Punctuation and symbols are pauses between words (정치·경제 -> 정치 경제).
        sentence = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in sentence)
        run: list[str] = []
        for word in sentence.split():
            if all(is_syllable(c) for c in word) and len(word) <= MAX_SYLLABLES:
                run.append(word)
            else:  # Latin, Hanja, leftover digits, BREAK, an overlong compound
                if run:
                    yield run
                run = []
        if run:
            yield run


def chunk_words(words: Sequence[str], rng: random.Random) -> list[str]:
    """Cut a word run into utterances of MIN..MAX syllables, each ending near a random target.

    A short tail joins the previous chunk when it fits, and is dropped otherwise.
    """
    chunks: list[list[str]] = []
    current: list[str] = []
    count = 0
    target = rng.randint(*TARGET_SYLLABLES)
    for word in words:
        if current and count + len(word) > MAX_SYLLABLES:
            if count >= MIN_SYLLABLES:
                chunks.append(current)
            current, count, target = [], 0, rng.randint(*TARGET_SYLLABLES)
        current.append(word)
        count += len(word)
        if count >= target:
            chunks.append(current)
            current, count, target = [], 0, rng.randint(*TARGET_SYLLABLES)
    if current:
        if count >= MIN_SYLLABLES:
            chunks.append(current)
        elif chunks and sum(map(len, chunks[-1])) + count <= MAX_SYLLABLES:
            chunks[-1] = chunks[-1] + current
    return [" ".join(chunk) for chunk in chunks]


def read_sources(wheel: Path) -> list[tuple[str, list[str]]]:
    """(file name inside the wheel, paragraphs) for the constitution and every bill."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        bills = sorted(n for n in names if n.startswith(BILLS_DIR) and n.endswith(".txt"))
        if CONSTITUTION not in names or not bills:
            raise SystemExit(f"{wheel}: no {CONSTITUTION} or {BILLS_DIR}*.txt inside; is it a konlpy wheel?")
        sources = [(CONSTITUTION, constitution_paragraphs(archive.read(CONSTITUTION).decode("utf-8")))]
        sources += [(n, bill_paragraphs(archive.read(n).decode("utf-8"))) for n in bills]
    return sources


def make_utterance_texts(sources: Iterable[tuple[str, list[str]]], seed: int) -> list[str]:
    """All distinct utterance texts in source order."""
    rng = random.Random(seed)
    seen: dict[str, None] = {}
    for _, paragraphs in sources:
        for paragraph in paragraphs:
            for run in paragraph_segments(paragraph):
                for chunk in chunk_words(run, rng):
                    seen.setdefault(chunk, None)
    return list(seen)


# ==============================================================================================
# Splits with held-out test syllables
# ==============================================================================================


def split_texts(texts: Sequence[str], counts: dict[str, int], seed: int) -> dict[str, list[str]]:
    """Assign distinct texts to the splits; test gets ~TEST_OOV_TARGET unseen syllables.

    1. OOV carriers: test chunks holding one or two rare syllables (in <= RARE_MAX_CHUNKS chunks
       of the whole text), all their other syllables widespread. Their rare syllables are held
       out: no train chunk may contain them.
    2. train: drawn from the chunks without held-out syllables.
    3. the rest of test: chunks whose syllables all occur in train, so the unseen share is exactly
       the carriers' held-out syllables.
    4. dev from the chunks without held-out syllables; unlabeled from everything left.
    """
    rng = random.Random(seed)
    pool = list(texts)
    rng.shuffle(pool)
    df = Counter(s for t in pool for s in set(syllables(t)))
    mean_len = sum(len(syllables(t)) for t in pool) / max(len(pool), 1)
    wanted_oov = round(TEST_OOV_TARGET * counts["test"] * mean_len)

    held_out: set[str] = set()
    carriers: list[str] = []
    oov = 0
    for text in pool:
        if oov >= wanted_oov or len(carriers) >= counts["test"]:
            break
        syl = syllables(text)
        rare = [s for s in syl if df[s] <= RARE_MAX_CHUNKS]
        common_enough = all(df[s] >= COMMON_MIN_CHUNKS for s in syl if df[s] > RARE_MAX_CHUNKS)
        if 1 <= len(rare) <= 2 and common_enough:
            carriers.append(text)
            held_out.update(rare)
            oov += len(rare)
    if oov < wanted_oov:
        raise SystemExit(f"only {oov} unseen test syllables available, wanted {wanted_oov}")

    used = set(carriers)
    clean = [t for t in pool if t not in used and not held_out.intersection(t)]
    train = clean[: counts["train"]]
    used.update(train)
    train_syllables = {s for t in train for s in syllables(t)}
    fillers = [t for t in clean if t not in used and set(syllables(t)) <= train_syllables]
    test = carriers + fillers[: counts["test"] - len(carriers)]
    used.update(test)
    dev = [t for t in clean if t not in used][: counts["dev"]]
    used.update(dev)
    unlabeled = [t for t in pool if t not in used][: counts["unlabeled"]]

    splits = {"unlabeled": unlabeled, "train": train, "dev": dev, "test": test}
    short = {k: (len(v), counts[k]) for k, v in splits.items() if len(v) < counts[k]}
    if short:
        raise SystemExit(f"not enough distinct text for the requested counts (got, wanted): {short}")
    rng.shuffle(test)  # carriers first would make the OOV utterances the first test ids
    return splits


def unseen_share(texts: Iterable[str], known: set[str]) -> tuple[float, int, int]:
    """(share of syllable occurrences not in `known`, unseen occurrences, unseen types)."""
    occurrences = [s for t in texts for s in syllables(t)]
    unseen = [s for s in occurrences if s not in known]
    return len(unseen) / max(len(occurrences), 1), len(unseen), len(set(unseen))


# ==============================================================================================
# Audio
# ==============================================================================================


@dataclass(frozen=True)
class UtterancePlan:
    """Everything that decides one utterance's audio (drawn before the parallel synthesis)."""

    uid: str
    text: str
    path: str  # output FLAC
    voice: str
    speed: int
    pitch: int
    level_dbfs: float
    noise: str  # "white" | "pink"
    snr_db: float
    pad_before: float
    pad_after: float
    noise_seed: int


def draw_voices(splits: dict[str, list[str]], out_dir: Path, seed: int) -> dict[str, list[UtterancePlan]]:
    rng = random.Random(seed + 1)
    plans: dict[str, list[UtterancePlan]] = {}
    for split in SPLITS:
        plans[split] = []
        for index, text in enumerate(splits[split], start=1):
            uid = f"demo_{split}_{index:04d}"
            plans[split].append(
                UtterancePlan(
                    uid=uid,
                    text=text,
                    path=str(out_dir / "audio" / split / f"{uid}.flac"),
                    voice=rng.choice(VOICES),
                    speed=rng.randint(*SPEED_WPM),
                    pitch=rng.randint(*PITCH),
                    level_dbfs=round(rng.uniform(*LEVEL_DBFS), 2),
                    noise=rng.choice(("white", "pink")),
                    snr_db=round(rng.uniform(*NOISE_SNR_DB), 2),
                    pad_before=round(rng.uniform(*PAD_SECONDS), 3),
                    pad_after=round(rng.uniform(*PAD_SECONDS), 3),
                    noise_seed=rng.getrandbits(32),
                )
            )
    return plans


def espeak(text: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    """espeak-ng's waveform (float64 in [-1, 1]) and rate. Its streamed WAV header has no valid
    lengths, so the data chunk is read to the end of the output."""
    result = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
        capture_output=True,
        check=False,
    )
    raw = result.stdout
    if result.returncode != 0 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise RuntimeError(
            f"espeak-ng failed on {text!r} ({voice}): {result.stderr.decode(errors='replace')}"
        )
    rate = struct.unpack("<I", raw[24:28])[0]
    data = raw.find(b"data", 12)
    samples = np.frombuffer(raw[data + 8 :], dtype="<i2", count=(len(raw) - data - 8) // 2)
    return samples.astype(np.float64) / 32768.0, rate


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance 1/f noise (spectrum shaped in the frequency domain)."""
    spectrum = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    freqs = np.arange(n // 2 + 1, dtype=np.float64)
    freqs[0] = 1.0
    noise = np.fft.irfft(spectrum / np.sqrt(freqs), n)
    return noise / noise.std()


def frame_power(x: np.ndarray) -> np.ndarray:
    n = len(x) // FRAME * FRAME
    return (x[:n].reshape(-1, FRAME) ** 2).mean(axis=1)


def render(clean: np.ndarray, plan: UtterancePlan) -> tuple[np.ndarray, float]:
    """16 kHz speech -> (int16 samples to store, effective SNR in dB of the stored audio).

    Trims silence to the first/last frame within SILENCE_DB of the loudest, pads PAD_SECONDS,
    sets the active-speech RMS to the planned level, adds noise at the planned SNR, and rounds
    to SIGNIFICANT_BITS bits (the noise dithers that rounding).
    """
    power = frame_power(clean)
    if len(power) == 0 or power.max() <= 0:
        raise RuntimeError(f"{plan.uid}: espeak-ng produced silence for {plan.text!r}")
    active = np.nonzero(power >= power.max() * 10 ** (-SILENCE_DB / 10))[0]
    speech = clean[active[0] * FRAME : (active[-1] + 1) * FRAME]
    speech_rms = math.sqrt(power[active].mean())
    target_rms = 10 ** (plan.level_dbfs / 20)
    speech = speech * (target_rms / speech_rms)
    peak = np.abs(speech).max()
    if peak > 0.9:  # keep headroom for the noise; the level is then a little lower than planned
        speech, target_rms = speech * (0.9 / peak), target_rms * 0.9 / peak
    before, after = round(plan.pad_before * SAMPLE_RATE), round(plan.pad_after * SAMPLE_RATE)
    signal = np.concatenate([np.zeros(before), speech, np.zeros(after)])

    rng = np.random.default_rng(plan.noise_seed)
    noise = rng.standard_normal(len(signal)) if plan.noise == "white" else pink_noise(len(signal), rng)
    noisy = signal + noise * target_rms * 10 ** (-plan.snr_db / 20)
    step = 2 ** (16 - SIGNIFICANT_BITS)
    stored = np.clip(np.round(noisy * 32768 / step) * step, -32768, 32768 - step).astype(np.int16)
    error = stored / 32768.0 - signal
    effective_snr = 10 * math.log10(target_rms**2 / (error**2).mean())
    return stored, effective_snr


_RESAMPLERS: dict[int, object] = {}


def to_16k(wave: np.ndarray, rate: int) -> np.ndarray:
    import torch
    import torchaudio

    if rate == SAMPLE_RATE:
        return wave
    if rate not in _RESAMPLERS:  # the sinc kernel is built once per worker
        _RESAMPLERS[rate] = torchaudio.transforms.Resample(
            rate, SAMPLE_RATE, lowpass_filter_width=16, rolloff=0.95, resampling_method="sinc_interp_kaiser"
        )
    with torch.no_grad():
        return _RESAMPLERS[rate](torch.from_numpy(wave).float()).double().numpy()


def synthesize(plan: UtterancePlan) -> tuple[str, int, float]:
    """Write one FLAC; returns (uid, num_samples, effective SNR dB)."""
    import soundfile as sf

    wave, rate = espeak(plan.text, plan.voice, plan.speed, plan.pitch)
    stored, snr = render(to_16k(wave, rate), plan)
    Path(plan.path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(plan.path, stored, SAMPLE_RATE, format="FLAC", subtype="PCM_16", compression_level=1.0)
    return plan.uid, len(stored), snr


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # the parallelism is across processes


# ==============================================================================================
# Outputs
# ==============================================================================================


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_vocabularies(out_dir: Path, train_texts: Sequence[str]) -> bool:
    """vocab_grapheme.json / vocab_syllable.json from the train transcripts, if kwav2vec is importable."""
    try:
        from kwav2vec.text.vocab import Vocabulary
    except ImportError:
        print("kwav2vec.text.vocab not importable: vocabularies not written (run the data preparation)")
        return False
    Vocabulary.grapheme().save(out_dir / "vocab_grapheme.json")
    Vocabulary.syllables_from_texts(train_texts).save(out_dir / "vocab_syllable.json")
    return True


def check_against_normalizer(texts: Iterable[str]) -> None:
    """Every transcript must be a fixed point of the project's normalizer (when importable)."""
    try:
        from kwav2vec.text.normalize import normalize
    except ImportError:
        return
    for text in texts:
        result = normalize(text).text
        if result != text:
            raise AssertionError(f"transcript {text!r} is not normalized (normalize gives {result!r})")


def espeak_version() -> str:
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"text-to-speech:\s*(\S+)", out)
    return match.group(1) if match else out.strip()


def find_wheel(wheel: str | None, cache_dir: Path) -> Path:
    if wheel:
        path = Path(wheel)
        if not path.is_file():
            raise SystemExit(f"--konlpy-wheel {path}: no such file")
        return path
    found = sorted(cache_dir.glob(f"konlpy-{KONLPY_VERSION}-*.whl"))
    if found:
        return found[0]
    cache_dir.mkdir(parents=True, exist_ok=True)
    print(f"downloading konlpy=={KONLPY_VERSION} (wheel only, for its text files) into {cache_dir}")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            f"konlpy=={KONLPY_VERSION}",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            str(cache_dir),
        ],
        check=True,
    )
    found = sorted(cache_dir.glob(f"konlpy-{KONLPY_VERSION}-*.whl"))
    if not found:
        raise SystemExit(f"pip download left no konlpy-{KONLPY_VERSION} wheel in {cache_dir}")
    return found[0]


def readme(stats: dict) -> str:
    rows = "\n".join(
        f"| {s['split']} | {s['utterances']} | {s['hours']:.3f} | {s['mean_seconds']:.2f} "
        f"({s['min_seconds']:.2f}-{s['max_seconds']:.2f}) | {s['syllables']} | {s['megabytes']:.2f} |"
        for s in stats["splits"]
    )
    voices = ", ".join(f"`{v}`" for v in VOICES)
    vocab = (
        "`vocab_grapheme.json` (all 67 modern jamo) and `vocab_syllable.json` (the "
        f"{stats['train_syllable_types']} syllables of the train transcripts), both written with "
        "`kwav2vec.text.vocab.Vocabulary`."
        if stats["vocabularies"]
        else "No vocabulary files here: the data preparation step builds them from `train.jsonl`."
    )
    return f"""# Demo corpus: synthetic Korean speech

Written by `scripts/make_demo_corpus.py` together with everything else in this folder; do not edit
by hand. `make demo` only reads the committed files. To rebuild or enlarge it (needs espeak-ng;
this build took under a minute on 2 CPU cores):

    python scripts/make_demo_corpus.py --seed {stats["seed"]} --unlabeled {stats["counts"]["unlabeled"]} \\
        --train {stats["counts"]["train"]} --dev {stats["counts"]["dev"]} --test {stats["counts"]["test"]} [--konlpy-wheel konlpy-{KONLPY_VERSION}-py2.py3-none-any.whl]

## Text

- Source: the Korean constitution and ten National Assembly bills (2010), the text files shipped
  inside the konlpy {KONLPY_VERSION} wheel (`konlpy/data/corpus/kolaw`, `kobill`; wheel sha256
  `{stats["wheel_sha256"][:16]}...`), read from the zip.
- Numbers spelled out in Sino-Korean (제1조 -> 제일조, 2019 -> 이천십구, 40% -> 사십퍼센트);
  punctuation removed; words with Latin letters, Hanja, other symbols, and tables are cut out.
- Utterances: {MIN_SYLLABLES}-{MAX_SYLLABLES} syllables of consecutive words ({stats["pool"]} distinct
  ones were available). They need not be whole phrases (some start with a particle).
- Transcripts are Hangul syllables and single spaces only, exactly what espeak-ng was asked to
  say, so `text` and `norm` are identical.

## Audio

- espeak-ng {stats["espeak"]} Korean voice (`-v ko`: rule-based pronunciation, formant synthesis).
  Voice variant, speed and pitch are drawn per utterance: {len(VOICES)} variants ({voices}), speed
  {SPEED_WPM[0]}-{SPEED_WPM[1]} wpm, pitch {PITCH[0]}-{PITCH[1]}.
- 16 kHz mono FLAC. Silence is trimmed to {PAD_SECONDS[0]:.2f}-{PAD_SECONDS[1]:.2f} s on each side, the
  active-speech level is {LEVEL_DBFS[0]:.0f} to {LEVEL_DBFS[1]:.0f} dBFS, and white or pink noise is added
  at {NOISE_SNR_DB[0]:.0f}-{NOISE_SNR_DB[1]:.0f} dB SNR.
- Samples are 16-bit, but only the top {SIGNIFICANT_BITS} bits are used. Bits below a ~30 dB noise floor
  carry only noise, and FLAC cannot compress noise. With them zeroed, FLAC stores the zero bits for
  free and the files are about 3x smaller ({stats["bytes_per_second"] / 1000:.1f} kB per second instead of
  ~20). The rounding adds noise about 33 dB below the speech. The effective SNR of the stored
  audio (noise plus rounding, relative to active speech) has a mean of {stats["snr_mean"]:.1f} dB and a
  range of {stats["snr_min"]:.1f}-{stats["snr_max"]:.1f} dB.

## Splits

| split | utterances | hours | seconds: mean (min-max) | syllables | MB |
|---|---|---|---|---|---|
{rows}

Total: {stats["megabytes"]:.2f} MB of FLAC. All utterance texts are distinct across splits. `unlabeled`
holds pretraining audio, so its manifest has no `text`/`norm`.

**Syllables unseen in train.** {stats["test_oov_share"] * 100:.1f}% of the test split's syllable occurrences
({stats["test_oov_tokens"]} of {stats["test_syllables"]}: {stats["test_oov_types"]} distinct syllables, in {stats["test_oov_utterances"]} of {stats["counts"]["test"]} utterances)
never occur in train. Every other test syllable does. A syllable-only model cannot output these
syllables; the grapheme (jamo) path can. To get them, test utterances with rare syllables were
picked first, and train was then kept free of those syllables. The dev split was not steered:
{stats["dev_oov_share"] * 100:.1f}% of its syllable occurrences are unseen in train.

## Files

- `{{unlabeled,train,dev,test}}.jsonl`: one utterance per line with the keys `{{"id", "audio",
  "num_samples", "sample_rate", "text", "norm"}}`. `audio` is relative to this folder;
  `num_samples` counts samples at 16 kHz.
- `audio/<split>/<id>.flac`
- {vocab}
"""


# ==============================================================================================
# Main
# ==============================================================================================


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out",
        default=str(Path(__file__).resolve().parent.parent / "data" / "demo"),
        help="output folder (default: data/demo of this repository)",
    )
    parser.add_argument("--seed", type=int, default=0)
    for split, default in (("unlabeled", 300), ("train", 600), ("dev", 60), ("test", 60)):
        parser.add_argument(
            f"--{split}", type=int, default=default, help=f"{split} utterances (default {default})"
        )
    parser.add_argument(
        "--konlpy-wheel", help="path of a konlpy wheel; default: find or download it in --cache-dir"
    )
    parser.add_argument(
        "--cache-dir",
        default=str(Path.home() / ".cache" / "kwav2vec"),
        help="where a downloaded konlpy wheel is kept (default ~/.cache/kwav2vec)",
    )
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="synthesis processes")
    parser.add_argument(
        "--dry-run", action="store_true", help="choose the texts and print statistics; write nothing"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    out_dir = Path(args.out).resolve()
    counts = {split: getattr(args, split) for split in SPLITS}
    if min(counts.values()) < 1:
        raise SystemExit(f"every split needs at least one utterance, got {counts}")

    wheel = find_wheel(args.konlpy_wheel, Path(args.cache_dir))
    texts = make_utterance_texts(read_sources(wheel), args.seed)
    check_against_normalizer(texts)
    splits = split_texts(texts, counts, args.seed)
    train_syllables = {s for t in splits["train"] for s in syllables(t)}
    test_share, test_unseen, test_types = unseen_share(splits["test"], train_syllables)
    print(
        f"{len(texts)} distinct utterance texts; test: {test_share:.1%} of syllables unseen in train "
        f"({test_unseen} occurrences, {test_types} types)"
    )
    if args.dry_run:
        for split in SPLITS:
            print(f"  {split}: {len(splits[split])}, e.g. {splits[split][:2]}")
        return 0

    if shutil.which("espeak-ng") is None:
        raise SystemExit(
            "espeak-ng not found: install it (apt-get install espeak-ng) to synthesize the corpus"
        )
    plans = draw_voices(splits, out_dir, args.seed)
    for split in SPLITS:  # files of a previous, larger build would otherwise linger
        for stale in (out_dir / "audio" / split).glob("*.flac"):
            stale.unlink()
    everything = [plan for split in SPLITS for plan in plans[split]]
    with multiprocessing.get_context("fork").Pool(args.jobs, initializer=_worker_init) as pool:
        results = {}
        for done, (uid, num_samples, snr) in enumerate(
            pool.imap(synthesize, everything, chunksize=8), start=1
        ):
            results[uid] = (num_samples, snr)
            if done % 100 == 0 or done == len(everything):
                print(f"  synthesized {done}/{len(everything)} ({time.time() - started:.0f} s)", flush=True)

    split_stats = []
    total_bytes = total_samples = 0
    for split in SPLITS:
        rows = []
        for plan in plans[split]:
            row = {
                "id": plan.uid,
                "audio": os.path.relpath(plan.path, out_dir),
                "num_samples": results[plan.uid][0],
                "sample_rate": SAMPLE_RATE,
            }
            if split in LABELED:
                row.update(text=plan.text, norm=plan.text)
            rows.append(row)
        write_jsonl(out_dir / f"{split}.jsonl", rows)
        seconds = [r["num_samples"] / SAMPLE_RATE for r in rows]
        size = sum(Path(p.path).stat().st_size for p in plans[split])
        total_bytes, total_samples = total_bytes + size, total_samples + sum(r["num_samples"] for r in rows)
        split_stats.append(
            dict(
                split=split,
                utterances=len(rows),
                hours=sum(seconds) / 3600,
                mean_seconds=float(np.mean(seconds)),
                min_seconds=min(seconds),
                max_seconds=max(seconds),
                syllables=sum(len(syllables(p.text)) for p in plans[split]),
                megabytes=size / 1e6,
            )
        )
    vocabularies = write_vocabularies(out_dir, splits["train"])
    snrs = [snr for _, snr in results.values()]
    stats = dict(
        seed=args.seed,
        counts=counts,
        pool=len(texts),
        espeak=espeak_version(),
        wheel_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(),
        splits=split_stats,
        megabytes=total_bytes / 1e6,
        bytes_per_second=total_bytes / (total_samples / SAMPLE_RATE),
        snr_mean=float(np.mean(snrs)),
        snr_min=min(snrs),
        snr_max=max(snrs),
        test_oov_share=test_share,
        test_oov_tokens=test_unseen,
        test_oov_types=test_types,
        test_syllables=sum(len(syllables(t)) for t in splits["test"]),
        test_oov_utterances=sum(any(s not in train_syllables for s in syllables(t)) for t in splits["test"]),
        dev_oov_share=unseen_share(splits["dev"], train_syllables)[0],
        train_syllable_types=len(train_syllables),
        vocabularies=vocabularies,
    )
    (out_dir / "README.md").write_text(readme(stats), encoding="utf-8")
    for s in split_stats:
        print(f"  {s['split']:>9}: {s['utterances']} utterances, {s['hours']:.3f} h, {s['megabytes']:.2f} MB")
    print(f"total {stats['megabytes']:.2f} MB in {out_dir} ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
