"""Errors raised by EUSVoiceLabel for bad input.

Every error names the file (or folder) at fault, says what is wrong and what to do, so the
command line can print it in one line and a Slicer user can act on it.  Nothing deep inside a
decoder should ever reach a user as a raw traceback: loaders catch library exceptions and
re-raise one of these.
"""

from __future__ import annotations

import os
from typing import Optional


class EUSVoiceLabelError(Exception):
    """Base class of every error the project raises on purpose.

    Args:
        message: what is wrong.
        path: the file or folder concerned, if any.
        hint: what the user can do about it.
    """

    def __init__(self, message: str, path: Optional[os.PathLike | str] = None, hint: str = ""):
        self.message = message
        self.path = None if path is None else os.fspath(path)
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class ProcedureError(EUSVoiceLabelError):
    """A folder is not a valid procedure or cohort (missing video, bad procedure.json, ...)."""


class MediaError(EUSVoiceLabelError):
    """A video, frame folder, sequence file or audio file cannot be read or is unusable."""


class MentionsError(EUSVoiceLabelError):
    """A mentions file or transcript is malformed, empty or refers to unknown labels."""


class VocabularyError(EUSVoiceLabelError):
    """A label vocabulary file (labels.json) is malformed."""


class ConfigError(EUSVoiceLabelError):
    """A setting (image size, crop, variant, device, ...) is invalid."""


class CheckpointError(EUSVoiceLabelError):
    """A model checkpoint is unreadable, untrusted or incompatible."""


class OutputError(EUSVoiceLabelError):
    """An output folder or file cannot be written (locked, not writable, disk full, ...)."""


class TrainingError(EUSVoiceLabelError):
    """Training cannot go on (the loss became NaN or infinite, ...)."""
