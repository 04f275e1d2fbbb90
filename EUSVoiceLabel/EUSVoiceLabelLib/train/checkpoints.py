"""Model checkpoints: the trained weights with the configuration, label set, preprocessing
settings and package version, written atomically and read back with
``torch.load(weights_only=True)`` (no code is unpickled), refused for another label set,
variant or major.minor version."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from .. import __version__
from ..core.errors import CheckpointError, ConfigError, VocabularyError
from ..data.audio import SpectrogramSettings
from ..data.outputs import OutputKind, claim_output, torch_file_of_format
from ..data.vocabulary import LabelSet
from ..nn.devices import select_device
from ..nn.network import build_model
from ..nn.torchfile import (DIGEST_KEY, check_weights_digest, load_untrusted_torch,
                            torch_save_atomic, weights_digest)
from .config import TrainConfig
from .loop import TrainResult


CHECKPOINT_FORMAT = "eusvoicelabel-model"
FORMAT_VERSION = 1
VERIFIER_KEY = "verifier"                  # the mention verifier's settings (JSON) ...
VERIFIER_WEIGHTS_KEY = "verifier_weights"  # ... and its weights, when the model has one
#: ``train --out``: an existing file is replaced only when it is a model checkpoint of ours.
CHECKPOINT = OutputKind("checkpoint", "a model checkpoint written by 'eusvoicelabel train'",
                        folder=False, signature=torch_file_of_format(CHECKPOINT_FORMAT))


def preprocessing_settings(data: Any, cfg: TrainConfig) -> dict[str, Any]:
    """The input settings a model depends on: the configuration's window settings (image size,
    frames) with the windows' spectrogram scaling (``data.settings``, a
    :class:`..data.dataset.WindowSettings`, when it has one), the voice input's shape, and
    the training windows per class (``label_counts``, which label fusion's prior is made of:
    :func:`..labelling.fusion.training_prior`)."""
    spectrogram = getattr(getattr(data, "settings", None), "spectrogram", None)
    out = cfg.window_settings(spectrogram).to_json()
    out["voice_shape"] = [int(v) for v in np.asarray(data.voices).shape[1:]]
    labelset = getattr(data, "labelset", None)
    labels = getattr(data, "labels", None)
    if labelset is not None and labels is not None:
        out["label_counts"] = np.bincount(np.asarray(labels, dtype=np.int64).reshape(-1),
                                          minlength=len(labelset)).tolist()
    return out


def save_checkpoint(path: os.PathLike | str, result: TrainResult, labelset: Any,
                    preprocessing: dict[str, Any], extra: Optional[dict[str, Any]] = None,
                    inputs: Sequence[os.PathLike | str] = (),
                    calibration: Optional[dict[str, Any]] = None,
                    verifier: Optional[tuple[dict, dict[str, torch.Tensor]]] = None) -> None:
    """Write a model checkpoint atomically: weights, config, label set, preprocessing, version,
    the network's calibration for label fusion when given (``{"temperature": T, ...}``:
    :func:`.evaluation.read_calibration`) and the mention verifier when given (its settings and
    weights, :meth:`..speech.verify.MentionVerifier.to_state`).

    ``path`` is claimed first (:func:`..data.outputs.claim_output`: not one of ``inputs``, and
    an existing file only when it is a checkpoint of ours).
    """
    claim_output(path, CHECKPOINT, inputs)
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
        "calibration": calibration or {},
        "model": {k: v.detach().cpu() for k, v in result.model.state_dict().items()},
    }
    if verifier is not None:
        data[VERIFIER_KEY] = dict(verifier[0])
        data[VERIFIER_WEIGHTS_KEY] = {k: v.detach().cpu() for k, v in verifier[1].items()}
    json.dumps({k: v for k, v in data.items()
                if k not in ("model", VERIFIER_WEIGHTS_KEY)})  # fail early if not JSON-able
    data[DIGEST_KEY] = checkpoint_digest(data)
    torch_save_atomic(path, data)


def _more_weights(data: dict[str, Any]) -> tuple[str, ...]:
    return (VERIFIER_WEIGHTS_KEY,) if VERIFIER_WEIGHTS_KEY in data else ()


def checkpoint_digest(data: dict[str, Any]) -> str:
    """SHA-256 of a model checkpoint's metadata and weights, the verifier's included (see
    :func:`..nn.torchfile.weights_digest`)."""
    return weights_digest(data, "model", *_more_weights(data))


@dataclass
class LoadedModel:
    """A model read back by :func:`load_checkpoint`."""

    model: torch.nn.Module
    config: TrainConfig
    labelset: Any
    preprocessing: dict[str, Any]
    package_version: str
    meta: dict[str, Any]
    #: The mention verifier's (settings, weights) when the checkpoint holds one
    #: (:class:`..speech.verify.MentionVerifier.from_state`).
    verifier_state: Optional[tuple[dict, dict[str, torch.Tensor]]] = None


def _check_preprocessing(pre: Any, cfg: TrainConfig) -> None:
    """The stored input settings must be what the network was built for (ConfigError)."""
    if not isinstance(pre, dict):
        raise ConfigError(f"preprocessing must be a JSON object, not {pre!r}")
    if "image_size" in pre and list(pre["image_size"]) != list(cfg.image_size):
        raise ConfigError(f"preprocessing image_size {pre['image_size']!r} differs from the "
                          f"network's {list(cfg.image_size)}")
    if "frames" in pre and pre["frames"] != cfg.frames:
        raise ConfigError(f"preprocessing frames {pre['frames']!r} differs from the network's "
                          f"{cfg.frames}")
    SpectrogramSettings.from_json(pre.get("spectrogram", {}))


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
    check_weights_digest(data, "model", path, "use an undamaged copy or train the model again",
                         _more_weights(data))
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
        _check_preprocessing(data.get("preprocessing", {}), cfg)
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint metadata is incomplete ({exc})", path) from None
    except (ConfigError, VocabularyError) as exc:
        raise CheckpointError(f"checkpoint settings are invalid: {exc.message}", path,
                              "use a file written by 'eusvoicelabel train'") from None
    if data.get("num_classes", len(stored)) != len(stored):
        raise CheckpointError(f"checkpoint says {data.get('num_classes')!r} classes but holds "
                              f"{len(stored)} labels", path)
    if labelset is not None and list(labelset.ids) != list(stored.ids):
        raise CheckpointError(
            f"checkpoint was trained on labels {stored.ids}, not {list(labelset.ids)}", path,
            "use a model trained with this label vocabulary, or drop --labels / --vocab")
    if variant is not None and variant != cfg.variant:
        raise CheckpointError(f"checkpoint holds variant {cfg.variant!r}, not {variant!r}", path)
    weights = data.get("model")
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor)
                                                for v in weights.values()):
        raise CheckpointError("checkpoint holds no weights", path)
    bad = next((k for k, v in weights.items()
                if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise CheckpointError(f"weights {bad} hold NaN or infinite values", path,
                              "the model diverged or the file was altered: train it again")
    model = build_model(cfg.variant, len(stored), cfg.frames, load_pretrained=False,
                        **cfg.model_options())
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError) as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"weights do not fit the {cfg.variant} network ({first})",
                              path) from None
    model.to(select_device(device)).eval()
    meta = {k: v for k, v in data.items() if k not in ("model", VERIFIER_WEIGHTS_KEY, DIGEST_KEY)}
    verifier = None
    if isinstance(data.get(VERIFIER_KEY), dict):
        vw = data.get(VERIFIER_WEIGHTS_KEY)
        if not isinstance(vw, dict) or not all(isinstance(v, torch.Tensor) for v in vw.values()):
            raise CheckpointError("checkpoint names a mention verifier but holds no weights "
                                  "for it", path, "train the model again")
        verifier = (dict(data[VERIFIER_KEY]), vw)
    return LoadedModel(model, cfg, stored, dict(data.get("preprocessing", {})), version, meta,
                       verifier)


__all__ = ["save_checkpoint", "load_checkpoint", "LoadedModel", "preprocessing_settings",
           "checkpoint_digest", "CHECKPOINT_FORMAT", "FORMAT_VERSION", "CHECKPOINT",
           "VERIFIER_KEY", "VERIFIER_WEIGHTS_KEY"]
