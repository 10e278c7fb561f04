"""kwav2vec: Korean speech recognition with wav2vec 2.0 on PyTorch Lightning."""

__version__ = "0.1.0"
