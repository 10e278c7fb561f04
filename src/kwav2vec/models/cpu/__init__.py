"""CPU speed kernels, apart from the model's plain PyTorch path and switched in one place (`switch`).

Each computes what the plain operator computes, up to float rounding, and has its parity test
against it (tests/test_models_cpu.py; the whole model: tests/test_deploy_onnx.py
`test_plain_pytorch_path_equals_the_cpu_kernels`). What they cost and save is measured by
bench/train_step.py and bench/finetune_step.py (figures in the README), not written here.

- `dropout`: masks from 16-bit lanes of 64-bit random draws instead of `F.dropout`'s serial
  per-element Bernoulli draws (the same distribution; a keep rate quantized to 1/65,536).
- `fft_conv`: the positional embedding's long grouped convolution through overlap-save FFTs,
  with a hand-written backward.
- `attention`: attention with dropout in cache-sized blocks of query rows, where SDPA's CPU path
  would draw its dropout mask one element at a time.
- `conv`: the feature encoder's convolutions as im2col (slices) + one matrix multiply on time-major
  activations, and the frozen (no-grad) feature encoder run one utterance at a time.

Where they are taken: `use_cpu_kernels(x)` (on CPU, outside `plain_pytorch()`). The im2col layout
is the feature encoder's default on every device; `plain_pytorch()` alone returns it to conv1d.
"""

from kwav2vec.models.cpu.attention import attention_with_dropout
from kwav2vec.models.cpu.conv import conv_as_matmul, per_utterance
from kwav2vec.models.cpu.dropout import Dropout, dropout
from kwav2vec.models.cpu.fft_conv import FFTConv1d
from kwav2vec.models.cpu.switch import plain, plain_pytorch, use_cpu_kernels

__all__ = [
    "Dropout",
    "FFTConv1d",
    "attention_with_dropout",
    "conv_as_matmul",
    "dropout",
    "per_utterance",
    "plain",
    "plain_pytorch",
    "use_cpu_kernels",
]
