"""Decoding speed and accuracy on real model outputs: greedy, single-head beam, joint union/rescore.

    .venv/bin/python bench/decode.py                                  # the demo's fine-tuned model
    .venv/bin/python bench/decode.py runs/finetune/.../last.ckpt --manifest data/demo/test.jsonl --beam-width 100

The model runs once over the manifest (batched, eval mode); its log-probabilities are kept and
every decoder is then timed on exactly the same outputs, alone (nothing shared between decoders),
in this process, batch by batch, best of `--repeats` runs. Printed per decoder: utterances/s,
real-time factor (decoding seconds / audio seconds), CER; then the cost of each joint decoder as a
multiple of one pyctcdecode search (the mean of the two heads' searches; goal: at most 2.1x, since
joint decoding runs one search per head), what the combination costs beyond the two searches, and
whether its CER is at most the better single head's beam CER. Timings on a busy machine are noisy:
use --repeats 3 for figures to quote.

Without a checkpoint argument it uses the demo's (runs/demo/finetune/checkpoints/last.ckpt, written
by `make demo`); if that does not exist it says so and exits 0, so `make bench` carries on.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kwav2vec.data.audio import SAMPLE_RATE  # noqa: E402
from kwav2vec.data.manifest import read_manifest  # noqa: E402
from kwav2vec.decoding import (  # noqa: E402
    BeamSearchConfig,
    BeamSearchDecoder,
    JointConfig,
    JointDecoder,
    greedy_decode,
)
from kwav2vec.inference.predict import PredictDataset, Source, collate_predict, load_finetuner, shard_batches  # noqa: E402
from kwav2vec.metrics import cer  # noqa: E402

DEMO_CHECKPOINT = ROOT / "runs" / "demo" / "finetune" / "checkpoints" / "last.ckpt"
DEMO_TEST = ROOT / "data" / "demo" / "test.jsonl"
GOAL_RATIO = 2.1


def model_outputs(model, manifest: Path, max_samples: int, batch_size: int) -> tuple[list[tuple], list[str], float]:
    """[(grapheme log-probs (B, T, Vg), syllable log-probs (B, T, Vs), frames (B,), manifest positions)],
    references in manifest order, audio seconds."""
    entries = read_manifest(manifest, require_norm=True)
    sources = [Source(i, e.id, e.path, e.num_samples, e.norm) for i, e in enumerate(entries)]
    dataset = PredictDataset(sources)
    batches, seconds = [], 0.0
    with torch.inference_mode():
        for positions in shard_batches([s.num_samples for s in sources], max_samples, batch_size, 0, 1):
            batch = collate_predict([dataset[i] for i in positions])
            if batch["skipped"]:
                raise SystemExit(f"cannot read {batch['skipped'][0]['path']}: {batch['skipped'][0]['detail']}")
            log_probs, frames = model(batch["audio"], batch["audio_lengths"])
            batches.append((log_probs["grapheme"], log_probs["syllable"], frames, positions))
            seconds += float(batch["audio_lengths"].sum()) / SAMPLE_RATE
    return batches, [e.norm for e in entries], seconds


def timed(decode: Callable, batches: list[tuple], repeats: int) -> tuple[float, list[str | None]]:
    """Best-of-`repeats` seconds to decode every batch, and the texts in manifest order."""
    n = sum(len(b[3]) for b in batches)
    best, texts = float("inf"), [None] * n
    for _ in range(repeats):
        start = time.perf_counter()
        outs = [decode(g, s, frames) for g, s, frames, _ in batches]
        best = min(best, time.perf_counter() - start)
    for (_, _, _, positions), out in zip(batches, outs, strict=True):
        for p, text in zip(positions, out, strict=True):
            texts[p] = text
    return best, texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", default=None, help=f"HierarchicalFineTuner checkpoint (default {DEMO_CHECKPOINT.relative_to(ROOT)})")
    parser.add_argument("--manifest", default=str(DEMO_TEST), help="labelled manifest (default: the demo's test split)")
    parser.add_argument("--beam-width", type=int, default=100, help="beam width of every search (default 100, as K-wav2vec)")
    parser.add_argument("--syllable-weight", type=float, default=0.5, help="joint decoders' w / λ (default 0.5)")
    parser.add_argument("--batch-size", type=int, default=16, help="utterances per batch (default 16)")
    parser.add_argument("--max-samples-per-batch", type=int, default=1_600_000)
    parser.add_argument("--repeats", type=int, default=1, help="timing runs per decoder, the best is kept (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: comparable on a shared machine)")
    args = parser.parse_args(argv)

    if args.checkpoint is None:
        if not DEMO_CHECKPOINT.is_file():
            print(f"bench/decode.py: SKIPPED: no checkpoint given and {DEMO_CHECKPOINT.relative_to(ROOT)} does not exist; "
                  "run `make demo` first or pass a fine-tuned checkpoint path")
            return 0
        args.checkpoint = str(DEMO_CHECKPOINT)
    torch.set_num_threads(args.threads)
    try:
        model = load_finetuner(args.checkpoint)
    except (FileNotFoundError, ValueError) as err:
        print(f"bench/decode.py: {err}", file=sys.stderr)
        return 2
    if set(model.heads_used) != {"grapheme", "syllable"}:
        print(f"bench/decode.py: {args.checkpoint} has only the {model.heads_used} head(s); the joint decoders need both",
              file=sys.stderr)
        return 2
    gv, sv = model.grapheme_vocab, model.syllable_vocab

    start = time.perf_counter()
    batches, refs, audio_seconds = model_outputs(model, Path(args.manifest), args.max_samples_per_batch, args.batch_size)
    forward = time.perf_counter() - start
    n = len(refs)
    print(f"{args.checkpoint}\n{args.manifest}: {n} utterances, {audio_seconds:.1f} s of audio; forward pass "
          f"{forward:.1f} s (RTF {forward / audio_seconds:.3f}); beam width {args.beam_width}, "
          f"w/λ {args.syllable_weight}, {args.threads} torch thread(s), best of {args.repeats}\n")

    beam = BeamSearchConfig(beam_width=args.beam_width)
    g_beam, s_beam = BeamSearchDecoder(gv, beam), BeamSearchDecoder(sv, beam)
    union = JointDecoder(gv, sv, JointConfig("union", args.syllable_weight), grapheme_beam=beam)
    rescore = JointDecoder(gv, sv, JointConfig("rescore", args.syllable_weight), grapheme_beam=beam)
    decoders: dict[str, Callable] = {
        "greedy-grapheme": lambda g, s, f: greedy_decode(g, f, gv),
        "greedy-syllable": lambda g, s, f: greedy_decode(s, f, sv),
        "beam-grapheme": lambda g, s, f: g_beam.decode(g, f),
        "beam-syllable": lambda g, s, f: s_beam.decode(s, f),
        "joint-union": union.decode,
        "joint-rescore": rescore.decode,
    }
    rows = {}
    for name, decode in decoders.items():
        seconds, texts = timed(decode, batches, args.repeats)
        rows[name] = {"seconds": seconds, "cer": cer(refs, texts)}
        print(f"  {name:<16} {n / seconds:9.1f} utt/s   RTF {seconds / audio_seconds:.4f}   "
              f"CER {100 * rows[name]['cer']:6.2f}%", flush=True)

    one_search = {h: rows[f"beam-{h}"]["seconds"] for h in ("grapheme", "syllable")}
    mean_search = (one_search["grapheme"] + one_search["syllable"]) / 2
    best_single = min(rows["beam-grapheme"]["cer"], rows["beam-syllable"]["cer"])
    print(f"\n  one pyctcdecode search: grapheme {one_search['grapheme']:.2f} s, syllable "
          f"{one_search['syllable']:.2f} s (mean {mean_search:.2f} s)")
    ok = True
    for name in ("joint-union", "joint-rescore"):
        r = rows[name]
        ratio = r["seconds"] / mean_search
        # What joining costs beyond the two searches it needs, in units of one (mean) search; robust
        # when one head's search is much slower than the other's (the mean-ratio then hides little).
        overhead = (r["seconds"] - one_search["grapheme"] - one_search["syllable"]) / mean_search
        cer_ok = r["cer"] <= best_single + 1e-12
        ok &= ratio <= GOAL_RATIO and cer_ok
        print(f"  {name}: {ratio:.2f}x one (mean) search, goal <= {GOAL_RATIO}x: {'yes' if ratio <= GOAL_RATIO else 'NO'} "
              f"(x{r['seconds'] / one_search['grapheme']:.2f} the grapheme search, x{r['seconds'] / one_search['syllable']:.2f} "
              f"the syllable search; combination beyond both searches {overhead:+.2f} searches); "
              f"CER {100 * r['cer']:.2f}% vs better single-head beam {100 * best_single:.2f}%: "
              f"{'no worse' if cer_ok else 'WORSE'}")
    print(f"\n  goals {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
