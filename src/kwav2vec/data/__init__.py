"""Audio, manifests, datasets, batching and corpus preparation.

    audio.py             load_audio (WAV/FLAC/OGG/PCM -> 16 kHz mono float32), AudioError
    manifest.py          JSONL manifests: read_manifest / write_manifest, ManifestError
    fairseq_manifest.py  fairseq .tsv/.ltr/.wrd import and export
    dataset.py           AudioDataset (pretraining), LabeledAudioDataset (fine-tuning)
    collate.py           padded batches: the batch contract (keys, shapes, dtypes, padding ids)
    sampler.py           BucketBatchSampler: samples-per-batch budget, bucketing, ranks, resume
    loader.py            ResumableDataLoader: mid-epoch resume under Lightning, skip accounting
    datamodule.py        PretrainDataModule, FinetuneDataModule
    prepare.py           shared corpus checks, rejects, report, vocabularies
    corpora/             KsponSpeech, Zeroth-Korean, folder, TSV listings
    prepare_cli.py       `kwav2vec prepare`

Nothing is imported here, so `kwav2vec.data.audio` does not pull in Lightning.
"""
