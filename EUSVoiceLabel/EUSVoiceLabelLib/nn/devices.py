"""Where the networks run and how runs repeat: the device choice (``--device``) and seeding."""

from __future__ import annotations

import random
from typing import Optional

import numpy as np
import torch

from ..core.errors import ConfigError


def select_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA if available, else MPS, else CPU; explicit names are checked."""
    name = str(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("CUDA was requested but no CUDA GPU is available",
                          hint="use --device cpu or auto")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError("MPS was requested but is not available",
                              hint="use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}", hint="use auto, cpu, cuda or mps") from None


def seed_everything(seed: int, device: Optional[torch.device] = None) -> None:
    """Seed Python, NumPy and torch.  On CPU also ask torch for deterministic algorithms."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    if device is not None and device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif device is not None and device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # speed over bitwise repeatability on GPU
