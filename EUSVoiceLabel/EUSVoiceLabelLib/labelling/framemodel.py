"""The per-frame landmark classifier of whole-procedure labelling (``eusvoicelabel
train-frames``; docs/whole.md).

Whole-procedure labelling needs a landmark score for every frame, including the ~97 % of
frames no one speaks over.  The two-branch network cannot give one: its joint head needs
speech, and its image branch reads 25-frame stacks through a VGG16-sized network (one stack
per labelled frame would be 25 times the decoding and far too slow for a 20-minute procedure
on 2 cores), and on unseen patients the image branch alone is right only about half the time
(docs/results.md).  So the frame scores come from a classifier built for it:

- **input**: one cropped grey frame resized to 64 x 128 (the ``cpu`` preset's size),
  standardised per frame (zero mean, unit variance: gain and depth changes between patients
  and within a procedure do not move it);
- **network**: four 3 x 3 convolutions of stride 2 (16, 32, 64, 96 channels, BatchNorm,
  ReLU), global average pooling to a 96-d embedding, dropout, one linear layer to the K
  landmarks: 0.08 M weights, 7 M multiply-adds a frame;
- **training data**: the cohort's voice-labelled windows, every frame of each window with the
  spoken label (the window cache of ``train``), class-weighted cross-entropy, AdamW, cosine
  schedule, the frame augmentation of ``--augment image`` (rotation, scale, shift, gain,
  gamma, speckle);
- **use**: its ``p(k | frame)`` is one of the two pieces of per-frame evidence of
  :mod:`.whole` (the other, the appearance match to the procedure's own spoken windows, is
  what carries most frames: on unseen patients the classifier alone is right on a minority
  of frames, docs/results.md);
- **rejection threshold**: calibrated on held-out patients (:mod:`.frametrain`).

The file is a plain dict of tensors and JSON values (``torch.load(weights_only=True)``) with
a content digest, like the model checkpoint (docs/contracts.md).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import __version__
from ..core.errors import CheckpointError
from ..core.progress import ProgressLike, as_progress
from ..data.outputs import OutputKind, claim_output, torch_file_of_format
from ..data.vocabulary import LabelSet
from ..nn.torchfile import (DIGEST_KEY, check_weights_digest, load_untrusted_torch,
                            torch_save_atomic, weights_digest)

log = logging.getLogger(__name__)

FRAME_MODEL_FORMAT = "eusvoicelabel-frame-model"
FRAME_MODEL_VERSION = 1
#: ``train-frames --out``: a frame-model file.
FRAME_MODEL = OutputKind("frame-model", "a frame model written by 'eusvoicelabel train-frames'",
                         folder=False, signature=torch_file_of_format(FRAME_MODEL_FORMAT))

#: Network input (H, W).
FRAME_SIZE = (64, 128)
CHANNELS = (16, 32, 64, 96)


class FrameNet(nn.Module):
    """One grey frame (B, 1, H, W) in [0, 1] -> landmark logits (B, K); :meth:`embed` gives the
    96-d embedding the logits are a linear function of."""

    def __init__(self, num_classes: int, channels: Sequence[int] = CHANNELS,
                 dropout: float = 0.3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(c_in, num_classes)

    @staticmethod
    def standardise(x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
        return (x - mean) / std

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.standardise(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.embed(x)))


@dataclass
class FrameTrainConfig:
    """How :func:`train_frame_model` trains (stored in the file)."""

    epochs: int = 12
    frames_per_window: int = 4   # frames drawn from each window per epoch
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-3
    augment: bool = True
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "FrameTrainConfig":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


@dataclass
class FrameModel:
    """A trained frame classifier and what labelling needs with it."""

    net: FrameNet
    labelset: LabelSet
    config: FrameTrainConfig = field(default_factory=FrameTrainConfig)
    #: Posterior below which a frame's label is rejected (``none``); see :mod:`.whole`.
    reject_below: float = 0.5
    calibration: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    image_size: tuple[int, int] = FRAME_SIZE
    #: The cohort's typical P(same scene | similarity) curve (a, c) (:mod:`.whole`), for a
    #: procedure whose spoken windows name one landmark only; None: unknown.
    match_curve: Optional[tuple[float, float]] = None

    @property
    def ids(self) -> list[str]:
        return list(self.labelset.ids)

    def prepare(self, frames: np.ndarray) -> torch.Tensor:
        """Cropped uint8 frames (N, H, W) -> network input (N, 1, h, w) in [0, 1]."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).float()[:, None] / 255.0
        if tuple(x.shape[-2:]) != tuple(self.image_size):
            # as the window cache resizes the training frames (data.dataset.resize_frames)
            x = F.interpolate(x, size=tuple(self.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return x

    @torch.inference_mode()
    def embed(self, frames: np.ndarray, batch: int = 256) -> np.ndarray:
        """96-d embeddings (N, D) float32 of cropped uint8 frames (N, H, W) of any size."""
        self.net.eval()
        out = [self.net.embed(self.prepare(frames[i:i + batch])).numpy()
               for i in range(0, len(frames), batch)]
        return np.concatenate(out) if out else np.zeros((0, self.net.head.in_features),
                                                        np.float32)

    @torch.inference_mode()
    def probabilities(self, frames: np.ndarray, batch: int = 256) -> np.ndarray:
        """``p(k | frame)`` (N, K) float32 of cropped uint8 frames (N, H, W) of any size."""
        self.net.eval()
        out = [torch.softmax(self.net(self.prepare(frames[i:i + batch])), dim=1).numpy()
               for i in range(0, len(frames), batch)]
        return np.concatenate(out) if out else np.zeros((0, len(self.labelset)), np.float32)

    def head_weights(self) -> tuple[np.ndarray, np.ndarray]:
        return (self.net.head.weight.detach().numpy().astype(np.float64),
                self.net.head.bias.detach().numpy().astype(np.float64))


def _resized_window_frames(images: np.ndarray) -> np.ndarray:
    """Window images (N, F, H, W) uint8 at any size -> (N, F, *FRAME_SIZE)."""
    if tuple(images.shape[-2:]) == FRAME_SIZE:
        return images
    n, f, h, w = images.shape
    x = torch.from_numpy(images.reshape(n * f, 1, h, w)).float()
    y = F.interpolate(x, size=FRAME_SIZE, mode="bilinear", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8).numpy().reshape(n, f, *FRAME_SIZE)


def fit_frame_net(images: np.ndarray, labels: np.ndarray, num_classes: int,
                  cfg: FrameTrainConfig, progress: ProgressLike = None) -> FrameNet:
    """Train a :class:`FrameNet` on window images (N, F, 64, 128) uint8 with one label per
    window (every frame carries its window's label)."""
    from ..train.augment import ImageAugment, augment_images

    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    net = FrameNet(num_classes)
    n, f = images.shape[:2]
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.max() / np.maximum(counts, 1), 0.0)
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_epoch = n * min(cfg.frames_per_window, f)
    steps = max(1, math.ceil(per_epoch / cfg.batch_size)) * cfg.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps,
                                                pct_start=0.1)
    aug = ImageAugment(p_frame_jitter=0.0)
    imgs = torch.from_numpy(images)
    ys = torch.from_numpy(labels.astype(np.int64))
    with as_progress(progress).task("frame model", total=cfg.epochs, unit="epoch") as task:
        for epoch in range(cfg.epochs):
            net.train()
            win = torch.arange(n).repeat_interleave(min(cfg.frames_per_window, f))
            frame = torch.randint(0, f, (len(win),), generator=gen)
            order = torch.randperm(len(win), generator=gen)
            win, frame = win[order], frame[order]
            total, right, seen = 0.0, 0, 0
            for i in range(0, len(win), cfg.batch_size):
                w, k = win[i:i + cfg.batch_size], frame[i:i + cfg.batch_size]
                x = imgs[w, k].float()[:, None] / 255.0
                if cfg.augment:
                    x = augment_images(x, aug, gen)
                y = ys[w]
                logits = net(x)
                loss = loss_fn(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(y)
                right += int((logits.argmax(1) == y).sum())
                seen += len(y)
            task.advance(loss=f"{total / max(seen, 1):.4f}", acc=f"{right / max(seen, 1):.2f}")
    net.eval()
    return net


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------- files
def save_frame_model(path: os.PathLike | str, model: FrameModel,
                     inputs: Sequence[os.PathLike | str] = ()) -> Path:
    """Write a frame-model file atomically (refused over an input or a file not ours)."""
    path = Path(path)
    claim_output(path, FRAME_MODEL, inputs)
    data = {"format": FRAME_MODEL_FORMAT, "format_version": FRAME_MODEL_VERSION,
            "package_version": __version__, "labelset": model.labelset.to_json(),
            "image_size": list(model.image_size), "channels": list(CHANNELS),
            "config": model.config.to_json(), "reject_below": float(model.reject_below),
            "calibration": model.calibration, "extra": model.extra,
            "match_curve": None if model.match_curve is None else list(model.match_curve),
            "model": {k: v.detach().cpu().clone() for k, v in model.net.state_dict().items()}}
    data[DIGEST_KEY] = weights_digest(data, "model")
    torch_save_atomic(path, data)
    return path


def load_frame_model(path: os.PathLike | str) -> FrameModel:
    """Read a file of :func:`save_frame_model` (no code is unpickled; the digest is checked).

    Raises:
        CheckpointError: missing, unreadable, damaged or not a frame model.
    """
    path = Path(path)
    hint = "train one with 'eusvoicelabel train-frames COHORT --out FILE'"
    data = load_untrusted_torch(path, ("frame model not found", hint),
                                ("cannot read the frame model ({error})", hint))
    if not isinstance(data, dict) or data.get("format") != FRAME_MODEL_FORMAT:
        raise CheckpointError("not an EUSVoiceLabel frame model", path, hint)
    check_weights_digest(data, "model", path, "use an undamaged copy or train it again")
    if data.get("format_version") != FRAME_MODEL_VERSION:
        raise CheckpointError(f"frame model format {data.get('format_version')} is not "
                              "supported by this version", path, hint)
    try:
        labelset = LabelSet.from_json(data["labelset"], str(path))
        net = FrameNet(len(labelset), tuple(data.get("channels", CHANNELS)))
        net.load_state_dict(data["model"])
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"the frame model does not load ({exc.__class__.__name__})",
                              path, hint) from None
    net.eval()
    return FrameModel(net, labelset, FrameTrainConfig.from_json(data.get("config") or {}),
                      float(data.get("reject_below", 0.5)), dict(data.get("calibration") or {}),
                      dict(data.get("extra") or {}),
                      tuple(int(v) for v in data.get("image_size", FRAME_SIZE)),
                      _curve(data.get("match_curve")))


def _curve(value) -> Optional[tuple[float, float]]:
    try:
        a, c = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (a, c) if math.isfinite(a) and math.isfinite(c) else None


def default_frame_model_path(model_path: os.PathLike | str) -> Path:
    """Where ``label --whole`` looks for the frame model of ``MODEL`` by default:
    ``MODEL`` with ``.frames.pt`` in place of its suffix (``model.pt`` -> ``model.frames.pt``)."""
    p = Path(model_path)
    return p.with_name(p.stem + ".frames.pt")


def check_labelset(model: FrameModel, labelset: LabelSet, path: os.PathLike | str) -> None:
    if list(model.labelset.ids) != list(labelset.ids):
        raise CheckpointError("the frame model was trained on other labels "
                              f"({', '.join(model.labelset.ids)})", path,
                              "train it on the cohort the model was trained on")


__all__ = ["FrameNet", "FrameModel", "FrameTrainConfig", "fit_frame_net",
           "save_frame_model", "load_frame_model", "default_frame_model_path", "FRAME_MODEL",
           "FRAME_SIZE", "softmax", "check_labelset"]
