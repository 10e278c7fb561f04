"""The bad-input matrix of issues 8 and 16: every row gives a clear error or a counted skip that names the file.

Most rows are tested where they are handled, by the data and text streams; `MATRIX` indexes those
tests (and `test_the_index_points_at_existing_tests` keeps the index honest). Added here: whole
training runs (Trainer + DataModule + LightningModule) over a corpus holding every audio row, which
must finish with finite losses, the broken files skipped, counted and named; and the rows the
data layer does not yet catch when a hand-written manifest bypasses `kwav2vec prepare`.
"""

from __future__ import annotations

import importlib
import logging
import math

import pytest
from robust_utils import (
    StepRecorder,
    finetune_data,
    finetuner,
    one_thread,  # noqa: F401 (a fixture)
    pretrain_data,
    pretrainer,
    trainer,
)
from test_data_utils import audio_manifest, write_jsonl, write_pcm, write_wav

from kwav2vec.data.dataset import AudioDataset, LabeledAudioDataset
from kwav2vec.data.manifest import read_manifest
from kwav2vec.data.prepare import build_vocabularies
from kwav2vec.lit.guards import NonFiniteGuard

pytestmark = pytest.mark.usefixtures("one_thread")

# row -> tests that cover it ("file.py::test_name"); what happens is said in the comment.
MATRIX: dict[str, list[str]] = {
    # AudioError(reason="missing") naming the path; in training: skipped, counted, logged with the path;
    # in preparation: rejects.jsonl "audio:missing"
    "missing file": [
        "test_data_audio.py::test_missing_file",
        "test_data_dataset.py::test_files_that_fail_to_load_are_logged_skipped_and_counted",
        "test_data_prepare.py::test_zeroth_tree",
        "test_robust_bad_inputs.py::test_training_runs_over_every_bad_audio_row",
    ],
    "zero-byte file": [
        "test_data_audio.py::test_zero_byte_files",
        "test_data_dataset.py::test_files_that_fail_to_load_are_logged_skipped_and_counted",
        "test_data_prepare.py::test_folder_with_bad_input_matrix",
        "test_robust_bad_inputs.py::test_training_runs_over_every_bad_audio_row",
    ],
    "truncated WAV": [
        "test_data_audio.py::test_truncated_wav_is_detected",
        "test_data_dataset.py::test_files_that_fail_to_load_are_logged_skipped_and_counted",
        "test_data_prepare.py::test_folder_with_bad_input_matrix",
        "test_robust_bad_inputs.py::test_training_runs_over_every_bad_audio_row",
    ],
    "non-audio file with an audio extension": [
        "test_data_audio.py::test_non_audio_with_audio_extension",
        "test_data_dataset.py::test_files_that_fail_to_load_are_logged_skipped_and_counted",
        "test_data_prepare.py::test_folder_with_bad_input_matrix",
        "test_robust_bad_inputs.py::test_training_runs_over_every_bad_audio_row",
    ],
    # preparation rejects it ("audio:silent", named); if it reaches training it stays finite
    "silence-only audio": [
        "test_data_audio.py::test_silence_is_detected",
        "test_models_backbone.py::test_model_normalisation_keeps_silence_finite_and_equals_per_utterance_layer_norm",
        "test_data_prepare.py::test_ksponspeech_tree_pcm_and_cp949",
        "test_robust_bad_inputs.py::test_training_runs_over_every_bad_audio_row",
    ],
    # preparation rejects it ("audio:too-short"); datasets leave it out and count it; the model
    # raises a ValueError naming the utterance and its length
    "audio shorter than the conv receptive field": [
        "test_data_prepare.py::test_ksponspeech_tree_pcm_and_cp949",
        "test_data_dataset.py::test_receptive_field_is_the_floor_of_min_sample_size",
        "test_models_backbone.py::test_errors_name_the_shape",
        "test_robust_bad_inputs.py::test_utterances_left_out_at_construction_are_named",
    ],
    # not errors: resampled to 16 kHz / downmixed on load, counted in the preparation report
    "8 kHz and 44.1 kHz audio": [
        "test_data_audio.py::test_other_rates_are_resampled_to_16k",
        "test_data_prepare.py::test_folder_with_bad_input_matrix",
        "test_robust_bad_inputs.py::test_training_runs_over_every_bad_audio_row",
    ],
    "stereo audio": [
        "test_data_audio.py::test_stereo_is_averaged_to_mono",
        "test_data_prepare.py::test_folder_with_bad_input_matrix",
        "test_robust_bad_inputs.py::test_training_runs_over_every_bad_audio_row",
    ],
    # TranscriptError(reason="empty"); preparation rejects "transcript:empty"
    "transcript with only punctuation": [
        "test_text_normalize.py::test_empty_after_normalization_raises",
        "test_data_prepare.py::test_folder_with_bad_input_matrix",
        "test_data_dataset.py::test_empty_target_is_filtered",
        "test_robust_bad_inputs.py::test_unnormalised_transcripts_in_a_manifest_are_caught",
    ],
    # TranscriptError(reason="unsupported") naming the characters; preparation rejects it
    "transcript in another script": [
        "test_text_normalize.py::test_error_policy_raises_naming_characters_and_line",
        "test_data_prepare.py::test_folder_with_bad_input_matrix",
        "test_data_prepare.py::test_zeroth_tree",
        "test_robust_bad_inputs.py::test_unnormalised_transcripts_in_a_manifest_are_caught",
    ],
    # preparation rejects "ctc-infeasible"; datasets leave it out and count it; the fine-tuner's CTC
    # masks any that get through and counts them (train/ctc_infeasible)
    "transcript longer than the audio allows": [
        "test_data_prepare.py::test_ksponspeech_tree_pcm_and_cp949",
        "test_data_dataset.py::test_labeled_dataset_targets_and_ctc_feasibility",
        "test_robust_bad_inputs.py::test_utterances_left_out_at_construction_are_named",
    ],
    # ManifestError naming file and line
    "manifest line that is not JSON": [
        "test_data_manifest.py::test_line_that_is_not_json_names_file_and_line"
    ],
    "manifest pointing outside its root": ["test_data_manifest.py::test_manifest_pointing_outside_its_root"],
    # ---- rows of issue 16
    # by column names with a header (others kept as "meta"), exactly two columns without one, else an
    # error naming the line and suggesting --columns
    "TSV/CSV with more columns than path and text": [
        "test_robust_prepare_inputs.py::test_tsv_header_columns_are_found_by_name_and_others_kept_as_metadata",
        "test_robust_prepare_inputs.py::test_csv_extra_columns_with_a_header_are_not_appended_to_the_transcript",
        "test_robust_prepare_inputs.py::test_tsv_without_header_and_three_columns_is_an_error_naming_the_line",
        "test_robust_prepare_inputs.py::test_prepare_tsv_columns",
    ],
    # rejects.jsonl "listing:empty-path" naming the listing's line
    "TSV row with an empty path": ["test_robust_prepare_inputs.py::test_tsv_row_with_an_empty_path_is_a_reject_naming_the_line"],
    # rejects.jsonl "audio:dangling-symlink" / "audio:symlink-loop"
    "dangling or looping symlink": ["test_robust_prepare_inputs.py::test_folder_dangling_and_looping_symlinks_are_rejects"],
    # TAB-separated lines parse; a line without an utterance id is "listing:malformed-line"
    "Zeroth transcript line separated by a TAB, or malformed": [
        "test_robust_prepare_inputs.py::test_zeroth_tab_separated_lines_parse_and_malformed_lines_are_rejects",
    ],
    # rejects.jsonl "audio:format-mismatch": its 44-byte header is not read as samples
    "WAV file named .pcm": ["test_robust_prepare_inputs.py::test_ksponspeech_wav_named_pcm_is_a_reject"],
    # checked against the file at load: skipped as "length-mismatch", the utterance named in the log
    "manifest num_samples that lies": [
        "test_robust_prepare_inputs.py::test_a_manifest_entry_whose_num_samples_lies_is_skipped_and_named",
    ],
    # no audio / no transcripts / everything rejected: PrepareError with counts, outputs untouched
    "prepare that accepts nothing": [
        "test_robust_prepare_inputs.py::test_a_prepare_that_accepts_nothing_leaves_the_previous_outputs_untouched",
        "test_robust_prepare_inputs.py::test_prepare_corpus_raises_prepare_error",
    ],
    # CheckpointError naming the file and the newest intact checkpoint beside it, for every reader
    "damaged checkpoint (bytes flipped in a tensor)": [
        "test_robust_fault_injection.py::test_a_damaged_checkpoint_is_refused_by_every_reader",
        "test_robust_checkpoint_files.py::test_seal_and_verify_round_trip_through_a_file_and_catch_a_changed_value",
        "test_robust_checkpoint_files.py::test_newest_intact_skips_a_damaged_newer_file",
    ],
    # one line naming the file and what was expected
    "empty file, directory or non-checkpoint given as a checkpoint": [
        "test_robust_checkpoint_files.py::test_transcribe_evaluate_and_convert_name_a_bad_file_in_one_line",
        "test_robust_checkpoint_files.py::test_init_from_and_resume_name_a_bad_file",
    ],
    # the previous checkpoint stays valid; the error names the file and the intact one beside it
    "disk full during a checkpoint save": [
        "test_robust_fault_injection.py::test_a_full_disk_during_a_save_keeps_the_previous_checkpoint",
        "test_robust_checkpoint.py::test_trainer_saves_go_through_the_atomic_writer",
    ],
    # periodic step-N/last saves whatever the monitored metric; resumed runs end bit-identical
    "run killed before its first validation": [
        "test_robust_fault_injection.py::test_sigkill_ten_times_and_resume_gives_the_uninterrupted_weights",
        "test_robust_checkpoint_files.py::test_periodic_saves_happen_before_the_monitored_metric_exists",
    ],
}


