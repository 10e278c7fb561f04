"""The CPU recipes on two corpora: the bundled demo and a second one they were not designed on.

    python bench/recipe.py                       # everything below (about 70 minutes on 2 cores)
    python bench/recipe.py --stages seeds demo   # a part of it

Stages (each runs the `kwav2vec` CLI through scripts/demo.py, as a user would):
- `seeds`: pretraining alone (conf/pretrain/demo.yaml) for --seeds seeds per corpus: code
  perplexity at the start, its minimum and at the end, whether a collapse was detected
  (train/collapse_recoveries, val/collapsed), and the minutes it took;
- `demo`, `second`: pretrain + fine-tune + tune the joint weight on dev + decode test, within the
  `make demo` budget (the recipes' own max_time caps, 15 minutes in all): CER of every decoder,
  OOV-syllable recovery, the code perplexity over pretraining and the update at which the
  fine-tuning loss leaves the blank plateau; and on dev and test, how many unseen syllables the
  two heads' n-best lists hold at all (bench/oov_ceiling.py: what any re-ranking could recover),
  also split by whether the unseen syllables' jamo pairs occur in the training texts;
- `scratch`: the same fine-tuning on the second corpus from a random backbone (same updates), the
  reference the pretrained backbone must not lose to;
- `long`: the second corpus within 30 CPU-minutes: the same pretraining, then the longer
  fine-tuning of `conf/finetune/demo_long.yaml` (4000 updates with time and channel masking).

"Leaves the plateau": the first logged update at which the fine-tuning loss is below 0.8 times
its value at the end of warmup (the all-blank plateau sits near that value for as long as the
model only emits blanks). The second corpus is generated into --second when missing
(scripts/make_second_corpus.py, about 2 minutes; needs espeak-ng). Figures depend on an idle
machine: the recipes' max_time caps trade updates for wall time.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from oov_ceiling import ceiling, fmt  # noqa: E402

from kwav2vec.data.manifest import read_manifest  # noqa: E402
from kwav2vec.inference.predict import load_finetuner  # noqa: E402

DEMO = ROOT / "data" / "demo"
STAGES = ("second", "demo", "scratch", "seeds", "long")
PLATEAU_FACTOR = 0.8


def metrics(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def curve(rows: list[dict[str, str]], key: str) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]


def leaves_plateau(loss: list[tuple[int, float]], warmup_end: int) -> int | None:
    """The first update with loss < PLATEAU_FACTOR x the loss at the end of warmup (None: never)."""
    after = [(s, v) for s, v in loss if s >= warmup_end]
    if not after:
        return None
    level = after[0][1]
    return next((s for s, v in after if v < PLATEAU_FACTOR * level), None)


def demo_py(corpus: Path, out: Path, *flags: str) -> float:
    cmd = [sys.executable, str(ROOT / "scripts" / "demo.py"), "--corpus", str(corpus), "--out", str(out), *flags]
    print("$", " ".join(cmd[1:]), flush=True)
    started = time.monotonic()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return (time.monotonic() - started) / 60


def pretraining_figures(out: Path) -> dict:
    rows = metrics(out / "pretrain" / "version_0" / "metrics.csv")
    ppl = curve(rows, "train/code_perplexity")
    collapsed = any(float(r.get("val/collapsed") or 0) > 0 for r in rows)
    recoveries = max((v for _, v in curve(rows, "train/collapse_recoveries")), default=0.0)
    acc = curve(rows, "train/accuracy")
    return {"ppl_start": ppl[0][1] if ppl else None, "ppl_min": min(v for _, v in ppl) if ppl else None,
            "ppl_end": ppl[-1][1] if ppl else None, "accuracy_end": acc[-1][1] if acc else None,
            "collapsed_validation": collapsed, "recoveries": int(recoveries), "updates": ppl[-1][0] + 1 if ppl else 0}


def nbest_ceilings(out: Path, corpus: Path) -> dict:
    """bench/oov_ceiling.py's figures of the run's fine-tuned model on the corpus's dev and test splits."""
    torch.set_num_threads(2)
    model = load_finetuner(str(out / "finetune" / "checkpoints" / "last.ckpt"))
    train_texts = [e.norm for e in read_manifest(corpus / "train.jsonl", require_norm=True)]
    return {split: ceiling(model, corpus / f"{split}.jsonl", train_texts=train_texts) for split in ("dev", "test")}


