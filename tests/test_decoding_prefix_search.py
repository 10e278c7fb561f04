"""The torch CTC prefix beam search: parity with pyctcdecode, exactness, batching, edge cases, devices."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from decoding_utils import BLANK, aligned_paths, pad_batch, peaked, random_log_probs, vocabularies
from hypothesis import given, settings
from hypothesis import strategies as st

from kwav2vec.decoding import BeamSearchConfig, BeamSearchDecoder, MultiDecoder, ctc_log_likelihood
from kwav2vec.decoding.prefix_search import ctc_prefix_beam_search
from kwav2vec.decoding.torch_beam import TorchBeamSearchDecoder
from kwav2vec.inference import evaluate
from kwav2vec.metrics import cer
from kwav2vec.text.vocab import Vocabulary

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from _emissions import model_like  # noqa: E402
from test_inference_cli import checkpoint, manifest  # noqa: E402, F401  (the tiny checkpoint and manifest)

TEXTS = ["안녕 하세요", "반갑 습니다", "감사 합니다", "안녕 뷁", "하세요 반갑 안녕"]


def both(vocab: Vocabulary, log_probs, lengths, beam: BeamSearchConfig):
    return BeamSearchDecoder(vocab, beam).nbest(log_probs, lengths), TorchBeamSearchDecoder(vocab, beam).nbest(
        log_probs, lengths
    )


def assert_same_nbest(ref, out, tol=1e-4) -> None:
    for r, o in zip(ref, out, strict=True):
        assert [h.text for h in o] == [h.text for h in r]
        for a, b in zip(r, o, strict=True):
            assert b.score == pytest.approx(a.score, abs=tol)
            for part in a.details:  # acoustic/lm (one head), grapheme/syllable/lm (joint)
                assert b.details[part] == pytest.approx(a.details[part], abs=tol)


def jittered(path: list[int], vocab_size: int, peak: float, gen: torch.Generator) -> torch.Tensor:
    """`peaked` with the exact ties among the other tokens broken (ties make the beam cut arbitrary)."""
    log_probs = peaked(path, vocab_size, peak)
    return (log_probs + 0.05 * torch.randn(log_probs.shape, generator=gen)).log_softmax(-1)


@pytest.mark.parametrize("peak", [0.97, 0.8, 0.6])
def test_hand_made_peaky_nbest_lists_equal_pyctcdecode(peak: float) -> None:
    grapheme, syllable = vocabularies()
    gen = torch.Generator().manual_seed(0)
    g_rows, s_rows = [], []
    for text in TEXTS:
        g_path, s_path = aligned_paths(text, grapheme, syllable)
        g_rows.append(jittered(g_path, len(grapheme), peak, gen))
        s_rows.append(jittered(s_path, len(syllable), peak, gen))
    for vocab, rows in ((grapheme, g_rows), (syllable, s_rows)):
        log_probs, lengths = pad_batch(rows)
        ref, out = both(vocab, log_probs, lengths, BeamSearchConfig(beam_width=16))
        assert_same_nbest(ref, out)
    grapheme_best = TorchBeamSearchDecoder(grapheme, BeamSearchConfig(beam_width=16)).decode(*pad_batch(g_rows))
    assert grapheme_best == TEXTS  # the grapheme head spells 뷁 the syllable vocabulary lacks


def test_silences_of_the_whole_batch_equal_pyctcdecode() -> None:
    # Confident blanks in every row at once (leading, inner and trailing silence) take the search's
    # blank-only shortcut; the n-best lists must still be pyctcdecode's.
    grapheme, syllable = vocabularies()
    gen = torch.Generator().manual_seed(4)
    for vocab, which in ((grapheme, 0), (syllable, 1)):
        rows = []
        for text in TEXTS:
            path = list(aligned_paths(text, grapheme, syllable)[which])
            half = len(path) // 2
            path = [BLANK] * 6 + path[:half] + [BLANK] * 8 + path[half:] + [BLANK] * 5
            rows.append(jittered(path, len(vocab), 0.99, gen))
        log_probs, lengths = pad_batch(rows)
        blank_only = ((log_probs >= -5).sum(-1) == 1) & (log_probs[..., BLANK] >= -5)
        assert blank_only[:, :6].all()  # frames of the shortcut exist (the leading silence of every row)
        ref, out = both(vocab, log_probs, lengths, BeamSearchConfig(beam_width=16))
        assert_same_nbest(ref, out)


def demo_texts(n: int) -> tuple[list[str], Vocabulary, Vocabulary]:
    lines = (REPO / "data" / "demo" / "test.jsonl").read_text(encoding="utf-8").splitlines()[:n]
    grapheme = Vocabulary.load(REPO / "data" / "demo" / "vocab_grapheme.json")
    syllable = Vocabulary.load(REPO / "data" / "demo" / "vocab_syllable.json")
    return [json.loads(line)["norm"] for line in lines], grapheme, syllable


@pytest.mark.parametrize(("style", "beam_width", "n"), [("peaky", 100, 10), ("flat", 16, 12)])
def test_model_like_outputs_best_hypothesis_and_cer_match_pyctcdecode(style: str, beam_width: int, n: int) -> None:
    """The demo's real transcripts as model-like outputs of both heads (bench/_emissions.py)."""
    texts, grapheme, syllable = demo_texts(n)
    g, s, frames = model_like(texts, grapheme, syllable, style, seed=3)
    beam = BeamSearchConfig(beam_width=beam_width)
    for vocab, log_probs in ((grapheme, g), (syllable, s)):
        ref, out = both(vocab, log_probs, frames, beam)
        same = sum(r[0].text == o[0].text for r, o in zip(ref, out, strict=True))
        assert same >= math.ceil(0.98 * len(texts))
        ref_cer, out_cer = cer(texts, [r[0].text for r in ref]), cer(texts, [o[0].text for o in out])
        assert abs(ref_cer - out_cer) <= 0.002
        if style == "peaky":
            assert_same_nbest([r[:5] for r in ref], [o[:5] for o in out])


