"""The one rule that turns what was said and what the network saw into the label of a window.

Two pieces of evidence speak about each window's landmark:

- **speech** ``q``: the label the clinician said.  A mention read from a mentions file, a
  transcript, the procedure's ``mentions.csv`` or a review is taken as certain (one-hot).  A
  mention found by the detector (``--mentions auto``) carries the detector's confidence ``c``
  that its phrase was said.  Two things can be wrong with it, and they mean different things:
  nothing was said (probability ``1 - c``), and then the speech says nothing about the window's
  landmark (uniform, ``1 / K`` on every label, the heard one included); or a landmark was said
  and the detector heard another one of the ``K`` (probability :data:`HEARD_LABEL_RELIABILITY`
  ``r`` that it heard the right one).  So

      q(heard) = c · r + (1 - c) / K,    q(other) = c · (1 - r) / (K - 1) + (1 - c) / K.

  (Reading ``c`` as the probability of the heard *label*, ``q = c`` on it and ``(1 - c) /
  (K - 1)`` on the others, put the whole doubt on the other labels: a detection at 0.5-0.6,
  whose label was right in 16 of 18 true mentions, then lost to a network right in 10 of them,
  and the fused label was below the heard one on three of four cohort pairs; docs/results.md.)
  (The scores of the phrases that competed with the heard one on the same speech
  were tried as per-label evidence and made the labels worse: a nested phrase such as
  "pancreas" inside "pancreatic duct" scores nearly as high as the phrase said, so the
  network decided between them and was wrong more often than the detector's choice;
  docs/results.md.)
  Without a spoken label ``q`` is uniform (it says nothing).
- **the network** ``p_net``: its softmax posterior over the same ``K`` labels, calibrated by
  the checkpoint's temperature ``T`` when it has one (``p_net ∝ p^(1/T)``; ``train
  --temperature-from EVAL_DIR`` stores the temperature ``evaluate`` fitted on its held-out
  folds, ``calibration.json``).  A network trained to near 100 % on its training patients
  gives its top label 0.99 on new patients where it is right 60 % of the time; taken at its
  word it outvotes a detection heard at 0.9.  Calibrated, it speaks as often right as it
  claims, and the two are weighed as what they are.

Both are posteriors over the labels; if the two pieces of evidence are independent given the
landmark, Bayes' rule combines them as

    p(k | speech, window) ∝ q(k) · p_net(k) / prior(k)

where ``prior`` is the label distribution the network was trained towards: the training label
counts times the loss's class weights (``prior(k) ∝ n_k · w_k``, stored in the checkpoint; the
paper's class-weighted loss makes it uniform, so the division then changes nothing).  A
checkpoint without label counts gets a uniform prior; a label without training windows is
not divided (its network probability stands as it is).  The division keeps the training
cohort's label frequencies from tilting the label of a new procedure; the speech evidence is
taken as carrying no class prior of its own (the spotter scores every phrase against the same
phone loop).

Consequences, which the tests check: a certain mention decides the label whatever the network
says (``q`` is zero elsewhere); a detected mention at confidence 0.96 over 5 labels outweighs
the network unless the network gives the heard label less than about 1/46 of its top label
(1/16 at confidence 0.8, 1/5.4 at 0.5); a detected mention at confidence 0.4 loses to a network
that is sure of another label.

The arithmetic is done in the log domain with every probability floored at :data:`FLOOR`
(``log 0`` never happens), except that an exact zero of ``q`` (a certain mention) stays a hard
zero, so a certain mention cannot be outvoted by any network output, and renormalised.

A window **needs review** when the network's own top label differs from the spoken label, when
the fused label's probability is below :data:`REVIEW_BELOW`, or when its spoken label is a
detection heard with a confidence below :data:`REVIEW_BELOW`.  The last is needed because the
two pieces of evidence are not independent: the network's voice branch hears the same speech
as the detector, so where it mishears an acronym the same way, the fused probability counts
the one misheard word twice and looks sure (0.94-0.97 on "bile duct" heard as "pancreatic
duct" at 0.52-0.77); the detector's own confidence is the honest measure of what was heard.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from ..data.mentions import Mention
from ..train.metrics import is_temperature, scale_probabilities

#: Smallest probability used in the log domain (a network output of exactly 0).
FLOOR = 1e-9

#: Probability that the detector heard the right label where a landmark was said.  Measured:
#: 530 of the 541 detected true mentions of the four 15 dB paper-scale cohorts (0.98,
#: ``python3 -m EUSVoiceLabelLib.labelling.endtoend``); set below it because noisier rooms
#: confuse the acronyms more (values 0.90-0.99 gave the same labels within one window there).
HEARD_LABEL_RELIABILITY = 0.95

#: Windows whose fused label has a probability below this are flagged for review (1 in 5
#: of them would be wrong if the fused probability is calibrated).
REVIEW_BELOW = 0.8

#: Mention sources taken as certain: written by a person or a transcript, or confirmed in review.
CERTAIN_SOURCES = ("file", "transcript", "review")

#: Review reasons (``review_reason`` column).
DISAGREES = "network disagrees"
LOW_CONFIDENCE = "low confidence"
UNCERTAIN_DETECTION = "uncertain detection"


@dataclass(frozen=True)
class FusedLabel:
    """The label of one window after fusion.

    Attributes:
        label: the fused label id (what every output writes).
        confidence: its fused probability.
        probabilities: the fused posterior over the labels (float64, sums to 1).
        needs_review: the network's top label differs from the spoken one, ``confidence``
            is below the review threshold, or the spoken label is a detection heard below it.
        review_reason: why (``"network disagrees"``, ``"low confidence"``,
            ``"uncertain detection"``, joined by ``"; "``), empty when not flagged.
    """

    label: str
    confidence: float
    probabilities: np.ndarray
    needs_review: bool
    review_reason: str = ""


def _detected(mention: Mention) -> bool:
    """A mention found by the detector, with its confidence (not one taken as certain)."""
    return mention.source not in CERTAIN_SOURCES and mention.confidence is not None


def speech_evidence(mention: Optional[Mention], ids: Sequence[str]) -> np.ndarray:
    """``q``: the speech evidence over the labels ``ids`` (see the module doc)."""
    k = len(ids)
    if mention is None or not mention.label or mention.label not in ids:
        return np.full(k, 1.0 / k)
    heard = list(ids).index(mention.label)
    q = np.zeros(k)
    if not _detected(mention) or k == 1:
        q[heard] = 1.0
        return q
    c = min(max(float(mention.confidence), 0.0), 1.0)
    r = HEARD_LABEL_RELIABILITY
    q[:] = c * (1.0 - r) / (k - 1) + (1.0 - c) / k
    q[heard] = c * r + (1.0 - c) / k
    return q


def training_prior(meta: Optional[Mapping], k: int) -> np.ndarray:
    """The label distribution a checkpoint's network was trained towards: the training label
    counts (``preprocessing.label_counts``) times the loss's class weights
    (``class_weights``), normalised; uniform when the checkpoint does not say."""
    meta = meta or {}
    counts = (meta.get("preprocessing") or {}).get("label_counts")
    if not counts or len(counts) != k:
        return np.full(k, 1.0 / k)
    weights = meta.get("class_weights") or [1.0] * k
    if len(weights) != k:
        weights = [1.0] * k
    prior = np.array(counts, dtype=np.float64) * np.array(weights, dtype=np.float64)
    if not np.all(np.isfinite(prior)) or prior.sum() <= 0:
        return np.full(k, 1.0 / k)
    return prior / prior.sum()


def checkpoint_temperature(meta: Optional[Mapping]) -> float:
    """The network's calibration temperature stored in a checkpoint (``calibration`` of its
    metadata; 1 when it has none or the value is not a usable temperature)."""
    cal = (meta or {}).get("calibration") or {}
    t = cal.get("temperature") if isinstance(cal, Mapping) else None
    return float(t) if is_temperature(t) else 1.0


def fuse_posteriors(q: np.ndarray, p_net: np.ndarray,
                    prior: Optional[np.ndarray] = None) -> np.ndarray:
    """``q · p_net / prior``, normalised, in the log domain (see the module doc): zeros of
    ``q`` stay zero, every other probability is floored at :data:`FLOOR`."""
    q = np.asarray(q, dtype=np.float64)
    p = np.asarray(p_net, dtype=np.float64)
    k = len(p)
    prior = np.full(k, 1.0 / k) if prior is None else np.asarray(prior, dtype=np.float64)
    if q.shape != (k,) or prior.shape != (k,):
        raise ValueError(f"speech evidence {q.shape}, network {p.shape} and prior "
                         f"{prior.shape} must have one value per label")
    # A label the network was never trained on (prior 0) gets no correction: its network
    # probability is taken as it is, not divided by (almost) nothing.
    known = prior > 0
    prior = np.where(known, prior, prior[known].mean() if known.any() else 1.0)
    allowed = q > 0
    if not allowed.any():
        allowed[:] = True
    logp = np.log(np.maximum(q, FLOOR)) + np.log(np.maximum(p, FLOOR)) - np.log(prior)
    logp[~allowed] = -math.inf
    logp -= logp[allowed].max()
    out = np.exp(logp)
    return out / out.sum()


def fuse_window(p_net: np.ndarray, mention: Optional[Mention], ids: Sequence[str],
                prior: Optional[np.ndarray] = None,
                review_below: float = REVIEW_BELOW, temperature: float = 1.0) -> FusedLabel:
    """The fused label of one window: its network posterior ``p_net`` (calibrated by
    ``temperature``) with the speech evidence of its ``mention`` over the labels ``ids``."""
    fused = fuse_posteriors(speech_evidence(mention, ids),
                            scale_probabilities(p_net, temperature), prior)
    top = int(np.argmax(fused))
    confidence = float(fused[top])
    reasons = []
    spoken = mention.label if mention is not None and mention.label in ids else None
    if spoken is not None and ids[int(np.argmax(p_net))] != spoken:
        reasons.append(DISAGREES)
    if confidence < review_below:
        reasons.append(LOW_CONFIDENCE)
    if spoken is not None and _detected(mention) and float(mention.confidence) < review_below:
        reasons.append(UNCERTAIN_DETECTION)
    return FusedLabel(ids[top], confidence, fused, bool(reasons), "; ".join(reasons))


__all__ = ["FusedLabel", "speech_evidence", "training_prior", "checkpoint_temperature",
           "fuse_posteriors", "fuse_window",
           "FLOOR", "REVIEW_BELOW", "HEARD_LABEL_RELIABILITY", "CERTAIN_SOURCES", "DISAGREES",
           "LOW_CONFIDENCE", "UNCERTAIN_DETECTION"]
