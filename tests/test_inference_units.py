"""The pieces of kwav2vec.inference without a model: sharding, gathering, decoder plumbing, reports."""

from __future__ import annotations

import math

import pytest
import torch
from decoding_utils import pad_batch, random_log_probs, vocabularies

from kwav2vec.decoding import BeamSearchConfig, BeamSearchDecoder, greedy_decode
from kwav2vec.inference.decoders import MultiDecoder, check_heads, parse_decoders
from kwav2vec.inference.predict import (
    RankResults,
    UtteranceResult,
    collate_predict,
    gather_results,
    shard_batches,
)
from kwav2vec.inference.report import Row, format_table, metrics_summary, read_tsv, scored_rows, write_tsv


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
@pytest.mark.parametrize("n", [0, 1, 4, 7, 23])
def test_shards_are_disjoint_and_cover_every_utterance(n, world_size):
    lengths = [(7919 * i) % 50_000 + 400 for i in range(n)]
    shards = [shard_batches(lengths, 120_000, 4, rank, world_size) for rank in range(world_size)]
    seen = sorted(i for shard in shards for batch in shard for i in batch)
    assert seen == list(range(n))
    for shard in shards:
        for batch in shard:
            assert 1 <= len(batch) <= 4
            assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 120_000
    counts = [len(s) for s in shards]
    assert max(counts) - min(counts) <= 1


def test_shard_rejects_a_rank_outside_the_world():
    with pytest.raises(ValueError, match="rank 2"):
        shard_batches([1000], 10_000, None, 2, 2)


def _part(rank: int, indices: list[int], skipped: list[int] = ()) -> RankResults:
    return RankResults(
        rank,
        [UtteranceResult(i, f"u{i}", f"u{i}.wav", 16000, 49) for i in indices],
        [{"index": i, "id": f"u{i}", "path": f"u{i}.wav", "reason": "missing", "detail": ""} for i in skipped],
    )


def test_gather_without_distributed_checks_completeness():
    assert gather_results(_part(0, [0, 2], skipped=[1]), 3)[0].rank == 0
    with pytest.raises(RuntimeError, match=r"missing indices \[2\]"):
        gather_results(_part(0, [0, 1]), 3)
    with pytest.raises(RuntimeError, match=r"doubled \[1\]"):
        gather_results(_part(0, [0, 1, 1, 2]), 3)


def test_collate_keeps_clips_shorter_than_a_frame_out_of_the_model_batch():
    # the model refuses clips under one frame (400 samples): they are listed, the rest is batched
    batch = collate_predict([{"index": 3, "id": "a", "audio": torch.ones(100)},
                             {"index": 4, "id": "c", "audio": torch.ones(900)},
                             {"index": 5, "id": "b", "audio": torch.ones(50)}])
    assert batch["audio"].shape == (1, 900) and batch["audio_lengths"].tolist() == [900]
    assert batch["indices"] == [4] and batch["ids"] == ["c"] and batch["skipped"] == []
    assert batch["short"] == [{"index": 3, "id": "a", "num_samples": 100}, {"index": 5, "id": "b", "num_samples": 50}]


def test_parse_decoders_names_variants_and_rejects_unknown_ones():
    assert parse_decoders(["greedy", "joint", "beam:syllable", "greedy-grapheme"], "grapheme", "rescore") == [
        "greedy-grapheme", "joint-rescore", "beam-syllable"]
    assert parse_decoders(["beam"], head="syllable") == ["beam-syllable"]
    for bad in ("viterbi", "joint:grapheme", "beam:rescore"):
        with pytest.raises(ValueError, match="unknown decoder"):
            parse_decoders([bad])
    with pytest.raises(ValueError, match="needs the syllable head"):
        check_heads(["joint-union"], ["grapheme"])


