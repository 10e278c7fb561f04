"""`kwav2vec convert --to onnx CKPT DIR`: a fine-tuned model as one ONNX graph with both CTC heads.

DIR receives:
- `model.onnx`: inputs `audio` (B, S) float32 (16 kHz, zero-padded) and `audio_lengths` (B,) int64;
  outputs `grapheme_log_probs` (B, T, Vg) and/or `syllable_log_probs` (B, T, Vs) float32 (the heads
  the model has, log-softmax applied) and `frame_lengths` (B,) int64. B and S are dynamic (T follows
  from S). Waveform normalisation (zero mean, unit variance over each utterance's own samples) is
  inside the graph when the model was trained with it. Every `audio_lengths` must be at least
  `receptive_field` samples (one frame); shorter clips have no frame and are the caller's to handle.
- `tokens_grapheme.txt`, `tokens_syllable.txt`: `token id` per line in id order, blank (`<blank> 0`)
  first, as sherpa-onnx reads `tokens.txt`.
- `kwav2vec_onnx.json`: what a decoder needs (blank id, sample rate, frame stride, receptive field,
  normalisation, heads, input/output names, opset, quantization). Written last: its presence marks a
  complete export, and `transcribe` / `evaluate` recognise the directory by it.

Exporter: `torch.onnx.export(..., dynamo=True)` (torch.export + onnxscript), opset 20. The dynamo
exporter traces symbolic shapes, so the frame count stays a function of S in the graph, and it
refuses (rather than silently freezes) any branch on tensor values; the TorchScript tracer would bake
the example batch's branches and Python integers into the graph. Opset 20 because it has GELU as one
operator (`Gelu`); at opset 18 each GELU is five elementwise nodes (Div, Erf, Add, Mul, Mul), which
onnxruntime did not fuse: on base (4 x 4 s, 2 threads, 2026-12-03) the int8 graph took 0.731 s at
opset 18 and 0.659 s at 20, the fp32 graph 1.129 and 1.058 s. onnxruntime >= 1.17 runs opset 20.

The model is exported under `models.cpu.plain_pytorch()`: no CPU training kernel (16-bit-lane
dropout, FFT positional conv, blocked attention, im2col, per-utterance encoder) and no shortcut that
branches on values. The one operator that does not export as written is the FFT convolution (a
custom autograd Function over complex tensors): the plain path uses `conv1d`. The positional conv's
weight norm is folded into a plain weight first (on a copy), so the graph holds no weight-norm
arithmetic.

`--quantize int8`: onnxruntime's `quantize_dynamic` on the MatMul nodes whose second input is a
weight (`MatMulConstBOnly`: the linear layers, not attention's activation products), int8 weights,
activations quantized per batch at run time; the heads' two output projections stay float32 (see
`quantize_int8`). The feature encoder's convolutions are exported as block products
(`onnx_convs`) and quantized alike, except the first (its input is the waveform).
`--quantize int8-linear` keeps every convolution float32 (`Conv`): slower, closer to float32.
Measured (2026-12-03, BASE random weights, 4 x 4 s, 2 threads): int8 0.465-0.486 s a step,
int8-linear 0.655-0.684 s, PyTorch 1.24-1.43 s (bench/deploy_onnx.py); on the demo model int8 moved the test CERs by at most 0.43 points, int8-linear by at most
0.11; on the tests' random BASE-architecture model the largest log-prob change is about 0.2 with the
convolutions quantized, 0.003 without.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kwav2vec.deploy.onnx_convs import BlockConvFeatureEncoder
from kwav2vec.fileio import atomic_move, atomic_write_text
from kwav2vec.models.config import SAMPLE_RATE
from kwav2vec.models.cpu import plain_pytorch
from kwav2vec.models.ctc_loss import ctc_log_probs
from kwav2vec.text.vocab import Vocabulary

OPSET = 20
MODEL_FILE = "model.onnx"
CONFIG_FILE = "kwav2vec_onnx.json"
FORMAT = "kwav2vec-onnx"
FORMAT_VERSION = 1
INPUT_NAMES = ("audio", "audio_lengths")
HEADS = ("grapheme", "syllable")
# --quantize -> kwav2vec_onnx.json's "quantization" (both dynamic int8; int8 quantizes the convolutions too)
QUANTIZATION_NAMES = {"int8": "int8-dynamic", "int8-linear": "int8-dynamic-linear"}
QUANTIZATIONS = tuple(QUANTIZATION_NAMES)
INSTALL_HINT = "pip install kwav2vec[onnx]"
FIRST_CONV_WEIGHTS = "backbone.feature_extractor.convs.0."  # BlockConvFeatureEncoder's first layer


def tokens_file(head: str) -> str:
    return f"tokens_{head}.txt"


def output_names(heads: tuple[str, ...]) -> list[str]:
    return [f"{h}_log_probs" for h in heads] + ["frame_lengths"]


class OnnxGraph(nn.Module):
    """What the ONNX graph computes: a fine-tuner's eval-mode forward, both heads, without the host
    checks of `Wav2Vec2Model.encode` (they branch on values; the runtime checks lengths before running).

    audio (B, S) float32, audio_lengths (B,) int64 -> per head (B, T, V) float32 log-probs, then
    frame_lengths (B,) int64.
    """

    def __init__(self, finetuner: nn.Module) -> None:
        super().__init__()
        self.backbone = finetuner.backbone
        self.heads = nn.ModuleDict(finetuner._heads())  # built heads, in HEADS order

    def forward(self, audio: torch.Tensor, audio_lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        bb = self.backbone
        # normalisation (when cfg.normalize), conv features, layer norm: as in encode
        features, frames, padding_mask, _ = bb._features(audio, audio_lengths, penalty=False)  # (B, T, C)
        x = bb.encoder(bb._project(features), padding_mask)  # (B, T, D)
        log_probs = [ctc_log_probs(head(x, padding_mask)) for head in self.heads.values()]  # (B, T, V) each
        return (*log_probs, frames)


def _fold_weight_norm(model: nn.Module) -> None:
    """Replaces each weight-normalised Conv1d (the positional conv) by a plain one holding its current
    weight, in place. (`parametrize.remove_parametrizations` would not do on a deep copy: it deletes
    the weight property from the parametrized class, which the copy shares with the original.)"""
    from torch.nn.utils import parametrize

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv1d) and parametrize.is_parametrized(child):
                conv = nn.Conv1d(child.in_channels, child.out_channels, child.kernel_size, stride=child.stride,
                                 padding=child.padding, dilation=child.dilation, groups=child.groups,
                                 bias=child.bias is not None)
                with torch.no_grad():
                    conv.weight.copy_(child.weight)
                    if child.bias is not None:
                        conv.bias.copy_(child.bias)
                setattr(parent, name, conv)


def export_graph(finetuner: nn.Module, path: str | os.PathLike, opset: int = OPSET,
                 block_convs: bool = False) -> list[str]:
    """Writes `OnnxGraph(finetuner)` to `path` (one self-contained file); returns its output names.

    block_convs: the feature encoder's convolutions as matrix products (`onnx_convs`), which the int8
    quantizer then quantizes like the linear layers; the float32 export keeps `Conv` (faster there)."""
    model = copy.deepcopy(finetuner).cpu().float().eval()
    _fold_weight_norm(model)
    if block_convs:
        model.backbone.feature_extractor = BlockConvFeatureEncoder(model.backbone.feature_extractor)
    graph = OnnxGraph(model).eval()
    heads = tuple(graph.heads)
    rf = finetuner.backbone.feature_extractor.receptive_field
    stride = model.config.frame_stride
    # example: two utterances of different lengths, so neither axis is specialised to 1 or equal values
    lengths = torch.tensor([rf + 9 * stride, rf + 5 * stride], dtype=torch.long)
    audio = torch.randn(2, int(lengths.max()))
    batch = torch.export.Dim("batch", min=1)
    # torch.export specialises a size of 1, so the traced program is declared for T >= 2 frames; the
    # ONNX operators themselves broadcast alike at T = 1 (one-frame batches are tested against PyTorch)
    samples = torch.export.Dim("samples", min=rf + stride)
    dynamic = {"audio": {0: batch, 1: samples}, "audio_lengths": {0: batch}}
    names = output_names(heads)
    with plain_pytorch(), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and registry chatter
        program = torch.onnx.export(
            graph, (audio, lengths), dynamo=True, opset_version=opset, input_names=list(INPUT_NAMES),
            output_names=names, dynamic_shapes=dynamic, external_data=False, optimize=True, verbose=False,
        )
    program.save(str(path), external_data=False)
    return names


def head_projections(model) -> list[str]:
    """Names of the MatMul nodes of the heads' output projections: the nearest MatMul upstream of each
    `*_log_probs` output (LogSoftmax <- Add bias <- MatMul)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    found = []
    for output in model.graph.output:
        if not output.name.endswith("_log_probs"):
            continue
        frontier, seen = [producer[output.name]], set()
        while frontier:
            node = frontier.pop(0)
            if node.op_type in ("MatMul", "Gemm"):
                found.append(node.name)
                break
            seen.add(node.name)
            frontier += [producer[i] for i in node.input if i in producer and producer[i].name not in seen]
    return found


