"""Joint grapheme–syllable decoding: K-wav2vec's union rule and exact-CTC rescoring."""

from __future__ import annotations

import math
import unicodedata

import pytest
import torch
import torch.nn.functional as F
from decoding_utils import BLANK, aligned_paths, pad_batch, peaked, random_log_probs, vocabularies

from kwav2vec.decoding import (
    BeamSearchConfig,
    BeamSearchDecoder,
    Hypothesis,
    JointConfig,
    MultiDecoder,
    rescore_nbest,
    union_nbest,
)

BEAM = BeamSearchConfig(beam_width=16)
OOV_TEXT = "안녕 뷁"  # 뷁 is outside the syllable vocabulary; the grapheme head spells it


def heads(text: str, grapheme_peak: float, syllable_peak: float):
    grapheme, syllable = vocabularies()
    g_path, s_path = aligned_paths(text, grapheme, syllable)
    g, lengths = pad_batch([peaked(g_path, len(grapheme), grapheme_peak)])
    s, _ = pad_batch([peaked(s_path, len(syllable), syllable_peak)])
    return grapheme, syllable, g, s, lengths


def disagreeing_heads():
    """The grapheme head says one sentence, the syllable head another, on the same frames."""
    grapheme, syllable = vocabularies()
    g_path = aligned_paths("반갑 습니다", grapheme, syllable)[0]
    s_path = aligned_paths("안녕 하세요", grapheme, syllable)[1]
    T = max(len(g_path), len(s_path))
    g_path, s_path = g_path + [BLANK] * (T - len(g_path)), s_path + [BLANK] * (T - len(s_path))
    g, lengths = pad_batch([peaked(g_path, len(grapheme), 0.9)])
    s, _ = pad_batch([peaked(s_path, len(syllable), 0.9)])
    return grapheme, syllable, g, s, lengths


class Joint:
    """One joint decoder of `MultiDecoder` on pyctcdecode searches, every candidate kept:
    .nbest -> Hypothesis lists, .decode -> texts."""

    def __init__(self, grapheme, syllable, mode: str = "union", **options) -> None:
        self.name = f"joint-{mode}"
        self.decoder = MultiDecoder(
            [self.name], grapheme, syllable, beam=BEAM, nbest=None, beam_backend="pyctcdecode", **options
        )

    def nbest(self, g, s, lengths) -> list[list[Hypothesis]]:
        return [d.nbest for d in self.decoder.decode(g, s, lengths)[self.name]]

    def decode(self, g, s, lengths) -> list[str]:
        return [d.text for d in self.decoder.decode(g, s, lengths)[self.name]]


def kwav2vec_reference(grapheme_beams, syllable_beams, add_weight):
    """K-wav2vec inference/beam_search.py BeamDecoder.decode, written out as they do it.

    The beams are (text, logit_score) pairs as pyctcdecode returns them (jamo for graphemes).
    """
    origin_weight, add_weight = math.log(1.0 - add_weight), math.log(add_weight)

    def sum_log_scores(s1, s2):
        if s1 >= s2:
            return s1 + math.log(1 + math.exp(s2 - s1))
        return s2 + math.log(1 + math.exp(s1 - s2))

    results = {}
    for weight, beams in ((origin_weight, grapheme_beams), (add_weight, syllable_beams)):
        for text, score in beams:
            sent = unicodedata.normalize("NFC", text)
            results[sent] = (
                sum_log_scores(weight + score, results[sent]) if sent in results else weight + score
            )
    return sorted(results.items(), key=lambda item: item[1], reverse=True)


def test_joint_recovers_the_syllable_only_the_grapheme_head_spells() -> None:
    grapheme, syllable, g, s, lengths = heads(OOV_TEXT, grapheme_peak=0.95, syllable_peak=0.9)
    assert BeamSearchDecoder(syllable, BEAM).decode(s, lengths) == ["안녕 ⁇"]
    assert BeamSearchDecoder(grapheme, BEAM).decode(g, lengths) == [OOV_TEXT]
    assert Joint(grapheme, syllable, mode="union").decode(g, s, lengths) == [OOV_TEXT]
    for lam in (0.0, 0.3, 0.5, 0.9, 1.0):
        assert Joint(grapheme, syllable, mode="rescore", syllable_weight=lam).decode(g, s, lengths) == [
            OOV_TEXT
        ]


