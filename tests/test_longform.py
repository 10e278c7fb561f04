"""Long recordings: windows, merged streams, word times, subtitles, bad input (tiny random model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import srt
import torch
from test_inference_cli import checkpoint, noise  # noqa: F401  (the tiny checkpoint fixture)

from kwav2vec.inference import transcribe
from kwav2vec.inference.chunking import ChunkConfig, frames_for, plan_windows, read_block
from kwav2vec.inference.subtitles import render, segments
from kwav2vec.inference.timestamps import token_spans, words_from_spans
from kwav2vec.text.vocab import Vocabulary


def test_windows_tile_the_file_frames_exactly():
    cfg = ChunkConfig.from_seconds(1.0, 0.2)
    for n in (16001, 40000, 16000 * 7 + 123):
        ws = plan_windows(n, cfg)
        kept = sum(w.keep_to - w.keep_from for w in ws)
        assert kept == frames_for(n)
        for w in ws:  # a window only keeps frames it computed
            assert 0 <= w.keep_from < w.keep_to <= frames_for(w.length)
        assert ws[-1].start + ws[-1].length == n


def test_bad_chunk_settings_are_rejected():
    with pytest.raises(ValueError, match="stride"):
        ChunkConfig.from_seconds(1.0, 0.0)
    with pytest.raises(ValueError, match="twice"):
        ChunkConfig.from_seconds(1.0, 0.5)


def test_frame_to_time_on_hand_made_path():
    vocab = Vocabulary.syllables_from_texts(["안녕 하세요"])
    b, sep = vocab.blank_id, vocab.word_boundary_id
    an, nyeong, ha = vocab.token_to_id("안"), vocab.token_to_id("녕"), vocab.token_to_id("하")
    path = torch.tensor([b, an, an, b, nyeong, b, b, sep, b, b, ha, ha, ha, b])
    words = words_from_spans(token_spans(path, b), vocab, syllables=True)
    assert [w["word"] for w in words] == ["안녕", "하"]
    assert (words[0]["start"], words[0]["end"]) == (0.02, 0.1)
    assert (words[1]["start"], words[1]["end"]) == (0.2, 0.26)
    assert words[0]["syllables"][1] == {"text": "녕", "start": 0.08, "end": 0.1}


def test_srt_and_vtt_parse():
    words = [{"word": "안녕", "start": 0.0, "end": 0.5}, {"word": "하세요", "start": 0.6, "end": 1.0},
             {"word": "반갑", "start": 2.0, "end": 2.4}]
    segs = segments(words, max_pause=0.5)
    assert [s.text for s in segs] == ["안녕 하세요", "반갑"]
    subs = list(srt.parse(render("srt", segs)))
    assert [s.content for s in subs] == ["안녕 하세요", "반갑"]
    assert subs[1].start.total_seconds() == 2.0 and subs[1].end.total_seconds() == 2.4
    vtt = render("vtt", segs)
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n안녕 하세요\n")


def test_read_block_names_position_of_a_lying_pcm(tmp_path):
    path = tmp_path / "a.pcm"
    (np.zeros(1000, dtype="<i2")).tofile(path)
    assert read_block(str(path), 100, 500).shape == (500,)
    with pytest.raises(ValueError, match=r"a.pcm: truncated: at 0.06 s .*ends after 0"):
        read_block(str(path), 1000, 10)


def _run(capsys, argv):
    code = transcribe.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_short_file_output_is_unchanged_and_long_file_is_chunked(checkpoint, tmp_path, capsys):  # noqa: F811
    short, long = tmp_path / "short.wav", tmp_path / "long.wav"
    sf.write(short, noise(1.5, 16000, 1, 5), 16000)
    sf.write(long, noise(9.0, 16000, 1, 6), 16000)
    base = [str(checkpoint), str(short), "--json", "--trainer.accelerator", "cpu"]
    _, whole, _ = _run(capsys, base + ["--chunk-seconds", "0"])
    _, chunked, _ = _run(capsys, base + ["--chunk-seconds", "2", "--stride-seconds", "0.4"])
    assert whole == chunked  # shorter than one chunk: today's path, identical output
    code, _, err = _run(capsys, [str(checkpoint), str(long), "--chunk-seconds", "3",
                                 "--stride-seconds", "0.6", "--progress", "--trainer.accelerator", "cpu"])
    assert code == 0, err
    assert "window 5/5, 9.0 of 9.0 s of audio" in err  # windows step 1.8 s: 0, 1.8, ..., 7.2
    code, out, err = _run(capsys, [str(checkpoint), str(long), "--json", "--chunk-seconds", "3",
                                   "--stride-seconds", "0.6", "--trainer.accelerator", "cpu"])
    doc = json.loads(out)
    _, ref_out, _ = _run(capsys, [str(checkpoint), str(long), "--json", "--chunk-seconds", "0",
                                  "--trainer.accelerator", "cpu"])
    ref = json.loads(ref_out)
    assert doc["results"][0]["seconds"] == ref["results"][0]["seconds"] == 9.0
    for w in doc["results"][0]["words"]:
        assert 0 <= w["start"] < w["end"] <= 9.0


def test_format_srt_writes_parseable_file(checkpoint, tmp_path, capsys):  # noqa: F811
    audio = tmp_path / "talk.wav"
    sf.write(audio, noise(5.0, 16000, 1, 7), 16000)
    code, _, err = _run(capsys, [str(checkpoint), str(audio), "--format", "srt", "--out", str(tmp_path / "subs"),
                                 "--chunk-seconds", "2", "--stride-seconds", "0.4", "--trainer.accelerator", "cpu"])
    assert code == 0, err
    list(srt.parse((tmp_path / "subs" / "talk.srt").read_text(encoding="utf-8")))


def test_bad_long_inputs_are_named_and_the_others_transcribed(checkpoint, tmp_path, capsys):  # noqa: F811
    good, empty, lying = tmp_path / "good.wav", tmp_path / "empty.wav", tmp_path / "lying.wav"
    sf.write(good, noise(5.0, 16000, 1, 8), 16000)
    empty.write_bytes(b"")
    sf.write(lying, noise(5.0, 16000, 1, 9), 16000)
    data = lying.read_bytes()
    lying.write_bytes(data[: len(data) // 2])  # the header still declares 5 s
    code, out, err = _run(capsys, [str(checkpoint), str(good), str(empty), str(lying), "--chunk-seconds", "2",
                                   "--stride-seconds", "0.4", "--trainer.accelerator", "cpu"])
    assert code == 1
    assert out.startswith(f"{good}\t")
    assert f"cannot read {empty}: empty" in err
    assert f"cannot read {lying}: truncated" in err and "header declares" in err


def test_readme_transcribe_format_srt_out_progress(checkpoint, tmp_path, capsys, monkeypatch):  # noqa: F811
    """README: `kwav2vec transcribe model.ckpt lecture.wav --format srt --out subs --progress`."""
    monkeypatch.chdir(tmp_path)
    sf.write("lecture.wav", noise(25.0, 16000, 1, 10), 16000)  # longer than the default 20 s chunk
    code, _, err = _run(capsys, [str(checkpoint), "lecture.wav", "--format", "srt", "--out", "subs", "--progress"])
    assert code == 0, err
    assert "lecture.wav: window 2/2, 25.0 of 25.0 s of audio" in err
    list(srt.parse((tmp_path / "subs" / "lecture.srt").read_text(encoding="utf-8")))


def test_reencoded_segments_are_the_model_on_their_own_samples(checkpoint, tmp_path):  # noqa: F811
    """--reencode-segments: the speech span of a closed segment (first to last non-blank frame of
    the first pass, 10 frames more each side) gets the model's output for exactly its samples, run
    alone; the pauses outside keep the first pass; frames, order and flags are kept."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from kwav2vec.inference.predict import DecodingWriter, Source, load_finetuner
    from kwav2vec.inference.segments import Segment, SegmentConfig, StreamSegmenter

    path = tmp_path / "long.wav"
    sf.write(path, noise(6.0, 16000, 1, 9)[:, 0], 16000)
    model = load_finetuner(str(checkpoint))
    writer = DecodingWriter(lambda m: None, reencode=True, max_samples_per_batch=40_000)
    writer._module = model
    writer._trainer = SimpleNamespace(precision_plugin=SimpleNamespace(forward_context=nullcontext))
    writer._sources = {3: Source(index=3, id="long", path=str(path), num_samples=96_000)}
    writer.segmenter = StreamSegmenter(SegmentConfig(0, 0), {"grapheme": 0, "syllable": 0})

    def first_pass(frames: int, speech: tuple[int, int] | None) -> dict:
        out = {}
        for h in ("grapheme", "syllable"):
            lp = torch.full((frames, len(getattr(model, f"{h}_vocab"))), -10.0)
            lp[:, 0] = 0.0  # blank everywhere ...
            if speech is not None:
                lp[speech[0]:speech[1], 2] = 1.0  # ... but the speech frames
            out[h] = lp
        return out

    # (start, frames, last, speech frames in the segment) -> re-encoded span [lo, hi)
    cases = [((0, 120, False, None), (0, 120)), ((120, 40, False, (15, 20)), (5, 30)),
             ((160, 139, True, (3, 130)), (0, 139))]
    segs = [Segment(3, start, first_pass(frames, speech), last) for (start, frames, last, speech), _ in cases]
    out = writer._reencoded(segs)  # 40 k samples a batch: the three go in more than one batch
    wave = read_block(str(path), 0, 96_000)
    assert [(s.index, s.start, s.frames, s.last) for s in out] == [(s.index, s.start, s.frames, s.last) for s in segs]
    with torch.no_grad():
        for seg, before, (_, (lo, hi)) in zip(out, segs, cases, strict=True):
            first = (seg.start + lo) * 320
            alone, frames = model(wave[None, first: first + (hi - lo - 1) * 320 + 400])
            assert int(frames[0]) == hi - lo
            for h in ("grapheme", "syllable"):
                torch.testing.assert_close(seg.log_probs[h][lo:hi], alone[h][0], atol=1e-4, rtol=1e-4)
                assert torch.equal(seg.log_probs[h][:lo], before.log_probs[h][:lo])  # the pauses: first pass
                assert torch.equal(seg.log_probs[h][hi:], before.log_probs[h][hi:])
    assert writer.results.forward_seconds > 0


