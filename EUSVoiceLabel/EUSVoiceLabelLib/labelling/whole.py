"""Whole-procedure labelling (``eusvoicelabel label ... --whole``; docs/whole.md): every frame
of the procedure (or every ``stride``-th) gets a landmark or ``none``, a confidence and its
source, ``spoken window`` or ``inferred``.

How a frame is labelled:

1. **Two kinds of evidence per frame**, computed while the procedure is decoded in chunks of
   :attr:`WholeSettings.chunk_frames` frames (never as a whole; only a few numbers a frame
   are kept):

   - *the cohort's frame classifier* (:mod:`.framemodel`): ``p(k | frame)`` over the K
     landmarks, what the cohort's voice-labelled windows taught about each landmark's look;
   - *appearance match to the spoken windows* of this procedure: each frame's descriptor (the
     frame averaged down to 16 x 32 pixels, standardised, unit length) is compared (cosine)
     with the mean descriptor of every spoken window.  A frame that looks like a window shows
     the same scene, so what was said about the window holds for it.  How similar is similar
     enough is learned from the procedure itself (:func:`fit_match`): a logistic curve
     ``P(same scene | similarity)`` fitted to the windows' own frames against their own mean
     (same scene) and against the means of windows of other landmarks (other scenes).

2. **Per-frame posterior** over K landmarks and ``none``: with ``m_k`` the probability that
   the frame shows the scene of a window of landmark k (the best-matching such window) and
   ``r = 1 - max_k m_k`` the probability that it matches no spoken scene,
   ``P(k) ∝ m_k + r · (1 - π) · p(k | frame)`` and ``P(none) ∝ r · π`` with ``π = 1 / (K + 1)``
   (without a match, ``none`` is as likely a priori as any landmark).

3. **Temporal model.**  A hidden Markov model over the K + 1 states:

   - *transitions*: from one labelled frame to the next the state is kept with probability
     ``g = exp(-dt / dwell_s) · P(same scene | similarity of the two frames)`` and otherwise
     redrawn uniformly over the K + 1 states: a geometric dwell time of mean
     :attr:`WholeSettings.dwell_s` while the picture stays the same scene (the same fitted
     curve as the match says how likely that is), and a fresh start where the picture
     changes, so that a label does not flow from a spoken scene into the next one;
   - *emissions* of an inferred frame: its posterior of step 2 divided by the state prior
     (uniform), raised to the power ``dt / evidence_s`` (capped at 1), because neighbouring
     frames are nearly the same picture: frames within :attr:`WholeSettings.evidence_s` count
     as one observation;
   - *spoken-window frames* are near-certain observations: the window's fused posterior
     ``q`` (:mod:`.fusion`) mixed with ``1 - window_certainty`` of a uniform one, not tempered;
   - *posteriors* by the forward-backward algorithm (scaled): each frame's label is its
     most probable state and its confidence that state's posterior probability.

4. **Rejection.**  A frame is ``none`` where its most probable state is ``none`` or its
   confidence is below the rejection threshold; the threshold is the frame model's calibrated
   one (:mod:`.frametrain`) unless ``--reject-below`` gives another.

5. **Spoken windows keep their label**: frames inside a mention window get the window's fused
   label and confidence (the same as without ``--whole``), source ``spoken window``.

The settings are priors about endoscopy video, not fitted to any cohort; docs/whole.md says
why each value was chosen and how the rejection threshold is calibrated.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Sequence

import numpy as np

from ..core.csvtext import escape_cell
from ..core.errors import ConfigError
from ..core.fileio import atomic_path
from ..core.progress import ProgressLike, as_progress
from ..data.outputs import OutputKind, csv_with_header
from ..data.procedure import Procedure, window_frame_indices
from .framemodel import FrameModel
from .runs import NONE

log = logging.getLogger(__name__)

SPOKEN = "spoken window"
INFERRED = "inferred"

#: ``frame_labels.csv`` of a whole-procedure run: today's columns, then ``source``.
WHOLE_COLUMNS = ("frame_index", "time_s", "label", "confidence", "window", "spoken_label",
                 "predicted_label", "predicted_confidence", "needs_review", "source")

#: A whole-procedure ``frame_labels.csv`` written on its own (the Slicer module's export).
FRAME_LABELS = OutputKind("whole-frame-labels", "a whole-procedure frame_labels.csv",
                          folder=False, signature=csv_with_header(WHOLE_COLUMNS))

#: Frames whose confidence is below this are flagged ``needs_review`` (as windows are).
REVIEW_BELOW = 0.8


@dataclass
class WholeSettings:
    """How a whole procedure is labelled (see the module doc; all stored in ``run.json``).

    Attributes:
        stride: label every ``stride``-th frame of the 25 fps grid (1 = every frame).
        dwell_s: mean time a landmark stays in view, the HMM's sticky-transition prior.
        evidence_s: frames within this time count as one independent observation.
        window_certainty: weight of a spoken window's fused label as an observation.
        reject_below: rejection threshold (None: the frame model's calibrated one).
        match: use the appearance match to the spoken windows (else the classifier alone).
        chunk_frames: frames decoded at a time.
    """

    stride: int = 1
    dwell_s: float = 5.0
    evidence_s: float = 0.5
    window_certainty: float = 0.99
    reject_below: Optional[float] = None
    match: bool = True
    chunk_frames: int = 200

    def __post_init__(self) -> None:
        if int(self.stride) < 1:
            raise ConfigError(f"the stride must be at least 1 frame, not {self.stride}")
        for name in ("dwell_s", "evidence_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"{name} must be a positive number, not {v}")
        if not 0.0 < self.window_certainty <= 1.0:
            raise ConfigError(f"window certainty must lie in (0, 1], not "
                              f"{self.window_certainty}")
        if self.reject_below is not None and not 0.0 <= self.reject_below <= 1.0:
            raise ConfigError(f"the rejection threshold must lie between 0 and 1, not "
                              f"{self.reject_below}")
        self.stride = int(self.stride)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Anchor:
    """A spoken window as the whole-procedure labelling sees it."""

    window: int
    frame_indices: np.ndarray
    label: str
    confidence: float
    probabilities: np.ndarray  # (K,) the fused posterior
    spoken_label: str = ""
    predicted_label: str = ""
    predicted_confidence: float = float("nan")
    needs_review: bool = False

    @classmethod
    def from_window(cls, w) -> "Anchor":
        """From a :class:`.run.WindowResult`."""
        probs = w.fused.probabilities if w.fused is not None else w.probabilities
        return cls(w.index, np.asarray(w.frame_indices), w.label, float(w.label_confidence),
                   np.asarray(probs, np.float64), w.spoken_label or "", w.predicted,
                   float(w.confidence), bool(w.needs_review))

    @classmethod
    def from_mention(cls, k: int, time_s: float, label: str, ids: Sequence[str],
                     frames: int, fps: float) -> "Anchor":
        """A certain mention (from a file): its label with probability 1."""
        p = np.zeros(len(ids))
        p[list(ids).index(label)] = 1.0
        return cls(k, window_frame_indices(time_s, frames, fps), label, 1.0, p, label, "",
                   float("nan"), False)


def anchors_from_windows(windows: Sequence, final_labels: Mapping[int, str],
                         ids: Sequence[str]) -> list[Anchor]:
    """The spoken windows of a labelling run (:class:`.run.WindowResult`) as anchors, each
    with its final label (``final_labels``: window -> label, e.g. after review): a window
    whose label a clinician changed anchors with that label, certain."""
    anchors = []
    for w in windows:
        anchor = Anchor.from_window(w)
        label = final_labels.get(w.index)
        if label and label != anchor.label:
            anchor.label, anchor.confidence = label, 1.0
            anchor.probabilities = np.array([float(i == label) for i in ids])
        anchors.append(anchor)
    return anchors


@dataclass
class WholeResult:
    """A whole-procedure labelling: one entry per labelled step (frame ``steps[i]``)."""

    steps: np.ndarray            # int64 (N,) frame indices on the 25 fps grid
    fps: float
    ids: list[str]               # the K landmark ids (state K is none)
    posterior: np.ndarray        # float32 (N, K + 1)
    frame_probs: np.ndarray      # float32 (N, K) the frame classifier's
    owner: np.ndarray            # int64 (N,) anchor position, -1 for inferred
    anchors: list[Anchor]
    reject_below: float
    settings: WholeSettings
    cancelled: bool = False
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.steps)

    def rows(self) -> Iterator[dict]:
        """One dict per labelled frame (the columns of :data:`WHOLE_COLUMNS`)."""
        k = len(self.ids)
        for i, f in enumerate(self.steps):
            a = int(self.owner[i])
            if a >= 0:
                an = self.anchors[a]
                yield {"frame_index": int(f), "time_s": f / self.fps, "label": an.label,
                       "confidence": an.confidence, "window": an.window,
                       "spoken_label": an.spoken_label, "predicted_label": an.predicted_label,
                       "predicted_confidence": an.predicted_confidence,
                       "needs_review": an.needs_review, "source": SPOKEN}
                continue
            post = self.posterior[i]
            top = int(np.argmax(post))
            conf = float(post[top])
            label = NONE if top == k or conf < self.reject_below else self.ids[top]
            fp = self.frame_probs[i]
            ftop = int(np.argmax(fp))
            yield {"frame_index": int(f), "time_s": f / self.fps, "label": label,
                   "confidence": conf, "window": "", "spoken_label": "",
                   "predicted_label": self.ids[ftop], "predicted_confidence": float(fp[ftop]),
                   "needs_review": conf < REVIEW_BELOW, "source": INFERRED}

    def labels(self) -> list[str]:
        return [r["label"] for r in self.rows()]


# --------------------------------------------------------------------------- the HMM
def transition_matrix(n_states: int, stay: float) -> np.ndarray:
    """The transition matrix of one step: the state is kept with probability ``stay``, else
    redrawn uniformly over all ``n_states`` (the same one included)."""
    return stay * np.eye(n_states) + (1.0 - stay) / n_states


def forward_backward(log_emit: np.ndarray, stay) -> np.ndarray:
    """Posterior state probabilities (N, S) of an HMM with uniform initial state, log
    emissions ``log_emit`` (N, S) and the transitions of :func:`transition_matrix` with
    ``stay`` (a number, or one per step: ``stay[t]`` for step t - 1 -> t); scaled forward
    and backward passes (no underflow over any length), O(N S)."""
    n, s = log_emit.shape
    if n == 0:
        return np.zeros((0, s))
    g = np.broadcast_to(np.asarray(stay, dtype=np.float64), (n,))
    emit = np.exp(log_emit - log_emit.max(axis=1, keepdims=True))
    alpha = np.empty((n, s))
    a = emit[0] / s
    alpha[0] = a / a.sum()
    for t in range(1, n):
        a = (g[t] * alpha[t - 1] + (1.0 - g[t]) / s) * emit[t]  # alpha[t - 1] sums to 1
        alpha[t] = a / a.sum()
    post = np.empty((n, s))
    post[-1] = alpha[-1]
    b = np.ones(s) / s
    for t in range(n - 2, -1, -1):
        v = emit[t + 1] * b
        b = g[t + 1] * v + (1.0 - g[t + 1]) / s * v.sum()
        b /= b.sum()
        p = alpha[t] * b
        post[t] = p / p.sum()
    return post


def stay_probabilities(same_scene: Optional[np.ndarray], n: int, dt: float,
                       dwell_s: float) -> np.ndarray:
    """Per-step probability that the state is kept: the dwell prior ``exp(-dt / dwell_s)``
    times the probability that the frame shows the same scene as the one before
    (``same_scene``, from the appearance match; 1 where unknown)."""
    stay = np.full(n, math.exp(-dt / dwell_s))
    if same_scene is not None:
        stay = stay * same_scene[:n]
    return stay


def frame_posterior(frame_probs: np.ndarray, match: Optional[np.ndarray]) -> np.ndarray:
    """Per-frame posterior (N, K + 1) over the landmarks and ``none`` from the classifier's
    ``p(k | frame)`` (N, K) and the per-landmark scene-match probabilities ``m`` (N, K) or
    None (see the module doc)."""
    n, k = frame_probs.shape
    pi = 1.0 / (k + 1)
    if match is None:
        match = np.zeros((n, k))
    r = 1.0 - match.max(axis=1, keepdims=True) if k else np.ones((n, 1))
    post = np.concatenate([match + r * (1.0 - pi) * frame_probs, r * pi], axis=1)
    return post / post.sum(axis=1, keepdims=True)


def emissions(posterior: np.ndarray, owner: np.ndarray, anchors: Sequence[Anchor],
              settings: WholeSettings, dt: float) -> np.ndarray:
    """Log emissions (N, K + 1) of the HMM (see the module doc)."""
    n, s = posterior.shape
    k = s - 1
    alpha = min(1.0, dt / settings.evidence_s)
    out = alpha * np.log(np.maximum(posterior * s, 1e-12))
    eps = 1.0 - settings.window_certainty
    for i in np.flatnonzero(owner >= 0):
        q = np.append(anchors[int(owner[i])].probabilities, 0.0)
        out[i] = np.log((1.0 - eps) * q + eps / (k + 1) + 1e-300)
    return out


# --------------------------------------------------------------------------- appearance match
#: Size (H, W) frames are averaged down to for the appearance descriptor.
DESCRIPTOR_SIZE = (16, 32)


def descriptors(frames: np.ndarray) -> np.ndarray:
    """Appearance descriptors (N, 512) float32 of cropped uint8 frames (N, H, W): the frame
    area-averaged to 16 x 32, standardised, unit length."""
    import torch
    import torch.nn.functional as F

    if len(frames) == 0:
        return np.zeros((0, DESCRIPTOR_SIZE[0] * DESCRIPTOR_SIZE[1]), np.float32)
    x = torch.from_numpy(np.ascontiguousarray(frames)).float()[:, None]
    d = F.adaptive_avg_pool2d(x, DESCRIPTOR_SIZE)[:, 0].reshape(len(frames), -1).numpy()
    d = d - d.mean(axis=1, keepdims=True)
    return (d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-6)).astype(np.float32)


def fit_logistic(x: np.ndarray, y: np.ndarray, iters: int = 50) -> tuple[float, float]:
    """``(a, c)`` of ``P(y = 1 | x) = sigmoid(a x + c)`` by Newton's method, classes weighted
    equally, with a small ridge (a stable answer for separable data)."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    w = np.where(y > 0, 0.5 / max(1, (y > 0).sum()), 0.5 / max(1, (y <= 0).sum()))
    X = np.stack([x, np.ones_like(x)], axis=1)
    beta = np.zeros(2)
    ridge = 1e-6
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(X @ beta)))
        g = X.T @ (w * (p - y)) + ridge * beta
        h = (X * (w * p * (1 - p))[:, None]).T @ X + ridge * np.eye(2)
        step = np.linalg.solve(h, g)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return float(beta[0]), float(beta[1])


