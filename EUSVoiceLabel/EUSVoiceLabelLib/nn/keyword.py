"""The paper's small keyword network, the frozen voice branch of the ``voice_pretrained``
variant, and its checkpoint files.

The paper pretrained TensorFlow's "simple audio recognition" model on the Speech Commands
data set (one-second recordings of 30 command words): spectrogram resized to 32 x 32,
normalised, Conv2D(32) - Conv2D(64) - MaxPool - Dropout(0.25) - Flatten - Dense(128) -
Dropout(0.5) - Dense(words).  For the EUS model it froze that network and added a Conv2D after
the (first) Dropout (:class:`.network.PretrainedVoiceBranch`).  Its pretraining on synthetic
speech is :mod:`..train.voice_pretrain`.

Input: the project's spectrogram (B, 1024, 66) as the dataset makes it (same
:class:`~..data.audio.SpectrogramSettings`), seen as a (time x frequency) image, resized to
32 x 32 (bilinear with antialiasing, *ours*) and normalised with the mean and standard deviation
of the pretraining data (stored in the network, like Keras' adapted ``Normalization`` layer).

Checkpoints (``pretrain-voice --out FILE``) are plain dicts of tensors and JSON-able values
read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .. import __version__
from ..core.errors import CheckpointError
from .torchfile import (DIGEST_KEY, check_weights_digest, load_untrusted_torch, torch_save_atomic,
                        weights_digest)

FORMAT = "eusvoicelabel-keyword"
FORMAT_VERSION = 1
INPUT_SIZE = 32


class KeywordFeatures(nn.Module):
    """Resize + normalise + Conv2d(32) + Conv2d(64) + MaxPool + Dropout -> (B, 64, 14, 14).

    Axis 2 of the output is time, axis 3 frequency.
    """

    feature_channels = 64
    feature_grid = (14, 14)  # ((32 - 2 - 2) // 2) for both axes

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(0.25)

    @staticmethod
    def resize(voice: torch.Tensor) -> torch.Tensor:
        """(B, F, T) spectrogram -> (B, 1, 32, 32) image with time down the rows."""
        x = voice.transpose(1, 2).unsqueeze(1).float()
        return F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                             align_corners=False, antialias=True)

    def forward_small(self, x: torch.Tensor) -> torch.Tensor:
        """Features from an already resized (B, 1, 32, 32) input."""
        x = (x - self.mean) / self.std
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.dropout(self.pool(x))

    def forward(self, voice: torch.Tensor) -> torch.Tensor:
        return self.forward_small(self.resize(voice))


class KeywordNet(nn.Module):
    """The whole keyword classifier: :class:`KeywordFeatures` + Dense(128) + Dropout + Dense."""

    def __init__(self, n_words: int) -> None:
        super().__init__()
        self.features = KeywordFeatures()
        h, w = KeywordFeatures.feature_grid
        self.fc1 = nn.Linear(KeywordFeatures.feature_channels * h * w, 128)
        self.dropout = nn.Dropout(0.5)
        self.fc2 = nn.Linear(128, n_words)

    def forward_small(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features.forward_small(x).flatten(1)
        return self.fc2(self.dropout(F.relu(self.fc1(f))))

    def forward(self, voice: torch.Tensor) -> torch.Tensor:
        return self.forward_small(KeywordFeatures.resize(voice))


# --------------------------------------------------------------------------- checkpoints
def save_keyword_checkpoint(path: Path, model: KeywordNet, words: Sequence[str],
                            info: dict[str, Any]) -> None:
    """Write a keyword checkpoint atomically (tensors + JSON-able metadata + a checksum)."""
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__,
            "words": list(words), "info": info,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    data[DIGEST_KEY] = weights_digest(data, "state_dict")
    torch_save_atomic(path, data)


def read_keyword_checkpoint(path: Path) -> dict[str, Any]:
    """Read and check a keyword checkpoint; CheckpointError when it is not one or is damaged."""
    path = Path(path)
    hint = "make one with 'eusvoicelabel pretrain-voice --out FILE'"
    data = load_untrusted_torch(path, ("keyword network checkpoint not found", hint),
                                ("cannot read ({error})", hint))
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError("not a keyword network checkpoint (made by 'pretrain-voice')", path)
    check_weights_digest(data, "state_dict", path, "use an undamaged copy or make a new one "
                                                    "with 'eusvoicelabel pretrain-voice'")
    if data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"keyword checkpoint format {data.get('format_version')} is not "
                              f"supported (expected {FORMAT_VERSION})", path,
                              "re-run 'eusvoicelabel pretrain-voice'")
    return data


def load_keyword_model(path: Path) -> KeywordNet:
    """The pretrained keyword network stored at ``path`` (eval mode, on CPU)."""
    data = read_keyword_checkpoint(path)
    model = KeywordNet(len(data["words"]))
    try:
        model.load_state_dict(data["state_dict"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"weights do not fit the keyword network ({exc})", path) from None
    model.settings_json = data.get("info", {}).get("spectrogram")  # type: ignore[attr-defined]
    return model.eval()