def test_multidecoder_results_equal_the_decoders_run_alone():
    """Sharing one beam search between beam and joint decoders changes no result."""
    grapheme, syllable = vocabularies()
    g = torch.Generator().manual_seed(0)
    Tg = [30, 22, 17]
    g_lp, lengths = pad_batch([random_log_probs(g, t, len(grapheme)) for t in Tg], fill=0.0)
    s_lp, _ = pad_batch([random_log_probs(g, t, len(syllable)) for t in Tg], fill=0.0)
    names = ["greedy-grapheme", "greedy-syllable", "beam-grapheme", "joint-union", "joint-rescore"]
    with MultiDecoder(names, grapheme, syllable, beam_width=8, nbest=3, beam_backend="pyctcdecode") as multi:
        out = multi.decode(g_lp, s_lp, lengths)
    beam = BeamSearchConfig(beam_width=8)
    assert [d.text for d in out["greedy-grapheme"]] == greedy_decode(g_lp, lengths, grapheme)
    assert [d.text for d in out["greedy-syllable"]] == greedy_decode(s_lp, lengths, syllable)
    assert [d.text for d in out["beam-grapheme"]] == BeamSearchDecoder(grapheme, beam).decode(g_lp, lengths)
    for mode in ("union", "rescore"):
        with MultiDecoder([f"joint-{mode}"], grapheme, syllable, beam=beam, nbest=None,
                          beam_backend="pyctcdecode") as single:
            alone = [d.nbest for d in single.decode(g_lp, s_lp, lengths)[f"joint-{mode}"]]
        got = out[f"joint-{mode}"]
        assert [d.text for d in got] == [h[0].text for h in alone]
        assert [[h.text for h in d.nbest] for d in got] == [[h.text for h in hs[:3]] for hs in alone]
        assert all(math.isclose(d.score, hs[0].score) for d, hs in zip(got, alone, strict=True))
    # greedy's score is the best path's log-probability
    best = g_lp.max(-1).values
    assert out["greedy-grapheme"][1].score == pytest.approx(float(best[1, : Tg[1]].sum()), rel=1e-5)
    assert set(multi.seconds) == set(names)


def test_tsv_round_trip_and_summary(tmp_path):
    known = {"안", "녕", "하", "세", "요", "가"}
    rows = scored_rows(["a\tb", "c"], ["안녕  하세요", "뷁 가"], ["안녕 하세요 ", "뷀 가"], known)
    assert rows[0] == Row("a\tb", "안녕 하세요", "안녕 하세요")
    write_tsv(tmp_path / "x.tsv", rows)
    back = read_tsv(tmp_path / "x.tsv")
    assert [r["id"] for r in back] == ["a b", "c"]
    assert [(int(r["char_errors"]), int(r["ref_chars"])) for r in back] == [(0, 6), (1, 3)]
    summary = metrics_summary(rows)
    assert summary["cer"] == pytest.approx(1 / 9)
    assert (summary["oov_recovered"], summary["oov_syllables"], summary["oov_recovery"]) == (0, 1, 0.0)
    table = format_table({"greedy-grapheme": {**summary, "timing": {
        "decode_seconds": 0.5, "decode_rtf": 0.01, "total_rtf": 0.1}}})
    assert "greedy-grapheme" in table and "11.11" in table and "(0/1)" in table


@pytest.mark.parametrize("head", ["grapheme", "syllable"])
def test_multidecoder_on_a_single_task_model(head):
    """A lambda = 0 or 1 model has one head: the other's log-probs are None."""
    grapheme, syllable = vocabularies()
    vocab = grapheme if head == "grapheme" else syllable
    g = torch.Generator().manual_seed(1)
    lp, lengths = pad_batch([random_log_probs(g, t, len(vocab)) for t in (12, 9)], fill=0.0)
    args = (lp, None) if head == "grapheme" else (None, lp)
    with MultiDecoder([f"greedy-{head}"], grapheme, syllable, beam_width=4, nbest=2) as multi:
        out = multi.decode(*args, lengths)
    assert [d.text for d in out[f"greedy-{head}"]] == greedy_decode(lp, lengths, vocab)
