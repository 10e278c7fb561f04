"""Which engine runs the model for `transcribe` / `evaluate`: the one place that chooses.

- `lightning`: a `HierarchicalFineTuner` checkpoint (.ckpt) through Lightning's predict loop
  (devices, DDP: the `--trainer.*` flags);
- `onnx`: a directory from `kwav2vec convert --to onnx` on onnxruntime, in this process on the CPU
  (`kwav2vec.deploy.onnx_runtime`; needs `pip install kwav2vec[onnx]`).
`auto` (the default) takes `onnx` for a directory holding the export's JSON, else `lightning`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from kwav2vec.inference.decoders import MultiDecoder
from kwav2vec.inference.predict import RankResults, Source, load_finetuner, run_prediction

BACKENDS = ("auto", "lightning", "onnx")


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("backend")
    group.add_argument("--backend", choices=BACKENDS, default="auto",
                       help="lightning (a .ckpt) or onnx (a `convert --to onnx` directory); auto: onnx for "
                            "such a directory, else lightning (default: auto)")
    group.add_argument("--onnx-threads", type=int, default=None, metavar="N",
                       help="onnx backend: onnxruntime intra-op threads (default: one per physical core)")


def chosen_backend(path: str, backend: str = "auto") -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose {', '.join(BACKENDS)}")
    if backend == "auto":
        from kwav2vec.deploy.onnx_runtime import is_onnx_export

        return "onnx" if is_onnx_export(path) else "lightning"
    return backend


def load_model(args) -> Any:
    """The model `args.checkpoint` names, on the backend `args.backend` picks: a HierarchicalFineTuner
    or an OnnxModel (FileNotFoundError / ValueError / ImportError with a one-line reason)."""
    if chosen_backend(args.checkpoint, getattr(args, "backend", "auto")) == "onnx":
        from kwav2vec.deploy.onnx_runtime import OnnxModel, check_cpu_only

        check_cpu_only(args)
        if getattr(args, "reencode_segments", None):  # asked for; by default the onnx backend does not
            raise ValueError("--reencode-segments runs on the lightning backend (a .ckpt) only; "
                             "the onnx backend decodes the first pass")
        if args.onnx_threads is not None and args.onnx_threads < 1:
            raise ValueError(f"--onnx-threads must be >= 1, got {args.onnx_threads}")
        return OnnxModel(args.checkpoint, threads=args.onnx_threads)
    return load_finetuner(args.checkpoint)


def predict(
    model: Any, sources: Sequence[Source], make_decoder: Callable[[Any], MultiDecoder], args, *, progress_bar: bool,
    times: bool = False,
) -> tuple[list[RankResults] | None, float, int]:
    """`run_prediction` for either backend: (rank 0's gathered results or None, wall seconds, world size)."""
    from kwav2vec.deploy.onnx_runtime import OnnxModel

    if isinstance(model, OnnxModel):
        from kwav2vec.deploy.onnx_runtime import run_onnx_prediction

        return run_onnx_prediction(model, sources, make_decoder, args, progress_bar=progress_bar, times=times)
    return run_prediction(model, sources, make_decoder, args, progress_bar=progress_bar, times=times)