def test_the_index_points_at_existing_tests():
    assert len(MATRIX) == 13 + 11  # the rows of issue 8, then those of issue 16
    for row, refs in MATRIX.items():
        assert refs, row
        for ref in refs:
            module_file, name = ref.split("::")
            module = importlib.import_module(module_file.removesuffix(".py"))
            assert callable(getattr(module, name, None)), f"{row}: {ref} does not exist"


# ------------------------------------------------------------------------------- whole runs
BROKEN = {"missing": "missing.wav", "empty": "zero.wav", "unreadable": "text.wav", "truncated": "cut.wav"}
TEXT = "안녕 하세요"


def _corpus(root):
    """Good utterances plus one file per audio row of the matrix, all with a transcript."""
    rows = [(f"good{i}", write_wav(root / f"good{i}.wav", 9600, seed=i).name) for i in range(4)]
    (root / "zero.wav").write_bytes(b"")
    (root / "text.wav").write_text("not audio at all")
    data = write_wav(root / "cut.wav", 9600).read_bytes()
    (root / "cut.wav").write_bytes(data[:5000])
    write_wav(root / "r8k.wav", 4800, rate=8000)
    write_wav(root / "r44k.wav", 26460, rate=44100)
    write_wav(root / "stereo.wav", 9600, channels=2)
    write_pcm(root / "silence.pcm", 9600, silent=True)
    rows += [(uid, name) for uid, name in BROKEN.items()]
    rows += [("r8k", "r8k.wav"), ("r44k", "r44k.wav"), ("stereo", "stereo.wav"), ("silence", "silence.pcm")]
    graphemes, syllables = build_vocabularies([TEXT])
    graphemes.save(root / "vocab_grapheme.json")
    syllables.save(root / "vocab_syllable.json")
    return write_jsonl(
        root / "train.jsonl",
        [{"id": uid, "audio": name, "num_samples": 9600, "text": TEXT, "norm": TEXT} for uid, name in rows],
    )