def pipeline_figures(out: Path, warmup_fraction: float = 0.1) -> dict:
    rows = metrics(out / "finetune" / "version_0" / "metrics.csv")
    loss = curve(rows, "train/loss")
    updates = loss[-1][0] + 1 if loss else 0
    summary = json.loads((out / "eval" / "summary.json").read_text())
    tuned = json.loads((out / "tune" / "summary.json").read_text())["tuning"]["weights"]
    figures = {"finetune_updates": updates, "leaves_plateau": leaves_plateau(loss, int(warmup_fraction * updates)),
               "weights": tuned, "decoders": {n: {"cer": d["cer"], "oov_recovery": d.get("oov_recovery")}
                                              for n, d in summary["decoders"].items()}}
    if (out / "pretrain" / "version_0" / "metrics.csv").exists():
        figures["pretrain"] = pretraining_figures(out)
    return figures


def pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def print_pipeline(name: str, fig: dict, minutes: float) -> None:
    print(f"\n### {name}: {minutes:.1f} min, {fig['finetune_updates']} fine-tuning updates, loss leaves the "
          f"plateau at update {fig['leaves_plateau']}, joint weights tuned on dev {fig['weights']}")
    if "pretrain" in fig:
        p = fig["pretrain"]
        print(f"pretraining: {p['updates']} updates, code perplexity {p['ppl_start']:.1f} -> min {p['ppl_min']:.1f} "
              f"-> {p['ppl_end']:.1f}, collapse recoveries {p['recoveries']}")
    print("| decoder | CER % | OOV recovery % |\n|---|---|---|")
    for decoder, d in fig["decoders"].items():
        print(f"| {decoder} | {pct(d['cer'])} | {pct(d['oov_recovery'])} |")
    best = min(fig["decoders"], key=lambda n: fig["decoders"][n]["cer"])
    heads = min(fig["decoders"][n]["cer"] for n in ("beam-grapheme", "beam-syllable"))
    print(f"best decoder {best} {pct(fig['decoders'][best]['cer'])}%; joint-rescore "
          f"{pct(fig['decoders']['joint-rescore']['cer'])}% vs better head {pct(heads)}%")
    for split, c in fig.get("ceilings", {}).items():
        print(f"{split}: {c['oov_syllables']} OOV syllables; n-best oracle CER {c['oracle']['cer']:.1f}%, OOV recovery "
              f"of the oracle candidates {fmt(c['oracle']['oov_recovery'])}%, most any re-ranking could recover "
              f"{fmt(c['oov_ceiling'])}% (joint-rescore {fmt(c['rescore']['oov_recovery'])}%)")
        for name, g in (c.get("oov_by_pairs") or {}).items():
            print(f"  {g['oov_syllables']} OOV syllables with {name} in training: joint-rescore recovers "
                  f"{fmt(g['rescore'])}%, greedy-grapheme {fmt(g['greedy_grapheme'])}%, at most {fmt(g['oov_ceiling'])}%")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--second", default="/tmp/kwav2vec-second", help="second corpus folder (made if missing)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "recipe"))
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    second, out = Path(args.second), Path(args.out)
    if not (second / "test.jsonl").exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_second_corpus.py"), "--out", str(second)],
                       check=True)
    corpora = {"demo": DEMO, "second": second}
    results: dict = {}
    for stage, corpus, flags in (("second", second, ()), ("demo", DEMO, ()),
                                 ("scratch", second, ("--skip-pretrain",)),
                                 ("long", second, ("--finetune-recipe", "conf/finetune/demo_long.yaml"))):
        if stage in args.stages:
            minutes = demo_py(corpus, out / stage, "--seed", "0", *flags)
            results[stage] = {"minutes": minutes, **pipeline_figures(out / stage),
                              "ceilings": nbest_ceilings(out / stage, corpus)}
            print_pipeline(stage, results[stage], minutes)
    if "seeds" in args.stages:
        print("\n### pretraining alone, conf/pretrain/demo.yaml\n| corpus | seed | minutes | updates | "
              "code perplexity start / min / end | accuracy end | collapse recoveries | collapsed validation |")
        print("|---|---|---|---|---|---|---|---|")
        for name, corpus in corpora.items():
            for seed in range(1, args.seeds + 1):
                run = out / f"seed-{name}-{seed}"
                minutes = demo_py(corpus, run, "--seed", str(seed), "--pretrain-only")
                p = pretraining_figures(run)
                results.setdefault("seeds", []).append({"corpus": name, "seed": seed, "minutes": minutes, **p})
                print(f"| {name} | {seed} | {minutes:.1f} | {p['updates']} | {p['ppl_start']:.1f} / {p['ppl_min']:.1f}"
                      f" / {p['ppl_end']:.1f} | {p['accuracy_end']:.3f} | {p['recoveries']} | "
                      f"{p['collapsed_validation']} |", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
