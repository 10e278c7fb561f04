"""CPU transcription speed: PyTorch eager vs onnxruntime float32 vs onnxruntime int8; file sizes; and,
given a trained model, the CER the int8 graph costs.

    .venv/bin/python bench/deploy_onnx.py                                   # tiny + base, random weights, 4 x 4 s
    .venv/bin/python bench/deploy_onnx.py --presets base --repeats 5
    .venv/bin/python bench/deploy_onnx.py --checkpoint runs/demo/finetune/checkpoints/last.ckpt \\
        --manifest data/demo/test.jsonl                              # + CER of fp32 vs int8

Speed: per preset a random fine-tuner (both heads; the syllable head has 2 layers over the demo's
syllable vocabulary) is exported three times (`export_onnx`: float32, `quantize="int8"` and
`quantize="int8-linear"`). Four workers, one process each, with the same intra-op thread count
(`--threads`, default 2): `pytorch` (the fine-tuner in eval mode, the CPU kernels on, as
`kwav2vec transcribe` runs it), `ort_fp32`, `ort_int8` and `ort_int8_linear` (`OnnxModel`). A step transcribes the same batch (same seed) end to end: forward pass
and greedy decoding of both heads (`MultiDecoder`). Workers are stepped one at a time, the order
rotating each round (bench/_harness.py), so load drifts on a shared machine hit all four alike.
Printed: median step time, real-time factor (step seconds / audio seconds), speed-up over
PyTorch (goal: int8 >= 2x at base), file sizes (PyTorch state dict as saved, model.onnx of each).

CER (`--checkpoint CKPT --manifest M`): the checkpoint is exported the same three ways, and
`kwav2vec evaluate` runs greedy (both heads) and joint-rescore on each (and the .ckpt through
Lightning); printed: CER per decoder and backend, int8 - fp32 and int8-linear - fp32 (goal: within
1.0 point).

(Not named bench/onnx.py: the script's folder comes first on sys.path and would shadow `onnx`.)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "src"))

from _harness import SAMPLE_RATE, memory_measurable, run_workers, serve  # noqa: E402

IMPLS = ("pytorch", "ort_fp32", "ort_int8", "ort_int8_linear")
QUANTIZE = {"ort_fp32": None, "ort_int8": "int8", "ort_int8_linear": "int8-linear"}  # export_onnx's
LABEL = {"pytorch": "pt", "ort_fp32": "fp32", "ort_int8": "int8", "ort_int8_linear": "int8-lin"}
SYLLABLE_VOCAB = ROOT / "data" / "demo" / "vocab_syllable.json"
GRAPHEME_VOCAB = ROOT / "data" / "demo" / "vocab_grapheme.json"
CER_DECODERS = ("greedy", "greedy:syllable", "joint:rescore")
GOAL_SPEEDUP = 2.0
GOAL_CER_POINTS = 1.0


def random_finetuner(preset: str):
    import torch

    from kwav2vec.lit.finetune import HierarchicalFineTuner

    torch.manual_seed(0)
    return HierarchicalFineTuner(model=preset, syllable_layers=2, layerdrop=0.0,
                                 grapheme_vocabulary=str(GRAPHEME_VOCAB), syllable_vocabulary=str(SYLLABLE_VOCAB)).eval()


def build(impl: str, preset: str, folder: str, batch: int, seconds: float, threads: int):
    import torch

    from kwav2vec.decoding import MultiDecoder

    g = torch.Generator().manual_seed(1)
    lengths = torch.full((batch,), int(seconds * SAMPLE_RATE))
    lengths[1:] -= torch.randint(0, int(seconds * SAMPLE_RATE) // 4, (batch - 1,), generator=g)  # padding
    audio = 0.1 * torch.randn(batch, int(lengths.max()), generator=g) * (torch.arange(int(lengths.max())) < lengths[:, None])
    if impl == "pytorch":
        model = random_finetuner(preset)
        params = sum(p.numel() for p in model.parameters())

        def forward():
            with torch.no_grad():
                return model(audio, lengths)
    else:
        from kwav2vec.deploy.onnx_runtime import OnnxModel

        model = OnnxModel(Path(folder) / impl, threads=threads)
        params = 0

        def forward():
            return model(audio, lengths)

    decoder = MultiDecoder(["greedy-grapheme", "greedy-syllable"], model.grapheme_vocab, model.syllable_vocab)

    def step(i: int) -> None:
        log_probs, frames = forward()
        decoder.decode(log_probs["grapheme"], log_probs["syllable"], frames)

    return step, params


def worker(impl: str, preset: str, folder: str, batch: int, seconds: float, threads: int, conn) -> None:
    import torch

    warnings.simplefilter("ignore")
    torch.set_num_threads(threads)
    serve(*build(impl, preset, folder, batch, seconds, threads), conn)


def export_all(model, folder: Path) -> dict[str, float]:
    """The float32, int8 and int8-linear exports of `model` into folder/<impl>; export seconds."""
    from kwav2vec.deploy.onnx_export import export_onnx

    seconds = {}
    for impl, quantize in QUANTIZE.items():
        start = time.perf_counter()
        export_onnx(model, folder / impl, quantize=quantize)
        seconds[impl] = time.perf_counter() - start
    return seconds


def state_dict_bytes(model) -> int:
    import torch

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def speed(args) -> None:
    from kwav2vec.deploy.onnx_export import MODEL_FILE

    audio_seconds = args.batch * args.seconds  # the padded batch; utterances 2.. are up to 25% shorter
    print(f"threads={args.threads} batch={args.batch} x {args.seconds:g} s repeats={args.repeats} "
          f"warmup={args.warmup} (medians; RTF over the padded {audio_seconds:g} s)")
    onnx = IMPLS[1:]
    header = (f"{'preset':<6} {'params':>11} {'export s':>9} | " + " ".join(f"{LABEL[i] + ' s':>10}" for i in IMPLS)
              + " | " + " ".join(f"{'RTF ' + LABEL[i]:>12}" for i in IMPLS) + " | "
              + " ".join(f"{LABEL[i] + ' x':>10}" for i in onnx) + " | " + " ".join(f"{LABEL[i] + ' MiB':>12}" for i in IMPLS))
    print(header)
    print("-" * len(header))
    for preset in args.presets:
        with tempfile.TemporaryDirectory() as tmp:
            model = random_finetuner(preset)
            export_seconds = export_all(model, Path(tmp))
            sizes = {"pytorch": state_dict_bytes(model),
                     **{impl: (Path(tmp) / impl / MODEL_FILE).stat().st_size for impl in onnx}}
            del model
            params, times, _, _ = run_workers(worker, IMPLS, (preset, tmp, args.batch, args.seconds, args.threads),
                                              args.repeats, args.warmup, malloc_mmap=False)
        t = {impl: statistics.median(v) for impl, v in times.items()}
        print(f"{preset:<6} {params['pytorch']:>11,} {export_seconds['ort_fp32']:>9.1f} | "
              + " ".join(f"{t[i]:>10.3f}" for i in IMPLS) + " | "
              + " ".join(f"{t[i] / audio_seconds:>12.4f}" for i in IMPLS) + " | "
              + " ".join(f"{t['pytorch'] / t[i]:>10.2f}" for i in onnx) + " | "
              + " ".join(f"{sizes[i] / 2**20:>12.1f}" for i in IMPLS), flush=True)
    print(f"x = PyTorch step time / onnxruntime's (higher is better; goal int8 >= {GOAL_SPEEDUP:g}x at base). "
          "A step: forward + greedy decoding of both heads. Export s: the float32 export. int8: linear layers "
          "and convolutions but the first; int8-lin: linear layers only (--quantize int8-linear).")


def cer(args) -> int:
    from kwav2vec.inference import evaluate
    from kwav2vec.inference.predict import load_finetuner

    model = load_finetuner(args.checkpoint)
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        export_all(model, Path(tmp))
        targets = {"lightning": args.checkpoint, **{impl: str(Path(tmp) / impl) for impl in QUANTIZE}}
        for name, target in targets.items():
            out = Path(tmp) / f"eval_{name}"
            argv = [target, args.manifest, "--decoder", *CER_DECODERS, "--out", str(out), "--no-progress",
                    "--beam-width", str(args.beam_width)]
            if name != "lightning":
                argv += ["--onnx-threads", str(args.threads)]
            code = evaluate.main(argv)
            if code not in (0, 1):
                return code
            summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
            rows[name] = {d: 100 * s["cer"] for d, s in summary["decoders"].items()}
    print(f"\nCER % on {args.manifest} ({args.checkpoint}), beam {args.beam_width}:")
    quantized = ("ort_int8", "ort_int8_linear")
    print(f"{'decoder':<16} {'lightning':>9} {'ort fp32':>9} {'ort int8':>9} {'int8-lin':>9} {'int8-fp32':>9} {'lin-fp32':>9}")
    worst = dict.fromkeys(quantized, 0.0)
    for d in rows["ort_fp32"]:
        delta = {q: rows[q][d] - rows["ort_fp32"][d] for q in quantized}
        for q in quantized:
            worst[q] = max(worst[q], abs(delta[q]))
        print(f"{d:<16} {rows['lightning'][d]:>9.2f} {rows['ort_fp32'][d]:>9.2f} {rows['ort_int8'][d]:>9.2f} "
              f"{rows['ort_int8_linear'][d]:>9.2f} {delta['ort_int8']:>+9.2f} {delta['ort_int8_linear']:>+9.2f}")
    print(f"largest |int8 - fp32| = {worst['ort_int8']:.2f} points, |int8-linear - fp32| = "
          f"{worst['ort_int8_linear']:.2f} (goal <= {GOAL_CER_POINTS:g})")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "base"], help="random-weight presets to time")
    ap.add_argument("--batch", type=int, default=4, help="utterances per transcribed batch")
    ap.add_argument("--seconds", type=float, default=4.0, help="seconds of the longest utterance")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per implementation")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per implementation first")
    ap.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    ap.add_argument("--checkpoint", help="a trained fine-tuner: also measure CER of fp32 vs int8")
    ap.add_argument("--manifest", help="labelled manifest for --checkpoint")
    ap.add_argument("--beam-width", type=int, default=100, help="joint-rescore beam width (default 100)")
    ap.add_argument("--skip-speed", action="store_true", help="only the CER comparison")
    args = ap.parse_args(argv)
    if bool(args.checkpoint) != bool(args.manifest):
        ap.error("--checkpoint and --manifest go together")
    if not memory_measurable():
        print("this benchmark's worker harness reads /proc (Linux only)", file=sys.stderr)
        return 2
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the spawned workers
    if not args.skip_speed:
        speed(args)
    if args.checkpoint:
        return cer(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