@pytest.mark.parametrize("vocab_kind", ["grapheme", "syllable"])
def test_random_outputs_nbest_lists_equal_pyctcdecode(vocab_kind: str) -> None:
    grapheme, syllable = vocabularies()
    vocab = grapheme if vocab_kind == "grapheme" else syllable
    gen = torch.Generator().manual_seed(5)
    rows = [random_log_probs(gen, t, len(vocab), sharpness=6.0) for t in (25, 9, 40, 1)]
    log_probs, lengths = pad_batch(rows)
    ref, out = both(vocab, log_probs, lengths, BeamSearchConfig(beam_width=8, nbest=6))
    assert_same_nbest(ref, out)


@settings(max_examples=40, deadline=None)
@given(
    V=st.integers(2, 4),
    frames=st.lists(st.integers(0, 6), min_size=1, max_size=3),
    seed=st.integers(0, 2**31 - 1),
)
def test_wide_beam_scores_are_exact_ctc_log_likelihoods(V: int, frames: list[int], seed: int) -> None:
    """No space label, no pruning, a beam wider than all prefixes: each score is exact CTC."""
    gen = torch.Generator().manual_seed(seed)
    T = max(frames)
    log_probs = (3 * torch.randn(len(frames), T, V, generator=gen, dtype=torch.float64)).log_softmax(-1)
    lengths = torch.tensor(frames)
    result = ctc_prefix_beam_search(
        log_probs, lengths, beam_width=4096, beam_prune_logp=-math.inf, token_min_logp=-math.inf, blank_id=BLANK
    )
    hypotheses = result.token_lists()
    exact = ctc_log_likelihood(log_probs, lengths, hypotheses, blank_id=BLANK)
    got = torch.cat([result.scores[b, : len(h)] for b, h in enumerate(hypotheses)])
    torch.testing.assert_close(got, exact, atol=1e-4, rtol=0)
    for b in range(len(frames)):  # every feasible label sequence is there: probabilities sum to 1
        assert torch.logsumexp(result.scores[b, : len(hypotheses[b])], 0).item() == pytest.approx(0.0, abs=1e-6)


