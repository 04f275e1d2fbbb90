"""A voice branch that has heard the label names before it sees a cohort.

A paper-sized cohort holds ~130 training windows spoken by a handful of clinicians; a voice
branch trained from scratch on them learns those voices, not the words (0.55-0.59 leave-one-
patient-out accuracy in our measurements, docs/results.md).  Before a cohort is used, this module
has the label vocabulary itself (every label's id, name and synonyms, from the cohort's
``labels.json``) spoken by many offline voices (flite, festival and espeak-ng at several rates,
pitches and accents), inside short carrier phrases ("this is the ...", "... there"), with room
reverberation and room noise, and trains the voice-only network on them with the training-time
speech augmentation (:mod:`.augment`).  Its voice branch (and head) then initialise the voice
branch of the cohort's network (``TrainConfig.voice_init == "vocabulary"``).

The result depends only on the vocabulary, the network width and the spectrogram settings, so
it is computed once and kept in the window cache's folder
(``<cache>/vocabulary-voice/<key>.pt``; see :func:`..data.dataset.default_cache_root`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from ..core.errors import CheckpointError, ConfigError
from ..core.paper import FRAME_STEP, SAMPLE_RATE
from ..core.progress import ProgressLike, as_progress
from ..data.audio import SpectrogramSettings, power_db_context
from ..data.dataset import CONTEXT_LEAD_FRAMES, CONTEXT_SAMPLES, default_cache_root
from ..data.vocabulary import LabelSet
from ..nn.devices import seed_everything, select_device
from ..nn.network import build_model
from ..nn.torchfile import load_untrusted_torch, torch_save_atomic
from ..synth import speech
from .augment import VoiceAugment, batch_generator, voice_windows

log = logging.getLogger(__name__)

#: Changes whenever the clips or the training below change (part of the cache key).
RECIPE_VERSION = 1
#: Words around the name, as clinicians talk while scanning (empty: the name alone).
CARRIERS = ("", "", "this is the", "that's the", "I see the", "and the", "okay", "there is the",
            "we have the", "look at the", "so", "here we have the", "now the", "you see the")
AFTER = ("", "", "", "there", "right here", "okay", "good", "nice", "I think", "yes",
         "on this side", "below", "clearly seen", "as well")
_PROGRAMS = {"flite": "flite", "festival": "festival", "espeak": "espeak-ng"}
_LEAD_S = 0.5                      # audio before the onset in a clip
_CLIP_S = 2.0                      # clip length
_CONTEXT_START = int(_LEAD_S * SAMPLE_RATE) - CONTEXT_LEAD_FRAMES * FRAME_STEP


def vocabulary_voices(seed: int = 7) -> list[speech.Speaker]:
    """The voices that speak the vocabulary: every flite voice at 3 rates x 3 pitches, the
    two festival voices at 3 rates, and 60 espeak-ng accent / voice-variant pairs (a seeded
    draw), each only when its program is installed."""
    pool: list[speech.Speaker] = []
    base_pitch = {"kal": 105, "kal16": 105, "awb": 100, "rms": 105, "slt": 180}
    for voice, f0 in base_pitch.items():
        for stretch in (0.85, 1.0, 1.2):
            for pitch in (None, f0 * 0.82, f0 * 1.2):
                pool.append(speech.Speaker(f"flite_{voice}_{stretch}_{pitch}", "flite", voice,
                                           stretch, pitch, 0.08))
    for voice in ("kal_diphone", "cmu_us_slt_arctic_hts"):
        for stretch in (0.85, 1.0, 1.2):
            pool.append(speech.Speaker(f"festival_{voice}_{stretch}", "festival", voice,
                                       stretch, None, 0.08))
    accents = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc",
               "en-gb-x-gbclan", "en-gb-x-gbcwmd")
    variants = ("", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7", "+f1", "+f2", "+f3",
                "+f4", "+f5", "+klatt", "+klatt2", "+klatt3", "+croak", "+iven", "+john",
                "+linda", "+max", "+paul", "+steph", "+adam", "+belinda", "+edward")
    rng = np.random.default_rng(seed)
    espeak = []
    for accent in accents:
        for variant in variants:
            espeak.append(speech.Speaker(f"espeak_{accent}{variant}", "espeak", accent + variant,
                                         float(rng.choice([0.85, 1.0, 1.15])),
                                         int(rng.integers(30, 70)), 0.08))
    keep = set(rng.choice(len(espeak), size=min(60, len(espeak)), replace=False).tolist())
    pool += [s for i, s in enumerate(espeak) if i in keep]
    available = [s for s in pool if shutil.which(_PROGRAMS[s.engine])]
    if not available:
        raise ConfigError("no offline TTS program (flite, festival, espeak-ng) is installed to "
                          "speak the label vocabulary",
                          hint="run scripts/install.sh, or train with --voice-init none")
    return available


def vocabulary_phrases(labelset: LabelSet) -> list[tuple[int, str]]:
    """(label index, spoken form) for every label's id, name and synonyms."""
    out = []
    for k, label in enumerate(labelset.labels):
        names = {label.name.lower(), label.id.replace("_", " ").lower(),
                 *(s.lower() for s in label.synonyms)}
        out += [(k, n) for n in sorted(names) if n.strip()]
    return out


