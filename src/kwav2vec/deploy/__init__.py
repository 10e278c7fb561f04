"""Deployment: a fine-tuned model as one ONNX graph with both heads, run by onnxruntime.

- `onnx_export`: `export_onnx(finetuner, DIR)` (what `kwav2vec convert --to onnx` calls), optional
  dynamic int8 quantization of the linear layers and (`int8`, not `int8-linear`) the convolutions.
- `onnx_convs`: the feature encoder's convolutions as block products, the form the int8 graph takes.
- `onnx_runtime`: `OnnxModel` (the exported directory on onnxruntime) and the prediction loop that
  `kwav2vec transcribe` / `evaluate` use for it (`--backend onnx`).
"""