def test_batched_equals_per_utterance_and_padding_is_never_read() -> None:
    grapheme, _ = vocabularies()
    gen = torch.Generator().manual_seed(11)
    rows = [random_log_probs(gen, t, len(grapheme)) for t in (17, 30, 0, 1, 23)]
    beam = dict(beam_width=12, blank_id=grapheme.blank_id, space_id=grapheme.word_boundary_id)
    batch = ctc_prefix_beam_search(*pad_batch(rows, fill=math.nan), **beam)
    loud = ctc_prefix_beam_search(*pad_batch(rows, fill=50.0), **beam)  # padding that would win if read
    torch.testing.assert_close(loud.scores, batch.scores)
    assert torch.equal(loud.alignment, batch.alignment)
    for b, row in enumerate(rows):
        alone = ctc_prefix_beam_search(row[None], torch.tensor([row.shape[0]]), **beam)
        n = int(alone.counts[0])
        assert int(batch.counts[b]) == n
        torch.testing.assert_close(batch.scores[b, :n], alone.scores[0, :n])
        assert batch.token_lists()[b] == alone.token_lists()[0]
        assert torch.equal(batch.alignment[b, :n, : row.shape[0]], alone.alignment[0, :n])
        assert (batch.alignment[b, :, row.shape[0] :] == -1).all()  # padded frames carry no label


def test_batches_wider_than_the_merge_key_are_searched_in_parts(monkeypatch) -> None:
    # The utterance index has 12 bits of the merge key; larger batches are split. Shrink the limit
    # so a 5-utterance batch is searched in parts of 2, 2 and 1, and compare with one pass.
    from kwav2vec.decoding import prefix_search

    grapheme, _ = vocabularies()
    gen = torch.Generator().manual_seed(5)
    rows = [random_log_probs(gen, t, len(grapheme)) for t in (9, 21, 4, 15, 0)]
    beam = dict(beam_width=8, blank_id=grapheme.blank_id, space_id=grapheme.word_boundary_id)
    whole = ctc_prefix_beam_search(*pad_batch(rows), **beam)
    monkeypatch.setattr(prefix_search, "MAX_ROWS", 2)
    parts = ctc_prefix_beam_search(*pad_batch(rows), **beam)
    assert parts.scores.shape == whole.scores.shape and parts.tokens.shape == whole.tokens.shape
    torch.testing.assert_close(parts.scores, whole.scores)
    assert torch.equal(parts.alignment, whole.alignment) and torch.equal(parts.counts, whole.counts)
    assert parts.token_lists() == whole.token_lists()


def test_alignment_is_a_best_path_of_its_hypothesis() -> None:
    grapheme, _ = vocabularies()
    gen = torch.Generator().manual_seed(2)
    log_probs, lengths = pad_batch([random_log_probs(gen, t, len(grapheme)) for t in (20, 31)])
    result = ctc_prefix_beam_search(log_probs, lengths, beam_width=10, space_id=grapheme.word_boundary_id)
    for b, hyps in enumerate(result.token_lists()):
        for n, ids in enumerate(hyps):
            path = result.alignment[b, n, : lengths[b]]
            collapsed = [int(x) for i, x in enumerate(path) if x != BLANK and (i == 0 or x != path[i - 1])]
            words = " ".join(grapheme.decode(collapsed).split())
            assert words == grapheme.decode(ids)
            path_score = log_probs[b, torch.arange(int(lengths[b])), path].sum()
            assert path_score <= result.scores[b, n] + 1e-5  # one path of the summed ones


def test_empty_and_one_frame_inputs() -> None:
    grapheme, _ = vocabularies()
    V = len(grapheme)
    decoder = TorchBeamSearchDecoder(grapheme, BeamSearchConfig(beam_width=4))
    for log_probs, lengths in (
        (torch.zeros(2, 0, V), torch.tensor([0, 0])),
        (torch.zeros(0, 5, V), torch.zeros(0, dtype=torch.long)),
        (torch.full((1, 3, V), math.nan), torch.tensor([0])),
    ):
        out = decoder.nbest(log_probs, lengths)
        assert [[(h.text, h.score) for h in hyps] for hyps in out] == [[("", 0.0)]] * log_probs.shape[0]
    one = peaked([grapheme.encode("가")[0]], V, 0.9)[None]
    ref, out = both(grapheme, one, torch.tensor([1]), BeamSearchConfig(beam_width=4))
    assert_same_nbest(ref, out)
    assert out[0][0].text == "ᄀ"


