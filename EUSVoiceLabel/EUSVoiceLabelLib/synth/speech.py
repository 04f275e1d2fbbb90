"""Synthetic clinician speech: TTS speakers, landmark phrases with exact word timings, noise.

Speech comes from the offline TTS engines installed by ``scripts/install.sh``: flite (voices
kal, kal16, awb, rms, slt), festival (kal_diphone, cmu_us_slt_arctic_hts, via one batch process
per voice) and, for a minority of speakers, espeak-ng.  Speakers differ by engine, voice,
speaking rate and pitch.

Exact landmark timings: a mention phrase is synthesised as separate pieces (carrier prefix,
landmark words, suffix), each trimmed of silence and joined with short pauses, so the onset and
end of the landmark words are known to the sample.  The price is slightly choppier prosody at
the joins than a single utterance would have.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
from scipy.io import wavfile
from scipy.signal import butter, fftconvolve, resample_poly, sosfilt

from ..core.errors import ConfigError
from ..core.paper import SAMPLE_RATE


@dataclass(frozen=True)
class Speaker:
    """One synthetic voice: engine, voice name, speaking-rate stretch (>1 slower) and pitch."""

    name: str
    engine: str          # "flite" | "festival" | "espeak"
    voice: str
    stretch: float = 1.0
    pitch: Optional[float] = None   # flite: mean F0 in Hz; espeak: 0-99; festival: unused
    pause_s: float = 0.09           # typical pause between phrase pieces
    level_db: float = 0.0           # speaking loudness relative to the others

    def to_json(self) -> dict:
        return {"name": self.name, "engine": self.engine, "voice": self.voice,
                "stretch": self.stretch, "pitch": self.pitch}


# Mostly flite / festival voices (more natural for keyword spotters); espeak-ng for a minority.
_SPEAKERS: tuple[Speaker, ...] = (
    Speaker("flite_slt", "flite", "slt", 1.0, None, 0.08, 0.0),
    Speaker("flite_slt_quick", "flite", "slt", 0.88, 205.0, 0.06, -2.0),
    Speaker("flite_awb", "flite", "awb", 1.05, None, 0.10, 1.0),
    Speaker("flite_awb_slow", "flite", "awb", 1.18, 92.0, 0.13, -1.0),
    Speaker("flite_rms", "flite", "rms", 1.0, None, 0.09, 0.0),
    Speaker("flite_rms_quick", "flite", "rms", 0.9, 120.0, 0.07, 2.0),
    Speaker("flite_kal16", "flite", "kal16", 1.02, 112.0, 0.10, -1.5),
    Speaker("festival_slt_hts", "festival", "cmu_us_slt_arctic_hts", 1.0, None, 0.09, 0.5),
    Speaker("festival_kal", "festival", "kal_diphone", 1.08, None, 0.11, -0.5),
    Speaker("espeak_us_m", "espeak", "en-us+m3", 0.95, 42, 0.08, -1.0),
    Speaker("espeak_gb_f", "espeak", "en-gb+f2", 1.05, 58, 0.10, 0.0),
)
# How often each speaker leads a patient (espeak voices rarely).
_SPEAKER_WEIGHTS = np.array([1.2, 0.9, 1.2, 0.9, 1.2, 0.9, 0.8, 1.1, 0.9, 0.35, 0.35])


def list_speakers() -> list[Speaker]:
    """All synthetic speakers, in a fixed order (index = stable speaker id)."""
    return list(_SPEAKERS)


def get_speaker(speaker: "Speaker | str") -> Speaker:
    """Look a speaker up by name (or return it unchanged)."""
    if isinstance(speaker, Speaker):
        return speaker
    for s in _SPEAKERS:
        if s.name == speaker:
            return s
    raise ConfigError(f"unknown synthetic speaker {speaker!r}",
                      hint="choose one of " + ", ".join(s.name for s in _SPEAKERS))


def speaker_weights() -> np.ndarray:
    """Relative probability of each speaker in :func:`list_speakers` leading a procedure."""
    return _SPEAKER_WEIGHTS / _SPEAKER_WEIGHTS.sum()


def check_engines(speakers: Iterable[Speaker] = _SPEAKERS) -> None:
    """Raise ConfigError naming the missing TTS program (installed by scripts/install.sh)."""
    needed = {"flite": "flite", "festival": "festival", "espeak": "espeak-ng"}
    for eng in sorted({s.engine for s in speakers}):
        if shutil.which(needed[eng]) is None:
            raise ConfigError(f"the TTS program '{needed[eng]}' is not installed",
                              hint="run scripts/install.sh (apt packages flite, festival, "
                                   "festvox-kallpc16k, festvox-us-slt-hts, espeak-ng)")


# --------------------------------------------------------------------------- raw synthesis
def _spoken_form(text: str) -> str:
    """What the TTS engine is given: acronyms spelled letter by letter ("PD" -> "P D")."""
    out = []
    for w in text.split():
        core = w.strip(",.?!")
        if 2 <= len(core) <= 4 and core.isupper() and core.isalpha():
            w = " ".join(core) + w[len(core):]
        out.append(w)
    return " ".join(out)


def _run(cmd: list[str], **kw) -> None:
    try:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
    except FileNotFoundError:
        check_engines()
        raise
    except subprocess.CalledProcessError as exc:
        raise ConfigError(f"TTS command failed: {' '.join(cmd[:3])} ...: "
                          f"{exc.stderr.decode(errors='replace').strip()[:200]}") from None


_RAW_CACHE: dict[tuple[str, str], np.ndarray] = {}


def _to_48k(path: Path, sample_rate: int) -> np.ndarray:
    sr, x = wavfile.read(path)
    x = x.astype(np.float32) / 32768.0 if x.dtype == np.int16 else x.astype(np.float32)
    if x.ndim > 1:
        x = x.mean(axis=1)
    g = math.gcd(int(sr), sample_rate)
    if sr != sample_rate:
        x = resample_poly(x, sample_rate // g, int(sr) // g).astype(np.float32)
    return x - np.float32(x.mean()) if x.size else x


def synthesize_many(items: Sequence[tuple[str, "Speaker | str"]]) -> None:
    """Synthesise many (text, speaker) pairs into the in-process cache.

    festival starts slowly (~0.4 s), so all its texts for one voice go through one batch run.
    """
    todo: dict[Speaker, list[str]] = {}
    for text, spk in items:
        spk = get_speaker(spk)
        if (spk.name, text) not in _RAW_CACHE and text not in todo.setdefault(spk, []):
            todo[spk].append(text)
    with tempfile.TemporaryDirectory(prefix="eusvl_tts_") as tmp:
        tmpd = Path(tmp)
        jobs: list[list[str]] = []
        outputs: list[tuple[Speaker, str, Path]] = []
        for spk, texts in todo.items():
            if not texts:
                continue
            paths = [tmpd / f"{spk.name}_{i}.wav" for i in range(len(texts))]
            outputs.extend((spk, t, p) for t, p in zip(texts, paths))
            if spk.engine == "festival":
                lines = [f"(voice_{spk.voice})",
                         f"(Parameter.set 'Duration_Stretch {spk.stretch})"]
                for text, p in zip(texts, paths):
                    t = _spoken_form(text).replace("\\", " ").replace('"', " ")
                    lines.append(f'(set! u (Utterance Text "{t}"))(utt.synth u)'
                                 f'(utt.save.wave u "{p}" \'riff)')
                script = tmpd / f"{spk.name}.scm"
                script.write_text("\n".join(lines) + "\n")
                jobs.append(["festival", "-b", str(script)])
                continue
            for text, p in zip(texts, paths):
                t = _spoken_form(text)
                if spk.engine == "flite":
                    cmd = ["flite", "-voice", spk.voice,
                           "--setf", f"duration_stretch={spk.stretch}"]
                    if spk.pitch is not None:
                        cmd += ["--setf", f"int_f0_target_mean={spk.pitch}"]
                    cmd += ["-t", t, "-o", str(p)]
                elif spk.engine == "espeak":
                    cmd = ["espeak-ng", "-v", spk.voice, "-s", str(int(165 / spk.stretch)),
                           "-p", str(int(spk.pitch or 50)), "-w", str(p), t]
                else:
                    raise ConfigError(f"unknown TTS engine {spk.engine!r}")
                jobs.append(cmd)
        # The engines are separate processes: run a few at once (output files fix the order).
        if len(jobs) > 1:
            with ThreadPoolExecutor(max_workers=min(4, len(jobs))) as pool:
                list(pool.map(_run, jobs))
        elif jobs:
            _run(jobs[0])
        for spk, text, p in outputs:
            _RAW_CACHE[(spk.name, text)] = _to_48k(p, SAMPLE_RATE)


def trim_silence(x: np.ndarray, sample_rate: int = SAMPLE_RATE, rel_db: float = -38.0,
                 floor_db: float = 10.0, margin_s: float = 0.005) -> np.ndarray:
    """Cut leading/trailing silence: keep from the first to the last 5 ms frame whose RMS is
    within ``rel_db`` of the loudest frame and ``floor_db`` above the clip's background level
    (plus a tiny margin).

    The background term matters for engines that pad their output with low-level noise rather
    than digital silence (some flite and festival voices sit 34-40 dB below their peak): a
    peak-relative rule alone keeps that noise, and the labelled word onsets come out early.
    """
    hop = max(1, int(0.005 * sample_rate))
    n = len(x) // hop
    if n == 0:
        return x
    rms = np.sqrt(np.mean(x[:n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)
    background = np.percentile(rms, 10)
    level = max(rms.max() * 10 ** (rel_db / 20), background * 10 ** (floor_db / 20))
    on = np.nonzero(rms > level)[0]
    if on.size == 0:
        return x[:0]
    m = int(margin_s * sample_rate)
    return x[max(0, on[0] * hop - m): min(len(x), (on[-1] + 1) * hop + m)]


def speak(text: str, speaker: "Speaker | str", sample_rate: int = SAMPLE_RATE,
          trim: bool = True) -> np.ndarray:
    """Speak ``text`` with a synthetic speaker; float32 mono at ``sample_rate``.

    Leading and trailing silence is trimmed (``trim``), so sample 0 is the speech onset.  The
    level is the engine's (peaks around 0.3-0.7).
    """
    spk = get_speaker(speaker)
    key = (spk.name, text)
    if key not in _RAW_CACHE:
        synthesize_many([(text, spk)])
    x = _RAW_CACHE[key]
    if trim:
        x = trim_silence(x)
    if sample_rate != SAMPLE_RATE:
        g = math.gcd(sample_rate, SAMPLE_RATE)
        x = resample_poly(x, sample_rate // g, SAMPLE_RATE // g)
    return np.asarray(x, dtype=np.float32).copy()


@dataclass
class SpokenPhrase:
    """A synthesised phrase and where its landmark words lie in it (seconds from its start)."""

    audio: np.ndarray
    words_start_s: float
    words_end_s: float
    text: str


def speak_phrase(prefix: str, words: str, suffix: str, speaker: "Speaker | str",
                 rng: Optional[np.random.Generator] = None,
                 sample_rate: int = SAMPLE_RATE) -> SpokenPhrase:
    """Speak ``prefix + words + suffix`` as three trimmed pieces joined by short pauses.

    Returns the audio and the exact onset/end of ``words`` inside it.  Empty prefix or suffix
    are skipped.
    """
    spk = get_speaker(speaker)
    rng = rng if rng is not None else np.random.default_rng(0)
    synthesize_many([(t, spk) for t in (prefix, words, suffix) if t])
    parts: list[np.ndarray] = []
    pos = 0
    start = end = 0
    for kind, text in (("pre", prefix), ("words", words), ("suf", suffix)):
        if not text:
            continue
        if parts:
            pause = int(sample_rate * spk.pause_s * rng.uniform(0.6, 1.5))
            parts.append(np.zeros(pause, np.float32))
            pos += pause
        clip = speak(text, spk, sample_rate)
        if kind == "words":
            start, end = pos, pos + len(clip)
        parts.append(clip)
        pos += len(clip)
    audio = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    full = " ".join(t for t in (prefix, words, suffix) if t)
    return SpokenPhrase(audio, start / sample_rate, end / sample_rate, full)


def speak_words(words: Sequence[str], speaker: "Speaker | str", sample_rate: int = 16000,
                duration_s: float = 1.0, rng: Optional[np.random.Generator] = None,
                jitter: bool = True) -> np.ndarray:
    """One clip of ``duration_s`` per spoken word or short phrase: (len(words), n) float32.

    Each trimmed utterance is placed at a random offset (centred when ``jitter`` is False) and
    peak-normalised to 0.5; longer utterances are cut with a short fade.  For keyword-model
    pretraining (spoken-command style data) and mention-detector tests.
    """
    spk = get_speaker(speaker)
    rng = rng if rng is not None else np.random.default_rng(0)
    synthesize_many([(w, spk) for w in words])
    n = int(round(duration_s * sample_rate))
    out = np.zeros((len(words), n), np.float32)
    fade = max(1, int(0.02 * sample_rate))
    for i, w in enumerate(words):
        clip = speak(w, spk, sample_rate)
        if len(clip) > n:
            clip = clip[:n].copy()
            clip[-fade:] *= np.linspace(1, 0, fade, dtype=np.float32)
        free = n - len(clip)
        off = int(rng.integers(0, free + 1)) if jitter else free // 2
        peak = float(np.abs(clip).max()) if clip.size else 0.0
        out[i, off:off + len(clip)] = clip * (0.5 / peak if peak > 0 else 1.0)
    return out


# --------------------------------------------------------------------------- room noise
def room_noise(n: int, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE,
               mains_hz: float = 50.0, beeps: bool = True) -> tuple[np.ndarray, list[float]]:
    """Endoscopy-room background: hiss, ventilation rumble, mains hum, monitor beeps.

    Returns unit-RMS noise and the onset times of the beeps (seconds).
    """
    t = np.arange(n, dtype=np.float64) / sample_rate
    hiss = rng.standard_normal(n)
    sos = butter(2, 3000, "lowpass", fs=sample_rate, output="sos")
    hiss = 0.6 * hiss + 0.8 * sosfilt(sos, hiss)                  # tilted ("pinkish") hiss
    sos_r = butter(2, 250, "lowpass", fs=sample_rate, output="sos")
    rumble = sosfilt(sos_r, rng.standard_normal(n)) * 4.0         # ventilation / pumps
    hum = np.zeros(n)
    for k, a in ((1, 1.0), (2, 0.5), (3, 0.35), (5, 0.15)):
        hum += a * np.sin(2 * np.pi * mains_hz * k * t + rng.uniform(0, 2 * np.pi))
    noise = hiss / hiss.std() + 0.7 * rumble / (rumble.std() + 1e-12) + \
        rng.uniform(0.2, 0.8) * hum
    beep_times: list[float] = []
    if beeps and n > sample_rate:
        period = rng.uniform(0.8, 2.5)                               # pulse-oximeter like
        freq = rng.uniform(700, 1200)
        amp = rng.uniform(1.0, 2.5)
        blen = int(0.12 * sample_rate)
        env = np.sin(np.linspace(0, np.pi, blen)) ** 0.3
        tone = amp * env * np.sin(2 * np.pi * freq * np.arange(blen) / sample_rate)
        tt = rng.uniform(0, period)
        while tt * sample_rate + blen < n:
            i = int(tt * sample_rate)
            noise[i:i + blen] += tone
            beep_times.append(round(tt, 3))
            tt += period * rng.uniform(0.9, 1.1)
    noise = noise / (noise.std() + 1e-12)
    return noise.astype(np.float32), beep_times


def room_reverb(x: np.ndarray, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE,
                rt60_s: float = 0.3, wet: float = 0.2) -> np.ndarray:
    """A little room reverberation (exponentially decaying noise impulse response)."""
    n = int(rt60_s * sample_rate)
    ir = rng.standard_normal(n) * np.exp(-6.9 * np.arange(n) / n)
    ir /= np.sqrt(np.sum(ir ** 2))
    wet_sig = fftconvolve(x, ir)[:len(x)]
    return ((1 - wet) * x + wet * wet_sig).astype(np.float32)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float,
               active: Optional[np.ndarray] = None) -> np.ndarray:
    """speech + noise scaled so that active-speech power / noise power = ``snr_db``."""
    sel = speech[active] if active is not None and active.any() else speech
    ps = float(np.mean(sel.astype(np.float64) ** 2)) + 1e-20
    pn = float(np.mean(noise.astype(np.float64) ** 2)) + 1e-20
    scale = math.sqrt(ps / (10 ** (snr_db / 10)) / pn)
    return (speech + scale * noise).astype(np.float32)
