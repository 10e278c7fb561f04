"""Long recordings: chunked transcription against per-utterance decoding, memory and speed by length.

    python bench/longform.py --checkpoint runs/demo/finetune/checkpoints/last.ckpt     # all parts
    python bench/longform.py --checkpoint CKPT --parts accuracy                        # one part

Parts (each `kwav2vec` command runs in a child process, whose peak resident memory is read with
wait4, so one measurement cannot inherit another's allocations):
- `accuracy` (needs a trained model, e.g. `make demo`'s): the demo test utterances joined with
  0.3-0.7 s of silence into one recording (about 4 minutes); CER of greedy and joint-rescore on it
  with --chunk-seconds 10, 20 and 30, against the per-utterance CER of the same model, and the share
  of utterances whose speech onset (known: where each was placed, plus its own leading silence)
  has a hypothesis word starting within 0.2 s, for each --pauses value (--pause-seconds);
- `memory`: 1-, 10- and 60-minute recordings (the concatenation repeated, or noise for a random
  model) through `evaluate` on the tiny model and on a random base model (1 and 10 minutes only by
  default: base runs at about a third of real time on 2 cores): peak memory, wall time, the
  forward pass's and each decoder's real-time factor;
- `pipeline`: transformers' `pipeline("automatic-speech-recognition", chunk_length_s=20,
  stride_length_s=2)` on the grapheme head exported with `kwav2vec convert --to hf`, against our
  greedy-grapheme output with the same chunking, same recording, same run: time ratio and whether
  the texts are equal.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
KWAV2VEC = [sys.executable, "-m", "kwav2vec.cli"]
RATE = 16000
ONSET_TOLERANCE = 0.2  # seconds


def run(args: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS of its children in MiB, stdout) of one `kwav2vec` command in a child
    process; measure() calls it in a fresh process, where the only child is that command."""
    import resource

    start = time.perf_counter()
    proc = subprocess.run([*KWAV2VEC, *args], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        sys.exit(f"kwav2vec {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, proc.stdout


def measure(args: list[str]) -> tuple[float, float, str]:
    """run() inside a fresh Python process, so RUSAGE_CHILDREN there holds only this command."""
    here = str(Path(__file__).parent)
    code = (f"import json,sys;sys.path.insert(0,{here!r});import longform as L;w,p,o=L.run(json.loads(sys.argv[1]));"
            "print(json.dumps([w,p,o]))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:] or proc.stdout[-3000:])
    wall, peak, out = json.loads(proc.stdout.strip().splitlines()[-1])
    return wall, peak, out


def onset(audio: np.ndarray, frame: int = 320, silence_db: float = 40.0) -> float:
    """Seconds of leading silence: the first 20 ms frame within 40 dB of the loudest."""
    n = len(audio) // frame * frame
    power = (audio[:n].reshape(-1, frame) ** 2).mean(1)
    loud = np.nonzero(power >= power.max() * 10 ** (-silence_db / 10))[0]
    return float(loud[0] * frame / RATE) if len(loud) else 0.0


def concatenation(manifest: Path, out: Path, seed: int = 0) -> tuple[Path, str, list[float]]:
    """Joins a manifest's utterances with silences -> (flac, joined reference, speech onsets in s)."""
    rng = np.random.default_rng(seed)
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    pieces, refs, onsets, t = [], [], [], 0.0
    for row in rows:
        audio, rate = sf.read(manifest.parent / row["audio"], dtype="float32")
        assert rate == RATE
        gap = np.zeros(int(rng.uniform(0.3, 0.7) * RATE), dtype=np.float32)
        onsets.append(t + onset(audio))
        pieces += [audio, gap]
        t += (len(audio) + len(gap)) / RATE
        refs.append(row["norm"])
    sf.write(out, np.concatenate(pieces), RATE, subtype="PCM_16")
    return out, " ".join(refs), onsets


def write_manifest(path: Path, audio: Path, ref: str) -> Path:
    n = sf.info(str(audio)).frames
    path.write_text(json.dumps({"id": audio.stem, "audio": str(audio), "num_samples": n, "sample_rate": RATE,
                                "text": ref, "norm": ref}, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def evaluate(ckpt: str, manifest: Path, out: Path, decoders: list[str], chunk: float,
             extra: tuple[str, ...] = ()) -> tuple[dict, float, float]:
    wall, peak, _ = measure(["evaluate", ckpt, str(manifest), "--decoder", *decoders, "--out", str(out),
                             "--chunk-seconds", str(chunk), "--no-progress", *extra])
    return json.loads((out / "summary.json").read_text()), wall, peak


def part_accuracy(ckpt: str, test: Path, tmp: Path, pauses: list[float]) -> None:
    audio, ref, onsets = concatenation(test, tmp / "joined.wav")
    seconds = sf.info(str(audio)).duration
    decoders = ["greedy-grapheme", "joint-rescore"]
    per_utt, _, _ = evaluate(ckpt, test, tmp / "per_utt", decoders, 0)
    print(f"\n### accuracy: {len(onsets)} utterances joined into {seconds / 60:.1f} min "
          f"({test})\n| decoding | greedy-grapheme CER % | joint-rescore CER % |\n|---|---|---|")
    print(f"| per utterance | {100 * per_utt['decoders']['greedy-grapheme']['cer']:.1f} | "
          f"{100 * per_utt['decoders']['joint-rescore']['cer']:.1f} |")
    manifest = write_manifest(tmp / "joined.jsonl", audio, ref)
    # re-encoding (the default) only acts where there are segments (a pause to cut at)
    settings = [(p, ()) for p in pauses] + [(p, ("--no-reencode-segments",)) for p in pauses if p > 0]
    for pause, extra in settings:
        for chunk in (10, 20, 30):
            s, wall, _ = evaluate(ckpt, manifest, tmp / f"joined_{chunk}_{pause}_{len(extra)}", decoders, chunk,
                                  ("--pause-seconds", str(pause), *extra))
            print(f"| joined, --chunk-seconds {chunk} --pause-seconds {pause:g} {' '.join(extra)} | "
                  f"{100 * s['decoders']['greedy-grapheme']['cer']:.1f} | "
                  f"{100 * s['decoders']['joint-rescore']['cer']:.1f} | forward {s['forward_seconds']:.2f} s |",
                  flush=True)
    for pause, extra in settings:
        for decoder in ("greedy", "joint:rescore"):
            _, _, out = measure(["transcribe", ckpt, str(audio), "--decoder", decoder, "--json",
                                 "--pause-seconds", str(pause), *extra])
            words = json.loads(out)["results"][0]["words"]
            starts = np.array([w["start"] for w in words])
            hits = sum(bool(len(starts)) and float(np.abs(starts - o).min()) <= ONSET_TOLERANCE for o in onsets)
            print(f"{decoder}, --pause-seconds {pause:g} {' '.join(extra)}: {hits} of {len(onsets)} utterance onsets "
                  f"({100 * hits / len(onsets):.0f}%) have a word starting within {ONSET_TOLERANCE} s "
                  f"({json.loads(out)['results'][0]['times_from']})", flush=True)


def random_checkpoint(preset: str, tmp: Path) -> str:
    """A random fine-tuner of `preset` with the demo vocabularies, saved as training would."""
    import torch

    from kwav2vec.lit.checkpoint_io import save_module_checkpoint
    from kwav2vec.lit.finetune import HierarchicalFineTuner

    torch.manual_seed(0)
    model = HierarchicalFineTuner(model=preset, syllable_layers=2 if preset == "tiny" else 1,
                                  grapheme_vocabulary=str(ROOT / "data/demo/vocab_grapheme.json"),
                                  syllable_vocabulary=str(ROOT / "data/demo/vocab_syllable.json"))
    with torch.no_grad():  # a model on the blank plateau: short hypotheses, as a weak model gives
        model.grapheme_head.proj.bias[0] = 4.0
        model.syllable_head.proj.bias[0] = 4.0
    return save_module_checkpoint(model, tmp / f"{preset}.ckpt")


def long_recording(minutes: float, tmp: Path) -> Path:
    """Speech-like noise bursts and pauses, `minutes` long, written as 16-bit WAV block by block."""
    path = tmp / f"long_{minutes:g}min.wav"
    rng = np.random.default_rng(int(minutes * 10))
    with sf.SoundFile(path, "w", RATE, 1, subtype="PCM_16") as f:
        for _ in range(int(minutes * 60 / 3)):
            burst = (0.1 * rng.standard_normal(int(2.4 * RATE)) * np.hanning(int(2.4 * RATE))).astype(np.float32)
            f.write(np.concatenate([burst, np.zeros(int(0.6 * RATE), np.float32)]))
    return path


def part_memory(ckpt: str | None, tmp: Path, base_minutes: list[float], tiny_minutes: list[float]) -> None:
    print("\n### memory and speed by length (evaluate, --chunk-seconds 20)\n| model | minutes | peak MiB | wall s | "
          "forward RTF | greedy decode RTF | joint-rescore decode RTF |\n|---|---|---|---|---|---|---|")
    models = [("tiny" + (" (trained)" if ckpt else " (random)"), ckpt or random_checkpoint("tiny", tmp), tiny_minutes),
              ("base (random)", random_checkpoint("base", tmp), base_minutes)]
    for name, path, minutes_list in models:
        for minutes in minutes_list:
            audio = long_recording(minutes, tmp)
            manifest = write_manifest(tmp / f"long_{minutes:g}.jsonl", audio, "가")
            s, wall, peak = evaluate(path, manifest, tmp / f"eval_{name[:4]}_{minutes:g}", ["greedy", "joint:rescore"], 20)
            d = s["decoders"]
            print(f"| {name} | {minutes:g} | {peak:.0f} | {wall:.1f} | {s['forward_rtf']:.4f} | "
                  f"{d['greedy-grapheme']['timing']['decode_rtf']:.4f} | {d['joint-rescore']['timing']['decode_rtf']:.4f} |",
                  flush=True)
            audio.unlink()


def _distance(a: str, b: str) -> int:
    from rapidfuzz.distance import Levenshtein

    return Levenshtein.distance(a, b)


def part_pipeline(ckpt: str, test: Path, tmp: Path) -> None:
    import torch
    import transformers

    audio, _, _ = concatenation(test, tmp / "joined_hf.wav")
    subprocess.run([*KWAV2VEC, "convert", "--to", "hf", ckpt, str(tmp / "hf")], cwd=ROOT, check=True,
                   capture_output=True)
    torch.set_num_threads(2)
    wave, _ = sf.read(audio, dtype="float32")
    asr = transformers.pipeline("automatic-speech-recognition", model=str(tmp / "hf"), device="cpu")
    asr({"raw": wave[: RATE * 25], "sampling_rate": RATE}, chunk_length_s=20, stride_length_s=2)  # warm-up
    start = time.perf_counter()
    hf_text = asr({"raw": wave, "sampling_rate": RATE}, chunk_length_s=20, stride_length_s=2)["text"]
    hf_seconds = time.perf_counter() - start
    # one continuous stream (--pause-seconds 0), as the pipeline decodes: no word breaks added at pauses
    ours_wall, _, out = measure(["transcribe", ckpt, str(audio), "--decoder", "greedy", "--json",
                                 "--chunk-seconds", "20", "--stride-seconds", "2", "--pause-seconds", "0"])
    ours = json.loads(out)["results"][0]["text"]
    # the same decoding through `evaluate`, whose summary times the predict loop alone (model loaded),
    # what the pipeline's in-process figure measures
    manifest = write_manifest(tmp / "joined_hf.jsonl", audio, ours)
    summary, _, _ = evaluate(ckpt, manifest, tmp / "pipeline_eval", ["greedy-grapheme"], 20,
                             ("--stride-seconds", "2", "--pause-seconds", "0"))
    loop = summary["wall_seconds"]
    from kwav2vec.text.hangul import compose  # the HF export's tokens are jamo

    hf_composed = " ".join(compose(hf_text).split())
    print(f"\n### transformers pipeline, {len(wave) / RATE / 60:.1f} min, chunk 20 s, stride 2 s (greedy, grapheme head)")
    print(f"transformers: {hf_seconds:.2f} s in-process (model loaded); ours: {loop:.2f} s for the predict loop "
          f"(model loaded), {ours_wall:.1f} s for the whole `transcribe` command (start-up and loading included)")
    print(f"speed ours/theirs, in-process: {hf_seconds / loop:.2f}x; whole command against in-process: "
          f"{hf_seconds / ours_wall:.2f}x")
    print(f"texts equal: {ours == hf_composed} ({len(ours)} vs {len(hf_composed)} characters; "
          f"character edit distance {_distance(ours, hf_composed)})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a trained fine-tuner (accuracy, pipeline; memory uses it for tiny)")
    parser.add_argument("--manifest", default=str(ROOT / "data/demo/test.jsonl"))
    parser.add_argument("--parts", nargs="+", default=["accuracy", "memory", "pipeline"],
                        choices=["accuracy", "memory", "pipeline"])
    parser.add_argument("--base-minutes", type=float, nargs="+", default=[1, 10])
    parser.add_argument("--tiny-minutes", type=float, nargs="+", default=[1, 10, 60])
    parser.add_argument("--pauses", type=float, nargs="+", default=[0.3, 0],
                        help="--pause-seconds values the accuracy part compares (0: one stream per file)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if "accuracy" in args.parts:
            if not args.checkpoint:
                parser.error("--parts accuracy needs --checkpoint (a trained model)")
            part_accuracy(args.checkpoint, Path(args.manifest), tmp, args.pauses)
        if "memory" in args.parts:
            part_memory(args.checkpoint, tmp, args.base_minutes, args.tiny_minutes)
        if "pipeline" in args.parts:
            if not args.checkpoint:
                parser.error("--parts pipeline needs --checkpoint")
            part_pipeline(args.checkpoint, Path(args.manifest), tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