def test_torch_backend_refuses_what_only_pyctcdecode_does() -> None:
    grapheme, _ = vocabularies()
    for config in (BeamSearchConfig(hotwords=("안녕",)), BeamSearchConfig(kenlm_model_path="lm.arpa"),
                   BeamSearchConfig(prune_history=True)):
        with pytest.raises(ValueError, match="pyctcdecode"):
            TorchBeamSearchDecoder(grapheme, config)
    with pytest.raises(ValueError, match="vocabulary has"):
        TorchBeamSearchDecoder(grapheme).search(torch.zeros(1, 2, 3), torch.tensor([2]))


@pytest.mark.parametrize("mode", ["union", "rescore"])
def test_joint_decoder_torch_backend_equals_pyctcdecode_backend(mode: str) -> None:
    texts, grapheme, syllable = demo_texts(8)
    g, s, frames = model_like(texts, grapheme, syllable, "peaky", seed=1)
    beam = BeamSearchConfig(beam_width=16)
    results = {
        backend: [
            d.nbest
            for d in MultiDecoder([f"joint-{mode}"], grapheme, syllable, beam=beam, nbest=None, beam_backend=backend)
            .decode(g, s, frames)[f"joint-{mode}"]
        ]
        for backend in ("pyctcdecode", "torch")
    }
    assert_same_nbest([r[:5] for r in results["pyctcdecode"]], [r[:5] for r in results["torch"]], tol=1e-3)
    names = ["beam-grapheme", f"joint-{mode}"]
    with MultiDecoder(names, grapheme, syllable, beam_width=16, nbest=3, beam_backend="torch") as multi:
        out = multi.decode(g, s, frames)
    assert [d.text for d in out[f"joint-{mode}"]] == [h[0].text for h in results["torch"]]
    assert [d.text for d in out["beam-grapheme"]] == TorchBeamSearchDecoder(grapheme, beam).decode(g, frames)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: the CPU/CUDA parity runs where one exists")
def test_cpu_and_cuda_give_the_same_nbest() -> None:
    texts, grapheme, syllable = demo_texts(16)
    for style in ("peaky", "flat"):
        _, s, frames = model_like(texts, grapheme, syllable, style, seed=4)
        beam = dict(beam_width=32, space_id=syllable.word_boundary_id)
        cpu = ctc_prefix_beam_search(s, frames, **beam)
        gpu = ctc_prefix_beam_search(s.cuda(), frames.cuda(), **beam)
        assert gpu.scores.device.type == "cuda"
        best_cpu = [h[0] for h in cpu.token_lists()]
        assert best_cpu == [h[0] for h in gpu.token_lists()]
        torch.testing.assert_close(gpu.scores.cpu()[:, 0], cpu.scores[:, 0], atol=1e-3, rtol=0)
        gpu_texts = {(b, tuple(h)) for b, hyps in enumerate(gpu.token_lists()) for h in hyps[:5]}
        cpu_texts = {(b, tuple(h)) for b, hyps in enumerate(cpu.token_lists()) for h in hyps[:5]}
        assert len(gpu_texts & cpu_texts) >= 0.9 * len(cpu_texts)  # near-ties may swap ranks 5/6


def test_readme_kwav2vec_evaluate_beam_backend_torch(checkpoint, manifest, tmp_path, capsys) -> None:  # noqa: F811
    """README "Evaluate and transcribe": `kwav2vec evaluate CKPT MANIFEST --decoder beam joint
    --joint-mode rescore --beam-backend torch --out DIR`, on the tiny checkpoint; the same texts
    as with --beam-backend pyctcdecode."""
    texts = {}
    for backend in ("torch", "pyctcdecode"):
        out = tmp_path / backend
        code = evaluate.main([str(checkpoint), str(manifest), "--decoder", "beam", "joint", "--joint-mode", "rescore",
                              "--beam-backend", backend, "--beam-width", "8", "--out", str(out), "--no-progress"])
        assert code == 0
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        assert summary["beam_backend"] == backend and list(summary["decoders"]) == ["beam-grapheme", "joint-rescore"]
        texts[backend] = {name: (out / f"{name}.tsv").read_text(encoding="utf-8").splitlines()[1:]
                          for name in summary["decoders"]}
    capsys.readouterr()
    for name, rows in texts["torch"].items():
        hyp = [row.split("\t")[2] for row in rows]
        assert hyp == [row.split("\t")[2] for row in texts["pyctcdecode"][name]]