def make_vocabulary_clips(labelset: LabelSet, voices: Optional[Sequence[speech.Speaker]] = None,
                          seed: int = 0, progress: ProgressLike = True
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every phrase of the vocabulary spoken once by every voice, in a carrier phrase, with
    reverberation and room noise.

    Returns:
        speech contexts (N, 1024, CONTEXT_FRAMES) float16 dB (as the window cache keeps them),
        end of the name after the onset in seconds (N,), label index (N,).
    """
    voices = list(voices) if voices is not None else vocabulary_voices()
    phrases = vocabulary_phrases(labelset)
    progress = as_progress(progress)
    texts = sorted({t for t in CARRIERS + AFTER if t} | {p for _, p in phrases})
    with progress.task("speaking the vocabulary", total=len(voices), unit="voice") as task:
        for spk in voices:
            speech.synthesize_many([(t, spk) for t in texts])
            task.advance()
    rng = np.random.default_rng(seed)
    waves, ends, labels = [], [], []
    with progress.task("vocabulary clips", total=len(voices), unit="voice") as task:
        for spk in voices:
            for k, phrase in phrases:
                clip, end = _clip(phrase, spk, rng)
                if clip is not None:
                    waves.append(clip[_CONTEXT_START:_CONTEXT_START + CONTEXT_SAMPLES])
                    ends.append(end)
                    labels.append(k)
            task.advance()
    if not waves:
        raise ConfigError("the TTS programs produced no speech for the label vocabulary")
    contexts = [power_db_context(np.stack(waves[i:i + 256])) for i in range(0, len(waves), 256)]
    return (np.concatenate(contexts), np.array(ends, np.float64),
            np.array(labels, np.int64))


def _clip(phrase: str, spk: speech.Speaker, rng: np.random.Generator
          ) -> tuple[Optional[np.ndarray], float]:
    """A 2-s clip with ``phrase`` at 0.5 s, words before and after it, room and noise."""
    try:
        name = speech.speak(phrase, spk)
    except ConfigError as exc:
        log.debug("%s cannot say %r (%s)", spk.name, phrase, exc)
        return None, 0.0
    if len(name) < 0.05 * SAMPLE_RATE:
        return None, 0.0
    lead, total = int(_LEAD_S * SAMPLE_RATE), int(_CLIP_S * SAMPLE_RATE)
    clip = np.zeros(total, np.float32)
    before = CARRIERS[int(rng.integers(len(CARRIERS)))]
    after = AFTER[int(rng.integers(len(AFTER)))]
    if before:
        words = speech.speak(before, spk)
        gap = int(SAMPLE_RATE * rng.uniform(0.03, 0.2))
        words = words[-(lead - gap):]
        clip[lead - gap - len(words):lead - gap] = words
    n = min(len(name), total - lead)
    clip[lead:lead + n] = name[:n]
    if after:
        words = speech.speak(after, spk)
        start = lead + n + int(SAMPLE_RATE * rng.uniform(0.03, 0.25))
        m = max(0, min(len(words), total - start))
        clip[start:start + m] = words[:m]
    clip *= 10 ** (rng.uniform(-6, 3) / 20)
    if rng.random() < 0.7:
        clip = speech.room_reverb(clip, rng, rt60_s=rng.uniform(0.1, 0.5),
                                  wet=rng.uniform(0.05, 0.35))
    if rng.random() < 0.85:
        noise, _ = speech.room_noise(total, rng, beeps=rng.random() < 0.4,
                                     mains_hz=float(rng.choice([50.0, 60.0])))
        clip = speech.mix_at_snr(clip, noise, rng.uniform(5, 30), active=np.abs(clip) > 1e-4)
    return clip, n / SAMPLE_RATE


def vocabulary_key(labelset: LabelSet, width: float, settings: SpectrogramSettings,
                   voices: Sequence[speech.Speaker], epochs: int, seed: int) -> str:
    """What decides the pretrained weights (the cache key)."""
    blob = {"recipe": RECIPE_VERSION, "phrases": vocabulary_phrases(labelset),
            "labels": list(labelset.ids), "width": width, "spectrogram": settings.to_json(),
            "voices": [s.to_json() for s in voices], "epochs": epochs, "seed": seed}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:20]


def pretrain_vocabulary_voice(labelset: LabelSet, width: float,
                              settings: Optional[SpectrogramSettings] = None, *,
                              epochs: int = 12, lr: float = 2e-3, batch_size: int = 32,
                              seed: int = 0, device: str = "auto",
                              voices: Optional[Sequence[speech.Speaker]] = None,
                              progress: ProgressLike = True) -> dict[str, Any]:
    """Train the voice-only network on the spoken vocabulary (see the module doc).

    Returns:
        ``{"state_dict": ..., "info": {...}}``: the network's weights (``voice_branch.*`` and
        ``head.*``) and what was trained (clips, voices, epochs, final training accuracy).
    """
    t0 = time.time()
    settings = settings or SpectrogramSettings()
    voices = list(voices) if voices is not None else vocabulary_voices()
    progress = as_progress(progress)
    context, ends, labels = make_vocabulary_clips(labelset, voices, seed, progress)
    dev = select_device(device)
    seed_everything(seed, dev)
    model = build_model("voice_only", len(labelset), width=width).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * math.ceil(len(labels) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1),
                                                pct_start=0.15)
    ctx_t, ends_t = torch.from_numpy(context), torch.from_numpy(ends)
    y_all = torch.from_numpy(labels)
    aug = VoiceAugment()
    order_gen = torch.Generator().manual_seed(seed)
    correct = seen = 0
    with progress.task("vocabulary voice", total=epochs, unit="epoch") as task:
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(labels), generator=order_gen)
            correct = seen = 0
            total = 0.0
            for k in range(0, len(order), batch_size):
                b = order[k:k + batch_size]
                if len(b) < 2:
                    continue
                x = voice_windows(ctx_t[b], ends_t[b], settings, aug,
                                  batch_generator(seed, epoch, k)).to(dev)
                y = y_all[b].to(dev)
                logits = model(None, x)
                loss = F.cross_entropy(logits, y, label_smoothing=0.1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(b)
                correct += int((logits.detach().argmax(1) == y).sum())
                seen += len(b)
            task.advance(loss=f"{total / max(seen, 1):.3f}", acc=f"{correct / max(seen, 1):.2f}")
    model.eval()
    info = {"recipe": RECIPE_VERSION, "clips": int(len(labels)), "voices": len(voices),
            "phrases": len(vocabulary_phrases(labelset)), "epochs": epochs, "lr": lr,
            "width": width, "train_accuracy": correct / max(seen, 1),
            "seconds": round(time.time() - t0, 1)}
    return {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "info": info}


def vocabulary_voice_weights(labelset: LabelSet, width: float,
                             settings: Optional[SpectrogramSettings] = None, *,
                             device: str = "auto", cache_dir: Optional[Path] = None,
                             progress: ProgressLike = True, epochs: int = 12,
                             seed: int = 0) -> dict[str, torch.Tensor]:
    """The vocabulary-pretrained voice-only weights for ``labelset``: from the cache, or
    trained now (minutes; shown on ``progress``) and cached."""
    settings = settings or SpectrogramSettings()
    voices = vocabulary_voices()
    key = vocabulary_key(labelset, width, settings, voices, epochs, seed)
    folder = Path(cache_dir) if cache_dir is not None else \
        default_cache_root() / "vocabulary-voice"
    path = folder / f"{key}.pt"
    if path.is_file():
        try:
            data = load_untrusted_torch(path, ("no cached weights", ""),
                                        ("unreadable cache entry ({error})", ""))
            return dict(data["state_dict"])
        except (CheckpointError, KeyError, TypeError) as exc:
            # A damaged cache entry only costs the time to rebuild it.
            log.warning("%s: unreadable (%s); pretraining again", path, exc)
    log.info("pretraining the voice branch on the spoken label vocabulary (%d voices); "
             "cached in %s", len(voices), path)
    result = pretrain_vocabulary_voice(labelset, width, settings, epochs=epochs, seed=seed,
                                       device=device, voices=voices, progress=progress)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        torch_save_atomic(path, {"format": "eusvoicelabel-vocabulary-voice", **result})
    except OSError as exc:
        log.warning("cannot cache the vocabulary voice weights in %s (%s)", path, exc)
    return result["state_dict"]


def initialise_voice(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy pretrained voice-only weights into ``model``: its voice branch, and its voice
    head (voice-only variants) or late voice head (joint variants with ``late_voice``)."""
    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    model.voice_branch.load_state_dict(part("voice_branch."))
    head = model.head if getattr(model, "mode", None) == "voice" else \
        getattr(model, "voice_head", None)
    if head is not None:
        head.load_state_dict(part("head."))


__all__ = ["vocabulary_voices", "vocabulary_phrases", "make_vocabulary_clips",
           "pretrain_vocabulary_voice", "vocabulary_voice_weights", "initialise_voice",
           "vocabulary_key", "RECIPE_VERSION"]
