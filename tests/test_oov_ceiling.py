"""bench/oov_ceiling.py: what any re-ranking of the two heads' n-best lists could recover.

Its figures back a claim of the README and of bench/recipe.py (that OOV recovery is bounded by
the candidates, not by the joint rule), so its pieces are checked here on tiny inputs.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from test_inference_cli import REFERENCES, VOCAB_TEXTS, checkpoint, manifest  # noqa: F401  (module fixtures)

from kwav2vec.inference.predict import load_finetuner
from kwav2vec.metrics import oov_recovery_counts

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from oov_ceiling import ceiling, floored, jamo_pairs, oov_groups, pairs_heard, picks  # noqa: E402


def test_picks_the_nearest_candidate_and_the_one_recovering_most_unseen_syllables():
    known = set("안녕하세요반갑습니다")
    ref = "안녕 뷁 하세요"
    nearest, most = picks(ref, ["안녕 하세요", "안녕 뷁 하", "아 뷁 똠 뷁", "안녕 뷁 하세요"], known)
    assert nearest == "안녕 뷁 하세요"
    assert most == "안녕 뷁 하"  # the first candidate that recovers the one OOV syllable
    assert picks(ref, [], known) == ("", "")


def test_floor_raises_unk_to_delta_times_speech_and_leaves_every_other_label_alone():
    torch.manual_seed(0)
    lp = torch.randn(2, 5, 7).log_softmax(-1)
    out = floored(lp, blank_id=0, unk_id=1, log_delta=-2.0)
    speech = 1 - lp[..., 0].exp()
    assert torch.allclose(out[..., 1].exp(), lp[..., 1].exp() + math.exp(-2.0) * speech, atol=1e-6)
    assert torch.equal(out[..., [0, *range(2, 7)]], lp[..., [0, *range(2, 7)]])
    assert floored(lp, 0, 1, None) is lp


def test_ceiling_bounds_the_decoders_it_reports(checkpoint, manifest):  # noqa: F811
    model = load_finetuner(str(checkpoint))
    c = ceiling(model, manifest, floor=True)
    known = set("".join(VOCAB_TEXTS).replace(" ", ""))
    assert c["oov_syllables"] == sum(oov_recovery_counts([r], [r], known)[1] for r in REFERENCES) == 3
    assert c["oracle"]["cer"] <= c["rescore"]["cer"]
    assert c["oov_ceiling"] >= max(c["oracle"]["oov_recovery"], c["rescore"]["oov_recovery"])
    assert c["grid"][f"None@{c['weight']:g}"] == c["rescore"]  # the grid's "off" row is the decoder itself
    assert len(c["grid"]) == 9 * 11


def test_jamo_pairs_tell_an_unseen_syllable_made_of_heard_sounds_from_one_with_a_new_combination():
    pairs = jamo_pairs(["가 난", "abc"])
    assert pairs == {("\u1100", "\u1161"), ("\u1161", ""), ("\u1102", "\u1161"), ("\u1161", "\u11ab")}
    assert pairs_heard("간", pairs)  # never seen as a syllable, but ㄱ+ㅏ and ㅏ+ㄴ were both heard
    assert pairs_heard("나", pairs)
    assert not pairs_heard("건", pairs) and not pairs_heard("각", pairs)
    known = {"가", "난"}
    groups = oov_groups(["가 간 건", "각 간"], known, pairs)
    assert groups["all"] == known
    assert groups["pairs heard"] == known | {"건", "각"}  # counts only 간
    assert groups["a pair unheard"] == known | {"간"}  # counts only 건 and 각
    assert oov_groups(["가 간"], known, None) == {"all": known}


def test_ceiling_splits_oov_recovery_by_heard_jamo_pairs(checkpoint, manifest):  # noqa: F811
    model = load_finetuner(str(checkpoint))
    c = ceiling(model, manifest, train_texts=[*VOCAB_TEXTS, "또 옴"])  # 똠's pairs ㄸ+ㅗ, ㅗ+ㅁ heard; 뷁, 햏's not
    split = c["oov_by_pairs"]
    assert split["pairs heard"]["oov_syllables"] == 1 and split["a pair unheard"]["oov_syllables"] == 2
    recovered = sum(g["rescore"] * g["oov_syllables"] for g in split.values()) / 100
    assert math.isclose(recovered, c["rescore"]["oov_recovery"] * c["oov_syllables"] / 100)
    for g in split.values():
        assert g["oov_ceiling"] >= max(g["rescore"], g["greedy_grapheme"])
    assert ceiling(model, manifest)["oov_by_pairs"] is None
