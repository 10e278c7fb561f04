"""Greedy CTC decoding and the single-head pyctcdecode beam search."""

from __future__ import annotations

import pytest
import torch
from decoding_utils import BLANK, aligned_paths, pad_batch, peaked, random_log_probs, vocabularies

from kwav2vec.decoding import BeamSearchConfig, BeamSearchDecoder, best_path_ids, greedy_decode


def test_best_path_collapses_repeats_drops_blanks_and_padding() -> None:
    paths = [[3, 3, 0, 3, 4, 4, 0, 0], [0, 5, 5, 5]]
    log_probs, lengths = pad_batch([peaked(p, 8, 0.9) for p in paths])
    assert best_path_ids(log_probs, lengths) == [[3, 3, 4], [5]]
    # Frames past a length are ignored, even when they hold other labels.
    assert best_path_ids(log_probs, torch.tensor([5, 2])) == [[3, 3, 4], [5]]
    assert best_path_ids(log_probs, torch.tensor([0, 0])) == [[], []]


def test_greedy_recomposes_graphemes_and_squeezes_spaces() -> None:
    grapheme, syllable = vocabularies()
    g_path, s_path = aligned_paths("안녕 하세요", grapheme, syllable)
    wb = grapheme.word_boundary_id
    g_path = [wb, BLANK, wb] + g_path[:12] + [wb, BLANK, wb] + g_path[12:] + [wb]  # stray boundaries
    log_probs, lengths = pad_batch([peaked(g_path, len(grapheme), 0.9)])
    assert greedy_decode(log_probs, lengths, grapheme) == ["안녕 하세요"]
    log_probs, lengths = pad_batch([peaked(s_path, len(syllable), 0.9)])
    assert greedy_decode(log_probs, lengths, syllable) == ["안녕 하세요"]
    with pytest.raises(ValueError, match="V=.* columns but its vocabulary has"):
        greedy_decode(log_probs, lengths, grapheme)


def test_greedy_agrees_with_pyctcdecode_on_confident_frames() -> None:
    grapheme, syllable = vocabularies()
    texts = ["안녕 하세요", "감사 합니다", "반갑 습니다 안녕"]
    for vocab, which in ((grapheme, 0), (syllable, 1)):
        rows = [peaked(aligned_paths(t, grapheme, syllable)[which], len(vocab), 0.8) for t in texts]
        log_probs, lengths = pad_batch(rows)
        beam = BeamSearchDecoder(vocab, BeamSearchConfig(beam_width=8))
        assert greedy_decode(log_probs, lengths, vocab) == texts
        assert beam.decode(log_probs, lengths) == texts


def test_beam_nbest_scores_and_batching_equal_per_utterance() -> None:
    grapheme, _ = vocabularies()
    g = torch.Generator().manual_seed(3)
    rows = [random_log_probs(g, T, len(grapheme)) for T in (12, 7, 10)]
    log_probs, lengths = pad_batch(rows)
    decoder = BeamSearchDecoder(grapheme, BeamSearchConfig(beam_width=16, nbest=5))
    batched = decoder.nbest(log_probs, lengths)
    single = [decoder.nbest(r[None], torch.tensor([r.shape[0]]))[0] for r in rows]
    assert batched == single
    for hyps in batched:
        assert 1 < len(hyps) <= 5
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        # No LM and no hotwords: the ranking score is the acoustic score.
        assert all(h.details["acoustic"] == h.score and h.details["lm"] == 0.0 for h in hyps)
        assert len({h.text for h in hyps}) == len(hyps)


def test_hotwords_are_matched_in_jamo_for_the_grapheme_head() -> None:
    grapheme, syllable = vocabularies()
    # Two equally likely readings of the second word: 세 or 새 (medial ᅦ vs ᅢ) on one frame.
    g_path, _ = aligned_paths("안녕 하세요", grapheme, syllable)
    log_probs = peaked(g_path, len(grapheme), 0.9)
    e_vowel, ae_vowel = grapheme.encode("세")[1], grapheme.encode("새")[1]
    frame = g_path.index(e_vowel)
    log_probs[frame, e_vowel] = log_probs[frame, ae_vowel] = torch.tensor(0.45).log()
    batch, lengths = log_probs[None], torch.tensor([log_probs.shape[0]])
    plain = BeamSearchDecoder(grapheme, BeamSearchConfig(beam_width=8)).nbest(batch, lengths)[0]
    assert {h.text for h in plain[:2]} == {"안녕 하세요", "안녕 하새요"}
    boosted = BeamSearchDecoder(grapheme, BeamSearchConfig(beam_width=8, hotwords=("하새요",))).nbest(
        batch, lengths
    )[0]
    assert boosted[0].text == "안녕 하새요" and boosted[0].details["lm"] > 0


def test_kenlm_path_without_bindings_is_a_clear_error(tmp_path) -> None:
    pytest.importorskip("pyctcdecode")
    try:
        import kenlm  # noqa: F401
    except ImportError:
        grapheme, _ = vocabularies()
        with pytest.raises(ImportError, match="kenlm"):
            BeamSearchDecoder(grapheme, BeamSearchConfig(kenlm_model_path=str(tmp_path / "lm.bin")))
    else:
        pytest.skip("kenlm is installed")
