"""Training-time augmentation of the speech and the frames of a window.

A new patient differs from the training patients in voice, speaking rate, microphone, room
noise and probe handling, and a paper-scale cohort holds only ~130 training windows: without
augmentation the network memorises its training patients (95-100 % training accuracy, about
half that on a held-out patient).  The transforms are the field's standard ones:

Speech (on the spectrogram; :class:`VoiceAugment`): time shift of the onset, speed (time axis
resampled about the onset), the end of the spoken name moved or unknown (then the whole second
is kept, as for mentions without an end), additive noise of a random spectral tilt at a random
SNR, vocal-tract length perturbation (frequency axis warped) and SpecAugment's frequency and
time masks.  They are cut from a stretch of power spectrogram around the onset that the window
cache keeps (:data:`..data.dataset.CONTEXT_LEAD_FRAMES` frames before it), so no audio is
decoded or transformed during training; without augmentation the cut reproduces the window's
own spectrogram.

Frames (:class:`ImageAugment`): frame-order jitter, one small rotation / scale / shift per
window, intensity gain and gamma, multiplicative speckle-like noise.

Every draw comes from a generator seeded per (seed, epoch, batch) (:func:`batch_generator`), so a
resumed run sees the same augmented batches as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
from torch.nn import functional as F

from ..core.errors import ConfigError
from ..core.paper import FRAME_STEP, N_FRAMES, SAMPLE_RATE
from ..data.audio import SpectrogramSettings, scale_spectrogram_torch
from ..data.dataset import CONTEXT_FRAMES, CONTEXT_LEAD_FRAMES


@dataclass(frozen=True)
class VoiceAugment:
    """Speech augmentation settings (fractions, seconds, dB; 0 turns a transform off).

    Attributes:
        speed: speaking rate drawn from 1 +- speed.
        shift_frames: onset moved by up to this many spectrogram frames (15 ms each).
        p_no_end: probability that the end of the name is treated as unknown (whole second).
        end_jitter_s: the end moved by a draw from this (low, high) range in seconds.
        p_noise: probability of additive noise; its SNR is drawn from ``snr_db``.
        vtlp: frequency axis warped by a factor drawn from 1 +- vtlp.
        freq_masks / freq_mask_bins: number and maximum width of frequency masks.
        time_masks / time_mask_frames: number and maximum width of time masks.
    """

    speed: float = 0.1
    shift_frames: int = 3
    p_no_end: float = 0.25
    end_jitter_s: tuple[float, float] = (-0.04, 0.12)
    p_noise: float = 0.5
    snr_db: tuple[float, float] = (0.0, 25.0)
    vtlp: float = 0.1
    freq_masks: int = 2
    freq_mask_bins: int = 80
    time_masks: int = 2
    time_mask_frames: int = 8

    def __post_init__(self) -> None:
        if not 0 <= self.speed < 0.5 or not 0 <= self.vtlp < 0.5:
            raise ConfigError("voice augmentation: speed and vtlp must lie in [0, 0.5)")
        if not 0 <= self.shift_frames <= (CONTEXT_FRAMES - N_FRAMES) // 2:
            raise ConfigError(f"voice augmentation: shift_frames must lie in [0, "
                              f"{(CONTEXT_FRAMES - N_FRAMES) // 2}]")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ImageAugment:
    """Frame augmentation settings (0 turns a transform off).

    Attributes:
        p_frame_jitter: probability that each frame of a window is swapped with a neighbour.
        rotate_deg / scale / shift: one affine transform per window (degrees, fraction of the
            size, fraction of the half-size).
        gain / gamma: intensity scaled by exp(+-gain) and raised to exp(+-gamma).
        speckle: standard deviation of the log of a multiplicative noise per pixel.
    """

    p_frame_jitter: float = 0.5
    rotate_deg: float = 8.0
    scale: float = 0.08
    shift: float = 0.08
    gain: float = 0.3
    gamma: float = 0.3
    speckle: float = 0.15

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def batch_generator(seed: int, epoch: int, batch: int) -> torch.Generator:
    """The generator of one batch's augmentation draws (independent of earlier batches)."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + epoch * 10_007 + batch)
                                         % (2 ** 63 - 1))


