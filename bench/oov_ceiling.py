"""How many unseen syllables any re-ranking of the two heads' n-best lists could recover.

    .venv/bin/python bench/oov_ceiling.py                                   # the demo model, dev + test
    .venv/bin/python bench/oov_ceiling.py CKPT --manifests /tmp/second/dev.jsonl /tmp/second/test.jsonl --floor
    .venv/bin/python bench/oov_ceiling.py CKPT --manifests /tmp/second/test.jsonl --train-manifest /tmp/second/train.jsonl

The joint decoders only choose among the candidates the two beam searches propose (width 100,
as `kwav2vec evaluate`): no re-ranking can recover an unseen ("OOV") syllable that no candidate
spells. Per manifest this prints
- joint-rescore at the weight stored in the checkpoint (or 0.5) and greedy-grapheme: CER, OOV recovery;
- the n-best ceiling: the CER of the best candidate of each utterance (oracle CER), the OOV
  recovery of those candidates, and the OOV recovery when each utterance takes the candidate that
  recovers the most OOV syllables (the most any re-ranking can reach);
- with --train-manifest, the OOV syllables split by whether both their jamo pairs (initial+medial,
  medial+final) occur in the training texts, and each part's recovery: a CTC jamo head that never
  heard a pair in training rarely spells it (measured in the README);
- with --floor, joint-rescore over a grid of syllable weights λ and "OOV floors" log δ. The syllable
  head is trained on texts whose every syllable is in its vocabulary, so it gives `<unk>`, and with
  it any candidate spelling an unseen syllable, almost no probability, whatever the grapheme head
  says. The floor raises the `<unk>` column to at least δ·(1 − p_blank) per frame ("a syllable is
  spoken here, one I never saw, with prior δ"). This is an experiment, not a decoder option.
  Measured 2026-12-03: on the second corpus's models of the 10- and 30-minute recipes, no
  floor lowered the dev CER at any weight; on the demo model (4 OOV syllables in its dev split)
  log δ -12 at λ 0.5 lowered it from 19.1% to 18.8%, and its test CER stayed 25.6%.
Reference CER and OOV recovery as `kwav2vec.metrics` computes them (scoring form, spaces included).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from rapidfuzz.distance import Levenshtein

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from decode import DEMO_CHECKPOINT, model_outputs  # noqa: E402

from kwav2vec.data.manifest import read_manifest  # noqa: E402
from kwav2vec.decoding import MultiDecoder  # noqa: E402
from kwav2vec.decoding.joint import JointConfig, rescore_nbest_weights  # noqa: E402
from kwav2vec.inference.predict import DEFAULT_MAX_SAMPLES_PER_BATCH, load_finetuner  # noqa: E402
from kwav2vec.inference.tune import GRID, syllable_weights  # noqa: E402
from kwav2vec.metrics import normalize_for_scoring, oov_recovery_counts  # noqa: E402
from kwav2vec.text.hangul import decompose, is_syllable  # noqa: E402

DEMO_SPLITS = [ROOT / "data" / "demo" / "dev.jsonl", ROOT / "data" / "demo" / "test.jsonl"]
FLOORS = (None, -12.0, -8.0, -6.0, -4.0, -3.0, -2.0, -1.0, 0.0)  # log δ; None: the head's own <unk>
BEAM_WIDTH = 100


def floored(syllable_log_probs: torch.Tensor, blank_id: int, unk_id: int, log_delta: float | None) -> torch.Tensor:
    """(B, T, Vs) log-probs with p(<unk>) raised to at least δ·(1 − p_blank) on every frame."""
    if log_delta is None:
        return syllable_log_probs
    out = syllable_log_probs.clone()
    speech = torch.log1p(-out[..., blank_id].exp().clamp(max=1 - 1e-7))  # log(1 - p_blank)
    out[..., unk_id] = torch.logaddexp(out[..., unk_id], speech + log_delta)
    return out


def picks(ref: str, candidates: list[str], known: set[str]) -> tuple[str, str]:
    """(the candidate nearest `ref` in characters, the one recovering the most OOV syllables of
    `ref`), the first of equals in list order; `ref` in scoring form."""
    candidates = candidates or [""]
    oracle = min(candidates, key=lambda t: Levenshtein.distance(ref, normalize_for_scoring(t)))
    most = max(candidates, key=lambda t: oov_recovery_counts([ref], [t], known)[0])
    return oracle, most


class Scored:
    """Character errors and recovered OOV syllables summed over utterances, the OOV syllables counted
    against each of several known sets (a syllable outside "all" but inside a category's set is
    not counted for that category: see `oov_groups`)."""

    def __init__(self, known: dict[str, set[str]]) -> None:
        self.known, self.errors, self.recovered = known, 0, dict.fromkeys(known, 0)

    def add(self, ref: str, hyp: str) -> None:
        hyp = normalize_for_scoring(hyp)
        self.errors += Levenshtein.distance(ref, hyp)
        for name, known in self.known.items():
            self.recovered[name] += oov_recovery_counts([ref], [hyp], known)[0]


def syllable_pairs(syllable: str) -> set[tuple[str, str]]:
    """A Hangul syllable's (initial, medial) and (medial, final) jamo pairs (final "" when it has none)."""
    initial, medial, *final = decompose(syllable)
    return {(initial, medial), (medial, "".join(final))}


