"""The joint decoders' syllable weight tuned on a validation split (kwav2vec.inference.tune).

A joint decoder must never do worse than its better head: with one head that outputs only blanks
(an untrained head), the tuned weight is that of the other head, and the joint result is then as
good as that head's. The CLI stores the weight in the checkpoint, sealed, and later runs use it.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from decoding_utils import BLANK, aligned_paths, pad_batch, peaked, vocabularies
from test_inference_cli import checkpoint, manifest  # noqa: F401  (module fixtures, reused)

from kwav2vec.checkpoints.integrity import read_checkpoint
from kwav2vec.inference import evaluate
from kwav2vec.inference.decoders import MultiDecoder, weighted_name
from kwav2vec.inference.predict import load_finetuner
from kwav2vec.inference.report import scored_rows
from kwav2vec.inference.tune import GRID, choose_weight, syllable_weights, tune

TEXTS = ["안녕 하세요", "반갑 습니다", "감사 합니다"]
DECODERS = ["beam-grapheme", "beam-syllable", "joint-union", "joint-rescore"]


def emissions(good: str):
    """Both heads' log-probs for TEXTS: the `good` head peaks on the right labels, the other says
    blank on every frame (what an untrained CTC head does)."""
    grapheme, syllable = vocabularies()
    g_rows, s_rows = [], []
    for text in TEXTS:
        g_path, s_path = aligned_paths(text, grapheme, syllable)
        T = max(len(g_path), len(s_path))
        g_path, s_path = g_path + [BLANK] * (T - len(g_path)), s_path + [BLANK] * (T - len(s_path))
        # an untrained head sits on the blank plateau: blank at ~0.99 on every frame
        g_rows.append(peaked(g_path, len(grapheme), 0.9) if good == "grapheme" else peaked([BLANK] * T, len(grapheme), 0.99))
        s_rows.append(peaked(s_path, len(syllable), 0.9) if good == "syllable" else peaked([BLANK] * T, len(syllable), 0.99))
    g, lengths = pad_batch(g_rows)
    s, _ = pad_batch(s_rows)
    return grapheme, syllable, g, s, lengths


def errors_by_weight(good: str) -> tuple[dict[str, dict[float, int]], dict[str, int]]:
    grapheme, syllable, g, s, lengths = emissions(good)
    decoder = MultiDecoder(DECODERS, grapheme, syllable, beam_width=8, weight_grid=GRID)
    out = decoder.decode(g, s, lengths)
    ids = [str(i) for i in range(len(TEXTS))]

    def errors(name: str) -> int:
        return sum(r.char_errors for r in scored_rows(ids, TEXTS, [d.text for d in out[name]]))

    grid = {n: {w: errors(weighted_name(n, w)) for w in GRID} for n in ("joint-union", "joint-rescore")}
    return grid, {n: errors(n) for n in DECODERS}


@pytest.mark.parametrize(("good", "weight"), [("grapheme", 0.0), ("syllable", 1.0)])
def test_a_head_of_blanks_gets_no_weight_and_the_joint_result_equals_the_better_head(good, weight):
    grid, single = errors_by_weight(good)
    assert single[f"beam-{good}"] == 0 and single[f"beam-{'syllable' if good == 'grapheme' else 'grapheme'}"] > 0
    assert grid["joint-union"][0.5] > 0 or grid["joint-rescore"][0.5] > 0  # the fixed 0.5 does lose
    chosen = tune(grid)
    assert chosen == {"union": weight, "rescore": weight}
    for name, mode in (("joint-union", "union"), ("joint-rescore", "rescore")):
        assert grid[name][chosen[mode]] <= min(single["beam-grapheme"], single["beam-syllable"])


def test_the_weight_grid_decodes_exactly_what_a_fixed_weight_decodes():
    grapheme, syllable, g, s, lengths = emissions("grapheme")
    s = torch.log_softmax(s + 0.5 * torch.randn(s.shape, generator=torch.Generator().manual_seed(0)), -1)
    gridded = MultiDecoder(DECODERS, grapheme, syllable, beam_width=8, weight_grid=GRID).decode(g, s, lengths)
    for w in (0.0, 0.3, 1.0):
        fixed = MultiDecoder(DECODERS, grapheme, syllable, beam_width=8, syllable_weight=w).decode(g, s, lengths)
        for name in ("joint-union", "joint-rescore"):
            assert [d.text for d in gridded[weighted_name(name, w)]] == [d.text for d in fixed[name]]
            assert [d.score for d in gridded[weighted_name(name, w)]] == [d.score for d in fixed[name]]


def test_ties_go_to_the_better_end_and_a_strict_minimum_wins():
    assert choose_weight({0.0: 5, 0.1: 5, 0.5: 5, 1.0: 9}) == 0.0
    assert choose_weight({0.0: 9, 0.5: 5, 0.9: 5, 1.0: 5}) == 1.0
    assert choose_weight({0.0: 9, 0.3: 2, 0.6: 4, 1.0: 9}) == 0.3
    assert choose_weight({0.0: 7, 0.4: 3, 0.6: 3, 1.0: 7}) == 0.4  # equal ends: the lower of the tied
    with pytest.raises(ValueError):
        choose_weight({})


def test_evaluate_tune_weight_stores_the_weights_sealed_and_later_runs_use_them(checkpoint, manifest, tmp_path,  # noqa: F811
                                                                                capsys):
    ckpt = tmp_path / "model.ckpt"
    shutil.copy(checkpoint, ckpt)
    assert load_finetuner(str(ckpt)).tuned_weights is None
    assert evaluate.main([str(ckpt), str(manifest), "--tune-weight", "--beam-width", "4",
                          "--out", str(tmp_path / "tune"), "--no-progress"]) == 0
    assert "stored syllable weights" in capsys.readouterr().out
    summary = json.loads((tmp_path / "tune" / "summary.json").read_text())
    tuning = summary["tuning"]
    errors = {n: {float(w): e for w, e in d.items()} for n, d in tuning["errors"].items()}
    assert set(errors) == {"joint-union", "joint-rescore"}
    assert tuning["weights"] == tune(errors)
    blob = read_checkpoint(ckpt, weights_only=False)  # still verifies: resealed after the edit
    assert blob["kwav2vec_finetune"]["decoding"]["syllable_weight"] == tuning["weights"]
    model = load_finetuner(str(ckpt))
    assert model.tuned_weights == tuning["weights"]
    assert syllable_weights(None, model) == tuning["weights"] and syllable_weights(0.2, model) == 0.2
    # a later evaluation without --syllable-weight decodes at the stored weights
    assert evaluate.main([str(ckpt), str(manifest), "--decoder", "joint:rescore", "--beam-width", "4",
                          "--out", str(tmp_path / "after"), "--no-progress"]) == 0
    after = json.loads((tmp_path / "after" / "summary.json").read_text())
    assert after["syllable_weight"] == tuning["weights"]
    chosen = tuning["weights"]["rescore"]
    assert after["decoders"]["joint-rescore"]["char_errors"] == errors["joint-rescore"][chosen]
    # what the checkpoint held besides is unchanged
    original = read_checkpoint(checkpoint, weights_only=False)
    for key, value in original["state_dict"].items():
        assert torch.equal(blob["state_dict"][key], value), key
    # further training writes checkpoints without them: they belong to the old weights
    saved = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(saved)
    assert "decoding" not in saved["kwav2vec_finetune"]
