"""K-wav2vec's comparison in miniature, on the bundled demo corpus: grapheme-only (λ = 0),
syllable-only (λ = 1) and multi-task (λ = 0.5) models, decoded greedy and joint.

    .venv/bin/python bench/replicate.py [--steps N] [--init-from PRETRAINED.ckpt] [--out runs/replicate]

Each model is fine-tuned with the demo's CPU recipe (conf/data/demo.yaml + conf/trainer/cpu.yaml +
conf/finetune/demo.yaml), only `--model.mtl_weight` differs, through the same `kwav2vec finetune fit` and
`kwav2vec evaluate` commands a user runs. For a like-for-like comparison every model gets the same
seed and exactly `--steps` updates: the recipe's time cap is lifted (`--trainer.max_time=null`),
since the three models do not cost the same per step. The test split (data/demo/test.jsonl) is then
decoded with greedy decoding of each head the model has and, for the multi-task model, with joint
decoding (union, as K-wav2vec, and rescore). Prints CER / WER / sWER / OOV-syllable recovery per model
and decoder and writes them to <out>/replicate.json.

Three fine-tunes at the recipe's length take about three times `make demo`'s fine-tuning step. Without
--init-from the models start from scratch (the demo pretrains first; pass its
runs/demo/pretrain/checkpoints/last.ckpt to compare from the same pretrained backbone).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from demo import loss_curve  # noqa: E402  (reads a CSVLogger metrics file; scripts/demo.py is `make demo`)

KWAV2VEC = [sys.executable, "-m", "kwav2vec.cli"]

RECIPE = "conf/finetune/demo.yaml"
TEST = "data/demo/test.jsonl"
# name, λ (weight of the syllable CTC), decoders (greedy of each built head; joint needs both heads)
MODELS = (
    ("grapheme-only", 0.0, ("greedy:grapheme",)),
    ("syllable-only", 1.0, ("greedy:syllable",)),
    ("multi-task", 0.5, ("greedy:grapheme", "greedy:syllable", "joint:union", "joint:rescore")),
)


def run(args: list[str], log: Path) -> bool:
    """Run one `kwav2vec` command from the repository root, echoing it; its output goes to `log`.
    On failure prints the log's last lines and returns False (the other models still run)."""
    print(f"$ kwav2vec {shlex.join(args)}", flush=True)
    started = time.monotonic()
    with log.open("w") as f:
        proc = subprocess.run([*KWAV2VEC, *args], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        print(f"  FAILED (exit {proc.returncode}) after {(time.monotonic() - started) / 60:.1f} min; "
              f"last lines of {log}:\n{tail}", flush=True)
        return False
    print(f"  done in {(time.monotonic() - started) / 60:.1f} min (log: {log})", flush=True)
    return True


def validation_interval(steps: int, recipe_interval: int) -> int:
    """The recipe's interval if it divides `steps`, else the largest of steps/4 .. steps/1 that is a
    whole number: last.ckpt is written at a validation, so the last step must be one."""
    if steps % recipe_interval == 0:
        return recipe_interval
    return steps // next(k for k in (4, 3, 2, 1) if steps % k == 0)


def percent(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def main(argv: list[str] | None = None) -> int:
    recipe = yaml.safe_load((ROOT / RECIPE).read_text())
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=recipe["trainer"]["max_steps"],
                        help=f"fine-tuning updates per model (default: {RECIPE}'s {recipe['trainer']['max_steps']})")
    parser.add_argument("--init-from", default=None,
                        help="pretrained backbone for all three models (e.g. runs/demo/pretrain/checkpoints/last.ckpt); "
                        "default: from scratch")
    parser.add_argument("--seed", type=int, default=0, help="seed_everything of every fine-tuning run (default 0)")
    parser.add_argument("--out", default="runs/replicate", help="where checkpoints, logs and results go")
    args = parser.parse_args(argv)
    if args.steps <= 0:
        parser.error(f"--steps must be > 0, got {args.steps}")
    if args.init_from and not Path(args.init_from).is_file():
        parser.error(f"--init-from {args.init_from}: no such file")

    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    interval = validation_interval(args.steps, int(recipe["trainer"]["val_check_interval"]))
    started = time.monotonic()
    results = []
    for i, (name, weight, decoders) in enumerate(MODELS, start=1):
        folder = out / name
        shutil.rmtree(folder, ignore_errors=True)  # only what this script writes: a rerun starts clean
        folder.mkdir()
        print(f"\n== {i}/{len(MODELS)} {name} (λ = {weight}), {args.steps} steps", flush=True)
        t0 = time.monotonic()
        finetune = [
            # the recipe last, as in `make demo`: its batch size wins over the data file's
            "finetune", "fit", "--config", "conf/data/demo.yaml", "--config", "conf/trainer/cpu.yaml", "--config", RECIPE,
            f"--model.mtl_weight={weight}", f"--seed_everything={args.seed}",
            f"--trainer.max_steps={args.steps}", f"--model.total_steps={args.steps}", "--trainer.max_time=null",
            f"--trainer.val_check_interval={interval}",
            f"--trainer.logger.init_args.save_dir={folder}", "--trainer.logger.init_args.name=finetune",
            "--trainer.logger.init_args.version=0", f"--checkpoint.dirpath={folder / 'checkpoints'}",
        ]
        if args.init_from:
            finetune.append(f"--model.init_from={Path(args.init_from).resolve()}")
        result = {"model": name, "mtl_weight": weight, "error": None}
        results.append(result)
        if not run(finetune, folder / "finetune.log"):
            result["error"] = f"fine-tuning failed, see {folder / 'finetune.log'}"
            continue
        train_seconds = time.monotonic() - t0
        curve = loss_curve(folder / "finetune" / "version_0" / "metrics.csv")
        if curve:
            print(f"  fine-tuning loss: {curve[0][1]:.3f} at step {curve[0][0]} -> {curve[-1][1]:.3f} at step {curve[-1][0]}")

        checkpoint = folder / "checkpoints" / "last.ckpt"
        result.update(checkpoint=str(checkpoint), train_seconds=train_seconds,
                      loss_first=curve[0] if curve else None, loss_last=curve[-1] if curve else None)
        evaluate = ["evaluate", str(checkpoint), TEST, "--decoder", *decoders, "--out", str(folder / "eval"), "--no-progress"]
        if not run(evaluate, folder / "evaluate.log"):
            result["error"] = f"evaluation failed, see {folder / 'evaluate.log'}"
            continue
        summary = json.loads((folder / "eval" / "summary.json").read_text(encoding="utf-8"))
        result["decoders"] = {
            d: {k: m[k] for k in ("cer", "wer", "swer", "jamo_error_rate", "oov_recovery", "oov_recovered", "oov_syllables")}
            for d, m in summary["decoders"].items()
        }

    report = {"steps": args.steps, "init_from": args.init_from, "seed": args.seed, "test": TEST, "models": results}
    (out / "replicate.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

    start = "pretrained " + args.init_from if args.init_from else "scratch"
    print(f"\nDemo test split, {args.steps} fine-tuning steps per model from {start} (seed {args.seed}):\n")
    print("| model | λ | decoder | CER % | WER % | sWER % | OOV-syllable recovery % |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        if r["error"]:
            print(f"| {r['model']} | {r['mtl_weight']} | {r['error']} | | | | |")
        for d, m in r.get("decoders", {}).items():
            oov = f"{percent(m['oov_recovery'])} ({m['oov_recovered']}/{m['oov_syllables']})"
            print(f"| {r['model']} | {r['mtl_weight']} | {d} | {percent(m['cer'])} | {percent(m['wer'])} "
                  f"| {percent(m['swer'])} | {oov} |")
    per_model = ", ".join(f"{r['model']} {r['train_seconds'] / 60:.1f}" for r in results if "train_seconds" in r)
    print(f"\nTotal time {(time.monotonic() - started) / 60:.1f} min ({per_model} min of fine-tuning). "
          f"Checkpoints, logs and per-utterance results: {out}/<model>/; table: {out}/replicate.json")
    failed = [r["model"] for r in results if r["error"]]
    if failed:
        print(f"\n{len(failed)} model(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
