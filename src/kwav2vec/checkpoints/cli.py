"""`kwav2vec convert`: import fairseq / Hugging Face / torchaudio checkpoints, export to Hugging Face.

    kwav2vec convert --from fairseq wav2vec_small.pt base.ckpt
    kwav2vec convert --from fairseq wav2vec_small_960h.pt base.ckpt --drop-head
    kwav2vec convert --from fairseq kwav2vec_multi.pt k.ckpt --dict dict.ltr.txt --add-dict add_dict.ltr.txt
    kwav2vec convert --from hf ./wav2vec2-base-960h base.ckpt --drop-head
    kwav2vec convert --from torchaudio base.pth base.ckpt --bundle WAV2VEC2_BASE
    kwav2vec convert --to hf runs/finetune/version_0/checkpoints/last.ckpt ./kwav2vec-hf [--arch ctc]
    kwav2vec convert --to onnx finetuned.ckpt ./kwav2vec-onnx [--quantize int8|int8-linear]   (kwav2vec.deploy.onnx_export)

The .ckpt written is what `Pretrainer(init_from=...)` and the fine-tuner's `init_from` start from.
`--to hf` takes a fine-tuner checkpoint (Wav2Vec2ForCTC from the grapheme head, the syllable head
beside it), a Pretrainer checkpoint (Wav2Vec2ForPreTraining) or a converted file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from kwav2vec.checkpoints.format import ConvertedCheckpoint, save_converted
from kwav2vec.checkpoints.reader import read_model_checkpoint
from kwav2vec.checkpoints.statedict import KeyMismatchError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kwav2vec convert",
        description="Convert wav2vec 2.0 checkpoints to and from kwav2vec's format.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="import: kwav2vec convert --from {fairseq,hf,torchaudio} SRC DST.ckpt\n"
               "export: kwav2vec convert --to hf SRC.ckpt DST_DIR",
    )
    way = p.add_mutually_exclusive_group(required=True)
    way.add_argument("--from", dest="source", choices=("fairseq", "hf", "torchaudio"),
                     help="import SRC (a fairseq .pt, a Hugging Face directory, a torchaudio state dict)")
    way.add_argument("--to", dest="target", choices=("hf", "onnx"),
                     help="export SRC.ckpt (fine-tuner, Pretrainer or converted) to a Hugging Face directory "
                          "(hf), or a fine-tuner to ONNX with both heads (onnx)")
    p.add_argument("src", help="the checkpoint file or directory to read")
    p.add_argument("dst", help="the .ckpt file (import) or directory (export) to write")
    p.add_argument("--drop-head", action="store_true",
                   help="drop the source's CTC head(s) (e.g. English letters): keep the backbone only")
    p.add_argument("--dict", dest="dict_path", metavar="DICT",
                   help="fairseq: dictionary of w2v_encoder.proj (dict.ltr.txt) -> grapheme head")
    p.add_argument("--add-dict", dest="add_dict_path", metavar="DICT",
                   help="fairseq (K-wav2vec): dictionary of w2v_encoder.proj2 (add_dict.ltr.txt) -> syllable head")
    p.add_argument("--grapheme-vocab", metavar="JSON",
                   help="map the grapheme head onto this existing vocabulary (default: the source's symbols)")
    p.add_argument("--syllable-vocab", metavar="JSON", help="same for the syllable head")
    p.add_argument("--factory-args", metavar="JSON",
                   help="torchaudio: wav2vec2_model(...) arguments, as a JSON object or a file holding one")
    p.add_argument("--bundle", help="torchaudio: pipeline bundle name supplying factory args, normalisation, labels")
    p.add_argument("--labels", metavar="FILE",
                   help="torchaudio: names of the aux head's outputs, blank first (one a line, or a JSON list)")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="hf, torchaudio: whether the model expects zero-mean unit-variance waveforms "
                        "(default: preprocessor_config.json / the bundle, else no)")
    p.add_argument("--arch", choices=("auto", "ctc", "pretraining", "model"), default="auto",
                   help="export: transformers class to write (auto: ForCTC with a grapheme head, else "
                        "ForPreTraining with the pretraining modules, else Model)")
    p.add_argument("--quantize", choices=("int8", "int8-linear"), default=None,
                   help="--to onnx: dynamic int8 quantization (onnxruntime) of the linear layers and the "
                        "convolutions but the first (int8), or of the linear layers only (int8-linear: "
                        "slower, closer to float32)")
    return p


def _json_arg(value: str, what: str):
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            return json.load(f)
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {value!r} is neither a file nor valid JSON: {e}") from e


def _labels(path: str) -> list[str]:
    text = open(path, encoding="utf-8").read()
    if path.endswith(".json"):
        labels = json.loads(text)
    else:
        labels = [line.rstrip("\n") for line in text.splitlines() if line.strip()]
    if not isinstance(labels, list) or not all(isinstance(t, str) for t in labels):
        raise ValueError(f"{path}: labels must be a list of strings")
    return labels


def _check_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    per_source = {"dict_path": ("fairseq",), "add_dict_path": ("fairseq",), "syllable_vocab": ("fairseq",),
                  "factory_args": ("torchaudio",), "bundle": ("torchaudio",), "labels": ("torchaudio",),
                  "normalize": ("hf", "torchaudio")}
    for name, sources in per_source.items():
        if getattr(args, name) is not None and args.source not in sources:
            flag = name.replace("_path", "").replace("_", "-")
            parser.error(f"--{flag} only applies to --from {' or '.join(sources)}")
    if args.target and (args.drop_head or args.grapheme_vocab):
        parser.error("--drop-head and --grapheme-vocab only apply to imports (--from)")
    if args.quantize and args.target != "onnx":
        parser.error("--quantize only applies to --to onnx")
    if args.target == "onnx" and args.arch != "auto":
        parser.error("--arch only applies to --to hf")
    if args.source and args.arch != "auto":
        parser.error("--arch only applies to exports (--to hf)")
    if args.drop_head and (args.dict_path or args.add_dict_path or args.grapheme_vocab or args.syllable_vocab or args.labels):
        parser.error("--drop-head drops the heads: do not also give their dictionaries, labels or vocabularies")


def _import(args: argparse.Namespace) -> ConvertedCheckpoint:
    if args.source == "fairseq":
        from kwav2vec.checkpoints.fairseq import import_fairseq

        return import_fairseq(args.src, drop_head=args.drop_head, dict_path=args.dict_path,
                              add_dict_path=args.add_dict_path, grapheme_vocab=args.grapheme_vocab,
                              syllable_vocab=args.syllable_vocab)
    if args.source == "hf":
        from kwav2vec.checkpoints.huggingface import import_huggingface

        return import_huggingface(args.src, drop_head=args.drop_head, grapheme_vocab=args.grapheme_vocab,
                                  normalize=args.normalize)
    from kwav2vec.checkpoints.torchaudio import import_torchaudio

    factory_args = _json_arg(args.factory_args, "--factory-args") if args.factory_args else None
    return import_torchaudio(args.src, factory_args=factory_args, bundle=args.bundle,
                             labels=_labels(args.labels) if args.labels else None, normalize=args.normalize,
                             drop_head=args.drop_head, grapheme_vocab=args.grapheme_vocab)


def summary(ckpt: ConvertedCheckpoint) -> str:
    cfg = ckpt.config
    params = sum(t.numel() for t in ckpt.state_dict.values())
    lines = [
        f"source: {ckpt.source}",
        f"backbone: {cfg.encoder_layers} layers x {cfg.encoder_embed_dim}, {cfg.encoder_attention_heads} heads, "
        f"{'pre' if cfg.layer_norm_first else 'post'}-LN, extractor {cfg.extractor_mode}, conv_bias={cfg.conv_bias}, "
        f"normalize={cfg.normalize}; {len(ckpt.state_dict)} tensors, {params:,} parameters"
        f"{'' if ckpt.has_pretraining_modules else ' (no pretraining modules)'}",
    ]
    for name, head in ckpt.heads.items():
        extra = f", {head.options['num_layers']} layers" if "num_layers" in head.options else ""
        lines.append(f"{name} head: {len(head.vocab)} outputs{extra}")
    lines += [f"note: {n}" for n in ckpt.notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _check_options(args, parser)
    try:
        if args.source:
            ckpt = _import(args)
            save_converted(ckpt, args.dst)
            print(summary(ckpt))
            print(f"wrote {args.dst}")
            # fine-tuning with stored heads needs the data encoded with their vocabularies
            for name, head in ckpt.heads.items():
                dst = Path(args.dst)
                vocab_path = dst.with_name(f"{dst.stem}.vocab_{name}.json")
                head.vocab.save(vocab_path)
                print(f"wrote {vocab_path} (the {name} head's vocabulary: --data.{name}_vocab {vocab_path})")
        elif args.target == "onnx":
            from kwav2vec.deploy.onnx_export import export_and_report

            print(export_and_report(args.src, args.dst, args.quantize))
        else:
            from kwav2vec.checkpoints.export import export_huggingface

            ckpt = read_model_checkpoint(args.src)
            notes = export_huggingface(ckpt, args.dst, arch=args.arch)
            print(summary(ckpt))
            print("\n".join(f"export note: {n}" for n in notes) or "", end="\n" if notes else "")
            print(f"wrote {args.dst}")
    except (ValueError, KeyMismatchError, FileNotFoundError, ImportError, OSError) as e:
        print(f"kwav2vec convert: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
