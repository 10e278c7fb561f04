"""The committed demo corpus (data/demo) and the pure parts of its generator.

No espeak-ng needed: the corpus is checked as committed, the generator's text and audio
post-processing on hand-made input.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kwav2vec.text.normalize import normalize
from kwav2vec.text.vocab import Vocabulary

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "data" / "demo"
SPLITS = ("unlabeled", "train", "dev", "test")
LABELED = ("train", "dev", "test")
BUDGET_BYTES = 20_000_000  # "within about 20 MB", manifests and vocabularies included
HANGUL_LINE = re.compile(r"[가-힣]+(?: [가-힣]+)*")


def _load_generator():
    spec = importlib.util.spec_from_file_location(
        "make_demo_corpus", REPO / "scripts" / "make_demo_corpus.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


@pytest.fixture(scope="module")
def manifests() -> dict[str, list[dict]]:
    out = {}
    for split in SPLITS:
        lines = (DEMO / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        out[split] = [json.loads(line) for line in lines]
    return out


def syllable_set(texts) -> set[str]:
    return {c for t in texts for c in t if c != " "}


# --- the committed corpus ---------------------------------------------------------------------


def test_manifest_lines_follow_the_contract(manifests):
    for split, rows in manifests.items():
        expected_keys = {"id", "audio", "num_samples", "sample_rate"} | (
            {"text", "norm"} if split in LABELED else set()
        )
        assert len(rows) > 0, split
        for row in rows:
            assert set(row) == expected_keys, (split, row)
            assert row["audio"] == f"audio/{split}/{row['id']}.flac", row
            assert row["sample_rate"] == 16000, row
            assert isinstance(row["num_samples"], int) and not isinstance(row["num_samples"], bool), row
        assert len({r["id"] for r in rows}) == len(rows), f"duplicate ids in {split}"


def test_counts_match_the_readme(manifests):
    readme = (DEMO / "README.md").read_text(encoding="utf-8")
    for split, rows in manifests.items():
        assert re.search(rf"^\| {split} \| {len(rows)} \|", readme, re.M), f"README row for {split} is stale"
    assert len(manifests["train"]) >= 400  # the floor the demo recipe was designed for


def test_audio_is_16k_mono_flac_of_the_stated_length(manifests):
    for split, rows in manifests.items():
        for row in rows:
            path = DEMO / row["audio"]
            assert path.is_file(), f"{split}: {path} missing"
            info = sf.info(str(path))
            assert (info.format, info.subtype, info.samplerate, info.channels) == (
                "FLAC",
                "PCM_16",
                16000,
                1,
            ), f"{path}: {info.format}/{info.subtype} {info.samplerate} Hz {info.channels} ch"
            assert info.frames == row["num_samples"], (
                f"{path}: {info.frames} samples, manifest says {row['num_samples']}"
            )
            assert 1.0 <= info.frames / 16000 <= 6.0, f"{path}: {info.frames / 16000:.2f} s"


def test_no_audio_file_outside_the_manifests(manifests):
    listed = {row["audio"] for rows in manifests.values() for row in rows}
    on_disk = {str(p.relative_to(DEMO)) for p in (DEMO / "audio").rglob("*") if p.is_file()}
    assert on_disk == listed, sorted(on_disk ^ listed)[:5]


def test_audio_has_speech_and_uses_the_stated_resolution(manifests):
    for split in SPLITS:
        row = manifests[split][0]
        samples, _ = sf.read(str(DEMO / row["audio"]), dtype="int16")
        step = 2 ** (16 - gen.SIGNIFICANT_BITS)
        assert np.all(samples % step == 0), f"{row['audio']}: low bits in use"
        rms = np.sqrt(np.mean((samples / 32768.0) ** 2))
        assert 10 ** (-35 / 20) < rms < 10 ** (-12 / 20), f"{row['audio']}: RMS {20 * np.log10(rms):.1f} dBFS"


def test_transcripts_are_normalized_hangul_of_the_stated_lengths(manifests):
    for split in LABELED:
        for row in manifests[split]:
            text = row["text"]
            assert row["norm"] == text, row
            assert HANGUL_LINE.fullmatch(text), row
            assert normalize(text).text == text, row
            assert gen.MIN_SYLLABLES <= len(text.replace(" ", "")) <= gen.MAX_SYLLABLES, row


def test_splits_are_disjoint(manifests):
    ids = Counter(r["id"] for rows in manifests.values() for r in rows)
    assert max(ids.values()) == 1
    texts = Counter(r["text"] for split in LABELED for r in manifests[split])
    assert [t for t, n in texts.items() if n > 1] == []


def test_test_split_has_syllables_unseen_in_train(manifests):
    train = syllable_set(r["norm"] for r in manifests["train"])
    occurrences = [c for r in manifests["test"] for c in r["norm"] if c != " "]
    unseen = [c for c in occurrences if c not in train]
    share = len(unseen) / len(occurrences)
    assert 0.03 <= share <= 0.08, f"{share:.1%} of test syllables unseen in train"
    carriers = sum(any(c not in train for c in r["norm"] if c != " ") for r in manifests["test"])
    assert 0 < carriers < len(manifests["test"])
    readme = (DEMO / "README.md").read_text(encoding="utf-8")
    assert f"{share * 100:.1f}% of the test split's syllable occurrences" in readme


def test_vocabularies_come_from_the_train_transcripts(manifests):
    train_texts = [r["norm"] for r in manifests["train"]]
    assert Vocabulary.load(DEMO / "vocab_grapheme.json") == Vocabulary.grapheme()
    syllable_vocab = Vocabulary.load(DEMO / "vocab_syllable.json")
    assert syllable_vocab == Vocabulary.syllables_from_texts(train_texts)
    test_texts = [r["norm"] for r in manifests["test"]]
    unseen = syllable_set(test_texts) - syllable_set(train_texts)
    assert unseen and all(syllable_vocab.token_to_id(s) == syllable_vocab.unk_id for s in unseen)


def test_total_size_within_budget():
    total = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert total <= BUDGET_BYTES, f"data/demo is {total / 1e6:.2f} MB"


# --- the generator's pure parts ---------------------------------------------------------------


@pytest.mark.parametrize(
    "digits, words",
    [
        ("0", "영"),
        ("1", "일"),
        ("10", "십"),
        ("11", "십일"),
        ("15", "십오"),
        ("100", "백"),
        ("110", "백십"),
        ("1000", "천"),
        ("2019", "이천십구"),
        ("10000", "만"),
        ("10001", "만일"),
        ("20000", "이만"),
        ("110000", "십일만"),
        ("100000000", "일억"),
        ("137000000", "일억삼천칠백만"),
        ("010", "영일영"),
    ],
)
def test_spell_integer(digits, words):
    assert gen.spell_integer(digits) == words


def test_spell_numbers_in_context():
    assert gen.spell_numbers("제1조") == "제일조"
    assert gen.spell_numbers("1,000원과 2.5배, 40%") == "천원과 이점오배, 사십퍼센트"
    assert gen.BREAK in gen.spell_numbers("20072008200920102011")


def test_paragraph_segments_cut_at_unsayable_words():
    runs = list(gen.paragraph_segments("① 국군부대를 UAE에 파견하려는 것임. 3·1운동으로 건립된 제1조"))
    assert runs == [["국군부대를"], ["파견하려는", "것임"], ["운동으로", "건립된", "제일조"]]


def test_chunk_words_respects_the_syllable_bounds():
    import random

    words = ["대한민국은", "민주공화국이다", "모든", "권력은", "국민으로부터", "나온다"] * 20
    chunks = gen.chunk_words(words, random.Random(0))
    assert " ".join(chunks) == " ".join(words)  # nothing lost: the tail merges into the last chunk
    assert all(gen.MIN_SYLLABLES <= len(c.replace(" ", "")) <= gen.MAX_SYLLABLES for c in chunks)


def test_render_is_deterministic_and_quantized():
    t = np.arange(16000) / 16000
    speech = np.sin(2 * np.pi * 220 * t) * np.where((t > 0.2) & (t < 0.8), 0.5, 0.0)
    plan = gen.UtterancePlan(
        uid="u",
        text="가나",
        path="",
        voice="ko",
        speed=160,
        pitch=50,
        level_dbfs=-19.0,
        noise="pink",
        snr_db=35.0,
        pad_before=0.1,
        pad_after=0.1,
        noise_seed=7,
    )
    first, snr = gen.render(speech, plan)
    second, _ = gen.render(speech, plan)
    assert np.array_equal(first, second)
    assert np.all(first % 2 ** (16 - gen.SIGNIFICANT_BITS) == 0)
    assert len(first) == 9600 + 2 * 1600  # the trimmed 0.6 s of tone plus 0.1 s of padding each side
    assert 25.0 < snr < 35.0
