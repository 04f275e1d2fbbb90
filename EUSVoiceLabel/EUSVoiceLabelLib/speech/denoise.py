"""The recogniser's front end: recordings become mono 16 kHz audio, raised when recorded
quietly, high-passed and cleaned of background noise (WebRTC's suppressor where the
``webrtc-noise-gain`` wheel exists, else a stationary Wiener gain)."""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Optional

import numpy as np
from scipy.signal import butter, istft, sosfiltfilt, stft

from ..core.errors import EUSVoiceLabelError
from ..data.audio import resample

try:  # Linux wheels only; elsewhere the Wiener suppressor (denoise) is used
    from webrtc_noise_gain import AudioProcessor
except ImportError:
    AudioProcessor = None

RATE = 16_000  # pocketsphinx's en-US model: everything in speech/ works at this rate


HIGHPASS_HZ = 150.0


def highpass(samples: np.ndarray, cutoff_hz: Optional[float] = None) -> np.ndarray:
    """Remove rumble and mains hum below the speech band (4th-order Butterworth, 16 kHz)."""
    x = np.asarray(samples, dtype=np.float32)
    if x.size < 64:
        return x
    sos = butter(4, cutoff_hz or HIGHPASS_HZ, "highpass", fs=RATE, output="sos")
    return sosfiltfilt(sos, x).astype(np.float32)


def denoise(samples: np.ndarray, *, n_fft: int = 512, hop: int = 160, block_s: float = 10.0,
            percentile: float = 20.0, over: float = 1.5, floor: float = 0.1) -> np.ndarray:
    """Suppress stationary background noise (hiss, hum, suction rumble) at 16 kHz.

    A Wiener-style spectral gain: the noise power per frequency is a low percentile of the frame
    powers in blocks of ``block_s`` (speech occupies a minority of frames and varies, the room
    noise does not), and each time-frequency bin keeps ``max(floor, 1 - over * noise / power)``
    of its amplitude.  The recogniser's model was trained on clean speech; this brings noisy
    procedure audio closer to it.
    """
    x = np.asarray(samples, dtype=np.float32)
    if x.size < n_fft * 4:
        return x
    _, _, spec = stft(x, nperseg=n_fft, noverlap=n_fft - hop, boundary="even", padded=True)
    power = spec.real ** 2 + spec.imag ** 2
    n_frames = power.shape[1]
    block = max(1, int(block_s * RATE / hop))
    gain = np.empty_like(power)
    for b0 in range(0, n_frames, block):
        # Estimate over a block at least `block` long (the last one borrows from before).
        lo = max(0, min(b0, n_frames - block))
        noise = np.percentile(power[:, lo:lo + block], percentile, axis=1, keepdims=True)
        p = power[:, b0:b0 + block]
        gain[:, b0:b0 + block] = np.maximum(floor, 1.0 - over * noise / np.maximum(p, 1e-20))
    _, y = istft(spec * np.sqrt(gain), nperseg=n_fft, noverlap=n_fft - hop, boundary=True)
    return y[:x.size].astype(np.float32)


WEBRTC_LEVEL = 3  # the strongest ("very high"); levels 1 and 2 gave lower F1 at 15 dB
NOISE_SUPPRESSORS = ("webrtc", "wiener")
SUPPRESSOR_ENV = "EUSVOICELABEL_NOISE_SUPPRESSOR"


def webrtc_suppress(samples: np.ndarray, level: int = WEBRTC_LEVEL) -> np.ndarray:
    """WebRTC's noise suppressor (the one in web browsers' audio processing) on 16 kHz audio.

    It follows noise that changes from frame to frame (beeps, suction), where :func:`denoise`
    assumes noise that stays put for seconds.  Needs the ``webrtc-noise-gain``
    package; the last partial 10 ms frame is returned silent.
    """
    x = np.asarray(samples, dtype=np.float32)
    step = RATE // 100
    n = x.size // step
    out = np.zeros(x.size, dtype=np.float32)
    if n == 0:
        return out
    pcm = (np.clip(x[:n * step], -1.0, 1.0) * 32767.0).astype(np.int16)
    processor = AudioProcessor(0, int(level))  # no automatic gain
    done = np.empty(n * step, dtype=np.int16)
    for i in range(n):
        frame = pcm[i * step:(i + 1) * step].tobytes()
        done[i * step:(i + 1) * step] = np.frombuffer(processor.Process10ms(frame).audio,
                                                      dtype=np.int16)
    out[:n * step] = done.astype(np.float32) / 32767.0
    return out