@dataclass
class MatchModel:
    """Mean descriptors of the spoken windows and the fitted ``P(same scene | similarity)``."""

    centroids: np.ndarray        # (A, D) unit length
    labels: np.ndarray           # (A,) landmark index of each window
    a: float
    c: float

    def same_scene(self, sims: np.ndarray) -> np.ndarray:
        """``P(same scene | similarity)``."""
        return 1.0 / (1.0 + np.exp(-(self.a * sims + self.c)))

    def match(self, sims: np.ndarray, k: int) -> np.ndarray:
        """Per-landmark match probabilities (N, K) from similarities (N, A): the best window
        of each landmark."""
        p = self.same_scene(sims)
        out = np.zeros((len(sims), k))
        for j, lab in enumerate(self.labels):
            out[:, lab] = np.maximum(out[:, lab], p[:, j])
        return out


def fit_match(window_descriptors: Sequence[np.ndarray], labels: Sequence[int],
              fallback: Optional[tuple[float, float]] = None) -> Optional[MatchModel]:
    """The match model of a procedure's spoken windows (descriptors (F, D) per window, its
    landmark index): same scene = a window's frames against its own mean, other scene = against
    the means of windows of other landmarks (windows of the same landmark may show the same
    scene and are left out).  Without two windows of different landmarks the curve cannot be
    fitted: ``fallback`` (a, c) is used (the cohort's typical curve, stored in the frame
    model), else None."""
    keep = [(d, lab) for d, lab in zip(window_descriptors, labels) if len(d)]
    if not keep:
        return None
    cents = np.stack([d.mean(axis=0) for d, _ in keep])
    cents /= np.maximum(np.linalg.norm(cents, axis=1, keepdims=True), 1e-6)
    labs = np.array([lab for _, lab in keep])
    if len(set(labs.tolist())) < 2:
        if fallback is None:
            return None
        return MatchModel(cents.astype(np.float32), labs, float(fallback[0]),
                          float(fallback[1]))
    xs, ys = [], []
    for j, (d, lab) in enumerate(keep):
        sims = d @ cents.T
        xs.append(sims[:, j])
        ys.append(np.ones(len(d)))
        other = labs != lab
        xs.append(sims[:, other].ravel())
        ys.append(np.zeros(int(other.sum()) * len(d)))
    a, c = fit_logistic(np.concatenate(xs), np.concatenate(ys))
    return MatchModel(cents.astype(np.float32), labs, a, c)


