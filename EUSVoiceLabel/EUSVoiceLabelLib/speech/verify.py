"""A learned second look at each detected mention: was a landmark name said here at all?

The keyphrase spotter (:mod:`.detect`) scores a phrase against a free phone loop over the
phrase's own frames, so another remark that sounds alike over half a second ("Doppler on
please" heard as "confluence") can reach its threshold.  The mention verifier is a small
convolutional network trained, by ``eusvoicelabel train``, on the training cohort's own
recordings: it hears 1.7 s of speech around a candidate onset (0.5 s before it, as
:func:`..data.dataset.speech_context` cuts it) as 48 mel bands and says whether one of the
cohort's mentions starts there.

- **Training windows.** Every candidate the spotter finds in a training recording (confidence
  at least :data:`TRAIN_CANDIDATE_THRESHOLD`) is a positive when its onset lies within
  :data:`ONSET_TOLERANCE_S` of a hand-made mention and a negative otherwise; each mention's own
  onset is a positive too, and up to :data:`SPEECH_NEGATIVES` onsets per recording of the
  spotter's raw hits far from every mention are negatives (other speech).
- **Labelling.** With a verifier the spotter's candidates down to :data:`CANDIDATE_THRESHOLD`
  are checked; a candidate's confidence becomes
  ``sigmoid(logit(c) + VERIFIER_WEIGHT * logit(p))`` (``c`` the spotter's, ``p`` the
  verifier's mean over its :data:`ENSEMBLE` members), and it is kept when that reaches its
  phrase's threshold.  Half weight: the verifier learnt from a few hundred windows of one
  cohort's speakers, so its word counts for less than the spotter's.

Measured on four pairs of synthetic cohorts and why the weight is 0.5: ``docs/detection.md``
("Verifying each mention").
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..core.paper import SAMPLE_RATE
from ..core.progress import ProgressLike, as_progress
from ..data.dataset import CONTEXT_FRAMES, speech_context
from ..data.audio import power_db_context
from ..data.mentions import Mention
from ..data.procedure import Procedure, load_procedure
from ..data.vocabulary import LabelSet
from .detect import detect_procedure, in_video, select_mentions, spot_candidates
from .evaluate import ONSET_TOLERANCE_S, collect_candidates
from .spotter import DEFAULT_THRESHOLD, Hit, build_keyphrases

log = logging.getLogger(__name__)

VERIFIER_FORMAT = 1
N_BANDS = 48                  # mel bands ...
BAND_RANGE_HZ = (60.0, 7600.0)  # ... over the speech band
CROP_FRAMES = CONTEXT_FRAMES - 10  # training crops shift the context by up to 10 frames
MAX_BAND_MASK = 6             # SpecAugment-style masks of training windows: bands ...
MAX_TIME_MASK = 10            # ... and frames
CANDIDATE_THRESHOLD = 0.2     # spotter confidence a candidate needs to be checked
TRAIN_CANDIDATE_THRESHOLD = 0.01  # ... and to be a training window
SPEECH_NEGATIVES = 40         # other-speech windows per training recording, at most
NEGATIVE_GAP_S = 0.3          # ... at least this far apart
VERIFIER_WEIGHT = 0.5
ENSEMBLE = 3
EPOCHS = 40
BATCH = 32


def mel_filters(n_bins: int, n_bands: int = N_BANDS,
                band_range_hz: tuple[float, float] = BAND_RANGE_HZ) -> np.ndarray:
    """Triangular mel filters (n_bands, n_bins) over the STFT bins of 48 kHz audio, each
    normalised to sum 1 (so a band is the mean power of its bins)."""
    freqs = np.linspace(0.0, SAMPLE_RATE / 2, n_bins)
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    edges = 700.0 * (10 ** (np.linspace(mel(band_range_hz[0]), mel(band_range_hz[1]),
                                        n_bands + 2) / 2595.0) - 1.0)
    out = np.zeros((n_bands, n_bins))
    for i in range(n_bands):
        lo, mid, hi = edges[i:i + 3]
        out[i] = np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)),
                         0.0, None)
    return (out / out.sum(1, keepdims=True)).astype(np.float32)


def context_features(proc: Procedure, times_s: Sequence[float]) -> np.ndarray:
    """Log-mel features (N, N_BANDS, CONTEXT_FRAMES) of the speech around each onset."""
    if not len(times_s):
        return np.zeros((0, N_BANDS, CONTEXT_FRAMES), np.float32)
    db = power_db_context(np.stack([speech_context(proc, t) for t in times_s]))
    power = np.power(10.0, db.astype(np.float32) / 10.0)
    bands = np.einsum("fb,nbt->nft", mel_filters(power.shape[1]), power)
    return (10.0 * np.log10(np.maximum(bands, 1e-12))).astype(np.float32)


def _standardise(x: torch.Tensor) -> torch.Tensor:
    # per window: the verifier hears the shape of the speech, not its level
    return (x - x.mean((1, 2), keepdim=True)) / x.std((1, 2), keepdim=True).clamp_min(1e-3)


class MentionVerifierNet(nn.Module):
    """Three Conv1d + BatchNorm + ReLU over mel bands in time, max and mean pooled -> logit."""

    def __init__(self, bands: int = N_BANDS, width: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(bands, width, 5, padding=2), nn.BatchNorm1d(width), nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(width, width, 5, padding=2), nn.BatchNorm1d(width), nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(width, width, 3, padding=1), nn.BatchNorm1d(width), nn.ReLU())
        self.dropout = nn.Dropout(0.3)
        self.out = nn.Linear(2 * width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.out(self.dropout(torch.cat([h.amax(-1), h.mean(-1)], 1)))[:, 0]


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random crop of each context (onset shifts) with one band and one time mask."""
    n, bands, frames = x.shape
    off = torch.randint(0, frames - CROP_FRAMES + 1, (n,), generator=gen)
    out = torch.stack([x[i, :, o:o + CROP_FRAMES] for i, o in enumerate(off.tolist())])
    def draw(high: int) -> int:
        return int(torch.randint(0, high, (1,), generator=gen))

    for i in range(n):
        f, t = draw(MAX_BAND_MASK + 1), draw(MAX_TIME_MASK + 1)
        f0, t0 = draw(bands - f + 1), draw(CROP_FRAMES - t + 1)
        out[i, f0:f0 + f] = 0.0
        out[i, :, t0:t0 + t] = 0.0
    return out


