"""The joint decoders' syllable weight, set on a validation split and stored with the model.

A fixed weight of 0.5 trusts both heads equally. When one head is untrained or much worse (early
in fine-tuning, the syllable head usually is: it learns later than the jamo head), that makes the
joint result worse than the better head alone. `kwav2vec evaluate CKPT dev.jsonl --tune-weight`
decodes the split once, scores every joint decoder at each weight of GRID (the beam searches and
the CTC likelihoods are shared across weights, so this costs about one decoding), and keeps per
mode the weight with the fewest character errors. The endpoints are in the grid: 0 ranks both heads'
candidates by the grapheme head alone, 1 by the syllable head alone, so a head that only hurts can
be switched off.

Ties (common: a whole range of weights often gives the same errors) go to the weight nearest the
better head's end (0 when the grapheme end has fewer or equal errors), trusting the head that is
better alone; a head that outputs only blanks therefore gets weight 0 exactly.

The weights go into the checkpoint (`kwav2vec_finetune.decoding`, rewritten atomically and
resealed) or into an ONNX export's JSON (`decoding`); `transcribe` and `evaluate` use them when
`--syllable-weight` is not given. Fine-tuning further drops them (they belong to the old weights).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kwav2vec.decoding.joint import MODES as JOINT_MODES

GRID = tuple(round(0.1 * i, 1) for i in range(11))  # 0.0, 0.1, ..., 1.0
DEFAULT_WEIGHT = 0.5
DECODING_KEY = "decoding"  # under the checkpoint's kwav2vec_finetune entry / in the ONNX JSON


def syllable_weights(given: float | None, model: Any) -> float | dict[str, float]:
    """--syllable-weight if given, else the weights stored with the model, else DEFAULT_WEIGHT."""
    if given is not None:
        return given
    stored = getattr(model, "tuned_weights", None)
    if isinstance(stored, Mapping) and all(mode in stored for mode in JOINT_MODES):
        return {mode: float(stored[mode]) for mode in JOINT_MODES}
    return DEFAULT_WEIGHT


def choose_weight(errors: Mapping[float, int]) -> float:
    """The weight with the fewest errors; ties to the one nearest the better end (see the module doc)."""
    if not errors:
        raise ValueError("no weights were scored")
    best = min(errors.values())
    tied = [w for w, e in errors.items() if e == best]
    low, high = min(errors), max(errors)
    toward = low if errors[low] <= errors[high] else high
    return min(tied, key=lambda w: (abs(w - toward), w))


def tune(errors_by_name: Mapping[str, Mapping[float, int]]) -> dict[str, float]:
    """{joint decoder name: {weight: character errors}} -> {mode: chosen weight}."""
    return {name.split("-", 1)[1]: choose_weight(errors) for name, errors in errors_by_name.items()}


def joint_names(names: Sequence[str]) -> list[str]:
    return [n for n in names if n.startswith("joint-")]


def store_weights(path: str | os.PathLike, weights: Mapping[str, float], record: Mapping[str, Any]) -> None:
    """Writes `weights` ({mode: weight}) and `record` (what they were tuned on) into a .ckpt or an
    ONNX export's JSON, atomically; every other byte of meaning in the file is kept."""
    entry = {"syllable_weight": dict(weights), **record}
    target = Path(path)
    if target.is_dir():
        from kwav2vec.deploy.onnx_export import CONFIG_FILE
        from kwav2vec.fileio import atomic_write_text

        config_path = target / CONFIG_FILE
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config[DECODING_KEY] = entry
        atomic_write_text(config_path, json.dumps(config, ensure_ascii=False, indent=2) + "\n")
        return
    from kwav2vec.checkpoints.integrity import read_checkpoint, seal
    from kwav2vec.fileio import atomic_torch_save
    from kwav2vec.lit.finetune import CHECKPOINT_KEY

    blob = read_checkpoint(target, weights_only=False)
    blob.setdefault(CHECKPOINT_KEY, {})[DECODING_KEY] = entry
    atomic_torch_save(seal(blob), target)


def stored_entry(checkpoint_or_config: Mapping[str, Any]) -> dict[str, float] | None:
    """The stored {mode: weight} of a checkpoint dict (under kwav2vec_finetune) or an ONNX JSON."""
    from kwav2vec.lit.finetune import CHECKPOINT_KEY

    entry = checkpoint_or_config.get(DECODING_KEY)
    if entry is None:
        inner = checkpoint_or_config.get(CHECKPOINT_KEY)
        entry = inner.get(DECODING_KEY) if isinstance(inner, Mapping) else None
    weights = entry.get("syllable_weight") if isinstance(entry, Mapping) else None
    if isinstance(weights, Mapping) and all(isinstance(weights.get(m), (int, float)) for m in JOINT_MODES):
        return {m: float(weights[m]) for m in JOINT_MODES}
    return None
