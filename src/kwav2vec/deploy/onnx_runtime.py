"""An exported directory (`kwav2vec convert --to onnx`) on onnxruntime, and the prediction loop of
`kwav2vec transcribe` / `evaluate --backend onnx`.

`OnnxModel` stands where the commands use a `HierarchicalFineTuner`: it has `heads_used`,
`grapheme_vocab`, `syllable_vocab` (read back from the tokens files) and a `predict_step(batch)` that
returns what the fine-tuner's does. `run_onnx_prediction` feeds it the same length-sorted batches
(`PredictDataModule`) and hands its outputs to the same `DecodingWriter` hooks as Lightning's predict
loop, so every decoder and every report sees identical per-utterance results from either backend.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from kwav2vec.deploy.onnx_export import CONFIG_FILE, FORMAT, FORMAT_VERSION, HEADS, INPUT_NAMES, INSTALL_HINT
from kwav2vec.inference.decoders import MultiDecoder
from kwav2vec.inference.predict import (
    DecodingWriter,
    PredictDataModule,
    RankResults,
    Source,
    chunk_config,
    gather_results,
    segment_config,
)
from kwav2vec.inference.tune import stored_entry
from kwav2vec.text.vocab import SPECIALS, Vocabulary


def import_onnxruntime():
    """The onnxruntime module, or ImportError with the one line that says how to get it."""
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError(f"the onnx backend needs onnxruntime, which is not installed ({e}): "
                          f"{INSTALL_HINT}") from None
    return onnxruntime


def is_onnx_export(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory written by `kwav2vec convert --to onnx` (it holds the JSON)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG_FILE))


def read_tokens(path: Path, kind: str) -> Vocabulary:
    """A tokens file (`token id` per line, id order, blank first) -> the Vocabulary it was written from."""
    tokens: list[str] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            token, _, index = line.rstrip("\n").rpartition(" ")
            if not token or not index.isdigit() or int(index) != len(tokens):
                raise ValueError(f"{path}:{number}: expected `<token> {len(tokens)}`, got {line.rstrip()!r}")
            tokens.append(token)
    if tuple(tokens[: len(SPECIALS)]) != SPECIALS:
        raise ValueError(f"{path}: the first tokens must be {list(SPECIALS)}, got {tokens[: len(SPECIALS)]}")
    return Vocabulary(tokens[len(SPECIALS) :], kind)  # type: ignore[arg-type]


class OnnxModel:
    """An exported directory on an onnxruntime CPU session.

    Args:
        path: the directory (`model.onnx`, tokens files, `kwav2vec_onnx.json`).
        threads: onnxruntime intra-op threads (None: onnxruntime's default, one per physical core).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        ort = import_onnxruntime()
        self.path = Path(path)
        config_path = self.path / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{self.path} is not an ONNX export of kwav2vec (no {CONFIG_FILE} in it)")
        self.config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
        if self.config.get("format") != FORMAT or self.config.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{config_path}: format {self.config.get('format')!r} version "
                             f"{self.config.get('format_version')!r}, expected {FORMAT!r} {FORMAT_VERSION}")
        self.heads_used = tuple(self.config["heads"])
        vocabs = {h: read_tokens(self.path / name, h) for h, name in self.config["tokens"].items()}
        self.grapheme_vocab = vocabs.get("grapheme")
        self.syllable_vocab = vocabs.get("syllable")
        self.receptive_field = int(self.config["receptive_field"])
        self.tuned_weights = stored_entry(self.config)  # `evaluate --tune-weight`, or carried from the .ckpt
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.path / self.config["model"]), options,
                                            providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, audio: torch.Tensor, audio_lengths: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """audio (B, S) float, audio_lengths (B,) -> ({head: (B, T, V) float32 log-probs}, frame_lengths (B,)).

        A clip shorter than one frame (`receptive_field` samples) gets 0 frames (an empty transcript):
        the graph is run on its zero padding and its frames are then discarded.
        """
        lengths = audio_lengths.long()
        short = lengths < self.receptive_field
        if audio.shape[1] < self.receptive_field:
            audio = torch.nn.functional.pad(audio, (0, self.receptive_field - audio.shape[1]))
        feed = {INPUT_NAMES[0]: np.ascontiguousarray(audio.float().numpy()),
                INPUT_NAMES[1]: np.ascontiguousarray(lengths.clamp(min=self.receptive_field).numpy())}
        values = dict(zip(self.outputs, self.session.run(self.outputs, feed), strict=True))
        frames = torch.from_numpy(values["frame_lengths"]).long().masked_fill(short, 0)
        log_probs = {h: torch.from_numpy(values[f"{h}_log_probs"]) for h in self.heads_used}
        return log_probs, frames

    def predict_step(self, batch: dict) -> dict[str, Any]:
        """What `HierarchicalFineTuner.predict_step` returns, from onnxruntime."""
        out: dict[str, Any] = {"ids": list(batch.get("ids", []))}
        if batch["audio"].shape[0] == 0:  # every file of the batch failed to load
            out["frame_lengths"] = torch.zeros(0, dtype=torch.long)
            for h in HEADS:
                vocab = getattr(self, f"{h}_vocab")
                out[f"{h}_log_probs"] = torch.zeros(0, 0, len(vocab)) if h in self.heads_used else None
            return out
        log_probs, frames = self(batch["audio"], batch["audio_lengths"])
        out["frame_lengths"] = frames
        for h in HEADS:
            out[f"{h}_log_probs"] = log_probs.get(h)
        return out


def check_cpu_only(args) -> None:
    """ValueError when `--trainer.*` asks for more than this process's CPU (they drive Lightning only)."""
    wanted = {"--trainer.accelerator": (str(args.accelerator), ("auto", "cpu")),
              "--trainer.devices": (str(args.devices), ("1", "auto")),
              "--trainer.strategy": (str(args.strategy), ("auto",)),
              "--trainer.num_nodes": (str(args.num_nodes), ("1",))}
    for flag, (value, allowed) in wanted.items():
        if value not in allowed:
            raise ValueError(f"{flag} {value}: the onnx backend runs in this process on the CPU "
                             "(use --backend lightning for devices and strategies)")


def run_onnx_prediction(
    model: OnnxModel,
    sources: Sequence[Source],
    make_decoder: Callable[[Any], MultiDecoder],
    args,
    *,
    progress_bar: bool,
    times: bool = False,
) -> tuple[list[RankResults], float, int]:
    """`run_prediction` on onnxruntime: (results, wall seconds of the loop, world size 1); long files
    go in windows and segments as there."""
    check_cpu_only(args)
    datamodule = PredictDataModule(sources, args.max_samples_per_batch, args.batch_size, num_workers=args.num_workers,
                                   chunking=chunk_config(args))
    loader = datamodule.predict_dataloader()
    trainer = SimpleNamespace(global_rank=0, datamodule=datamodule)  # what DecodingWriter reads of a Trainer
    writer = DecodingWriter(make_decoder, times=times, segmenting=segment_config(args))
    batches = loader
    if progress_bar:
        from tqdm import tqdm

        batches = tqdm(loader, desc="onnxruntime", file=sys.stderr)
    start = time.perf_counter()
    writer.on_predict_start(trainer, model)
    for index, batch in enumerate(batches):
        writer.on_predict_batch_start(trainer, model, batch, index)
        writer.on_predict_batch_end(trainer, model, model.predict_step(batch), batch, index)
    writer.on_predict_end(trainer, model)
    wall = time.perf_counter() - start
    gathered = gather_results(writer.results, len(sources))
    assert gathered is not None  # a single process is rank 0
    return gathered, wall, 1
