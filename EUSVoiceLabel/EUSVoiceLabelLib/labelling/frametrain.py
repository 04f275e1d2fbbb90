"""``eusvoicelabel train-frames COHORT --out FILE``: train the frame classifier of
whole-procedure labelling on a cohort's voice-labelled windows and calibrate its rejection
threshold on held-out patients (docs/whole.md).

Calibration, with nothing but the cohort's own mentions (no ground truth of what is in view):

1. every 4th patient (by name; at least one when there are two or more) is held out and a
   frame classifier is trained on the others;
2. each held-out procedure is labelled whole as if only part of what was said were known:
   of every other mention (the 1st, 3rd, ...) only the first half of its window is given as a
   spoken window, and the other mentions are **hidden**.  Checked are the frames of the second
   halves (a scene that was spoken about: the window shows one landmark for its second) and
   of the hidden windows (scenes no one spoke about), each labelled like any frame no one
   spoke over, against the label that was said;
3. P(right | confidence) is fitted as a non-decreasing function of the frames' confidence
   (isotonic regression) and the threshold is the lowest confidence at which it reaches
   ``min_precision`` (0.5: a landmark is kept where it is more likely right than wrong,
   else the frame is ``none``);
4. the classifier written is then trained on every patient; it carries the threshold and the
   calibration's figures (``calibration`` in the file).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..core.progress import ProgressLike, as_progress
from ..data.dataset import WindowSettings, build_window_set
from ..data.outputs import claim_output, input_paths
from ..data.procedure import load_procedure
from ..data.vocabulary import labels_file, load_labelset
from .framemodel import (FRAME_MODEL, FRAME_SIZE, FrameModel, FrameTrainConfig,
                         _resized_window_frames, fit_frame_net, save_frame_model)
from .whole import Anchor, WholeSettings, calibrate_rejection, label_whole

log = logging.getLogger(__name__)


def calibration_patients(patients: Sequence[str]) -> list[str]:
    """The held-out patients of the calibration: every 4th by name (the 4th, 8th, ...), at
    least one when there are two or more patients."""
    names = sorted(patients)
    if len(names) < 2:
        return []
    held = names[3::4]
    return held or [names[-1]]


def hidden_mention_frames(proc, model: FrameModel, settings: WholeSettings,
                          frames_per_window: int) -> tuple[np.ndarray, np.ndarray]:
    """Label ``proc`` whole with the first halves of its even mentions' windows spoken and its
    odd mentions hidden (see the module doc); the confidence and rightness of the frames of
    the second halves and of the hidden windows (those no spoken half overlaps)."""
    ids = model.ids
    mentions = sorted((m for m in proc.mentions if m.label in ids), key=lambda m: m.time_s)
    half = max(1, frames_per_window // 2)
    anchors = []
    checked = []  # (frame indices, label)
    for k, m in enumerate(mentions):
        first = round(m.time_s * proc.fps)
        if k % 2 == 0:
            anchor = Anchor.from_mention(k, m.time_s, m.label, ids, frames_per_window, proc.fps)
            anchor.frame_indices = anchor.frame_indices[:half]
            anchors.append(anchor)
            checked.append((np.arange(half + 1, frames_per_window) + first, m.label))
        else:
            checked.append((np.arange(frames_per_window) + first, m.label))
    result = label_whole(proc, model, anchors, settings)
    k = len(ids)
    pos = {int(f): i for i, f in enumerate(result.steps)}
    conf, right = [], []
    for frames, label in checked:
        for f in frames:
            i = pos.get(int(f))
            if i is None or result.owner[i] >= 0:
                continue
            post = result.posterior[i]
            top = int(np.argmax(post))
            conf.append(float(post[top]))
            right.append(top < k and ids[top] == label)
    return np.array(conf), np.array(right, bool)


def cohort_match_curve(images: np.ndarray, labels: np.ndarray, patients: Sequence[str]
                       ) -> Optional[tuple[float, float]]:
    """The median over the cohort's patients (those with windows of two or more landmarks) of
    the fitted P(same scene | similarity) curve of :func:`.whole.fit_match`, from the window
    cache's frames: the fallback for a procedure whose spoken windows name one landmark."""
    from .whole import descriptors, fit_match

    patients = np.asarray(patients)
    curves = []
    for name in sorted(set(patients.tolist())):
        idx = np.flatnonzero(patients == name)
        m = fit_match([descriptors(images[i]) for i in idx], [int(labels[i]) for i in idx])
        if m is not None and len(set(m.labels.tolist())) >= 2:
            curves.append((m.a, m.c))
    if not curves:
        return None
    a, c = np.median(np.array(curves), axis=0)
    return float(a), float(c)


def train_frames(cohort: os.PathLike | str, out: os.PathLike | str,
                 cfg: Optional[FrameTrainConfig] = None, labels: Optional[os.PathLike] = None,
                 cache_dir: Optional[os.PathLike | str] = None, calibrate: bool = True,
                 min_precision: float = 0.5, settings: Optional[WholeSettings] = None,
                 progress: ProgressLike = True) -> FrameModel:
    """Train, calibrate and write a frame model (see the module doc)."""
    import torch

    cohort, out = Path(cohort), Path(out)
    inputs = input_paths(cohort, labels_file(cohort), labels)
    claim_output(out, FRAME_MODEL, inputs)
    cfg = cfg or FrameTrainConfig()
    settings = settings or WholeSettings(stride=2)
    reporter = as_progress(progress)
    t0 = time.perf_counter()
    labelset = load_labelset(labels, cohort)
    ws = build_window_set(cohort, labelset, settings=WindowSettings(image_size=FRAME_SIZE),
                          cache_dir=cache_dir, progress=reporter)
    images = _resized_window_frames(ws.images)
    patients = np.array(ws.patients)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    calibration: dict = {"method": "none (fewer than 2 patients)", "reject_below": 0.5}
    if calibrate:
        held = calibration_patients(set(ws.patients))
        if held:
            train_idx = np.flatnonzero(~np.isin(patients, held))
            net = fit_frame_net(images[train_idx], ws.labels[train_idx], len(labelset), cfg,
                                progress=reporter)
            probe = FrameModel(net, labelset, cfg)
            confs, rights = [], []
            with reporter.task("calibration", total=len(held), unit="patient") as task:
                for name in held:
                    proc = load_procedure(cohort / name, labelset=labelset)
                    c, r = hidden_mention_frames(proc, probe, settings, ws.settings.frames)
                    confs.append(c)
                    rights.append(r)
                    task.advance()
            calibration = calibrate_rejection(np.concatenate(confs), np.concatenate(rights),
                                              min_precision)
            calibration.update({"held_out": held, "stride": settings.stride})
    net = fit_frame_net(images, ws.labels, len(labelset), cfg, progress=reporter)
    curve = cohort_match_curve(ws.images, ws.labels, ws.patients)
    model = FrameModel(net, labelset, cfg, float(calibration["reject_below"]), calibration,
                       {"cohort": str(cohort), "patients": ws.patient_ids,
                        "n_windows": len(ws), "label_counts": ws.label_counts(),
                        "wall_time_s": round(time.perf_counter() - t0, 1)}, match_curve=curve)
    save_frame_model(out, model, inputs)
    return model


__all__ = ["train_frames", "calibration_patients", "hidden_mention_frames"]
