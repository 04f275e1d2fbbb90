"""What decides a training run: :class:`TrainConfig`, with the paper's settings per variant
(Table II, from :data:`..core.variants.VARIANT_SPECS`) as its defaults."""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping, Optional

from ..core.errors import ConfigError
from ..core.presets import PRESETS, preset_settings
from ..core.paper import BATCH_SIZE, IMAGE_SIZE, WINDOW_FRAMES
from ..core.variants import (DEFAULT_VARIANT, IMAGE_SIDE_RANGE, VOICE_SCRATCH,
                             VariantSpec, check_image_size,
                             variant_spec)
from ..data.audio import SpectrogramSettings
from ..data.dataset import WindowSettings


def _is_number(value: Any, integer: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    if not math.isfinite(value):
        return False
    return not integer or isinstance(value, numbers.Integral)


# (field, whole number, lowest, highest, may be None) for TrainConfig._check_types.
_BOUNDS = (("epochs", True, 0, 1_000_000, True), ("lr", False, 0, 1e3, True),
           ("batch_size", True, 1, 65_536, False), ("frames", True, 1, 1000, False),
           ("width", False, 0, 4, False), ("seed", True, 0, 2 ** 32 - 1, False),
           ("weight_decay", False, 0, 1, False), ("label_smoothing", False, 0, 1, False),
           ("voice_lr_scale", False, 0, 10, False), ("image_dropout", False, 0, 0.95, False),
           ("joint_bound", False, 0, 1e3, False), ("image_aux_weight", False, 0, 100, False),
           ("voice_aux_weight", False, 0, 100, False))


#: Fields added to TrainConfig later, with their defaults (see TrainConfig.signature).
_LATER_FIELDS = {"image_aux_weight": 0.0, "voice_aux_weight": 0.0}

#: ``optimizer``: the paper's Adam, or AdamW (decoupled weight decay).
OPTIMIZERS = ("adam", "adamw")
#: ``schedule``: constant rate (the paper), or a one-epoch linear warm-up then cosine decay.
SCHEDULES = ("constant", "cosine")
#: ``augment``: which inputs training augments (:mod:`.augment`).
AUGMENT_CHOICES = ("none", "voice", "image", "all")
#: ``voice_init``: the scratch voice branch starts from random weights, or from a voice-only
#: network pretrained on the label vocabulary spoken by many offline voices
#: (:mod:`.vocabulary_voice`).
VOICE_INITS = ("none", "vocabulary")

@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (stored in checkpoints and metrics.json).

    ``epochs`` / ``lr`` left as None take the paper's value for the variant.  Build one from
    layers of settings (e.g. a preset, then the options a user gave) with
    :meth:`from_settings`.
    """

    variant: str = DEFAULT_VARIANT
    epochs: Optional[int] = None
    lr: Optional[float] = None
    batch_size: int = BATCH_SIZE
    image_size: tuple[int, int] = IMAGE_SIZE
    frames: int = WINDOW_FRAMES
    width: float = 1.0
    joint_scale: str = "sum"
    weights: Optional[str] = None
    seed: int = 0
    # Beyond the paper (its recipe is the default: Adam, constant rate, no augmentation);
    # see docs/results.md for what each measured.
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "constant"
    label_smoothing: float = 0.0
    augment: str = "none"
    voice_init: str = "none"
    voice_lr_scale: float = 1.0
    late_voice: bool = False
    image_dropout: float = 0.0
    joint_bound: float = 0.0
    image_aux_weight: float = 0.0
    voice_aux_weight: float = 0.0

    def __post_init__(self) -> None:
        spec = variant_spec(self.variant)
        self._check_types()
        object.__setattr__(self, "epochs", int(spec.epochs if self.epochs is None
                                               else self.epochs))
        object.__setattr__(self, "lr", float(spec.lr if self.lr is None else self.lr))
        object.__setattr__(self, "image_size", check_image_size(self.image_size))
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
        if not (self.lr > 0):
            raise ConfigError(f"learning rate must be positive, got {self.lr}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if self.frames < 1:
            raise ConfigError(f"frames must be >= 1, got {self.frames}")
        if spec.frames_used and self.frames < spec.frames_used:
            raise ConfigError(f"{self.variant} picks {spec.frames_used} of the frames; "
                              f"--frames {self.frames} is too few")
        if self.weights is not None:
            object.__setattr__(self, "weights", os.fspath(self.weights))
        for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES),
                              ("augment", AUGMENT_CHOICES), ("voice_init", VOICE_INITS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, not "
                                  f"{getattr(self, name)!r}")
        if not isinstance(self.late_voice, bool):
            raise ConfigError(f"late_voice must be true or false, not {self.late_voice!r}")
        # A preset applies to every variant: what a variant has no branch for is dropped.
        if spec.voice != VOICE_SCRATCH:
            object.__setattr__(self, "voice_init", "none")
        object.__setattr__(self, "late_voice", self.late_voice and spec.joint)
        if not self.late_voice:  # these act on the late voice path or the joint logits beside it
            object.__setattr__(self, "image_dropout", 0.0)
            object.__setattr__(self, "joint_bound", 0.0)
            object.__setattr__(self, "voice_aux_weight", 0.0)
        if not (spec.joint and spec.image is not None):
            object.__setattr__(self, "image_aux_weight", 0.0)

    def model_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`..nn.network.build_model` this config decides
        (besides the variant, the number of labels and the frames), so training and loading
        a checkpoint build the same network."""
        return {"weights": self.weights, "width": self.width, "joint_scale": self.joint_scale,
                "late_voice": self.late_voice, "image_dropout": self.image_dropout,
                "joint_bound": self.joint_bound, "image_head": self.image_aux_weight > 0}

    @property
    def augments_voice(self) -> bool:
        return self.augment in ("voice", "all") and self.spec.voice is not None

    @property
    def augments_images(self) -> bool:
        return self.augment in ("image", "all") and self.spec.image is not None

    @property
    def spec(self) -> VariantSpec:
        """The variant's row of the variant table."""
        return variant_spec(self.variant)

    @classmethod
    def from_settings(cls, *layers: Optional[Mapping[str, Any]], **options: Any
                      ) -> "TrainConfig":
        """A config from layers of settings, each a mapping of field -> value: later layers
        (and ``options``, last) win, None means "not given", and what no layer gives keeps
        its default (the paper's per variant).

        Raises:
            ConfigError: a layer names a field TrainConfig does not have.
        """
        known = {f.name for f in fields(cls)}
        merged: dict[str, Any] = {}
        for layer in (*layers, options):
            for key, value in (layer or {}).items():
                if key not in known:
                    raise ConfigError(f"unknown training setting {key!r}",
                                      hint="use one of " + ", ".join(sorted(known)))
                if value is not None:
                    merged[key] = value
        return cls(**merged)

    def window_settings(self, spectrogram: Optional[SpectrogramSettings] = None
                        ) -> WindowSettings:
        """The sample windows this configuration trains on (image size and frames), with
        ``spectrogram`` scaling (default: :class:`..data.audio.SpectrogramSettings`)."""
        return WindowSettings(self.image_size, self.frames,
                              spectrogram or SpectrogramSettings())

    def _check_types(self) -> None:
        """Every value of the right type and range (a checkpoint's config may be crafted)."""
        for name, integer, lo, hi, optional in _BOUNDS:
            value = getattr(self, name)
            if value is None and optional:
                continue
            if not _is_number(value, integer) or not lo <= value <= hi:
                raise ConfigError(f"{name} must be a {'whole ' if integer else ''}number in "
                                  f"[{lo:g}, {hi:g}], not {value!r}")
        if self.width <= 0:
            raise ConfigError(f"width must be positive, not {self.width!r}")
        if self.joint_scale not in ("sum", "mean"):
            raise ConfigError(f"joint_scale must be 'sum' or 'mean', not {self.joint_scale!r}")
        size = self.image_size
        if not isinstance(size, (tuple, list)) or len(size) != 2 or \
                not all(_is_number(v, True) and 1 <= v <= IMAGE_SIDE_RANGE[1] for v in size):
            raise ConfigError(f"image_size must be two whole numbers (H, W) of at most "
                              f"{IMAGE_SIDE_RANGE[1]}, not {size!r}")
        if self.weights is not None and not isinstance(self.weights, (str, os.PathLike)):
            raise ConfigError(f"weights must be a file path, not {self.weights!r}")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        return d

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_(self, **changes: Any) -> "TrainConfig":
        return replace(self, **changes)

    def signature(self) -> str:
        """Hash of what changes the trained weights (not the weights file's location)."""
        d = self.to_json()
        d.pop("weights", None)
        # Fields added after runs were made leave the signature as it was at their default,
        # so those runs still resume and are reused.
        for name, default in _LATER_FIELDS.items():
            if d.get(name) == default:
                d.pop(name)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


__all__ = ["TrainConfig", "PRESETS", "preset_settings", "OPTIMIZERS", "SCHEDULES",
           "AUGMENT_CHOICES", "VOICE_INITS"]
