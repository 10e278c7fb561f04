"""Decoding speed and accuracy: greedy, pyctcdecode (1 process and a pool), the torch prefix search
(CPU, and CUDA where present), joint union/rescore on the torch searches.

    .venv/bin/python bench/decode.py                                  # the demo's fine-tuned model
    .venv/bin/python bench/decode.py runs/finetune/.../last.ckpt --manifest data/demo/test.jsonl --beam-width 100
    .venv/bin/python bench/decode.py --synthetic --beams 10 100       # model-like outputs, no checkpoint

With a checkpoint the model runs once over the manifest (batched, eval mode) and its log-probs are
kept; `--synthetic` (also the fallback when no checkpoint exists) builds peaky and flat model-like
outputs of both heads for the demo's test transcripts instead (bench/_emissions.py). Every
decoder is then timed on exactly the same outputs, alone (nothing shared between decoders), in this
process, batch by batch, best of `--repeats` runs. Printed per decoder: utterances/s, real-time
factor (decoding seconds / audio seconds), CER; then the goals, against pyctcdecode measured in
the same run: the torch search at least 5x pyctcdecode's single-process speed with equal CER, and
joint-rescore (both torch searches + the rescoring) at most 1.0x one pyctcdecode search (the mean
of the two heads'). Timings on a busy machine are noisy: use --repeats 3 for figures to quote.
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
from kwav2vec.decoding import MultiDecoder  # noqa: E402
from kwav2vec.inference.predict import (  # noqa: E402
    DEFAULT_MAX_SAMPLES_PER_BATCH,
    PredictDataset,
    Source,
    collate_predict,
    load_finetuner,
    shard_batches,
)
from kwav2vec.metrics import cer  # noqa: E402
from kwav2vec.text.vocab import Vocabulary  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from _emissions import model_like  # noqa: E402

DEMO_CHECKPOINT = ROOT / "runs" / "demo" / "finetune" / "checkpoints" / "last.ckpt"
DEMO_TEST = ROOT / "data" / "demo" / "test.jsonl"
GOAL_SPEEDUP = 5.0  # torch search vs pyctcdecode, one process each, equal CER
GOAL_JOINT = 1.0  # joint-rescore on torch searches, in units of one pyctcdecode search
GOAL_BEAM = 100  # the beam width both goals are set at
FRAME_SECONDS = 0.02


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
    parser.add_argument("--batch-size", type=int, default=None,
                        help="utterances per batch (default: as `kwav2vec evaluate`, no cap beyond "
                             "--max-samples-per-batch; synthetic: 32)")
    parser.add_argument("--max-samples-per-batch", type=int, default=DEFAULT_MAX_SAMPLES_PER_BATCH,
                        help=f"padded samples per batch (default {DEFAULT_MAX_SAMPLES_PER_BATCH}, as `kwav2vec evaluate`)")
    parser.add_argument("--repeats", type=int, default=1, help="timing runs per decoder, the best is kept (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: comparable on a shared machine)")
    parser.add_argument("--synthetic", action="store_true", help="model-like outputs instead of a checkpoint's")
    parser.add_argument("--beams", type=int, nargs="+", default=[10, 100], help="synthetic: beam widths (default 10 100)")
    parser.add_argument("--utterances", type=int, default=40, help="synthetic: demo test transcripts used (default 40)")
    parser.add_argument("--pool", type=int, default=2, help="pyctcdecode pool processes (default 2)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.synthetic or (args.checkpoint is None and not DEMO_CHECKPOINT.is_file()):
        if not args.synthetic:
            print(f"bench/decode.py: no checkpoint given and {DEMO_CHECKPOINT.relative_to(ROOT)} does not exist: "
                  "synthetic model-like outputs instead")
        return synthetic(args)
    args.checkpoint = args.checkpoint or str(DEMO_CHECKPOINT)
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
    sizes = "/".join(str(len(b[3])) for b in batches)
    print(f"{args.checkpoint}\n{args.manifest}: {n} utterances in batches of {sizes}, {audio_seconds:.1f} s of audio; forward pass "
          f"{forward:.1f} s (RTF {forward / audio_seconds:.3f}); beam width {args.beam_width}, "
          f"w/λ {args.syllable_weight}, {args.threads} torch thread(s), best of {args.repeats}\n")

    report(gv, sv, batches, refs, audio_seconds, args.beam_width, args)
    return 0


def report(gv, sv, batches: list[tuple], refs: list[str], audio_seconds: float, beam_width: int, args) -> dict:
    """Every decoder timed on the same outputs; goals printed against pyctcdecode measured in this run."""
    n = len(refs)
    # Every decoder through the orchestrator the CLI uses, each in its own MultiDecoder so that
    # nothing (no search) is shared between them.
    made: list[MultiDecoder] = []

    def alone(name: str, **options) -> Callable:
        decoder = MultiDecoder([name], gv, sv, beam_width=beam_width, syllable_weight=args.syllable_weight, **options)
        made.append(decoder)
        return lambda g, s, f: [d.text for d in decoder.decode(g, s, f)[name]]

    pyctc = dict(beam_backend="pyctcdecode")
    decoders: dict[str, Callable] = {
        "greedy-grapheme": alone("greedy-grapheme"),
        "greedy-syllable": alone("greedy-syllable"),
        "pyctcdecode-grapheme": alone("beam-grapheme", **pyctc),
        "pyctcdecode-syllable": alone("beam-syllable", **pyctc),
        f"pyctcdecode-grapheme pool{args.pool}": alone("beam-grapheme", num_processes=args.pool, **pyctc),
        f"pyctcdecode-syllable pool{args.pool}": alone("beam-syllable", num_processes=args.pool, **pyctc),
        "torch-grapheme cpu": alone("beam-grapheme", beam_backend="torch"),
        "torch-syllable cpu": alone("beam-syllable", beam_backend="torch"),
        "joint-union torch cpu": alone("joint-union", beam_backend="torch"),
        "joint-rescore torch cpu": alone("joint-rescore", beam_backend="torch"),
    }
    if torch.cuda.is_available():
        cuda = [(g.cuda(), s.cuda(), f.cuda(), p) for g, s, f, p in batches]
        for name in ("torch-grapheme", "torch-syllable", "joint-rescore torch"):
            cpu = decoders[f"{name} cpu"]
            decoders[f"{name} cuda"] = lambda g, s, f, cpu=cpu: (cpu(g, s, f), torch.cuda.synchronize())[0]
    rows = {}
    for name, decode in decoders.items():
        seconds, texts = timed(decode, cuda if name.endswith("cuda") else batches, args.repeats)
        rows[name] = {"seconds": seconds, "cer": cer(refs, texts), "texts": texts}
        print(f"  {name:<28} {n / seconds:9.1f} utt/s   RTF {seconds / audio_seconds:.5f}   "
              f"CER {100 * rows[name]['cer']:6.2f}%", flush=True)
    for decoder in made:
        decoder.close()
    ok = True
    goal = "" if beam_width == GOAL_BEAM else f", a goal at beam {GOAL_BEAM} only"
    for head in ("grapheme", "syllable"):
        ref, mine = rows[f"pyctcdecode-{head}"], rows[f"torch-{head} cpu"]
        speedup = ref["seconds"] / mine["seconds"]
        same = sum(a == b for a, b in zip(ref["texts"], mine["texts"], strict=True)) / n
        equal = abs(ref["cer"] - mine["cer"]) <= 0.002
        ok &= speedup >= GOAL_SPEEDUP and equal
        print(f"  torch {head} search: x{speedup:.1f} pyctcdecode's single-process speed (goal >= {GOAL_SPEEDUP}x{goal}: "
              f"{'yes' if speedup >= GOAL_SPEEDUP else 'NO'}); same best hypothesis {100 * same:.1f}%, CER "
              f"{100 * mine['cer']:.2f}% vs {100 * ref['cer']:.2f}%")
    mean_search = (rows["pyctcdecode-grapheme"]["seconds"] + rows["pyctcdecode-syllable"]["seconds"]) / 2
    ratio = rows["joint-rescore torch cpu"]["seconds"] / mean_search
    ok &= ratio <= GOAL_JOINT
    print(f"  joint-rescore (torch, both searches + rescoring): {ratio:.2f}x one pyctcdecode search "
          f"(goal <= {GOAL_JOINT}x{goal}: {'yes' if ratio <= GOAL_JOINT else 'NO'})")
    if beam_width == GOAL_BEAM:
        print(f"  goals {'met' if ok else 'NOT met'}\n", flush=True)
    else:
        print()
    return rows


def synthetic(args) -> int:
    """Model-like peaky and flat outputs of both heads for the demo's test transcripts (bench/_emissions.py)."""
    entries = read_manifest(Path(args.manifest), require_norm=True)[: args.utterances]
    args.batch_size = args.batch_size or 32
    gv = Vocabulary.load(ROOT / "data" / "demo" / "vocab_grapheme.json")
    sv = Vocabulary.load(ROOT / "data" / "demo" / "vocab_syllable.json")
    refs = [e.norm for e in entries]
    for style in ("peaky", "flat"):
        g, s, frames = model_like(refs, gv, sv, style, seed=0)
        audio_seconds = float(frames.sum()) * FRAME_SECONDS
        batches = [
            (g[i : i + args.batch_size], s[i : i + args.batch_size], frames[i : i + args.batch_size],
             list(range(i, min(i + args.batch_size, len(refs)))))
            for i in range(0, len(refs), args.batch_size)
        ]
        for beam_width in args.beams:
            print(f"synthetic {style} outputs of {len(refs)} demo test transcripts ({audio_seconds:.1f} s at 20 ms a "
                  f"frame), beam {beam_width}, batch {args.batch_size}, {args.threads} torch thread(s), "
                  f"best of {args.repeats}:")
            report(gv, sv, batches, refs, audio_seconds, beam_width, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