def test_rescore_keeps_the_spelling_where_union_takes_the_unk() -> None:
    # A syllable head far more confident than the grapheme head: K-wav2vec's union keeps its "⁇";
    # rescoring sees both candidates share every syllable score and the jamo decide.
    grapheme, syllable, g, s, lengths = heads(OOV_TEXT, grapheme_peak=0.6, syllable_peak=0.99)
    assert Joint(grapheme, syllable, mode="union").decode(g, s, lengths) == ["안녕 ⁇"]
    best = Joint(grapheme, syllable, mode="rescore").nbest(g, s, lengths)[0]
    assert best[0].text == OOV_TEXT
    unk = next(h for h in best if h.text == "안녕 ⁇")
    assert unk.details["syllable"] == best[0].details["syllable"]  # same ids: 안 녕 | <unk>
    assert unk.details["grapheme"] < best[0].details["grapheme"]
    # At λ = 1 only the syllable score counts; the tie goes to the spelled-out text.
    top = Joint(grapheme, syllable, mode="rescore", syllable_weight=1.0).nbest(g, s, lengths)[0][0]
    assert top.text == OOV_TEXT and top.score == unk.details["syllable"]


@pytest.mark.parametrize("mode", ["union", "rescore"])
def test_weight_extremes_equal_the_single_heads(mode: str) -> None:
    grapheme, syllable, g, s, lengths = disagreeing_heads()
    g_top = BeamSearchDecoder(grapheme, BEAM).nbest(g, lengths)[0][0]
    s_top = BeamSearchDecoder(syllable, BEAM).nbest(s, lengths)[0][0]
    assert (g_top.text, s_top.text) == ("반갑 습니다", "안녕 하세요")
    only_g = Joint(grapheme, syllable, mode=mode, syllable_weight=0.0).nbest(g, s, lengths)[0][0]
    only_s = Joint(grapheme, syllable, mode=mode, syllable_weight=1.0).nbest(g, s, lengths)[0][0]
    assert (only_g.text, only_s.text) == (g_top.text, s_top.text)
    if mode == "union":  # log(1 · P) is the head's own beam score
        assert (only_g.score, only_s.score) == (g_top.score, s_top.score)
    else:  # the exact CTC score of that head alone
        assert (only_g.score, only_s.score) == (only_g.details["grapheme"], only_s.details["syllable"])


