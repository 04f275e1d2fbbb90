"""EUSVoiceLabel library: voice-assisted labelling of endoscopic ultrasound video.

Everything here runs without 3D Slicer.  The public API (README "Python API"):

- :func:`load_procedure` reads a procedure folder (video or frames, audio, mentions).
- :func:`spectrogram` turns one second of speech into the paper's 1024 x 66 spectrogram.
- :func:`build_model` builds the two-branch network or one of the paper's variants.

Heavy modules (torch, PyAV) are imported on first use, so ``import EUSVoiceLabelLib`` is cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_procedure": ".data.procedure",
    "Procedure": ".data.procedure",
    "load_cohort": ".data.procedure",
    "spectrogram": ".data.audio",
    "build_model": ".nn.network",
    "LabelSet": ".data.vocabulary",
    "Mention": ".data.mentions",
    "EUSVoiceLabelError": ".core.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'EUSVoiceLabelLib' has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value
