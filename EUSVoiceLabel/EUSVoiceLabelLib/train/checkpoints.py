"""Model checkpoints: the trained weights with the configuration, label set, preprocessing
settings and package version, written atomically and read back with
``torch.load(weights_only=True)`` (no code is unpickled), refused for another label set,
variant or major.minor version."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .. import __version__
from ..core.errors import CheckpointError
from ..data.vocabulary import LabelSet
from ..nn.devices import select_device
from ..nn.network import build_model
from ..nn.torchfile import (DIGEST_KEY, check_weights_digest, load_untrusted_torch,
                            torch_save_atomic, weights_digest)
from .config import TrainConfig
from .loop import TrainResult


CHECKPOINT_FORMAT = "eusvoicelabel-model"
FORMAT_VERSION = 1


def preprocessing_settings(data: Any, cfg: TrainConfig) -> dict[str, Any]:
    """The input settings a model depends on: the configuration's window settings (image size,
    frames) with the windows' spectrogram scaling (``data.settings``, a
    :class:`..data.dataset.WindowSettings`, when it has one), and the voice input's shape."""
    spectrogram = getattr(getattr(data, "settings", None), "spectrogram", None)
    out = cfg.window_settings(spectrogram).to_json()
    out["voice_shape"] = [int(v) for v in np.asarray(data.voices).shape[1:]]
    return out


def save_checkpoint(path: os.PathLike | str, result: TrainResult, labelset: Any,
                    preprocessing: dict[str, Any], extra: Optional[dict[str, Any]] = None
                    ) -> None:
    """Write a model checkpoint atomically: weights, config, label set, preprocessing, version."""
    data = {
        "format": CHECKPOINT_FORMAT, "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "variant": result.config.variant,
        "num_classes": len(labelset),
        "config": result.config.to_json(),
        "labelset": labelset.to_json(),
        "preprocessing": preprocessing,
        "class_weights": list(result.class_weights),
        "history": result.history,
        "extra": extra or {},
        "model": {k: v.detach().cpu() for k, v in result.model.state_dict().items()},
    }
    json.dumps({k: v for k, v in data.items() if k != "model"})  # fail early if not JSON-able
    data[DIGEST_KEY] = checkpoint_digest(data)
    torch_save_atomic(path, data)


def checkpoint_digest(data: dict[str, Any]) -> str:
    """SHA-256 of a model checkpoint's metadata and weights (see :func:`..nn.torchfile.weights_digest`)."""
    return weights_digest(data, "model")


@dataclass
class LoadedModel:
    """A model read back by :func:`load_checkpoint`."""

    model: torch.nn.Module
    config: TrainConfig
    labelset: Any
    preprocessing: dict[str, Any]
    package_version: str
    meta: dict[str, Any]


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(str(version).split(".")[:2])


def load_checkpoint(path: os.PathLike | str, labelset: Any = None, variant: Optional[str] = None,
                    device: str | torch.device = "cpu") -> LoadedModel:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises CheckpointError when the file is unreadable or not a model checkpoint, when it was
    written by a package version with another major.minor (or another checkpoint format),
    when ``labelset`` is given and its label ids differ, or when ``variant`` is given and
    differs.  The message says which.
    """
    path = Path(path)
    data = load_untrusted_torch(
        path, ("model checkpoint not found",
               "train one with 'eusvoicelabel train COHORT --out MODEL'"),
        ("cannot read the checkpoint ({error})",
         "it must be a file written by 'eusvoicelabel train'"))
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError("not an EUSVoiceLabel model checkpoint", path,
                              "use a file written by 'eusvoicelabel train'")
    check_weights_digest(data, "model", path, "use an undamaged copy or train the model again")
    if data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format {data.get('format_version')} is not "
                              f"supported by this version (expects {FORMAT_VERSION})", path,
                              "retrain the model with this version")
    version = str(data.get("package_version", "?"))
    if _major_minor(version) != _major_minor(__version__):
        raise CheckpointError(f"checkpoint was written by eusvoicelabel {version}, this is "
                              f"{__version__}", path, "retrain the model with this version")
    try:
        stored = LabelSet.from_json(data["labelset"], str(path))
        cfg = TrainConfig.from_json(data["config"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint metadata is incomplete ({exc})", path) from None
    if labelset is not None and list(labelset.ids) != list(stored.ids):
        raise CheckpointError(
            f"checkpoint was trained on labels {stored.ids}, not {list(labelset.ids)}", path,
            "use a model trained with this label vocabulary or drop --labels")
    if variant is not None and variant != cfg.variant:
        raise CheckpointError(f"checkpoint holds variant {cfg.variant!r}, not {variant!r}", path)
    model = build_model(cfg.variant, len(stored), cfg.frames, weights=cfg.weights,
                        width=cfg.width, joint_scale=cfg.joint_scale, load_pretrained=False)
    try:
        model.load_state_dict(data["model"])
    except (RuntimeError, KeyError) as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"weights do not fit the {cfg.variant} network ({first})",
                              path) from None
    model.to(select_device(device)).eval()
    meta = {k: v for k, v in data.items() if k not in ("model", DIGEST_KEY)}
    return LoadedModel(model, cfg, stored, dict(data.get("preprocessing", {})), version, meta)


__all__ = ["save_checkpoint", "load_checkpoint", "LoadedModel", "preprocessing_settings",
           "checkpoint_digest", "CHECKPOINT_FORMAT", "FORMAT_VERSION"]
