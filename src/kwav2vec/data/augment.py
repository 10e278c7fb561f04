"""Speed perturbation of training audio (Ko et al., Interspeech 2015; Kaldi's factors 0.9, 1.0, 1.1).

A factor f plays the utterance f times as fast: the waveform is resampled as if it had been
recorded at f x 16 kHz, so tempo and pitch both scale by f and the length by 1/f. Each training
item draws its factor from a generator seeded by (seed, epoch, index), like the pretraining crop
(`kwav2vec.data.dataset`): the same whichever worker loads it and whether or not the run resumed.

Why: a small corpus is memorised. Without masking, the 30-CPU-minute recipe on the 560 utterances
of scripts/make_second_corpus.py drove the fine-tuning loss to 0.02 by update 2,400 while the
validation loss of the jamo head rose (1.26 at update 1,600, 1.45 at 3,200). Speed perturbation
shows the model three versions of every utterance, at the cost of one resampling each. Measured
there on top of time and channel masking, it did not lower the dev CER further, so the shipped CPU
recipes do not use it (conf/finetune/demo_long.yaml has the figures); it is an option for corpora
where masking alone is not enough (`--data.speed_perturb "[0.9,1.0,1.1]"`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import torch
import torchaudio.functional as AF

SPEED_RANGE = (0.5, 2.0)  # factors outside it would change the speech beyond recognition
MAX_DENOMINATOR = 100  # a factor is resampled as the ratio p/q with q <= this (0.9 -> 9/10)


def check_speeds(speeds: Sequence[float] | None) -> tuple[float, ...]:
    """The factors as a tuple (() for none); ValueError naming a factor outside SPEED_RANGE."""
    out = tuple(float(s) for s in (speeds or ()))
    for s in out:
        if not (math.isfinite(s) and SPEED_RANGE[0] <= s <= SPEED_RANGE[1]):
            raise ValueError(f"speed perturbation factors must lie in {list(SPEED_RANGE)}, got {s}")
    return out


def change_speed(wav: torch.Tensor, factor: float) -> torch.Tensor:
    """(S,) waveform played `factor` times as fast -> (about S / factor,) samples."""
    ratio = Fraction(factor).limit_denominator(MAX_DENOMINATOR)
    if ratio == 1:
        return wav
    # resample(orig, new) scales the length by new / orig; orig / new = factor
    return AF.resample(wav, ratio.numerator, ratio.denominator)


def draw_speed(speeds: Sequence[float], seed: int, epoch: int, index: int) -> float:
    """One of `speeds`, uniformly, from a generator seeded by (seed, epoch, index)."""
    return float(speeds[int(np.random.default_rng([seed, epoch, index, 1]).integers(len(speeds)))])


def length_range(num_samples: int, speeds: Sequence[float]) -> tuple[int, int]:
    """(shortest, longest) length in samples an utterance of `num_samples` can take."""
    if not speeds:
        return num_samples, num_samples
    return math.floor(num_samples / max(speeds)), math.ceil(num_samples / min(speeds))
