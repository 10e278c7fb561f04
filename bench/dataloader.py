"""Data loading: bucketed vs random batching on a manifest (default: the demo corpus).

    .venv/bin/python bench/dataloader.py
    .venv/bin/python bench/dataloader.py --manifest data/kspon/train.jsonl --num-workers 4
    .venv/bin/python bench/dataloader.py --synthetic 400        # generated lognormal-length WAVs

Both modes use the same budget of padded samples per batch (fairseq `max_tokens`): "bucketed" packs
utterances in length order, "random" in a random order. One full epoch through `ResumableDataLoader`
(audio decoding, resampling if any, collate) is timed per repeat; printed are utterances/s, seconds of
real audio loaded per second, batches, mean utterances per batch, and the padding fraction measured
on the produced batches (padding samples / all samples of the padded (B, S) tensors), which is the
share of encoder compute a model would spend on padding.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kwav2vec.data.audio import SAMPLE_RATE  # noqa: E402
from kwav2vec.data.collate import collate_audio  # noqa: E402
from kwav2vec.data.dataset import AudioDataset  # noqa: E402
from kwav2vec.data.loader import ResumableDataLoader  # noqa: E402
from kwav2vec.data.manifest import read_manifest, write_manifest  # noqa: E402
from kwav2vec.data.sampler import BucketBatchSampler  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo" / "train.jsonl"


def synthetic_manifest(folder: Path, n: int, seed: int = 0) -> Path:
    """n WAV files (sine + noise) with lognormal durations (median 2.5 s, 0.5-10 s) and their manifest."""
    import soundfile as sf

    from kwav2vec.data.manifest import ManifestEntry

    rng = np.random.default_rng(seed)
    seconds = np.clip(rng.lognormal(np.log(2.5), 0.5, n), 0.5, 10.0)
    entries = []
    for i, s in enumerate(seconds):
        samples = int(s * SAMPLE_RATE)
        t = np.arange(samples) / SAMPLE_RATE
        x = 0.3 * np.sin(2 * np.pi * (150 + 5 * i) * t) + 0.02 * rng.standard_normal(samples)
        sf.write(folder / f"s{i:05d}.wav", x.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
        entries.append(ManifestEntry(f"s{i:05d}", f"s{i:05d}.wav", samples))
    write_manifest(folder / "train.jsonl", entries)
    return folder / "train.jsonl"


def run_epoch(dataset: AudioDataset, bucketing: bool, args: argparse.Namespace) -> dict:
    sampler = BucketBatchSampler(dataset.lengths, args.max_samples_per_batch, bucketing=bucketing, seed=args.seed)
    loader = ResumableDataLoader(dataset, sampler, collate_audio, num_workers=args.num_workers, name="bench")
    real = padded = utts = batches = 0
    start = time.perf_counter()
    for batch in loader:
        b, s = batch["audio"].shape
        real += int(batch["audio_lengths"].sum())
        padded += b * s
        utts += b
        batches += 1
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "utts": utts, "batches": batches, "real": real, "padding": 1 - real / padded,
            "skipped": loader.skipped}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--manifest", type=Path, default=None, help=f"JSONL manifest (default {DEMO})")
    p.add_argument("--synthetic", type=int, default=0, help="generate this many WAVs instead of a manifest")
    p.add_argument("--max-samples-per-batch", type=int, default=40 * SAMPLE_RATE)
    p.add_argument("--max-sample-size", type=int, default=250_000)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2, help="epochs per mode; the fastest is reported")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    tmp = None
    manifest = args.manifest
    if args.synthetic or (manifest is None and not DEMO.is_file()):
        tmp = tempfile.TemporaryDirectory()
        n = args.synthetic or 400
        print(f"{'demo manifest not found; ' if not args.synthetic else ''}generating {n} synthetic utterances")
        manifest = synthetic_manifest(Path(tmp.name), n, args.seed)
    manifest = manifest or DEMO

    dataset = AudioDataset(read_manifest(manifest), max_sample_size=args.max_sample_size, crop=True,
                           seed=args.seed, name=str(manifest))
    seconds = dataset.lengths / SAMPLE_RATE
    print(f"manifest {manifest}: {len(dataset)} utterances, {seconds.sum() / 3600:.2f} h, "
          f"{seconds.min():.1f}-{seconds.max():.1f} s (median {np.median(seconds):.1f} s)")
    print(f"budget {args.max_samples_per_batch} padded samples per batch ({args.max_samples_per_batch / SAMPLE_RATE:.0f} s),"
          f" num_workers={args.num_workers}, best of {args.repeats} epochs")
    print(f"{'batching':<10} {'utt/s':>8} {'audio s/s':>10} {'batches':>8} {'utt/batch':>10} {'padding':>8}")
    results = {}
    for name, bucketing in (("bucketed", True), ("random", False)):
        runs = [run_epoch(dataset, bucketing, args) for _ in range(args.repeats)]
        best = min(runs, key=lambda r: r["seconds"])
        results[name] = best
        print(f"{name:<10} {best['utts'] / best['seconds']:>8.1f} {best['real'] / SAMPLE_RATE / best['seconds']:>10.1f} "
              f"{best['batches']:>8d} {best['utts'] / best['batches']:>10.1f} {best['padding']:>8.1%}")
        if best["skipped"]:
            print(f"  ({best['skipped']} utterances failed to load and were skipped)")
    b, r = results["bucketed"], results["random"]
    print(f"padding: bucketed {b['padding']:.1%} vs random {r['padding']:.1%}; padded samples per epoch "
          f"bucketed/random = {(b['real'] / (1 - b['padding'])) / (r['real'] / (1 - r['padding'])):.2f}; "
          f"loading speed bucketed/random = {(b['utts'] / b['seconds']) / (r['utts'] / r['seconds']):.2f}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
