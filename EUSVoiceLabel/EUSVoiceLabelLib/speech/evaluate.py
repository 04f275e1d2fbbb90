"""Measuring mention detection on a cohort with hand-made mentions.

A detection is a hit when its label matches a reference mention's and its onset lies within
:data:`ONSET_TOLERANCE_S` of it (one-to-one, closest pairs first).  Precision, recall and F1 are
reported per label and overall (pooled counts), with the onset error of the hits (median and
90th percentile) and the speed (seconds of audio per second of processing).  Calibrating the
thresholds on such a cohort: :mod:`.calibrate`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from ..core.errors import MentionsError
from ..core.pool import run_tasks, spawn_pool
from ..core.progress import ProgressLike, as_progress
from ..data.mentions import Mention
from ..data.outputs import OutputKind, json_with_keys
from ..data.procedure import find_patients, load_procedure
from ..data.vocabulary import LabelSet, load_labelset
from .denoise import noise_suppressor
from .detect import default_workers, select_mentions, spot_candidates
from .spotter import Hit, get_spotter

log = logging.getLogger(__name__)

#: ``detect --evaluate --out``: replaces an existing file only when it is such a report.
DETECTION_REPORT = OutputKind("detection-report", "a detection report of 'eusvoicelabel "
                              "detect --evaluate'", folder=False,
                              signature=json_with_keys("overall", "per_label",
                                                       "noise_suppressor"))

ONSET_TOLERANCE_S = 0.5


@dataclass
class PatientCandidates:
    """Un-thresholded detections of one patient, with the reference mentions."""

    name: str
    hits: list[Hit]
    reference: list[Mention]
    audio_offset_s: float
    audio_s: float
    seconds: float


def match(detected: Sequence[Mention], reference: Sequence[Mention],
          tolerance_s: float = ONSET_TOLERANCE_S) -> list[tuple[int, int]]:
    """One-to-one (detected index, reference index) pairs with the same label and onsets within
    ``tolerance_s``, closest pairs first."""
    pairs = sorted((abs(d.time_s - r.time_s), i, j)
                   for i, d in enumerate(detected) for j, r in enumerate(reference)
                   if d.label == r.label and abs(d.time_s - r.time_s) <= tolerance_s)
    used_d: set[int] = set()
    used_r: set[int] = set()
    out = []
    for _, i, j in pairs:
        if i not in used_d and j not in used_r:
            used_d.add(i)
            used_r.add(j)
            out.append((i, j))
    return out


def _prf(tp: int, fp: int, fn: int) -> dict:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4),
            "tp": tp, "fp": fp, "fn": fn}


def score_detections(results: Sequence[tuple[Sequence[Mention], Sequence[Mention]]],
                     labels: Sequence[str]) -> dict:
    """Precision/recall/F1 per label and overall, and onset errors, over (detected, reference)
    pairs of mention lists."""
    counts = {lid: [0, 0, 0] for lid in labels}
    errors: list[float] = []
    for detected, reference in results:
        pairs = match(detected, reference)
        hit_d = {i for i, _ in pairs}
        hit_r = {j for _, j in pairs}
        for i, d in enumerate(detected):
            counts.setdefault(d.label, [0, 0, 0])[0 if i in hit_d else 1] += 1
        for j, r in enumerate(reference):
            if j not in hit_r:
                counts.setdefault(r.label, [0, 0, 0])[2] += 1
        errors.extend(abs(detected[i].time_s - reference[j].time_s) for i, j in pairs)
    total = [sum(c[k] for c in counts.values()) for k in range(3)]
    out = {"overall": _prf(*total),
           "per_label": {lid: _prf(*c) for lid, c in counts.items()},
           "onset_error_s": {
               "median": round(float(np.median(errors)), 4) if errors else None,
               "p90": round(float(np.percentile(errors, 90)), 4) if errors else None,
               "n": len(errors)}}
    return out


def _warm_worker(labelset: LabelSet) -> None:
    get_spotter(labelset)


def _patient_candidates(folder: Path, labelset: LabelSet, workers: Optional[int] = None
                        ) -> Optional[PatientCandidates]:
    """Un-thresholded detections of one patient (None when it has no mentions.csv)."""
    proc = load_procedure(folder, labelset=labelset)
    if proc.mentions_path is None:
        log.warning("%s has no mentions.csv: skipped", folder)
        return None
    samples, rate = proc.native_audio()
    t0 = time.perf_counter()
    hits = spot_candidates(samples, rate, labelset, workers=workers)
    return PatientCandidates(proc.name, hits, list(proc.mentions), proc.audio_offset_s,
                             len(samples) / rate, time.perf_counter() - t0)


def collect_candidates(cohort: Union[str, os.PathLike], labelset: Optional[LabelSet] = None,
                       progress: ProgressLike = True, workers: Optional[int] = None,
                       patients: Optional[Sequence[str]] = None
                       ) -> tuple[list[PatientCandidates], LabelSet]:
    """Run the spotter (no thresholds) on every patient of a cohort that has mentions
    (``patients``: only the folders of these names).

    Patients are decoded ``workers`` at a time in separate processes (default: one per core, at
    most 2), each patient in one process; a patient's ``seconds`` is then its share of the
    wall-clock time, so the summed speed is that of the whole machine.  A single patient is
    decoded in this process (its long recording cut into pieces decoded in parallel).
    """
    cohort = Path(cohort)
    labelset = labelset or load_labelset(None, cohort)
    names = None if patients is None else set(patients)
    folders = [f for f in find_patients(cohort) if names is None or f.name in names]
    n_workers = default_workers() if workers is None else max(1, int(workers))
    n_workers = min(n_workers, len(folders))
    with as_progress(progress).task("detect", total=len(folders), unit="patient") as task:
        if n_workers > 1:
            with spawn_pool(n_workers) as pool:
                # Warm the workers (imports, decoder set-up) outside the timing.
                list(pool.map(_warm_worker, [labelset] * n_workers))
                t0 = time.perf_counter()
                found = run_tasks(pool, _patient_candidates,
                                  [(f, labelset, 1) for f in folders],
                                  on_result=lambda i, c: task.advance(), ordered=True)
                wall = time.perf_counter() - t0
            out = [c for c in found if c is not None]
            total = sum(c.audio_s for c in out) or 1.0
            out = [replace(c, seconds=wall * c.audio_s / total) for c in out]
        else:
            get_spotter(labelset)  # build once, outside the timing
            out = []
            for folder in folders:
                # One patient at a time: its own long recordings may still be cut into pieces
                # decoded in parallel (see spot_candidates).
                c = _patient_candidates(folder, labelset, workers)
                if c is not None:
                    out.append(c)
                task.advance()
    if not out:
        raise MentionsError("no patient has a mentions.csv to compare with", cohort,
                            "evaluation and calibration need hand-made mentions")
    return out, labelset


def evaluate_candidates(candidates: Sequence[PatientCandidates], labelset: LabelSet,
                        thresholds: Optional[Mapping[str, float]] = None) -> dict:
    """Scores of thresholded candidates (see :func:`score_detections`) plus speed."""
    results = [(select_mentions(c.hits, labelset, thresholds, c.audio_offset_s), c.reference)
               for c in candidates]
    report = score_detections(results, labelset.ids)
    audio_s = sum(c.audio_s for c in candidates)
    seconds = sum(c.seconds for c in candidates)
    report["speed"] = {"audio_s": round(audio_s, 2), "processing_s": round(seconds, 2),
                       "x_real_time": round(audio_s / seconds, 1) if seconds else None}
    report["n_patients"] = len(candidates)
    report["n_reference"] = sum(len(c.reference) for c in candidates)
    report["noise_suppressor"] = noise_suppressor()
    return report


def evaluate_detection(cohort: Union[str, os.PathLike], labelset: Optional[LabelSet] = None,
                       vocab: Union[str, os.PathLike, LabelSet, None] = None,
                       thresholds: Optional[Mapping[str, float]] = None,
                       progress: ProgressLike = True, workers: Optional[int] = None) -> dict:
    """Compare automatic detections with each patient's ``mentions.csv``.

    Returns a dict: ``overall`` and ``per_label`` (precision, recall, f1, tp, fp, fn),
    ``onset_error_s`` (median, p90, n), ``speed`` (audio_s, processing_s, x_real_time),
    ``n_patients``, ``n_reference``, ``noise_suppressor`` (see :func:`.denoise.noise_suppressor`)
    and ``tolerance_s``.
    """
    labelset = _vocab(vocab) or labelset
    candidates, labelset = collect_candidates(cohort, labelset, progress, workers)
    report = evaluate_candidates(candidates, labelset, thresholds)
    report["tolerance_s"] = ONSET_TOLERANCE_S
    return report


def _vocab(vocab: Union[str, os.PathLike, LabelSet, None]) -> Optional[LabelSet]:
    if vocab is None or isinstance(vocab, LabelSet):
        return vocab
    return load_labelset(vocab)