def jamo_pairs(texts: list[str]) -> set[tuple[str, str]]:
    """`syllable_pairs` of every syllable in `texts`: the sound combinations the training audio let a
    model hear."""
    return {pair for text in texts for char in text if is_syllable(char) for pair in syllable_pairs(char)}


def pairs_heard(syllable: str, pairs: set[tuple[str, str]]) -> bool:
    """Whether both of `syllable`'s jamo pairs occur in `pairs`."""
    return syllable_pairs(syllable) <= pairs


def oov_groups(refs: list[str], known: set[str], pairs: set[tuple[str, str]] | None) -> dict[str, set[str]]:
    """Known sets under which `oov_recovery_counts` counts all OOV syllables of `refs` ("all") and, given
    the training texts' `pairs`, only those whose two jamo pairs were heard in training ("pairs
    heard") or those with at least one pair never heard ("a pair unheard"): each category's set
    adds the other category's OOV syllables to `known`."""
    groups = {"all": known}
    if pairs is not None:
        oov = {c for r in refs for c in r if c != " " and c not in known}
        heard = {c for c in oov if is_syllable(c) and pairs_heard(c, pairs)}
        groups.update({"pairs heard": known | (oov - heard), "a pair unheard": known | heard})
    return groups


def ceiling(model, manifest: Path, floor: bool = False, train_texts: list[str] | None = None) -> dict:
    """The figures of the module docstring for one manifest (a dict of percentages and counts); with
    `train_texts`, OOV recovery also per `oov_groups` category ("oov_by_pairs")."""
    gv, sv = model.grapheme_vocab, model.syllable_vocab
    known = set(sv.symbols)
    batches, refs, _ = model_outputs(model, manifest, DEFAULT_MAX_SAMPLES_PER_BATCH, None)
    refs = [normalize_for_scoring(r) for r in refs]
    weight = syllable_weights(None, model)
    lam = weight["rescore"] if isinstance(weight, dict) else weight
    lams = sorted({lam, *GRID}) if floor else [lam]
    floors = FLOORS if floor else (None,)
    groups = oov_groups(refs, known, None if train_texts is None else jamo_pairs(train_texts))
    greedy, oracle, best_oov = Scored(groups), Scored(groups), Scored(groups)
    grid = {(f, w): Scored(groups) for f in floors for w in lams}
    totals = {name: sum(oov_recovery_counts([r], [r], k)[1] for r in refs) for name, k in groups.items()}
    oov_total = totals["all"]
    with MultiDecoder(["greedy-grapheme", "beam-grapheme", "beam-syllable"], gv, sv, beam_width=BEAM_WIDTH,
                      nbest=None) as decoder:
        for g_lp, s_lp, frames, positions in batches:
            out = decoder.decode(g_lp, s_lp, frames)
            g_nbest = [d.nbest for d in out["beam-grapheme"]]
            s_nbest = [d.nbest for d in out["beam-syllable"]]
            batch_refs = [refs[p] for p in positions]
            for ref, d, g, s in zip(batch_refs, out["greedy-grapheme"], g_nbest, s_nbest, strict=True):
                greedy.add(ref, d.text)
                nearest, most = picks(ref, list(dict.fromkeys(h.text for h in (*g, *s))), known)
                oracle.add(ref, nearest)
                best_oov.add(ref, most)
            for f in floors:
                results = rescore_nbest_weights(
                    g_nbest, s_nbest, g_lp, floored(s_lp, sv.blank_id, sv.unk_id, f), frames, gv, sv, lams,
                    JointConfig(mode="rescore"),
                )
                for w, result in zip(lams, results, strict=True):
                    for ref, hyps in zip(batch_refs, result, strict=True):
                        grid[f, w].add(ref, hyps[0].text if hyps else "")
    chars = sum(len(r) for r in refs)

    def share(s: Scored, name: str) -> float | None:
        return 100 * s.recovered[name] / totals[name] if totals[name] else None

    def pct(s: Scored) -> dict:
        return {"cer": 100 * s.errors / chars, "oov_recovery": share(s, "all")}

    by_pairs = {name: {"oov_syllables": totals[name], "rescore": share(grid[None, lam], name),
                       "greedy_grapheme": share(greedy, name), "oov_ceiling": share(best_oov, name)}
                for name in groups if name != "all"}

    return {"manifest": str(manifest), "utterances": len(refs), "chars": chars, "oov_syllables": oov_total,
            "weight": lam, "rescore": pct(grid[None, lam]), "greedy_grapheme": pct(greedy),
            "oracle": pct(oracle), "oov_ceiling": pct(best_oov)["oov_recovery"],
            "grid": {f"{f}@{w:g}": pct(s) for (f, w), s in grid.items()} if floor else None,
            "oov_by_pairs": by_pairs or None}


def fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def print_ceiling(c: dict) -> None:
    print(f"\n{c['manifest']}: {c['utterances']} utterances, {c['chars']} characters, {c['oov_syllables']} OOV "
          f"syllables, beam {BEAM_WIDTH}")
    print("| | CER % | OOV recovery % |\n|---|---|---|")
    print(f"| joint-rescore (λ {c['weight']:g}) | {fmt(c['rescore']['cer'])} | {fmt(c['rescore']['oov_recovery'])} |")
    print(f"| greedy-grapheme | {fmt(c['greedy_grapheme']['cer'])} | {fmt(c['greedy_grapheme']['oov_recovery'])} |")
    print(f"| n-best oracle (best candidate) | {fmt(c['oracle']['cer'])} | {fmt(c['oracle']['oov_recovery'])} |")
    print(f"| n-best ceiling (most OOV per utterance) | | {fmt(c['oov_ceiling'])} |")
    if c.get("oov_by_pairs"):
        print("\nOOV recovery % by whether the syllable's initial+medial and medial+final jamo pairs occur in "
              "the training texts\n| OOV syllables | count | joint-rescore | greedy-grapheme | n-best ceiling |\n"
              "|---|---|---|---|---|")
        for name, g in c["oov_by_pairs"].items():
            print(f"| {name} | {g['oov_syllables']} | {fmt(g['rescore'])} | {fmt(g['greedy_grapheme'])} | "
                  f"{fmt(g['oov_ceiling'])} |")
    if c["grid"]:
        lams = sorted({float(k.split("@")[1]) for k in c["grid"]})
        print("\nfloor log δ \\ λ: CER / OOV recovery %\n| log δ | " + " | ".join(f"{w:g}" for w in lams) + " |")
        print("|---" * (len(lams) + 1) + "|")
        for f in FLOORS:
            cells = [c["grid"][f"{f}@{w:g}"] for w in lams]
            print(f"| {'off' if f is None else f'{f:g}'} | " + " | ".join(
                f"{x['cer']:.1f} / {fmt(x['oov_recovery'])}" for x in cells) + " |")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", default=None,
                        help=f"HierarchicalFineTuner checkpoint (default {DEMO_CHECKPOINT.relative_to(ROOT)})")
    parser.add_argument("--manifests", nargs="+", default=[str(p) for p in DEMO_SPLITS],
                        help="labelled manifests (default: the demo's dev and test splits)")
    parser.add_argument("--floor", action="store_true", help="also the grid of OOV floors x syllable weights")
    parser.add_argument("--train-manifest", default=None,
                        help="the training manifest: also split OOV recovery by the jamo pairs its texts hold")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    checkpoint = args.checkpoint or str(DEMO_CHECKPOINT)
    if args.checkpoint is None and not DEMO_CHECKPOINT.is_file():
        print(f"bench/oov_ceiling.py: {DEMO_CHECKPOINT.relative_to(ROOT)} does not exist (run `make demo`, or "
              "give a checkpoint): nothing to measure")
        return 0
    try:
        model = load_finetuner(checkpoint)
    except (FileNotFoundError, ValueError) as err:
        print(f"bench/oov_ceiling.py: {err}", file=sys.stderr)
        return 2
    if set(model.heads_used) != {"grapheme", "syllable"}:
        print(f"bench/oov_ceiling.py: {checkpoint} has only the {model.heads_used} head(s)", file=sys.stderr)
        return 2
    train_texts = None
    if args.train_manifest:
        try:
            train_texts = [e.norm for e in read_manifest(args.train_manifest, require_norm=True)]
        except (OSError, ValueError) as err:
            print(f"bench/oov_ceiling.py: {err}", file=sys.stderr)
            return 2
    print(checkpoint)
    for manifest in args.manifests:
        print_ceiling(ceiling(model, Path(manifest), floor=args.floor, train_texts=train_texts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