def _uniform(lo: float, hi: float, n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.empty(n).uniform_(lo, hi, generator=gen)


# --------------------------------------------------------------------------- speech
def voice_windows(context_db: torch.Tensor, ends_s: torch.Tensor,
                  settings: SpectrogramSettings, aug: Optional[VoiceAugment] = None,
                  gen: Optional[torch.Generator] = None) -> torch.Tensor:
    """Network voice inputs (B, 1024, 66) cut from speech contexts.

    Args:
        context_db: (B, 1024, CONTEXT_FRAMES) power in dB (float16 or float32); column
            ``CONTEXT_LEAD_FRAMES`` starts at the onset.
        ends_s: (B,) end of the spoken name after the onset in seconds (NaN: unknown).
        settings: the spectrogram scaling the network was built for.
        aug: augmentation (None: the plain window, as the cache's spectrogram).
        gen: the draws' generator (required with ``aug``).
    """
    device = context_db.device
    power = torch.pow(10.0, context_db.float().cpu() / 10.0)
    b, n_bins, n_ctx = power.shape
    ends = torch.nan_to_num(ends_s.float().cpu(), nan=1.0).clamp(0.05, 1.0)
    shift = torch.zeros(b, dtype=torch.long)
    if aug is not None:
        if gen is None:
            raise ValueError("augmentation needs a generator")
        if aug.speed > 0:
            rate = _uniform(1 - aug.speed, 1 + aug.speed, b, gen)
            power = _resample_time(power, rate)
            ends = ends / rate
        if aug.shift_frames:
            shift = torch.randint(-aug.shift_frames, aug.shift_frames + 1, (b,), generator=gen)
        no_end = torch.rand(b, generator=gen) < aug.p_no_end
        moved = (ends + _uniform(*aug.end_jitter_s, b, gen)).clamp(0.05, 1.0)
        ends = torch.where(no_end, torch.ones(b), moved)
    cols = (CONTEXT_LEAD_FRAMES + shift)[:, None] + torch.arange(N_FRAMES)[None]
    cols = cols.clamp(0, n_ctx - 1)
    win = torch.gather(power, 2, cols[:, None, :].expand(-1, n_bins, -1))
    # Frames that start after the end of the name are silence, as in the zero-padded window.
    starts = (torch.arange(N_FRAMES)[None].float() + shift[:, None]) * FRAME_STEP / SAMPLE_RATE
    win = win * (starts < ends[:, None]).float()[:, None, :]
    if aug is not None:
        win = _add_noise(win, aug, gen)
        if aug.vtlp > 0:
            win = _warp_frequency(win, _uniform(1 - aug.vtlp, 1 + aug.vtlp, b, gen))
    out = scale_spectrogram_torch(win.sqrt(), settings)  # the windows' own scaling
    if aug is not None:
        out = _mask(out, 1, aug.freq_masks, aug.freq_mask_bins, gen)
        out = _mask(out, 2, aug.time_masks, aug.time_mask_frames, gen)
    return out.to(device)


def _resample_time(power: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
    """Speak ``rate`` times faster: the time axis resampled about the onset column."""
    b, n_bins, n_ctx = power.shape
    src = CONTEXT_LEAD_FRAMES + (torch.arange(n_ctx).float()[None] - CONTEXT_LEAD_FRAMES) \
        * rate[:, None]
    gx = src / (n_ctx - 1) * 2 - 1
    gy = torch.linspace(-1, 1, n_bins)
    grid = torch.stack([gx[:, None, :].expand(-1, n_bins, -1),
                        gy[None, :, None].expand(b, -1, n_ctx)], dim=3)
    return F.grid_sample(power[:, None], grid, mode="bilinear", padding_mode="border",
                         align_corners=True)[:, 0]


def _add_noise(win: torch.Tensor, aug: VoiceAugment, gen: torch.Generator) -> torch.Tensor:
    """Noise of a random spectral tilt (exponentially distributed power per bin and frame, as
    the periodogram of Gaussian noise) at an SNR drawn per window."""
    b, n_bins, n_t = win.shape
    has = (torch.rand(b, generator=gen) < aug.p_noise).float()
    snr = _uniform(*aug.snr_db, b, gen)
    tilt = _uniform(-6.0, 1.5, b, gen)  # log-gain slope over the band: mostly low-heavy noise
    f = torch.linspace(0, 1, n_bins)
    shape = torch.exp(tilt[:, None] * f[None])
    shape = shape / shape.mean(1, keepdim=True)
    noise = shape[:, :, None] * torch.empty_like(win).exponential_(generator=gen)
    level = win.mean(dim=(1, 2)) / 10 ** (snr / 10)
    return win + (has * level)[:, None, None] * noise


def _warp_frequency(win: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Vocal tract length perturbation: bin f takes the value of bin f / factor."""
    b, n_bins, n_t = win.shape
    src = (torch.arange(n_bins).float()[None] / factor[:, None]).clamp(0, n_bins - 1)
    i0 = src.floor().long()
    i1 = (i0 + 1).clamp(max=n_bins - 1)
    frac = (src - i0)[:, :, None]
    return torch.gather(win, 1, i0[:, :, None].expand(-1, -1, n_t)) * (1 - frac) + \
        torch.gather(win, 1, i1[:, :, None].expand(-1, -1, n_t)) * frac


def _mask(x: torch.Tensor, dim: int, count: int, width: int, gen: torch.Generator
          ) -> torch.Tensor:
    """SpecAugment: ``count`` bands of up to ``width`` along ``dim`` (1 frequency, 2 time) set
    to 0 (the mean of a standardised spectrogram)."""
    b, size = x.shape[0], x.shape[dim]
    for _ in range(count):
        w = torch.randint(0, min(width, size) + 1, (b,), generator=gen)
        start = (torch.rand(b, generator=gen) * (size - w + 1)).long()
        pos = torch.arange(size)[None]
        band = (pos >= start[:, None]) & (pos < (start + w)[:, None])
        x = x.masked_fill(band[:, :, None] if dim == 1 else band[:, None, :], 0.0)
    return x


# --------------------------------------------------------------------------- frames
def augment_images(img: torch.Tensor, aug: ImageAugment, gen: torch.Generator) -> torch.Tensor:
    """Augmented copies of frames (B, F, H, W) in [0, 1], on their device."""
    device = img.device
    x = img.float().cpu()
    b, n_frames, h, w = x.shape
    if aug.p_frame_jitter > 0 and n_frames > 1:
        jitter = torch.randint(-1, 2, (b, n_frames), generator=gen)
        on = (torch.rand(b, 1, generator=gen) < aug.p_frame_jitter).long()
        order = (torch.arange(n_frames)[None] + jitter * on).clamp(0, n_frames - 1)
        x = torch.gather(x, 1, order[:, :, None, None].expand(-1, -1, h, w))
    if aug.rotate_deg or aug.scale or aug.shift:
        angle = _uniform(-1, 1, b, gen) * math.radians(aug.rotate_deg)
        zoom = 1 + _uniform(-1, 1, b, gen) * aug.scale
        tx, ty = _uniform(-1, 1, b, gen) * aug.shift, _uniform(-1, 1, b, gen) * aug.shift
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([torch.stack([cos, -sin * h / w, tx], 1),
                             torch.stack([sin * w / h, cos, ty], 1)], 1)
        grid = F.affine_grid(theta, (b, n_frames, h, w), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    gain = torch.exp(_uniform(-1, 1, b, gen) * aug.gain)[:, None, None, None]
    gamma = torch.exp(_uniform(-1, 1, b, gen) * aug.gamma)[:, None, None, None]
    x = x.clamp(0, 1).pow(gamma) * gain
    if aug.speckle > 0:
        x = x * torch.exp(torch.randn(x.shape, generator=gen) * aug.speckle)
    return x.clamp(0, 1).to(device)


__all__ = ["VoiceAugment", "ImageAugment", "voice_windows", "augment_images",
           "batch_generator"]
