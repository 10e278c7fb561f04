"""Transcription and evaluation with a fine-tuned model, through Lightning's predict loop.

- `decoders`: which decoders to run (greedy / beam / joint) and running several on one forward pass.
- `predict`: the sharded predict data, the per-rank decoding callback, gathering on rank 0.
- `report`: per-utterance TSV, metrics summary and the printed table.
- `transcribe`, `evaluate`: the `kwav2vec transcribe` and `kwav2vec evaluate` commands.
"""