# --------------------------------------------------------------------------- the pipeline
def label_steps(n_frames: int, stride: int) -> np.ndarray:
    return np.arange(0, n_frames, stride, dtype=np.int64)


def step_owners(steps: np.ndarray, anchors: Sequence[Anchor], n_frames: int) -> np.ndarray:
    """Anchor position owning each step (-1: none): the latest window whose frames hold it."""
    owner_of_frame = {}
    for a, an in enumerate(anchors):
        for f in an.frame_indices:
            if 0 <= f < n_frames:
                owner_of_frame[int(f)] = a
    return np.array([owner_of_frame.get(int(f), -1) for f in steps], dtype=np.int64)


def iter_frame_chunks(proc: Procedure, steps: np.ndarray, chunk: int
                      ) -> Iterator[tuple[int, np.ndarray]]:
    """(first position, cropped frames) of ``steps`` in chunks of at most ``chunk`` frames."""
    for i in range(0, len(steps), chunk):
        yield i, proc.frames_at(steps[i:i + chunk] / proc.fps)


def label_whole(proc: Procedure, model: FrameModel, anchors: Sequence[Anchor],
                settings: Optional[WholeSettings] = None,
                progress: ProgressLike = None,
                on_chunk: Optional[Callable[[np.ndarray, np.ndarray], None]] = None
                ) -> WholeResult:
    """Label every ``stride``-th frame of ``proc`` (see the module doc).

    Args:
        anchors: the spoken windows (their frames keep their fused labels).
        progress: reporter of the frames scored; when cancelled, scoring stops at the next
            chunk and the result (``cancelled=True``) covers the frames scored so far.
        on_chunk: called with each chunk's frame indices and cropped frames (uint8), e.g. to
            stream a preview sequence.
    """
    settings = settings or WholeSettings()
    anchors = sorted(anchors, key=lambda a: int(a.frame_indices[0]) if len(a.frame_indices)
                     else 0)
    ids = model.ids
    k = len(ids)
    steps = label_steps(proc.n_frames, settings.stride)
    matcher = None
    if settings.match and anchors:
        wd = []
        for an in anchors:
            f = np.asarray([i for i in an.frame_indices if 0 <= i < proc.n_frames])
            wd.append(descriptors(proc.frames_at(f / proc.fps)) if len(f) else
                      np.zeros((0, DESCRIPTOR_SIZE[0] * DESCRIPTOR_SIZE[1]), np.float32))
        matcher = fit_match(wd, [ids.index(an.label) for an in anchors],
                            model.match_curve)
    frame_probs = np.zeros((len(steps), k), np.float32)
    match = np.zeros((len(steps), k), np.float32) if matcher is not None else None
    same = np.ones(len(steps), np.float32) if matcher is not None else None
    previous = None
    reporter = as_progress(progress)
    done = 0
    cancelled = False
    with reporter.task("whole procedure", total=len(steps), unit="frame") as task:
        for i, frames in iter_frame_chunks(proc, steps, settings.chunk_frames):
            if reporter.cancelled():
                cancelled = True
                break
            n = len(frames)
            frame_probs[i:i + n] = model.probabilities(frames)
            if matcher is not None:
                d = descriptors(frames)
                match[i:i + n] = matcher.match(d @ matcher.centroids.T, k)
                before = np.concatenate([d[:1] if previous is None else previous, d[:-1]])
                same[i:i + n] = matcher.same_scene(np.sum(d * before, axis=1))
                previous = d[-1:]
            if on_chunk is not None:
                on_chunk(steps[i:i + n], frames)
            done = i + n
            task.update(done)
    steps, frame_probs = steps[:done], frame_probs[:done]
    if match is not None:
        match, same = match[:done], same[:done]
    owner = step_owners(steps, anchors, proc.n_frames)
    dt = settings.stride / proc.fps
    frame_post = frame_posterior(frame_probs.astype(np.float64), match)
    log_e = emissions(frame_post, owner, anchors, settings, dt)
    post = forward_backward(log_e, stay_probabilities(same, len(steps), dt, settings.dwell_s))
    reject = model.reject_below if settings.reject_below is None else settings.reject_below
    info = {"n_frames": int(proc.n_frames), "spoken_windows": len(anchors)}
    if matcher is not None:
        info["match_curve"] = {"a": round(matcher.a, 4), "c": round(matcher.c, 4)}
        info["match_curve_from"] = "cohort" if len(set(matcher.labels.tolist())) < 2 \
            else "procedure"
    return WholeResult(steps, proc.fps, ids, post.astype(np.float32), frame_probs, owner,
                       list(anchors), float(reject), settings, cancelled, info)