def waveform_products(model) -> list[str]:
    """Names of the MatMul nodes of the first convolution (its input is the waveform) in a
    `block_convs` export, found by their weights' names (the exporter keeps module paths)."""
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1].startswith(FIRST_CONV_WEIGHTS)]


class _DropPreprocessingHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Dynamic int8 quantization of the MatMul nodes with a constant weight of `src` (the linear layers,
    and in a `block_convs` graph the convolutions' products), but the two heads' output projections
    and the first convolution's products (int8 would round the waveform itself).

    The projections stay float32: their error goes straight into the log-probabilities with no layer norm
    after it. Measured on a random tiny model: max |log-prob change| 0.7-1.4 with them quantized,
    0.004-0.007 without; they are ~2% of the multiply-adds at BASE.
    """
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        raise ImportError(f"--quantize int8 needs onnxruntime ({INSTALL_HINT}): {e}") from e
    import onnx

    graph = onnx.load(str(src), load_external_data=False)
    keep_float = head_projections(graph) + waveform_products(graph)
    hint = _DropPreprocessingHint()  # shape inference is already done: the exporter's graph is typed
    logging.getLogger().addFilter(hint)
    try:
        quantize_dynamic(
            str(src), str(dst), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
            per_channel=False, nodes_to_exclude=keep_float, extra_options={"MatMulConstBOnly": True},
        )
    finally:
        logging.getLogger().removeFilter(hint)


def write_tokens(vocab: Vocabulary, path: Path) -> None:
    """sherpa-onnx's tokens.txt: `token id` per line, id order (blank first)."""
    atomic_write_text(path, "".join(f"{token} {i}\n" for i, token in enumerate(vocab.tokens)))


def decoder_config(finetuner: nn.Module, heads: tuple[str, ...], outputs: list[str], opset: int,
                   quantization: str | None) -> dict[str, Any]:
    cfg = finetuner.config
    vocabs = {h: getattr(finetuner, f"{h}_vocab") for h in HEADS}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": MODEL_FILE,
        "opset": opset,
        "quantization": quantization,
        "inputs": {"audio": "(B, S) float32, 16 kHz, zero-padded", "audio_lengths": "(B,) int64 samples"},
        "outputs": outputs,
        "heads": list(heads),
        # tokens of both vocabularies, also of a head the model lacks (the syllable vocabulary is the
        # "known syllables" of evaluate's OOV figures)
        "tokens": {h: tokens_file(h) for h in HEADS if vocabs[h] is not None},
        "blank_id": next(v.blank_id for v in vocabs.values() if v is not None),
        "sample_rate": SAMPLE_RATE,
        "frame_stride": cfg.frame_stride,  # samples between frames
        "receptive_field": finetuner.backbone.feature_extractor.receptive_field,  # samples of one frame
        "normalize": bool(cfg.normalize),  # applied inside the graph; feed raw waveforms
        "log_probs": True,  # outputs are log-softmax values
    }


