"""Calibrating mention detection on a cohort with hand-made mentions.

Calibration picks, per spoken phrase, the confidence threshold that maximises the cohort's
overall F1 (coordinate ascent from the best single threshold) and stores the thresholds in the
vocabulary (``"thresholds": {"PD": 0.62, ...}`` per label), which ``detect --vocab`` reads back.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Mapping, Optional, Sequence, Union

from ..core.progress import ProgressLike
from ..data.outputs import OutputKind, claim_output, input_paths, json_object
from ..data.vocabulary import LabelSet
from .evaluate import PatientCandidates, collect_candidates, evaluate_candidates
from .spotter import DEFAULT_THRESHOLD, build_keyphrases

log = logging.getLogger(__name__)


def _calibrated_vocabulary(path) -> bool:
    """A vocabulary written by ``detect --calibrate``: every label carries thresholds."""
    data = json_object(path)
    labels = data.get("labels") if data is not None else None
    return isinstance(labels, list) and bool(labels) and \
        all(isinstance(lab, dict) and "thresholds" in lab for lab in labels)


#: ``detect --calibrate --out``: replaces an existing file only when it is a calibrated
#: vocabulary of ours (never a hand-made labels.json).
CALIBRATED_VOCABULARY = OutputKind("calibrated-vocabulary", "a vocabulary calibrated by "
                                   "'eusvoicelabel detect --calibrate'", folder=False,
                                   signature=_calibrated_vocabulary)


def calibrate_candidates(candidates: Sequence[PatientCandidates], labelset: LabelSet,
                         rounds: int = 3) -> dict[str, float]:
    """Per-phrase thresholds maximising the pooled F1 of the candidates."""
    keyphrases = build_keyphrases(labelset)
    # A phrase searched in several readings (build_keyphrases) has one threshold.
    phrases = list(dict.fromkeys(kp.phrase for kp in keyphrases))

    def f1(th: Mapping[str, float]) -> float:
        return evaluate_candidates(candidates, labelset, th)["overall"]["f1"]

    values = sorted({round(h.confidence, 4) for c in candidates for h in c.hits})
    grid = sorted(set([0.0] + [v for v in values] + [1.0]))
    # One threshold for all first, then each phrase in turn.
    best_global = max(grid, key=lambda t: (f1({p: t for p in phrases}), -abs(t - DEFAULT_THRESHOLD)))
    current = {p: best_global for p in phrases}
    best = f1(current)
    for _ in range(rounds):
        improved = False
        for p in phrases:
            mine = sorted({round(h.confidence, 4) for c in candidates for h in c.hits
                           if keyphrases[h.phrase_index].phrase == p})
            if not mine:
                continue
            for t in [0.0] + mine + [min(1.0, mine[-1] + 1e-4)]:
                trial = dict(current)
                trial[p] = t
                score = f1(trial)
                if score > best + 1e-9:
                    best, current, improved = score, trial, True
        if not improved:
            break
    return current


def calibrate(cohort: Union[str, os.PathLike], labelset: Optional[LabelSet] = None,
              out: Union[str, os.PathLike, None] = None, progress: ProgressLike = True,
              workers: Optional[int] = None) -> LabelSet:
    """Choose per-phrase thresholds that maximise F1 on a cohort; return (and optionally save)
    the vocabulary carrying them (``out`` is claimed first: not an input of the run, and an
    existing file only when it is a calibrated vocabulary of ours)."""
    if out is not None:
        claim_output(out, CALIBRATED_VOCABULARY, input_paths(cohort))
    candidates, labelset = collect_candidates(cohort, labelset, progress, workers)
    chosen = calibrate_candidates(candidates, labelset)
    keyphrases = build_keyphrases(labelset)
    per_label: dict[str, list[tuple[str, float]]] = {lid: [] for lid in labelset.ids}
    for kp in {kp.phrase: kp for kp in keyphrases}.values():  # one entry per phrase
        per_label[kp.label].append((kp.phrase, round(chosen.get(kp.phrase, kp.threshold), 4)))
    calibrated = LabelSet(tuple(replace(label, thresholds=tuple(per_label[label.id]))
                                for label in labelset.labels))
    if out is not None:
        calibrated.save(out)
    report = evaluate_candidates(candidates, calibrated)
    log.info("calibrated on %d patients: F1 %.3f (precision %.3f, recall %.3f)",
             report["n_patients"], report["overall"]["f1"], report["overall"]["precision"],
             report["overall"]["recall"])
    return calibrated
