"""Named training configurations (``--preset``) for ``train``, ``evaluate`` and ``demo``.

A preset is a layer of :class:`..train.config.TrainConfig` settings; options given explicitly
override its values (``TrainConfig.from_settings(preset, options)``).  Standard library only,
so the command line lists the presets without importing torch.

- ``paper``: the paper's recipe (Table II epochs and learning rate per variant, 350 x 690
  input, full width, Adam at a constant rate, no augmentation); the TrainConfig defaults.
- ``cpu``: sized so that a leave-one-patient-out run of the proposed network over a
  paper-sized cohort (12 patients, 143 windows) takes about half an hour on 2 CPU cores, with
  what generalised to unseen patients in our measurements (docs/results.md): AdamW with weight
  decay and a cosine schedule, speech and frame augmentation, a voice branch pretrained on the
  spoken label vocabulary (fine-tuned at 0.3 x the rate), the late voice path with the joint
  logits bounded beside it, the image branch's own class head trained by a loss of its
  own (what the heat maps explain), and a loss of its own on the late voice path too (so the
  joint logits do not take over part of what the voice alone names).
"""

from __future__ import annotations

from typing import Any, Optional

from .errors import ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "cpu": {"image_size": (64, 128), "width": 0.25, "epochs": 20, "lr": 1e-3,
            "optimizer": "adamw", "weight_decay": 0.01, "schedule": "cosine",
            "augment": "all", "voice_init": "vocabulary", "voice_lr_scale": 0.3,
            "late_voice": True, "joint_bound": 1.0, "image_aux_weight": 1.0,
            "voice_aux_weight": 1.0},
}


def preset_settings(name: Optional[str]) -> dict[str, Any]:
    """The settings of preset ``name`` (None: no preset, an empty layer).

    Raises:
        ConfigError: an unknown preset name.
    """
    if name is None:
        return {}
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}", hint="use one of " + ", ".join(PRESETS))
    return dict(PRESETS[name])


__all__ = ["PRESETS", "preset_settings"]
