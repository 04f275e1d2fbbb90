"""Speech preprocessing: resampling and the paper's spectrogram.

The paper (TensorFlow 2.4) used ``tf.signal.stft(x, frame_length=1200, frame_step=720,
fft_length=2046)`` on one second of 48 kHz speech: frames of 1200 samples (25 ms) every 720
samples, no centring or padding, a periodic Hann window, each frame zero-padded to 2046 points.
That gives 1 + (48000 - 1200) // 720 = 66 frames and 2046 / 2 + 1 = 1024 frequency bins.
``torch.stft`` frames differently (centred, n_fft-long windows), so we frame with ``unfold`` and
transform with ``torch.fft.rfft(n=2046)``.

The paper does not say whether the network saw magnitudes or log-magnitudes, nor whether each
sample was normalised.  Our default (``SpectrogramSettings()``) is the log power in decibels,
floored 80 dB below the sample's peak, then standardised per sample (zero mean, unit variance):
speech loudness varies by tens of dB between clinicians and microphones, and a log scale with
per-sample standardisation makes the voice branch insensitive to it.  ``scale="magnitude"`` and
``normalize=False`` give the plain magnitude of the paper's equation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Literal

import numpy as np

from ..core.paper import FFT_LENGTH, FRAME_LENGTH, FRAME_STEP, SAMPLE_RATE
from ..core.errors import ConfigError

# torch and scipy are imported in the functions that use them: the Slicer module imports this
# module (through data.procedure) before its Python requirements are installed, and
# ``import EUSVoiceLabelLib`` stays cheap.
if TYPE_CHECKING:
    import torch

TOP_DB = 80.0


@dataclass(frozen=True)
class SpectrogramSettings:
    """How the spectrogram is scaled before it reaches the network.

    Attributes:
        scale: "log" (power in dB, floored ``top_db`` below the peak) or "magnitude".
        normalize: standardise each spectrogram to zero mean and unit variance.
        top_db: dynamic range kept by the log scale.
    """

    scale: Literal["log", "magnitude"] = "log"
    normalize: bool = True
    top_db: float = TOP_DB

    def __post_init__(self) -> None:
        if self.scale not in ("log", "magnitude"):
            raise ConfigError(f"unknown spectrogram scale {self.scale!r}",
                              hint="use 'log' or 'magnitude'")
        if not isinstance(self.normalize, bool):
            raise ConfigError(f"spectrogram 'normalize' must be true or false, not "
                              f"{self.normalize!r}")
        top = self.top_db
        if isinstance(top, bool) or not isinstance(top, (int, float)) or \
                not 0 < top <= 1000:
            raise ConfigError(f"spectrogram top_db must be a number of dB in (0, 1000], not "
                              f"{top!r}")
        object.__setattr__(self, "top_db", float(top))

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "SpectrogramSettings":
        """Settings from JSON (a checkpoint, a cache key); ConfigError for a bad value."""
        if not isinstance(data, dict):
            raise ConfigError(f"spectrogram settings must be a JSON object, not {data!r}")
        return cls(scale=data.get("scale", "log"), normalize=data.get("normalize", True),
                   top_db=data.get("top_db", TOP_DB))


def resample(samples: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample a 1-D signal with a polyphase filter (``scipy.signal.resample_poly``)."""
    samples = np.asarray(samples, dtype=np.float32)
    if int(sr_in) == int(sr_out) or samples.size == 0:
        return samples.astype(np.float32, copy=False)
    from scipy.signal import resample_poly  # deferred: see the note at the imports

    ratio = Fraction(int(sr_out), int(sr_in)).limit_denominator(10_000)
    out = resample_poly(samples, ratio.numerator, ratio.denominator)
    return out.astype(np.float32, copy=False)


def fit_one_second(samples: np.ndarray, length: int = SAMPLE_RATE) -> np.ndarray:
    """Crop or zero-pad a signal to exactly ``length`` samples (the paper's 1 s)."""
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    if samples.size >= length:
        return samples[:length].copy()
    out = np.zeros(length, dtype=np.float32)
    out[:samples.size] = samples
    return out


