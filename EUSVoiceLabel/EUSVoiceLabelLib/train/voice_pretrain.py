"""Pretraining the keyword network of the ``voice_pretrained`` variant (:mod:`..nn.keyword`).

The paper pretrained its keyword network on the Speech Commands data set (one-second
recordings of 30 command words).  Speech Commands cannot be downloaded here, so
:func:`pretrain_keyword_model` trains the same network on the same 30 command words spoken by
the synthetic speakers of :mod:`..synth.speech` (offline TTS), with random placement in the
second, gain, speed and room noise as augmentation.  The landmark names are deliberately *not*
among the words, as in the paper (the pretraining task knows nothing of the labels).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from ..core.errors import ConfigError
from ..core.progress import ProgressLike, as_progress
from ..data.audio import SAMPLE_RATE, SpectrogramSettings, spectrogram_batch
from ..nn.devices import seed_everything, select_device
from ..data.outputs import OutputKind, claim_output, torch_file_of_format
from ..nn.keyword import FORMAT as KEYWORD_FORMAT
from ..nn.keyword import KeywordFeatures, KeywordNet, save_keyword_checkpoint
from ..synth import speech

log = logging.getLogger(__name__)


#: The 30 words of Speech Commands v0.01 (Warden 2018), which the paper pretrained on.
COMMAND_WORDS: tuple[str, ...] = (
    "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow",
)
#: ``pretrain-voice --out``: an existing file is replaced only when it is a keyword network of
#: ours.
KEYWORD_CHECKPOINT = OutputKind("keyword-checkpoint", "a keyword network written by "
                                "'eusvoicelabel pretrain-voice'", folder=False,
                                signature=torch_file_of_format(KEYWORD_FORMAT))



# --------------------------------------------------------------------------- data
def make_word_clips(words: Sequence[str] = COMMAND_WORDS, speakers: Optional[Sequence[str]] = None,
                    repeats: int = 6, seed: int = 0, settings: Any = None,
                    progress: ProgressLike = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spoken one-second words from the synthetic speakers, as resized 32 x 32 inputs.

    Every (speaker, word) pair is rendered ``repeats`` times with a random onset, gain, speaking
    speed (+-8 %) and room noise at 5-30 dB SNR (for some clips none).

    Returns:
        inputs (N, 1, 32, 32) float32, word index (N,) int64, speaker index (N,) int64.
    """
    settings = settings or SpectrogramSettings()
    all_speakers = speech.list_speakers()
    chosen = [speech.get_speaker(s) for s in speakers] if speakers else all_speakers
    if not chosen:
        raise ConfigError("no speakers to pretrain the keyword network on")
    speech.check_engines(chosen)
    rng = np.random.default_rng(seed)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    ss: list[np.ndarray] = []
    with as_progress(progress).task("speaking words", total=len(chosen), unit="speaker") as task:
        for si, spk in enumerate(chosen):
            for _ in range(repeats):
                waves = _augmented_clips(words, spk, rng)
                spec = torch.from_numpy(spectrogram_batch(waves, settings))
                with torch.no_grad():
                    xs.append(KeywordFeatures.resize(spec).numpy())
                ys.append(np.arange(len(words)))
                ss.append(np.full(len(words), si))
            task.advance()
    return (np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64),
            np.concatenate(ss).astype(np.int64))


def _augmented_clips(words: Sequence[str], spk: Any, rng: np.random.Generator) -> np.ndarray:
    """One rendering of every word by ``spk``: random onset, speed, gain and room noise."""
    speed = rng.uniform(0.92, 1.08, size=len(words))
    clips = speech.speak_words(list(words), spk, sample_rate=SAMPLE_RATE, rng=rng)
    waves = np.zeros_like(clips)
    for i, clip in enumerate(clips):
        # Speed change by resampling the placed clip (crop / pad back to 1 s).
        n = len(clip)
        pos = np.arange(0, n, speed[i])
        moved = np.interp(pos, np.arange(n), clip).astype(np.float32)[:n]
        wave = np.zeros(n, np.float32)
        wave[:len(moved)] = moved
        wave *= 10 ** (rng.uniform(-12, 6) / 20)
        if rng.random() < 0.8:
            noise, _ = speech.room_noise(n, rng, beeps=rng.random() < 0.3)
            wave = speech.mix_at_snr(wave, noise, rng.uniform(5, 30),
                                     active=np.abs(clip) > 1e-4)
        waves[i] = wave
    return waves