def test_reencode_segments_through_the_cli(checkpoint, tmp_path, capsys, monkeypatch):  # noqa: F811
    """Re-encoding is the default; --no-reencode-segments decodes the first pass."""
    from kwav2vec.inference.predict import DecodingWriter
    from kwav2vec.inference.segments import SegmentConfig

    path = tmp_path / "long.wav"
    sf.write(path, noise(9.0, 16000, 1, 6), 16000)
    calls, heap = [], []
    reencoded = DecodingWriter._reencoded
    monkeypatch.setattr(DecodingWriter, "_reencoded", lambda self, segs: calls.append(len(segs)) or reencoded(self, segs))
    # glibc's mmap threshold is held (allocator.py) exactly where segments are re-encoded
    monkeypatch.setattr("kwav2vec.inference.predict.fix_mmap_threshold", lambda: heap.append(1))
    for flags, reencodes in (((), True), (("--reencode-segments",), True), (("--no-reencode-segments",), False)):
        calls.clear()
        heap.clear()
        code, out, err = _run(capsys, [str(checkpoint), str(path), "--json", "--chunk-seconds", "3", "--stride-seconds",
                                       "0.6", "--pause-seconds", "0.1", *flags, "--trainer.accelerator", "cpu"])
        assert code == 0, err
        assert json.loads(out)["results"][0]["seconds"] == 9.0
        assert bool(calls) == reencodes == bool(heap), flags
    writer = DecodingWriter(lambda m: None, segmenting=SegmentConfig(0, 0), reencode=True)
    assert not writer.reencode  # without cuts the one segment would be the whole file


