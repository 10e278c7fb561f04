"""Long streams cut at pauses (kwav2vec.inference.segments): cuts, bounds, exactness, n-best joining."""

from __future__ import annotations

import itertools

import pytest
import torch

from kwav2vec.decoding.beam import Hypothesis
from kwav2vec.decoding.greedy import best_path_ids
from kwav2vec.inference.chunking import ChunkConfig, Window, frames_for, plan_windows
from kwav2vec.inference.segments import SegmentConfig, StreamSegmenter, combine, shift_words

BLANK = 0


def peaky(labels: list[int], vocab: int = 6, seed: int = 0) -> torch.Tensor:
    """(T, V) log-probs whose best label at frame t is labels[t] (probability about 0.9)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(len(labels), vocab, generator=g)
    logits[torch.arange(len(labels)), torch.tensor(labels)] += 6.0
    return logits.log_softmax(-1)


def windows_of(lp: torch.Tensor, chunk: int = 40, stride: int = 4) -> list[tuple[Window, torch.Tensor]]:
    """Windows over a stream of frames, each handed the frames it keeps at its local positions
    (what a window's forward pass would give for them)."""
    T = lp.shape[0]
    samples = (T - 1) * 320 + 400
    ws = plan_windows(samples, ChunkConfig(chunk * 320, stride * 320))
    assert ws[0].total_frames == T == frames_for(samples)
    out = []
    for w in ws:
        first = w.start // 320
        local = torch.zeros(w.keep_to, lp.shape[1])
        local[w.keep_from: w.keep_to] = lp[first + w.keep_from: first + w.keep_to]
        out.append((w, local))
    return out


def run(lp: torch.Tensor, cfg: SegmentConfig, order=None) -> list:
    seg = StreamSegmenter(cfg, {"grapheme": BLANK})
    ws = windows_of(lp)
    segs = []
    for i in order or range(len(ws)):
        w, local = ws[i]
        segs += seg.add(7, w, {"grapheme": local, "syllable": None})
    assert seg.pending() == []
    return segs


def speech_with_pauses() -> list[int]:
    rng = torch.Generator().manual_seed(3)
    labels = []
    for part in range(6):
        labels += torch.randint(0, 6, (30 + 7 * part,), generator=rng).tolist()  # speech: blanks < 6 in a row
        labels += [BLANK] * (10 + part)  # a pause
    return labels


def test_segments_tile_the_stream_and_cut_in_pauses():
    lp = peaky(speech_with_pauses())
    segs = run(lp, SegmentConfig(min_pause=8, max_segment=400))
    assert [s.start for s in segs] == sorted(s.start for s in segs)
    assert sum(s.frames for s in segs) == lp.shape[0] and segs[-1].last and not any(s.last for s in segs[:-1])
    for a, b in itertools.pairwise(segs):
        assert a.start + a.frames == b.start
        assert torch.equal(torch.cat([a.log_probs["grapheme"], b.log_probs["grapheme"]]),
                           lp[a.start: b.start + b.frames])
        cut = b.start  # the cut frame and its neighbours are inside a pause
        assert (lp[cut - 2: cut + 2].argmax(-1) == BLANK).all()
    assert len(segs) >= 5  # each of the 5 inner pauses of >= 10 frames cuts once (random runs may add more)


def test_windows_in_any_order_give_the_same_segments():
    lp = peaky(speech_with_pauses())
    cfg = SegmentConfig(min_pause=8, max_segment=400)
    ordered = run(lp, cfg)
    n = len(windows_of(lp))
    shuffled = run(lp, cfg, order=list(reversed(range(n))))
    assert [(s.start, s.frames) for s in ordered] == [(s.start, s.frames) for s in shuffled]


def test_greedy_tokens_of_the_segments_are_the_streams():
    lp = peaky(speech_with_pauses(), seed=1)
    whole = best_path_ids(lp[None], torch.tensor([lp.shape[0]]), BLANK)[0]
    segs = run(lp, SegmentConfig(min_pause=8, max_segment=400))
    parts = [best_path_ids(s.log_probs["grapheme"][None], torch.tensor([s.frames]), BLANK)[0] for s in segs]
    assert [t for p in parts for t in p] == list(whole)


def test_no_pause_means_cut_at_most_max_segment_and_off_means_one_segment():
    labels = [1, 2, 0, 3, 0, 4] * 60  # never two blanks in a row
    lp = peaky(labels)
    segs = run(lp, SegmentConfig(min_pause=8, max_segment=50))
    assert all(s.frames <= 50 for s in segs) and sum(s.frames for s in segs) == len(labels)
    one = run(lp, SegmentConfig(0, 0))
    assert len(one) == 1 and torch.equal(one[0].log_probs["grapheme"], lp)


def test_segment_config_from_seconds():
    assert SegmentConfig.from_seconds(0.3, 30.0) == SegmentConfig(15, 1500)
    assert SegmentConfig.from_seconds(0, 30.0) == SegmentConfig(0, 0)
    with pytest.raises(ValueError, match="pause-seconds"):
        SegmentConfig.from_seconds(-1, 30.0)
    with pytest.raises(ValueError, match="twice"):
        SegmentConfig.from_seconds(1.0, 1.5)


def test_combine_is_the_exact_k_best_of_the_product():
    lists = [[Hypothesis("가", -1.0, {"acoustic": -1.0}), Hypothesis("나", -1.5, {"acoustic": -1.5}),
              Hypothesis("", -4.0, {"acoustic": -4.0})],
             [Hypothesis("다 라", -0.2, {"acoustic": -0.2}), Hypothesis("다", -0.9, {"acoustic": -0.9})],
             [Hypothesis("마", -2.0, {"acoustic": -2.0}), Hypothesis("바", -2.1, {"acoustic": -2.1})]]
    every = sorted((sum(h.score for h in c), " ".join(h.text for h in c if h.text))
                   for c in itertools.product(*lists))[::-1]
    got = combine(lists, 5)
    assert [(round(h.score, 6), h.text) for h in got] == [(round(s, 6), t) for s, t in every[:5]]
    assert got[0].details == {"acoustic": pytest.approx(-3.2)}
    assert combine(lists, 1)[0].text == "가 다 라 마"


def test_shift_words_moves_words_and_syllables():
    words = [{"word": "안녕", "start": 0.02, "end": 0.1, "syllables": [{"text": "안", "start": 0.02, "end": 0.06}]}]
    moved = shift_words(words, 12.34)
    assert moved[0]["start"] == 12.36 and moved[0]["end"] == 12.44 and moved[0]["syllables"][0]["end"] == 12.4


def test_writer_decodes_a_long_file_by_segments_with_a_word_break_at_each_pause():
    """DecodingWriter on hand-made windows: the greedy text is the stream's tokens, with a word break
    at each pause; times are on the file's clock; beam n-best are whole-file hypotheses."""
    from types import SimpleNamespace

    from kwav2vec.inference.decoders import MultiDecoder
    from kwav2vec.inference.predict import DecodingWriter, Source
    from kwav2vec.text.vocab import Vocabulary

    vocab = Vocabulary.syllables_from_texts(["안녕 하세요"])
    b = vocab.blank_id
    an, nyeong, ha, se = (vocab.token_to_id(c) for c in "안녕하세")
    word1, word2 = [an, an, b, nyeong, b], [ha, b, se, se, b]
    labels = [b] * 5 + word1 * 3 + [b] * 20 + word2 * 4 + [b] * 25 + word1 * 2 + [b] * 6
    lp = peaky(labels, vocab=len(vocab), seed=4)
    ws = windows_of(lp)
    total = ws[0][0].total_samples
    src = Source(0, "long", "long.wav", total)
    decoder = MultiDecoder(["greedy-syllable", "beam-syllable"], None, vocab, beam_width=8, nbest=3)

    def run_writer(cfg: SegmentConfig):
        writer = DecodingWriter(lambda module: decoder, times=True, segmenting=cfg)
        trainer = SimpleNamespace(global_rank=0, datamodule=SimpleNamespace(sources=[src], chunking=ChunkConfig(40 * 320, 4 * 320)))
        writer.on_predict_start(trainer, None)
        for w, local in ws:
            batch = {"ids": ["long"], "indices": [0], "windows": [w], "skipped": [], "short": [],
                     "audio_lengths": torch.tensor([w.length])}
            outputs = {"ids": ["long"], "frame_lengths": torch.tensor([local.shape[0]]),
                       "grapheme_log_probs": None, "syllable_log_probs": local[None]}
            writer.on_predict_batch_end(trainer, None, outputs, batch, 0)
        (result,) = writer.results.utterances
        assert result.frames == lp.shape[0] and result.num_samples == total
        return result

    stream = run_writer(SegmentConfig(0, 0))
    cut = run_writer(SegmentConfig(min_pause=10, max_segment=400))
    greedy = cut.decoded["greedy-syllable"]
    assert stream.decoded["greedy-syllable"].text.replace(" ", "") == greedy.text.replace(" ", "")
    assert greedy.text == "안녕안녕안녕 하세하세하세하세 안녕안녕"  # no word-boundary token: breaks only at pauses
    assert greedy.score == pytest.approx(stream.decoded["greedy-syllable"].score, abs=1e-4)
    words, source = cut.words["greedy-syllable"]
    assert [w["word"] for w in words] == greedy.text.split() and source == "syllable alignment"
    starts = [w["start"] for w in words]
    assert starts == [0.1, round((5 + 15 + 20) * 0.02, 3), round((5 + 15 + 20 + 20 + 25) * 0.02, 3)]
    beam = cut.decoded["beam-syllable"]
    assert beam.text == greedy.text and 1 < len(beam.nbest) <= 3
    assert [h.score for h in beam.nbest] == sorted((h.score for h in beam.nbest), reverse=True)