def test_union_equals_kwav2vec_rule_on_the_same_nbest_lists() -> None:
    grapheme, syllable = vocabularies()
    gen = torch.Generator().manual_seed(7)
    g_dec, s_dec = BeamSearchDecoder(grapheme, BEAM), BeamSearchDecoder(syllable, BEAM)
    for text, other in (("안녕 하세요", "반"), ("감사 합니다", "갑")):
        # Noisy versions of one sentence whose first syllable both heads also read as `other`,
        # so that the two lists share several texts.
        g_path, s_path = aligned_paths(text, grapheme, syllable)
        g, s = peaked(g_path, len(grapheme), 0.6), peaked(s_path, len(syllable), 0.6)
        for lp, path, vocab in ((g, g_path, grapheme), (s, s_path, syllable)):
            first, alternative = vocab.encode(text[0]), vocab.encode(other)
            frame = (
                next(2 * i for i, (a, b) in enumerate(zip(first, alternative, strict=False)) if a != b)
                if vocab is grapheme
                else 0
            )
            lp[frame, alternative[frame // 2]] = lp[frame, path[frame]] = torch.tensor(0.45).log()
        g = (g + 0.5 * torch.randn(g.shape, generator=gen)).log_softmax(-1)
        s = (s + 0.5 * torch.randn(s.shape, generator=gen)).log_softmax(-1)
        g, s, lengths = g[None], s[None], torch.tensor([len(g_path)])
        # Raw pyctcdecode beams (jamo text for graphemes) for the reference, Hypothesis lists for ours.
        g_raw = g_dec.ctc_decoder.decode_beams(g[0].numpy(), **g_dec._kwargs)
        s_raw = s_dec.ctc_decoder.decode_beams(s[0].numpy(), **s_dec._kwargs)
        g_hyps, s_hyps = g_dec.nbest(g, lengths)[0], s_dec.nbest(s, lengths)[0]
        assert len(g_hyps) > 3 and len(s_hyps) > 3
        assert len({h.text for h in g_hyps} & {h.text for h in s_hyps}) >= 2  # texts proposed by both heads
        for w in (0.2, 0.5, 0.8):
            expected = kwav2vec_reference([(b[0], b[-2]) for b in g_raw], [(b[0], b[-2]) for b in s_raw], w)
            got = union_nbest(g_hyps, s_hyps, w)
            assert [h.text for h in got] == [text for text, _ in expected]
            assert [h.score for h in got] == pytest.approx([score for _, score in expected], rel=1e-12)


def test_rescore_scores_are_exact_ctc_of_each_candidate() -> None:
    grapheme, syllable = vocabularies()
    gen = torch.Generator().manual_seed(11)
    T = 14
    g = random_log_probs(gen, T, len(grapheme))[None]
    s = random_log_probs(gen, T, len(syllable))[None]
    lengths = torch.tensor([T])
    too_long = Hypothesis("안녕하세요 반갑습니다 감사합니다", 0.0, {"acoustic": 0.0})
    g_hyps = [BeamSearchDecoder(grapheme, BEAM).nbest(g, lengths)[0][:4] + [too_long]]
    s_hyps = BeamSearchDecoder(syllable, BEAM).nbest(s, lengths)
    config = JointConfig(mode="rescore", syllable_weight=0.3, length_bonus=0.5, lm_weight=0.1)
    lm = lambda text: -float(len(text))  # noqa: E731 - any scorer of the text
    out = rescore_nbest(g_hyps, s_hyps, g, s, lengths, grapheme, syllable, config, lm)[0]
    assert {h.text for h in out} == {h.text for h in g_hyps[0] + s_hyps[0]}
    for h in out:
        for head, vocab, lp in (("grapheme", grapheme, g), ("syllable", syllable, s)):
            ids = vocab.encode(h.text)
            loss = F.ctc_loss(
                lp[0][:, None],
                torch.tensor([ids]).reshape(1, -1),
                lengths,
                torch.tensor([len(ids)]),
                reduction="none",
            )
            assert h.details[head] == pytest.approx(-loss.item(), rel=1e-5, abs=1e-4)
        expected = (
            0.3 * h.details["syllable"]
            + 0.7 * h.details["grapheme"]
            + 0.5 * len(h.text.replace(" ", ""))
            + 0.1 * lm(h.text)
        )
        assert h.score == pytest.approx(expected, rel=1e-5, abs=1e-4)
    # Infeasible candidates (too many labels for 14 frames) score -inf, rank last, and do not crash.
    infeasible = [h for h in out if h.score == -math.inf]
    assert too_long.text in {h.text for h in infeasible} and out[-len(infeasible) :] == infeasible


@pytest.mark.parametrize("mode", ["union", "rescore"])
def test_batched_joint_equals_per_utterance(mode: str) -> None:
    grapheme, syllable = vocabularies()
    gen = torch.Generator().manual_seed(5)
    Ts = (9, 13, 6)
    g_rows = [random_log_probs(gen, T, len(grapheme)) for T in Ts]
    s_rows = [random_log_probs(gen, T, len(syllable)) for T in Ts]
    (g, lengths), (s, _) = pad_batch(g_rows), pad_batch(s_rows)
    decoder = Joint(grapheme, syllable, mode=mode)
    batched = decoder.nbest(g, s, lengths)
    single = [
        decoder.nbest(gr[None], sr[None], torch.tensor([gr.shape[0]]))[0]
        for gr, sr in zip(g_rows, s_rows, strict=True)
    ]
    assert [[h.text for h in hs] for hs in batched] == [[h.text for h in hs] for hs in single]
    for hs_b, hs_1 in zip(batched, single, strict=True):
        assert [h.score for h in hs_b] == pytest.approx([h.score for h in hs_1], rel=1e-5, abs=1e-4)


def test_process_pool_equals_sequential_and_closes() -> None:
    grapheme, syllable = vocabularies()
    gen = torch.Generator().manual_seed(9)
    Ts = (8, 12, 10, 7)
    (g, lengths), (s, _) = (
        pad_batch([random_log_probs(gen, T, len(grapheme)) for T in Ts]),
        pad_batch([random_log_probs(gen, T, len(syllable)) for T in Ts]),
    )
    expected = Joint(grapheme, syllable, mode="rescore").nbest(g, s, lengths)
    pooled = Joint(grapheme, syllable, "rescore", num_processes=2)
    with pooled.decoder as decoder:
        assert pooled.nbest(g, s, lengths) == expected
        assert pooled.nbest(g, s, lengths) == expected  # the pool is reused
        pool = decoder.pool
        assert pool is not None
    assert decoder._pool is None
    with pytest.raises(ValueError):
        pool.map(abs, [1])  # closed


def test_configuration_and_shape_errors() -> None:
    grapheme, syllable = vocabularies()
    with pytest.raises(ValueError, match="mode"):
        JointConfig(mode="add")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        JointConfig(syllable_weight=1.5)
    with pytest.raises(ValueError, match="rescore"):
        JointConfig(mode="union", length_bonus=1.0)
    with pytest.raises(ValueError, match="lm_scorer"):
        MultiDecoder(["joint-rescore"], grapheme, syllable, lm_weight=0.5)
    with pytest.raises(ValueError, match="grapheme and a syllable"):
        MultiDecoder(["joint-union"], syllable, grapheme)
    decoder = Joint(grapheme, syllable)
    g = torch.zeros(1, 10, len(grapheme)).log_softmax(-1)
    s = torch.zeros(1, 9, len(syllable)).log_softmax(-1)
    with pytest.raises(ValueError, match="share"):
        decoder.decode(g, s, torch.tensor([9]))
    with pytest.raises(ValueError, match="syllable_log_probs has V="):
        decoder.decode(g, g, torch.tensor([9]))