# --------------------------------------------------------------------------- training
def pretrain_keyword_model(out: Path, words: Sequence[str] = COMMAND_WORDS,
                           speakers: Optional[Sequence[str]] = None, repeats: int = 6,
                           epochs: int = 15, lr: float = 1e-3, batch_size: int = 64,
                           seed: int = 0, device: str = "auto", settings: Any = None,
                           progress: ProgressLike = True) -> dict[str, Any]:
    """Pretrain the keyword network on synthetic spoken words and save it to ``out``.

    One speaker (the last one) is held out to report how well the network recognises words
    from a voice it has not heard; the saved network is trained on all the others.

    Returns:
        The checkpoint's ``info`` dict (accuracies, sizes, wall time, settings).

    Raises:
        OutputError: ``out`` exists and is not a keyword network of ours (checked first).
    """
    claim_output(out, KEYWORD_CHECKPOINT)
    if epochs < 1:
        raise ConfigError(f"epochs must be at least 1, not {epochs}")
    t0 = time.time()
    progress = as_progress(progress)
    settings = settings or SpectrogramSettings()
    dev = select_device(device)
    seed_everything(seed, dev)
    x, y, spk = make_word_clips(words, speakers, repeats, seed, settings, progress)
    n_spk = int(spk.max()) + 1
    val = spk == n_spk - 1 if n_spk > 1 else np.zeros(len(y), bool)
    tr = ~val
    model = KeywordNet(len(words))
    # Normalisation statistics of the training data (Keras' Normalization.adapt).
    model.features.mean.fill_(float(x[tr].mean()))
    model.features.std.fill_(float(x[tr].std()) + 1e-6)
    model.to(dev)
    xt = torch.from_numpy(x).to(dev)
    yt = torch.from_numpy(y).to(dev)
    tr_idx = torch.from_numpy(np.nonzero(tr)[0])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    loss_v = float("nan")
    with progress.task("pretrain-voice", total=epochs, unit="epoch") as task:
        for _ in range(epochs):
            model.train()
            perm = tr_idx[torch.randperm(len(tr_idx), generator=g)]
            total, seen = 0.0, 0
            for i in range(0, len(perm), batch_size):
                b = perm[i:i + batch_size].to(dev)
                loss = F.cross_entropy(model.forward_small(xt[b]), yt[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(b)
                seen += len(b)
            loss_v = total / max(1, seen)
            task.advance(loss=f"{loss_v:.3f}")
    model.eval()

    def accuracy(mask: np.ndarray) -> Optional[float]:
        if not mask.any():
            return None
        idx = torch.from_numpy(np.nonzero(mask)[0]).to(dev)
        with torch.no_grad():
            pred = model.forward_small(xt[idx]).argmax(1)
        return float((pred == yt[idx]).float().mean())

    names = [s.name for s in ([speech.get_speaker(s) for s in speakers] if speakers
                              else speech.list_speakers())]
    info = {"train_accuracy": accuracy(tr), "heldout_speaker_accuracy": accuracy(val),
            "heldout_speaker": names[-1] if n_spk > 1 else None, "speakers": names,
            "n_clips": int(len(y)), "epochs": epochs, "lr": lr, "batch_size": batch_size,
            "seed": seed, "final_loss": loss_v, "spectrogram": settings.to_json(),
            "wall_time_s": round(time.time() - t0, 1)}
    save_keyword_checkpoint(Path(out), model.cpu(), words, info)
    log.info("keyword network: train accuracy %.3f, held-out speaker accuracy %s -> %s",
             info["train_accuracy"], info["heldout_speaker_accuracy"], out)
    return info