def test_reencode_batches_keep_within_the_first_pass_budget():
    """Segments longer than a window go in smaller batches: padded samples within
    --max-samples-per-batch and attention (count x longest^2) within a batch of full windows."""
    from kwav2vec.inference.predict import DecodingWriter

    writer = DecodingWriter(lambda m: None, max_samples_per_batch=100)
    writer._window = 25  # 4 windows a batch: attention budget 4 x 25^2 = 2500
    assert writer._reencode_batches([10, 10, 10, 10, 10]) == [[0, 1, 2, 3, 4]]  # 50 samples, 500
    assert writer._reencode_batches([60, 10, 40, 30]) == [[1, 3], [2], [0]]  # 2 x 40^2 > 2500; 60 alone
    for lengths in ([5] * 30, [24, 26, 49, 50, 51, 99, 101]):
        for batch in writer._reencode_batches(lengths):
            longest = max(lengths[i] for i in batch)
            assert len(batch) == 1 or (len(batch) * longest <= 100 and len(batch) * longest ** 2 <= 2500)


def test_joint_times_come_from_the_grapheme_alignment_with_syllables_from_jamo_runs():
    """A joint text is aligned on the grapheme head; each syllable spans its jamo's runs."""
    from kwav2vec.inference.timestamps import word_times

    graphemes = Vocabulary.grapheme()
    syllables = Vocabulary.syllables_from_texts(["안녕 하세요"])
    ids = graphemes.encode("안녕")  # 6 jamo
    b = graphemes.blank_id
    path = [b, ids[0], ids[0], ids[1], ids[2], b, ids[3], ids[4], ids[5], ids[5], b, b]  # frames 0-11
    lp = torch.full((len(path), len(graphemes)), -20.0)
    lp[torch.arange(len(path)), torch.tensor(path)] = 0.0
    words, source = word_times("joint-rescore", "안녕", {"grapheme": lp.log_softmax(-1), "syllable": None},
                               {"grapheme": graphemes, "syllable": syllables})
    assert source == "grapheme alignment"
    assert words == [{"word": "안녕", "start": 0.02, "end": 0.2,
                      "syllables": [{"text": "안", "start": 0.02, "end": 0.1}, {"text": "녕", "start": 0.12, "end": 0.2}]}]