def export_onnx(finetuner: nn.Module, out_dir: str | os.PathLike, quantize: str | None = None,
                opset: int = OPSET) -> dict[str, Any]:
    """Exports a `HierarchicalFineTuner` to `out_dir` (see the module docstring); returns the JSON written."""
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantize!r}; choose {', '.join(QUANTIZATIONS)}")
    try:
        import onnx  # noqa: F401  (the exporter's serialiser)
        import onnxscript  # noqa: F401  (the dynamo exporter's op library)
    except ImportError as e:
        raise ImportError(f"ONNX export needs onnx and onnxscript ({INSTALL_HINT}): {e}") from e
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).unlink(missing_ok=True)  # an interrupted export must not look complete
    heads = tuple(finetuner._heads())
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        fp32 = Path(tmp) / MODEL_FILE
        outputs = export_graph(finetuner, fp32, opset, block_convs=quantize == "int8")
        final = fp32
        if quantize is not None:
            final = Path(tmp) / "model.int8.onnx"
            quantize_int8(fp32, final)
        atomic_move(final, out / MODEL_FILE)
    for h in HEADS:
        vocab = getattr(finetuner, f"{h}_vocab")
        if vocab is not None:
            write_tokens(vocab, out / tokens_file(h))
    config = decoder_config(finetuner, heads, outputs, opset, QUANTIZATION_NAMES.get(quantize))
    tuned = getattr(finetuner, "tuned_weights", None)
    if tuned:  # the checkpoint's tuned joint weights travel with the export
        config["decoding"] = {"syllable_weight": dict(tuned)}
    atomic_write_text(out / CONFIG_FILE, json.dumps(config, ensure_ascii=False, indent=2) + "\n")
    return config


def export_and_report(checkpoint: str, out_dir: str, quantize: str | None = None) -> str:
    """`kwav2vec convert --to onnx`: loads a fine-tuner checkpoint, exports it, returns the lines to print."""
    from kwav2vec.inference.predict import load_finetuner

    finetuner = load_finetuner(checkpoint)
    config = export_onnx(finetuner, out_dir, quantize=quantize)
    size = os.path.getsize(Path(out_dir) / MODEL_FILE)
    heads = ", ".join(f"{h} ({len(getattr(finetuner, f'{h}_vocab'))} tokens)" for h in config["heads"])
    return "\n".join([
        f"heads: {heads}; normalize={config['normalize']}; opset {config['opset']}; "
        f"quantization: {config['quantization'] or 'none (float32)'}",
        f"wrote {Path(out_dir) / MODEL_FILE} ({size / 2**20:.1f} MiB), "
        f"{', '.join(config['tokens'].values())} and {CONFIG_FILE}",
    ])
