"""kwav2vec.data.audio: formats, resampling, downmix, and the audio rows of the bad-input matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_data_utils import SR, tone, write_flac, write_pcm, write_wav

from kwav2vec.data.audio import AudioError, is_silent, load_audio, load_audio_with_info


def test_wav_flac_pcm_read_as_mono_float32_at_16k(tmp_path):
    ref = torch.from_numpy(tone(8000, seed=3))
    for path in (write_wav(tmp_path / "a.wav", 8000, seed=3, subtype="FLOAT"),
                 write_flac(tmp_path / "a.flac", 8000, seed=3),
                 write_pcm(tmp_path / "a.pcm", 8000, seed=3)):
        wav = load_audio(path)
        assert wav.dtype == torch.float32 and wav.shape == (8000,), path
        torch.testing.assert_close(wav, ref, atol=2e-4, rtol=0)  # 16-bit quantisation for FLAC/PCM


def test_pcm_is_little_endian_16_bit(tmp_path):
    path = tmp_path / "x.pcm"
    np.array([0, 16384, -32768, 32767], dtype="<i2").tofile(path)
    torch.testing.assert_close(load_audio(path), torch.tensor([0.0, 0.5, -1.0, 32767 / 32768]))


@pytest.mark.parametrize("rate", [8000, 44100])
def test_other_rates_are_resampled_to_16k(tmp_path, rate):
    path = write_wav(tmp_path / f"r{rate}.wav", rate // 2, rate=rate)  # half a second
    wav, info = load_audio_with_info(path)
    assert info.sample_rate == rate and info.frames == rate // 2
    assert abs(len(wav) - SR // 2) <= 1
    # A 220 Hz tone stays a 220 Hz tone: the spectrum peak moves with the right rate.
    spectrum = torch.fft.rfft(wav[:8000]).abs()
    assert abs(int(spectrum.argmax()) * SR / 8000 - 220) <= 2


def test_stereo_is_averaged_to_mono(tmp_path):
    path = write_wav(tmp_path / "st.wav", 4000, channels=2, subtype="FLOAT")
    wav, info = load_audio_with_info(path)
    x = tone(4000, channels=2)
    assert info.channels == 2 and wav.shape == (4000,)
    torch.testing.assert_close(wav, torch.from_numpy(x.mean(axis=1)))


def _expect(path, reason):
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert err.value.reason == reason
    assert str(path) in str(err.value)  # the message names the file


def test_missing_file(tmp_path):
    _expect(tmp_path / "nope.wav", "missing")


def test_zero_byte_files(tmp_path):
    for name in ("empty.wav", "empty.pcm", "empty.flac"):
        (tmp_path / name).write_bytes(b"")
        _expect(tmp_path / name, "empty")


def test_truncated_wav_is_detected(tmp_path):
    # libsndfile quietly returns the frames that are there; the RIFF header says how many should be.
    path = write_wav(tmp_path / "t.wav", 16000)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect(path, "truncated")
    # A header cut before the data chunk is unreadable.
    path.write_bytes(data[:30])
    _expect(path, "unreadable")


def test_odd_length_pcm_is_truncated(tmp_path):
    path = write_pcm(tmp_path / "odd.pcm", 100)
    path.write_bytes(path.read_bytes() + b"\x01")
    _expect(path, "truncated")


def test_non_audio_with_audio_extension(tmp_path):
    for name in ("notes.wav", "notes.flac", "notes.ogg"):
        (tmp_path / name).write_text("this is a transcript, not audio\n")
        _expect(tmp_path / name, "unreadable")


def test_silence_is_detected(tmp_path):
    silent = load_audio(write_pcm(tmp_path / "s.pcm", 4000, silent=True))
    assert is_silent(silent) and not is_silent(load_audio(write_pcm(tmp_path / "t.pcm", 4000)))