@pytest.mark.parametrize("job", ["pretrain", "finetune"])
def test_training_runs_over_every_bad_audio_row(tmp_path, caplog, job):
    manifest = _corpus(tmp_path)
    if job == "pretrain":
        module, data = pretrainer(20), pretrain_data(manifest, shuffle=False)
    else:
        module, data = finetuner(20), finetune_data(manifest, shuffle=False)
    rec = StepRecorder()
    t = trainer(tmp_path, -1, [rec, NonFiniteGuard(max_consecutive=1)], max_epochs=1)  # any NaN step fails
    with caplog.at_level(logging.WARNING, logger="kwav2vec.data.loader"):
        t.fit(module, datamodule=data)
    # resampled, stereo and silent utterances trained; a batch whose every file failed was replaced by
    # a readable utterance (so some are seen twice), never dropped: every rank keeps its step count
    seen = {uid for ids in rec.ids for uid in ids}
    assert seen == {"good0", "good1", "good2", "good3", "r8k", "r44k", "stereo", "silence"}
    assert len(rec.steps) == t.num_training_batches
    (guard,) = [c for c in t.callbacks if isinstance(c, NonFiniteGuard)]
    assert all(math.isfinite(loss) for loss in rec.losses) and guard.skipped_total == 0
    # counted by reason (stand-in attempts that fail again are counted again)
    assert set(data.skipped_reasons) == set(BROKEN) and data.skipped >= len(BROKEN)
    for reason, name in BROKEN.items():
        assert any(
            str(tmp_path / name) in r.getMessage() and reason in r.getMessage() for r in caplog.records
        ), name


# ------------------------------------------------------------------ hand-written manifests
@pytest.mark.parametrize("row", ["too-short", "ctc-infeasible"])
def test_utterances_left_out_at_construction_are_named(tmp_path, caplog, row):
    if row == "too-short":
        manifest = audio_manifest(tmp_path, [9600, 300])
        build = lambda: AudioDataset(read_manifest(manifest), min_sample_size=0)  # noqa: E731
    else:
        graphemes, syllables = build_vocabularies([TEXT])
        manifest = audio_manifest(tmp_path, [9600, 4800], [TEXT, " ".join([TEXT] * 6)])
        build = lambda: LabeledAudioDataset(read_manifest(manifest), graphemes, syllables)  # noqa: E731
    with caplog.at_level(logging.WARNING, logger="kwav2vec.data.dataset"):
        ds = build()
    assert len(ds) == 1 and ds.filtered == {row: 1}
    assert "u001" in caplog.text, caplog.text


@pytest.mark.parametrize("norm", ["!!! ... ?", "これは日本語です"], ids=["punctuation", "japanese"])
def test_unnormalised_transcripts_in_a_manifest_are_caught(tmp_path, caplog, norm):
    graphemes, syllables = build_vocabularies([TEXT])
    manifest = audio_manifest(tmp_path, [16000, 16000], [TEXT, norm])
    with caplog.at_level(logging.WARNING, logger="kwav2vec.data"):
        try:
            ds = LabeledAudioDataset(read_manifest(manifest), graphemes, syllables)
        except ValueError as err:  # a clear error naming the utterance is fine too
            assert "u001" in str(err)
            return
    assert [e.id for e in ds.entries] == ["u000"] and sum(ds.filtered.values()) == 1
    assert "u001" in caplog.text