# --------------------------------------------------------------------------- calibration
def isotonic_increasing(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pool-adjacent-violators fit of ``y`` (0/1) as a non-decreasing function of ``x``:
    (sorted x, fitted values)."""
    order = np.argsort(x, kind="stable")
    xs, ys = np.asarray(x, float)[order], np.asarray(y, float)[order]
    vals: list[float] = []
    weights: list[float] = []
    for v in ys:
        vals.append(v)
        weights.append(1.0)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            w = weights[-2] + weights[-1]
            vals[-2] = (vals[-2] * weights[-2] + vals[-1] * weights[-1]) / w
            weights[-2] = w
            vals.pop()
            weights.pop()
    fitted = np.repeat(vals, np.array(weights, dtype=int))
    return xs, fitted


def calibrate_rejection(confidence: np.ndarray, correct: np.ndarray,
                        min_precision: float = 0.5) -> dict:
    """The rejection threshold from held-out frames' confidences and whether their label was
    right: fit P(right | confidence) as a non-decreasing function (isotonic regression) and
    reject below the lowest confidence where it reaches ``min_precision`` (default 0.5: a
    label is kept where it is more likely right than wrong).  Returns the threshold and what
    the held-out frames say about it."""
    confidence = np.asarray(confidence, float)
    correct = np.asarray(correct, bool)
    if len(confidence) == 0:
        return {"reject_below": 0.5, "n_frames": 0, "method": "default (no held-out frames)"}
    xs, fit = isotonic_increasing(confidence, correct)
    ok = np.flatnonzero(fit >= min_precision)
    threshold = float(xs[ok[0]]) if len(ok) else 1.0
    keep = confidence >= threshold
    return {"reject_below": round(threshold, 4), "min_precision": min_precision,
            "n_frames": int(len(confidence)), "accuracy_all": float(correct.mean()),
            "kept_fraction": float(keep.mean()),
            "accuracy_kept": float(correct[keep].mean()) if keep.any() else None,
            "method": "isotonic P(right | confidence) on held-out patients' hidden mention "
                      "windows"}


# --------------------------------------------------------------------------- files
def write_frame_labels(path: Path, result, rows: Optional[Iterator[dict]] = None) -> Path:
    """``frame_labels.csv`` of a whole run (a :class:`WholeResult`, or ``rows`` as it gives
    them), written row by row (atomically)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(WHOLE_COLUMNS)
            for r in (result.rows() if rows is None else rows):
                pc = r["predicted_confidence"]
                writer.writerow([r["frame_index"], f"{r['time_s']:.3f}",
                                 escape_cell(r["label"]), f"{r['confidence']:.4f}",
                                 r["window"], escape_cell(r["spoken_label"]),
                                 escape_cell(r["predicted_label"]),
                                 "" if pc != pc else f"{pc:.4f}", int(r["needs_review"]),
                                 r["source"]])
    return path


def read_frame_labels(path: Path) -> list[dict]:
    """The rows of a whole run's ``frame_labels.csv`` (numbers parsed)."""
    from ..core.csvtext import unescape_cell

    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        rows = []
        for r in reader:
            r = {k: unescape_cell(v) for k, v in r.items()}
            r["frame_index"] = int(r["frame_index"])
            r["time_s"] = float(r["time_s"])
            r["confidence"] = float(r["confidence"])
            rows.append(r)
    return rows


__all__ = ["WholeSettings", "WholeResult", "Anchor", "anchors_from_windows", "label_whole",
           "forward_backward", "transition_matrix", "stay_probabilities", "calibrate_rejection",
           "write_frame_labels", "NONE", "SPOKEN", "INFERRED", "WHOLE_COLUMNS",
           "read_frame_labels", "descriptors", "fit_match", "frame_posterior", "MatchModel",
           "FRAME_LABELS"]
