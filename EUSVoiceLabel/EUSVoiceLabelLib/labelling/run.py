"""Labelling a procedure: every mention window gets the network's predicted landmark, its
confidence, class probabilities and a Grad-CAM heat map, and the window's label: the
network's posterior fused with what was said (:mod:`.fusion`), flagged for review where they
disagree.

Windows are processed one at a time (decoded by time range), so a 20-minute procedure never
sits in memory; their outputs are streamed to disk by :mod:`.output`.  Each frame of the
labelled windows belongs to one window: the latest window whose 25 frames include it (a mention
spoken while the previous window is still running takes over from its onset).

Each window's heat map is the Grad-CAM map upsampled to the cropped frame and stretched to its
own range (:func:`..nn.evidence.display_map`); its evidence region (``landmarks.seq.nrrd``, the
module's segmentation) is the connected part of that map at or above ``cam_threshold`` that
holds the peak (:func:`..nn.evidence.evidence_region`; docs/evidence.md).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..core.errors import CheckpointError, MentionsError
from ..core.progress import ProgressLike, as_progress
from ..data.audio import SpectrogramSettings, spectrogram
from ..data.dataset import WindowSettings, resize_frames
from ..data.mentions import Mention
from ..data.procedure import Procedure, window_frame_indices
from ..data.vocabulary import LabelSet
from ..nn.devices import select_device
from ..nn.evidence import REGION_THRESHOLD, display_map, evidence_region, peak_of
from ..nn.explain import grad_cam, upsample_map
from ..nn.fastpath import optimise_for_inference
from ..train.checkpoints import load_checkpoint
from .fusion import FusedLabel, checkpoint_temperature, fuse_window, training_prior

log = logging.getLogger(__name__)

DEFAULT_CAM_THRESHOLD = REGION_THRESHOLD


class LabelModel:
    """A trained model ready to label windows (read from a checkpoint, never unpickled)."""

    def __init__(self, loaded, device) -> None:
        self._loaded = loaded
        # Frozen weights, BatchNorm folded, channels-last: same predictions, and Grad-CAM's
        # backward stops at the heat-map layer (measured 2x faster; docs/benchmarks.md).
        # In place: the loaded copy is used for nothing else (saves a copy of the weights).
        self.model = optimise_for_inference(loaded.model, device, inplace=True)
        self.labelset: LabelSet = loaded.labelset
        self.variant: str = loaded.config.variant
        #: The label distribution the network was trained towards (:func:`.fusion.training_prior`).
        self.prior: np.ndarray = training_prior(loaded.meta, len(self.labelset))
        #: The network's calibration temperature for fusion (:func:`.fusion.checkpoint_temperature`).
        self.temperature: float = checkpoint_temperature(loaded.meta)
        self.device = device
        self._verifier = None
        pre = loaded.preprocessing or {}
        size = pre.get("image_size") or list(loaded.config.image_size)
        self.settings = WindowSettings(
            image_size=tuple(int(v) for v in size),
            frames=int(pre.get("frames", loaded.config.frames)),
            spectrogram=SpectrogramSettings.from_json(pre.get("spectrogram", {})))

    @classmethod
    def load(cls, path: os.PathLike | str, device: str = "auto",
             labelset: Optional[LabelSet] = None) -> "LabelModel":
        """Load a checkpoint written by ``eusvoicelabel train``.

        Raises:
            CheckpointError: unreadable, untrusted or incompatible checkpoint.
        """
        dev = select_device(device)
        return cls(load_checkpoint(path, labelset=labelset, device=dev), dev)

    @property
    def has_image(self) -> bool:
        return getattr(self.model, "image_branch", None) is not None

    @property
    def verifier(self):
        """The checkpoint's mention verifier (:class:`..speech.verify.MentionVerifier`), None
        when it holds none (a model trained before verifiers, or ``train --no-verifier``)."""
        if self._loaded.verifier_state is None:
            return None
        if self._verifier is None:
            from ..speech.verify import MentionVerifier  # deferred: pocketsphinx
            try:
                self._verifier = MentionVerifier.from_state(*self._loaded.verifier_state)
            except (ValueError, KeyError, RuntimeError) as exc:
                raise CheckpointError(f"the checkpoint's mention verifier does not load "
                                      f"({str(exc).splitlines()[0]})", None,
                                      "train the model again with this version") from None
        return self._verifier


@dataclass
class WindowResult:
    """The labelling of one mention window.

    ``predicted``, ``confidence`` and ``probabilities`` are the network's own; ``label`` and
    ``label_confidence`` the window's label after fusion with the spoken label (what the
    outputs write), ``needs_review`` / ``review_reason`` its review flag (:mod:`.fusion`).
    """

    index: int
    mention: Mention
    predicted: str
    confidence: float
    probabilities: np.ndarray  # float32 (K,)
    frame_indices: np.ndarray  # int64 (frames,) on the 25 fps grid
    cam: Optional[np.ndarray] = None  # float32 (H, W) at the cropped frame size, 0-1
    region: Optional[np.ndarray] = None  # bool (H, W): the evidence region around the peak
    joint: Optional[np.ndarray] = None  # float32 (H, W) joint image-voice map, 0-1
    peak: Optional[tuple[int, int]] = None  # (column, row) of the heat-map maximum
    fused: Optional[FusedLabel] = None  # None: the network's label stands

    @property
    def label(self) -> str:
        """The window's label: fused with what was said, else the network's."""
        return self.fused.label if self.fused is not None else self.predicted

    @property
    def label_confidence(self) -> float:
        """The probability of :attr:`label`."""
        return self.fused.confidence if self.fused is not None else self.confidence

    @property
    def needs_review(self) -> bool:
        return self.fused is not None and self.fused.needs_review

    @property
    def review_reason(self) -> str:
        return self.fused.review_reason if self.fused is not None else ""

    @property
    def time_s(self) -> float:
        return self.mention.time_s

    @property
    def end_s(self) -> Optional[float]:
        return self.mention.end_s

    @property
    def spoken_label(self) -> Optional[str]:
        """The label that was said (known for file / transcript / detected mentions)."""
        return self.mention.label or None


@dataclass
class LabelResult:
    """All windows of a labelled procedure."""

    procedure: Procedure
    labelset: LabelSet
    windows: list[WindowResult] = field(default_factory=list)
    cancelled: bool = False
    #: The whole-procedure labelling (:class:`.whole.WholeResult`) of ``label --whole``.
    whole: Optional[object] = None
    cam_threshold: float = DEFAULT_CAM_THRESHOLD

    def frame_owners(self) -> dict[int, int]:
        """Frame index -> index (in ``windows``) of the window that labels it."""
        return frame_owners([w.frame_indices for w in self.windows], self.procedure.n_frames)

    def frame_labels(self) -> list[dict]:
        """One row per labelled frame: frame_index, time_s, label and confidence (fused),
        window, spoken_label, the network's predicted_label and predicted_confidence, and
        needs_review."""
        rows = []
        for f, k in self.frame_owners().items():
            w = self.windows[k]
            rows.append({"frame_index": f, "time_s": f / self.procedure.fps,
                         "label": w.label, "confidence": w.label_confidence, "window": w.index,
                         "spoken_label": w.spoken_label or "", "predicted_label": w.predicted,
                         "predicted_confidence": w.confidence, "needs_review": w.needs_review})
        return rows


def frame_owners(windows: Sequence[np.ndarray], n_frames: int) -> dict[int, int]:
    """Frame index -> position in ``windows`` (frame-index arrays in onset order) of the window
    that labels it, sorted by frame: a later window takes over overlapping frames, frames past
    the recording belong to none."""
    owners: dict[int, int] = {}
    for k, indices in enumerate(windows):
        for f in indices:
            if 0 <= f < n_frames:
                owners[int(f)] = k
    return dict(sorted(owners.items()))


def label_procedure(proc: Procedure, model: LabelModel,
                    mentions: Optional[Sequence[Mention]] = None, with_cam: bool = True,
                    joint_map: bool = False, progress: ProgressLike = None,
                    on_window: Optional[Callable[[WindowResult, np.ndarray], None]] = None,
                    cam_threshold: float = DEFAULT_CAM_THRESHOLD) -> LabelResult:
    """Label every mention window of a procedure.

    Args:
        proc: the procedure.
        model: a :class:`LabelModel`.
        mentions: windows to label (default: the procedure's mentions).
        with_cam: compute Grad-CAM heat maps (needs an image branch).
        joint_map: also keep the joint image-voice map C.
        progress: reporter of the windows done (see :mod:`..core.progress`); when it is
            cancelled, labelling stops before the next window and the result
            (``cancelled=True``) keeps the windows done so far.
        on_window: called with each window's result and its cropped frames (uint8), e.g. to
            stream outputs to disk.
    """
    mentions = sorted(proc.mentions if mentions is None else mentions, key=lambda m: m.time_s)
    if not mentions:
        raise MentionsError("no mentions to label", proc.path,
                            "give --mentions auto, a mentions CSV or a transcript")
    if list(model.labelset.ids) != list(proc.labelset.ids):
        log.info("labelling with the model's labels %s", model.labelset.ids)
    proc.check_mentions(mentions)
    result = LabelResult(proc, model.labelset, cam_threshold=cam_threshold)
    model.model.eval()
    reporter = as_progress(progress)
    with reporter.task("label", total=len(mentions), unit="window") as task:
        for k, m in enumerate(mentions):
            if reporter.cancelled():
                result.cancelled = True
                break
            w, frames = _label_window(model, proc, k, m, with_cam, joint_map, cam_threshold)
            result.windows.append(w)
            if on_window is not None:
                on_window(w, frames)
            task.advance()
    return result


def _label_window(model: LabelModel, proc: Procedure, k: int, m: Mention, with_cam: bool,
                  joint_map: bool, cam_threshold: float) -> tuple[WindowResult, np.ndarray]:
    """The result of window ``k`` (mention ``m``, its evidence region cut at
    ``cam_threshold``) and its cropped frames (uint8)."""
    net, settings = model.model, model.settings
    crop_hw = (proc.frame_size[1], proc.frame_size[0])
    frames = proc.frames_window(m.time_s, settings.frames)
    image = resize_frames(frames, settings.image_size).astype(np.float32) / 255.0
    voice = spectrogram(proc.voice_window(m), proc.sample_rate, settings.spectrogram)
    img_t = torch.from_numpy(image)[None].to(model.device)
    voice_t = torch.from_numpy(voice)[None].to(model.device)
    cam = joint = None
    ids = model.labelset.ids

    def fused_class(p: np.ndarray) -> int:  # the heat map explains the window's label
        return ids.index(fuse_window(p, m, ids, model.prior,
                                     temperature=model.temperature).label)

    if with_cam and model.has_image:
        exp = grad_cam(net, img_t, voice_t, target=fused_class, joint=joint_map)
        probs = exp.probabilities
        if exp.cam is not None:
            cam = display_map(upsample_map(exp.cam, crop_hw))
        if exp.joint is not None:
            joint = upsample_map(exp.joint, crop_hw)
    else:
        with torch.inference_mode():
            probs = torch.softmax(net(img_t, voice_t).float(), dim=1)[0].cpu().numpy()
    cls = int(np.argmax(probs))
    peak = peak_of(cam) if cam is not None else None
    w = WindowResult(index=k, mention=m, predicted=ids[cls],
                     confidence=float(probs[cls]), probabilities=probs.astype(np.float32),
                     frame_indices=window_frame_indices(m.time_s, settings.frames, proc.fps),
                     cam=cam, joint=joint, peak=peak,
                     region=None if cam is None else evidence_region(cam, cam_threshold, peak),
                     fused=fuse_window(probs, m, ids, model.prior,
                                       temperature=model.temperature))
    return w, frames
