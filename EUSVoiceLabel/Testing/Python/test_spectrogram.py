"""The paper's spectrogram (data/audio.py; README "Preprocessing choices") against an independent scipy reference."""

import numpy as np
import pytest
import scipy.signal

from EUSVoiceLabelLib import spectrogram
from EUSVoiceLabelLib.data.audio import (SpectrogramSettings, fit_one_second, resample,
                                         spectrogram_batch)

RAW = SpectrogramSettings(scale="magnitude", normalize=False)


def scipy_reference(x: np.ndarray) -> np.ndarray:
    """TensorFlow-style STFT magnitude: 1200-sample periodic-Hann frames every 720 samples,
    no padding, 2046-point FFT."""
    win = scipy.signal.get_window("hann", 1200, fftbins=True)
    _, _, z = scipy.signal.stft(x.astype(np.float64), fs=48000, window=win, nperseg=1200,
                                noverlap=1200 - 720, nfft=2046, boundary=None, padded=False,
                                detrend=False, return_onesided=True, scaling="spectrum")
    return np.abs(z) * win.sum()  # undo scipy's 1/sum(window) scaling


@pytest.fixture
def speechlike():
    rng = np.random.default_rng(3)
    t = np.arange(48000) / 48000
    x = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    return (x + 0.05 * rng.standard_normal(48000)).astype(np.float32)


def test_shape_is_1024_by_66(speechlike):
    assert spectrogram(speechlike).shape == (1024, 66)
    assert spectrogram(speechlike).dtype == np.float32


def test_matches_scipy_reference(speechlike):
    ours = spectrogram(speechlike, settings=RAW)
    ref = scipy_reference(speechlike)
    assert ref.shape == (1024, 66)
    rel = np.abs(ours - ref).max() / np.abs(ref).max()
    assert rel < 1e-5


def test_tone_peaks_at_its_bin():
    t = np.arange(48000) / 48000
    f = 3000.0
    spec = spectrogram(np.sin(2 * np.pi * f * t), settings=RAW)
    peak_bin = int(np.argmax(spec.mean(axis=1)))
    assert abs(peak_bin * 48000 / 2046 - f) < 48000 / 2046


def test_short_input_is_zero_padded_and_long_cropped(speechlike):
    half = speechlike[:24000]
    spec = spectrogram(half, settings=RAW)
    ref = scipy_reference(fit_one_second(half))
    np.testing.assert_allclose(spec, ref, rtol=0, atol=1e-5 * ref.max())
    # Frames wholly in the zero padding are silent.
    assert spec[:, -10:].max() == 0.0
    longer = np.concatenate([speechlike, np.ones(10000, np.float32)])
    np.testing.assert_allclose(spectrogram(longer, settings=RAW),
                               spectrogram(speechlike, settings=RAW))


def test_other_rates_are_resampled_first(speechlike):
    x16 = resample(speechlike, 48000, 16000)
    spec = spectrogram(x16, sample_rate=16000, settings=RAW)
    ref = scipy_reference(fit_one_second(resample(x16, 16000, 48000)))
    np.testing.assert_allclose(spec, ref, rtol=0, atol=1e-5 * ref.max())
    # 44.1 kHz: the resampled wave is still 1 s long.
    x44 = resample(speechlike, 48000, 44100)
    assert abs(len(x44) - 44100) <= 1
    assert spectrogram(x44, 44100).shape == (1024, 66)


def test_default_scaling_is_log_and_standardised(speechlike):
    spec = spectrogram(speechlike)
    assert abs(spec.mean()) < 1e-4 and abs(spec.std() - 1) < 1e-3
    # Loudness does not change the normalised log spectrogram.
    np.testing.assert_allclose(spectrogram(speechlike * 0.01), spec, atol=1e-3)
    # The log scale keeps 80 dB below the peak.
    logspec = spectrogram(speechlike, settings=SpectrogramSettings(normalize=False))
    assert logspec.max() - logspec.min() <= 80.0 + 1e-3


def test_batch_equals_single(speechlike):
    batch = spectrogram_batch(np.stack([speechlike, speechlike[::-1].copy()]))
    np.testing.assert_allclose(batch[0], spectrogram(speechlike), atol=1e-5)
    np.testing.assert_allclose(batch[1], spectrogram(speechlike[::-1].copy()), atol=1e-5)


def test_nan_audio_is_refused():
    x = np.zeros(48000, np.float32)
    x[5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        spectrogram(x)
