"""`make demo`: pretrain -> fine-tune -> decode -> metrics table, on the bundled demo corpus.

Runs the same `kwav2vec` commands a user would, with the CPU recipe in conf/pretrain/demo.yaml and
conf/finetune/demo.yaml, and prints each command before running it. Everything goes under
runs/demo/ (removed first, so a rerun starts clean).

    python scripts/demo.py [--out runs/demo] [--pretrain-steps N] [--finetune-steps N]
    python scripts/demo.py --corpus /tmp/second --out runs/second   # any folder of the same layout

A corpus folder holds unlabeled.jsonl, train.jsonl, dev.jsonl and test.jsonl (and the vocabularies
beside train.jsonl), as data/demo and scripts/make_second_corpus.py write them. Between fine-tuning
and the test split, the joint decoders' weight is tuned on the dev split (`evaluate --tune-weight`).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KWAV2VEC = [sys.executable, "-m", "kwav2vec.cli"]
DECODERS = ("greedy-grapheme", "greedy-syllable", "beam-grapheme", "beam-syllable", "joint-union", "joint-rescore")


def _shown(path: Path) -> str:
    """`path` relative to the repository when it lies inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def run(args: list[str], log: Path) -> None:
    """Run one `kwav2vec` command, echoing it; its full output goes to `log`."""
    print(f"\n$ kwav2vec {shlex.join(args)}", flush=True)
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run([*KWAV2VEC, *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-40:]
        sys.exit(f"command failed after {elapsed:.0f} s (exit {proc.returncode}); last lines of {log}:\n" + "\n".join(tail))
    print(f"  done in {elapsed / 60:.1f} min (log: {_shown(log)})", flush=True)


def loss_curve(metrics_csv: Path, key: str = "train/loss") -> list[tuple[int, float]]:
    """(step, value) pairs of one metric from a CSVLogger metrics file."""
    points = []
    with metrics_csv.open() as f:
        for row in csv.DictReader(f):
            value = row.get(key)
            if value:
                points.append((int(row["step"]), float(value)))
    return points


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo", help="where checkpoints, logs and results go")
    parser.add_argument("--pretrain-steps", type=int, default=None, help="override conf/pretrain/demo.yaml")
    parser.add_argument("--finetune-steps", type=int, default=None, help="override conf/finetune/demo.yaml")
    parser.add_argument("--corpus", default="data/demo", help="folder with {unlabeled,train,dev,test}.jsonl")
    parser.add_argument("--seed", type=int, default=None, help="seed_everything of both trainings")
    parser.add_argument("--skip-pretrain", action="store_true", help="fine-tune from a random backbone")
    parser.add_argument("--pretrain-only", action="store_true", help="stop after pretraining")
    parser.add_argument("--init-from", default=None, help="fine-tune from this pretrained checkpoint (no pretraining)")
    parser.add_argument("--pretrain-recipe", default="conf/pretrain/demo.yaml")
    parser.add_argument("--finetune-recipe", default="conf/finetune/demo.yaml")
    parser.add_argument("--set", nargs="*", default=[], metavar="STAGE:FLAG=VALUE",
                        help="extra flags for one stage, e.g. finetune:--model.lr=2e-3 pretrain:--trainer.max_time=...")
    args = parser.parse_args(argv)

    out = (ROOT / args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    started = time.monotonic()

    def logger_flags(name: str) -> list[str]:
        return [
            f"--trainer.logger.init_args.save_dir={out}",
            f"--trainer.logger.init_args.name={name}",
            "--trainer.logger.init_args.version=0",
            f"--checkpoint.dirpath={out / name / 'checkpoints'}",
        ]

    print("== 1/3 pretraining the tiny preset on the demo's unlabeled audio")
    # the recipe file comes last: its settings (e.g. the batch size) win over the data and trainer files'
    corpus = Path(args.corpus).resolve()
    seed = [f"--seed_everything={args.seed}"] if args.seed is not None else []
    extra = {"pretrain": [], "finetune": []}
    for item in args.set:
        stage, _, flag = item.partition(":")
        if stage not in extra or not flag.startswith("--"):
            parser.error(f"--set {item!r}: expected pretrain:--flag=value or finetune:--flag=value")
        extra[stage].append(flag)
    pretrain = ["pretrain", "fit", "--config", "conf/data/demo_pretrain.yaml", "--config", "conf/trainer/cpu.yaml",
                "--config", args.pretrain_recipe, *logger_flags("pretrain"), *seed,
                f"--data.train_manifest={_shown(corpus / 'unlabeled.jsonl')}", f"--data.val_manifest={_shown(corpus / 'dev.jsonl')}",
                *extra["pretrain"]]
    if args.pretrain_steps:
        pretrain += [f"--trainer.max_steps={args.pretrain_steps}", f"--model.total_steps={args.pretrain_steps}"]
    pretrained = Path(args.init_from).resolve() if args.init_from else out / "pretrain" / "checkpoints" / "last.ckpt"
    if args.init_from:
        print(f"  skipped: fine-tuning starts from {_shown(pretrained)}")
    elif args.skip_pretrain:
        print("  skipped (--skip-pretrain): fine-tuning starts from a random backbone")
    else:
        run(pretrain, out / "pretrain.log")
        pretrain_csv = out / "pretrain" / "version_0" / "metrics.csv"
        for key, what in (("train/loss", "loss"), ("train/accuracy", "contrastive accuracy"),
                          ("train/code_perplexity", "code perplexity")):
            curve = loss_curve(pretrain_csv, key)
            if curve:
                (s0, v0), (s1, v1) = curve[0], curve[-1]
                print(f"  pretraining {what}: {v0:.3f} at step {s0} -> {v1:.3f} at step {s1}")

    if args.pretrain_only:
        return 0
    print("\n== 2/3 fine-tuning the multi-task model (jamo CTC + syllable CTC) from it")
    finetune = ["finetune", "fit", "--config", "conf/data/demo.yaml", "--config", "conf/trainer/cpu.yaml",
                "--config", args.finetune_recipe, *logger_flags("finetune"), *seed,
                *([] if args.skip_pretrain else [f"--model.init_from={pretrained}"]),
                f"--data.train_manifest={_shown(corpus / 'train.jsonl')}", f"--data.val_manifest={_shown(corpus / 'dev.jsonl')}",
                f"--data.test_manifest={_shown(corpus / 'test.jsonl')}", *extra["finetune"]]
    if args.finetune_steps:
        finetune += [f"--trainer.max_steps={args.finetune_steps}", f"--model.total_steps={args.finetune_steps}"]
    run(finetune, out / "finetune.log")
    finetuned = out / "finetune" / "checkpoints" / "last.ckpt"
    curve = loss_curve(out / "finetune" / "version_0" / "metrics.csv")
    if curve:
        (s0, l0), (s1, l1) = curve[0], curve[-1]
        print(f"  fine-tuning loss: {l0:.3f} at step {s0} -> {l1:.3f} at step {s1}")

    print("\n== 3/3 tuning the joint weight on the dev split, then decoding the test split")
    run(["evaluate", str(finetuned), _shown(corpus / "dev.jsonl"), "--tune-weight", "--out", str(out / "tune")],
        out / "tune.log")
    tuned = json.loads((out / "tune" / "summary.json").read_text())["tuning"]["weights"]
    print(f"  syllable weights tuned on dev: {tuned}")
    results = out / "eval"
    run(["evaluate", str(finetuned), _shown(corpus / "test.jsonl"), "--decoder", *DECODERS, "--out", str(results)],
        out / "evaluate.log")
    summary = json.loads((results / "summary.json").read_text())

    print(f"\nTest split of {_shown(corpus.resolve())} ({summary.get('utterances', '?')} utterances), "
          f"fine-tuned model {_shown(finetuned)}:\n")
    print("| decoder | CER % | WER % | sWER % | OOV-syllable recovery % |")
    print("|---|---|---|---|---|")
    for name, m in summary["decoders"].items():
        cells = [m["cer"], m["wer"], m["swer"], m["oov_recovery"]]
        print(f"| {name} | " + " | ".join("n/a" if c is None or math.isnan(c) else f"{100 * c:.1f}" for c in cells) + " |")
    print(f"\nTotal time {(time.monotonic() - started) / 60:.1f} min. Checkpoints and CSV logs: {_shown(out)}/"
          f"{{pretrain,finetune}}/; per-utterance results: {_shown(results)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