def _centre(x: torch.Tensor) -> torch.Tensor:
    o = (x.shape[-1] - CROP_FRAMES) // 2
    return x[..., o:o + CROP_FRAMES]


def _fit_member(x: torch.Tensor, y: torch.Tensor, seed: int, epochs: int) -> MentionVerifierNet:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = MentionVerifierNet()
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-2)
    # the classes weigh the same whatever their counts
    pos_weight = (y == 0).sum() / (y == 1).sum().clamp_min(1)
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), BATCH):
            b = order[i:i + BATCH]
            if len(b) < 2:
                continue  # BatchNorm needs two
            loss = nn.functional.binary_cross_entropy_with_logits(
                net(_augment(x[b], gen)), y[b], pos_weight=pos_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@dataclass
class MentionVerifier:
    """The trained verifier: an ensemble of :class:`MentionVerifierNet`."""

    members: list[MentionVerifierNet]
    weight: float = VERIFIER_WEIGHT
    candidate_threshold: float = CANDIDATE_THRESHOLD

    def probability(self, proc: Procedure, mentions: Sequence[Mention]) -> np.ndarray:
        """The verifier's probability that each mention's onset starts a landmark name."""
        feats = context_features(proc, [m.time_s for m in mentions])
        if not len(feats):
            return np.zeros(0)
        x = _centre(_standardise(torch.from_numpy(feats)))
        with torch.no_grad():
            p = [torch.sigmoid(m(x)).numpy() for m in self.members]
        return np.mean(p, 0).astype(np.float64)

    def to_state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """(JSON settings, flat weights) for a checkpoint."""
        settings = {"format": VERIFIER_FORMAT, "members": len(self.members),
                    "weight": self.weight, "candidate_threshold": self.candidate_threshold,
                    "bands": N_BANDS, "band_range_hz": list(BAND_RANGE_HZ)}
        weights = {f"{i}.{k}": v.detach().cpu() for i, m in enumerate(self.members)
                   for k, v in m.state_dict().items()}
        return settings, weights

    @classmethod
    def from_state(cls, settings: dict, weights: dict[str, torch.Tensor]) -> "MentionVerifier":
        """Rebuild from :meth:`to_state` (ValueError when they do not fit)."""
        if settings.get("format") != VERIFIER_FORMAT or settings.get("bands") != N_BANDS:
            raise ValueError(f"unknown mention verifier settings {settings!r}")
        members = []
        for i in range(int(settings["members"])):
            net = MentionVerifierNet()
            prefix = f"{i}."
            net.load_state_dict({k[len(prefix):]: v for k, v in weights.items()
                                 if k.startswith(prefix)})
            members.append(net.eval())
        return cls(members, float(settings["weight"]), float(settings["candidate_threshold"]))


def combined_confidence(spotter: float, verifier: float,
                        weight: float = VERIFIER_WEIGHT) -> float:
    """``sigmoid(logit(spotter) + weight * logit(verifier))``, both clipped to 1e-6..1-1e-6."""
    def logit(p: float) -> float:
        p = min(max(float(p), 1e-6), 1.0 - 1e-6)
        return math.log(p / (1.0 - p))
    return 1.0 / (1.0 + math.exp(-(logit(spotter) + weight * logit(verifier))))


def _candidates(proc: Procedure, hits: Sequence[Hit], labelset: LabelSet,
                threshold: float) -> list[Mention]:
    """The mentions of a recording's hits at one confidence threshold for every label, within
    the video."""
    found = select_mentions(hits, labelset, {lab.id: threshold for lab in labelset.labels},
                            proc.audio_offset_s)
    return in_video(found, proc.duration_s)


def verify_mentions(proc: Procedure, hits: Sequence[Hit], labelset: LabelSet,
                    verifier: MentionVerifier) -> list[Mention]:
    """The mentions of a recording's spotter hits that the verifier confirms: candidates down
    to its candidate threshold, each with the combined confidence, kept at their phrase's
    threshold."""
    candidates = _candidates(proc, hits, labelset, verifier.candidate_threshold)
    thresholds = {kp.phrase: kp.threshold for kp in build_keyphrases(labelset)}
    p = verifier.probability(proc, candidates)
    out = []
    for m, pv in zip(candidates, p):
        conf = combined_confidence(m.confidence or 0.0, pv, verifier.weight)
        if conf >= thresholds.get(m.text, DEFAULT_THRESHOLD):
            out.append(Mention(m.time_s, m.label, m.end_s, m.text, round(conf, 4), m.source))
    return out


def find_mentions(proc: Procedure, labelset: Optional[LabelSet] = None,
                  verifier: Optional[MentionVerifier] = None, *,
                  progress: ProgressLike = False,
                  workers: Optional[int] = None) -> list[Mention]:
    """The landmark mentions heard in a procedure's audio, on the video clock and within the
    video: the spotter's detections (:func:`.detect.detect_procedure`), or with ``verifier``
    its candidates checked by it (:func:`verify_mentions`).  The one detection path of
    ``detect``, ``label --mentions auto`` and the Slicer module; ``progress`` and ``workers``
    as for :func:`.detect.spot_candidates`."""
    labelset = labelset or proc.labelset
    if verifier is None:
        return detect_procedure(proc, labelset, progress=progress, workers=workers)
    samples, rate = proc.native_audio()
    hits = spot_candidates(samples, rate, labelset, progress=progress, workers=workers)
    return verify_mentions(proc, hits, labelset, verifier)


def training_windows(proc: Procedure, hits: Sequence[Hit], labelset: LabelSet,
                     reference: Sequence[Mention], seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The verifier's training windows of one recording (see the module doc): features
    (N, N_BANDS, CONTEXT_FRAMES) and 1 / 0 targets."""
    cands = _candidates(proc, hits, labelset, TRAIN_CANDIDATE_THRESHOLD)
    near = [any(abs(m.time_s - r.time_s) <= ONSET_TOLERANCE_S for r in reference)
            for m in cands]
    lead = 1.2  # an other-speech onset this far before a mention would hear its start

    def far(t: float) -> bool:
        return all(not (r.time_s - lead <= t <= (r.end_s or r.time_s + 1.0) + 0.1)
                   for r in reference)

    onsets = sorted({round(h.start_s - proc.audio_offset_s, 2) for h in hits})
    speech: list[float] = []
    for t in onsets:
        if 0 <= t < proc.duration_s and far(t) and (not speech or t - speech[-1] >= NEGATIVE_GAP_S):
            speech.append(t)
    if len(speech) > SPEECH_NEGATIVES:
        rng = np.random.default_rng(seed)
        speech = sorted(rng.choice(speech, SPEECH_NEGATIVES, replace=False).tolist())
    times = [m.time_s for m in cands] + [r.time_s for r in reference] + speech
    targets = np.array([float(v) for v in near] + [1.0] * len(reference) + [0.0] * len(speech),
                       np.float32)
    return context_features(proc, times), targets


def train_verifier(cohort: Path | str, labelset: LabelSet, progress: ProgressLike = True,
                   members: int = ENSEMBLE, epochs: int = EPOCHS, seed: int = 0,
                   patients: Optional[Sequence[str]] = None) -> Optional[MentionVerifier]:
    """Train the verifier on a cohort's recordings and their mentions (``patients``: only
    those procedures); None when the cohort gives no negative or no positive window."""
    chosen, labelset = collect_candidates(cohort, labelset, progress=progress,
                                          patients=patients)
    feats, targets = [], []
    reporter = as_progress(progress)
    with reporter.task("verifier windows", total=len(chosen), unit="patient") as task:
        for i, pc in enumerate(chosen):
            proc = load_procedure(Path(cohort) / pc.name, labelset=labelset)
            x, y = training_windows(proc, pc.hits, labelset, pc.reference, seed + i)
            feats.append(x)
            targets.append(y)
            task.advance()
    if not feats:
        return None
    x = _standardise(torch.from_numpy(np.concatenate(feats)))
    y = torch.from_numpy(np.concatenate(targets))
    if not len(y) or y.min() == y.max():
        log.warning("the cohort gives %d verifier windows of one kind only: no verifier",
                    len(y))
        return None
    nets = []
    with reporter.task("verifier", total=members, unit="member") as task:
        for k in range(members):
            nets.append(_fit_member(x, y, seed + k, epochs))
            task.advance()
    log.info("mention verifier: %d windows (%d mentions) from %d recordings",
             len(y), int(y.sum()), len(chosen))
    return MentionVerifier(nets)


__all__ = ["MentionVerifier", "MentionVerifierNet", "train_verifier", "verify_mentions",
           "find_mentions",
           "combined_confidence", "context_features", "mel_filters", "training_windows",
           "CANDIDATE_THRESHOLD", "VERIFIER_WEIGHT"]