def noise_suppressor() -> str:
    """The noise suppressor detection uses: ``"webrtc"`` when the ``webrtc-noise-gain`` package
    is installed (wheels for Linux), else ``"wiener"`` (:func:`denoise`).

    The environment variable ``EUSVOICELABEL_NOISE_SUPPRESSOR`` chooses one explicitly, e.g. to
    reproduce on Linux what a macOS or Windows installation reports.
    """
    chosen = os.environ.get(SUPPRESSOR_ENV, "").strip().lower()
    if chosen:
        if chosen not in NOISE_SUPPRESSORS:
            raise EUSVoiceLabelError(
                f"{SUPPRESSOR_ENV}={chosen!r} is not a noise suppressor",
                hint=f"use one of {', '.join(NOISE_SUPPRESSORS)} or unset it")
        if chosen == "webrtc" and not _webrtc_installed():
            raise EUSVoiceLabelError(f"{SUPPRESSOR_ENV}=webrtc but webrtc-noise-gain is not "
                                     "installed", hint="pip install webrtc-noise-gain")
        return chosen
    return "webrtc" if _webrtc_installed() else "wiener"


@functools.lru_cache(maxsize=1)
def _webrtc_installed() -> bool:
    return importlib.util.find_spec("webrtc_noise_gain") is not None


def suppress_noise(samples: np.ndarray, method: Optional[str] = None) -> np.ndarray:
    """High-pass, then suppress background noise with ``method`` (default
    :func:`noise_suppressor`), on 16 kHz float audio."""
    method = method or noise_suppressor()
    x = highpass(samples)
    return webrtc_suppress(x) if method == "webrtc" else denoise(x)


def to_mono(audio: np.ndarray, finite: bool = True) -> np.ndarray:
    """Float32 mono samples; multi-channel input may be (n, channels) or (channels, n).
    ``finite``: NaN and infinite samples become 0 (a copy of the whole recording)."""
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1 if x.shape[0] >= x.shape[1] else 0)
    elif x.ndim != 1:
        raise EUSVoiceLabelError(f"audio must be 1-D or 2-D samples, not {x.ndim}-D")
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0) if finite else x


def to_pcm16(audio: np.ndarray, sample_rate: int, clean: bool = False,
             gain: float = 1.0) -> np.ndarray:
    """Mono int16 at 16 kHz from float audio of any rate and channel layout, times ``gain``
    (see :func:`level_gain`; ``clean``: with rumble and background noise suppressed, see
    :func:`suppress_noise`)."""
    if sample_rate <= 0:
        raise EUSVoiceLabelError(f"invalid sample rate {sample_rate}")
    x = resample(to_mono(audio), int(sample_rate), RATE)
    if gain != 1.0:
        x = x * np.float32(gain)
    if clean:
        x = suppress_noise(x)
    return (np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)


LEVEL_TARGET = 0.1    # quieter recordings are raised to this robust peak (-20 dBFS)
MAX_GAIN = 1000.0     # at most +60 dB


def level_gain(samples: np.ndarray) -> float:
    """The gain that raises a quiet recording's robust peak (99.9th percentile of the
    magnitude) to :data:`LEVEL_TARGET`; 1 for recordings already louder.

    A quietly recorded microphone otherwise reaches the recogniser with a few bits of 16-bit
    resolution (a test recording peaking at -57 dBFS gave no mention at all).  One gain for the
    whole recording, so a long silent stretch is not raised to speech level.
    """
    x = np.asarray(samples)
    if x.size == 0:
        return 1.0
    step = max(1, x.size // 2_000_000)  # a 2-million-sample subset is plenty for a percentile
    peak = float(np.percentile(np.abs(np.nan_to_num(x[::step], posinf=0.0, neginf=0.0)), 99.9))
    if not np.isfinite(peak) or peak <= 0.0:
        return 1.0
    return float(min(MAX_GAIN, max(1.0, LEVEL_TARGET / peak)))