def stft_magnitude_torch(waves: "torch.Tensor") -> "torch.Tensor":
    """Magnitude STFT of a batch of 1-s waves (B, 48000) -> (B, 1024, 66), on their device."""
    import torch  # deferred: see the note at the imports

    frames = waves.unfold(-1, FRAME_LENGTH, FRAME_STEP)  # (B, 66, 1200)
    window = torch.hann_window(FRAME_LENGTH, periodic=True, dtype=waves.dtype,
                               device=waves.device)
    spec = torch.fft.rfft(frames * window, n=FFT_LENGTH)  # (B, 66, 1024)
    return spec.abs().transpose(-1, -2).contiguous()


def scale_spectrogram_torch(mag: "torch.Tensor",
                            settings: SpectrogramSettings) -> "torch.Tensor":
    """Apply the settings' scaling to magnitudes (B, F, T)."""
    import torch  # deferred: see the note at the imports

    out = mag
    if settings.scale == "log":
        power_db = 10.0 * torch.log10(mag.square().clamp_min(1e-20))
        peak = power_db.amax(dim=(-2, -1), keepdim=True)
        out = torch.maximum(power_db, peak - settings.top_db)
    elif settings.scale != "magnitude":
        raise ValueError(f"unknown spectrogram scale {settings.scale!r}")
    if settings.normalize:
        mean = out.mean(dim=(-2, -1), keepdim=True)
        std = out.std(dim=(-2, -1), keepdim=True)
        out = (out - mean) / std.clamp_min(1e-6)
    return out


def power_db_context(waves: np.ndarray) -> np.ndarray:
    """Unscaled power spectrogram in dB (B, 1024, T) float16 of waves of any common length
    (B, L >= 1200): the paper's frames and transform, no floor, no standardisation.

    The training windows keep this of a stretch of audio around each onset so that speech
    augmentation (time shift, speed, noise, end) can cut and scale 1 s windows from it
    without the audio (:mod:`..train.augment`).  dB values fit float16 without overflow
    (power itself would not).
    """
    import torch  # deferred: see the note at the imports

    x = torch.from_numpy(np.ascontiguousarray(waves, dtype=np.float32))
    out = []
    with torch.no_grad():
        for i in range(0, len(x), 32):
            mag = stft_magnitude_torch(x[i:i + 32].double())
            out.append((10.0 * torch.log10(mag.square().clamp_min(1e-20))).half())
    if not out:
        return np.zeros((0, FFT_LENGTH // 2 + 1, 0), np.float16)
    return torch.cat(out).numpy()


def spectrogram(samples: np.ndarray, sample_rate: int = SAMPLE_RATE,
                settings: SpectrogramSettings | None = None) -> np.ndarray:
    """The paper's spectrogram of one second of speech.

    Args:
        samples: mono audio (any length; cropped or zero-padded to 1 s after resampling).
        sample_rate: rate of ``samples``; other rates are resampled to 48 kHz first.
        settings: scaling (default: log power, per-sample standardised; see the module doc).
            ``SpectrogramSettings(scale="magnitude", normalize=False)`` gives plain magnitudes.

    Returns:
        float32 array of shape (1024, 66): frequency bins x time frames.
    """
    import torch  # deferred: see the note at the imports

    settings = settings or SpectrogramSettings()
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(x)):
        raise ValueError("audio contains NaN or infinite samples")
    if sample_rate != SAMPLE_RATE:
        x = resample(x, sample_rate, SAMPLE_RATE)
    x = fit_one_second(x)
    with torch.no_grad():
        # float64 keeps the transform exact against the reference; the cost is negligible.
        mag = stft_magnitude_torch(torch.from_numpy(x.astype(np.float64))[None])
        out = scale_spectrogram_torch(mag, settings)[0]
    return out.numpy().astype(np.float32)


def spectrogram_batch(waves: np.ndarray, settings: SpectrogramSettings | None = None
                      ) -> np.ndarray:
    """Spectrograms of a batch of 1-s, 48 kHz waves (B, 48000) -> (B, 1024, 66) float32."""
    import torch  # deferred: see the note at the imports

    settings = settings or SpectrogramSettings()
    waves = np.asarray(waves, dtype=np.float32)
    if waves.ndim != 2 or waves.shape[1] != SAMPLE_RATE:
        raise ValueError(f"expected (B, {SAMPLE_RATE}) waves, got {waves.shape}")
    with torch.no_grad():
        mag = stft_magnitude_torch(torch.from_numpy(waves.astype(np.float64)))
        return scale_spectrogram_torch(mag, settings).numpy().astype(np.float32)
