"""``eusvoicelabel label``: label a procedure folder with a checkpoint and write every output
into a folder; the windows come from the procedure's mentions, a mentions file or transcript, or
automatic detection."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from ..core.errors import MentionsError
from ..core.progress import ProgressLike, as_progress
from ..data.mentions import Mention, read_mentions
from ..data.outputs import claim_output, input_paths
from ..data.procedure import Procedure, load_procedure
from ..data.vocabulary import LabelSet
from ..speech.verify import MentionVerifier, find_mentions
from .output import LABEL_OUTPUT, LabelOutputWriter
from .framemodel import check_labelset, default_frame_model_path, load_frame_model
from .run import DEFAULT_CAM_THRESHOLD, LabelModel, LabelResult, label_procedure
from .whole import Anchor, label_steps, label_whole


def resolve_mentions(proc: Procedure, mentions: Optional[str], labelset: LabelSet,
                     progress: ProgressLike = False,
                     verifier: Optional[MentionVerifier] = None) -> list[Mention]:
    """The windows to label: ``"auto"`` detects them from the audio, a path reads a mentions
    CSV or SRT/WebVTT transcript, None takes the procedure's own mentions.csv (else auto).

    With ``verifier`` (the model's, :attr:`.run.LabelModel.verifier`) every detected candidate
    is checked by it (:func:`..speech.verify.find_mentions`)."""
    if mentions is None and proc.mentions:
        return list(proc.mentions)
    if mentions is None or str(mentions) == "auto":
        found = find_mentions(proc, labelset, verifier, progress=progress)
        if not found:
            raise MentionsError("no landmark mention was detected in the audio", proc.path,
                                "check the recording, or give a mentions CSV or transcript")
        return found
    return read_mentions(mentions, labelset, offset_s=proc.audio_offset_s)


def label_to_folder(procedure: os.PathLike | str, model_path: os.PathLike | str,
                    out_dir: os.PathLike | str, mentions: Optional[str] = None,
                    device: str = "auto", with_cam: bool = True,
                    cam_threshold: float = DEFAULT_CAM_THRESHOLD,
                    progress: ProgressLike = True, whole=None,
                    frame_model: Optional[os.PathLike | str] = None,
                    preview_s: float = 1.0) -> tuple[LabelResult, dict[str, Path]]:
    """Label a procedure folder and write every output into ``out_dir`` (the command
    ``eusvoicelabel label``); ``progress`` reports the detection (``auto``) and the windows
    (see :mod:`..core.progress`).

    With ``whole`` (a :class:`.whole.WholeSettings`) every ``stride``-th frame of the procedure
    is labelled too (:mod:`.whole`) with the frame model ``frame_model`` (default:
    :func:`.framemodel.default_frame_model_path` of the model), and ``frame_labels.csv``
    covers the whole procedure; ``preview_s`` is the interval of the preview frames of
    ``whole.mrml`` (0: none).  The result's ``whole`` attribute holds the
    :class:`.whole.WholeResult`.

    ``out_dir`` is claimed before anything is read (:func:`..data.outputs.claim_output`).  With
    ``mentions`` given ("auto" or a file) the procedure's own ``mentions.csv`` is not read, so a
    model of another label set can label a procedure whose mentions name other labels.
    """
    given = None if mentions is None or str(mentions) == "auto" else mentions
    fm_path = None
    if whole is not None:
        fm_path = Path(frame_model) if frame_model is not None \
            else default_frame_model_path(model_path)
    inputs = [*input_paths(procedure), model_path, given, fm_path]
    claim_output(out_dir, LABEL_OUTPUT, inputs)
    progress = as_progress(progress)
    model = LabelModel.load(model_path, device)
    fm = None
    if fm_path is not None:
        fm = load_frame_model(fm_path)
        check_labelset(fm, model.labelset, fm_path)
    proc = load_procedure(procedure, labelset=model.labelset,
                          mentions=None if mentions is None else [])
    chosen = resolve_mentions(proc, mentions, model.labelset, progress=progress,
                              verifier=model.verifier)
    proc.check_mentions(chosen)
    writer = LabelOutputWriter(out_dir, proc, model.labelset, chosen, model.settings.frames,
                               cam_threshold, provenance={
                                   "model": str(model_path), "variant": model.variant,
                                   "mentions": "procedure" if mentions is None else str(mentions),
                                   "device": str(model.device),
                                   **({"frame_model": str(fm_path)} if fm_path else {})},
                               inputs=inputs)
    try:
        result = label_procedure(proc, model, chosen, with_cam=with_cam, progress=progress,
                                 on_window=writer.add, cam_threshold=cam_threshold)
        whole_result = None
        if fm is not None and not result.cancelled:
            steps = label_steps(proc.n_frames, whole.stride)
            every = max(1, int(round(preview_s * proc.fps / whole.stride))) if preview_s > 0 \
                else 0
            on_chunk = writer.start_whole(steps, every)
            whole_result = label_whole(proc, fm, [Anchor.from_window(w) for w in result.windows],
                                       whole, progress=progress, on_chunk=on_chunk)
        result.whole = whole_result
        files = writer.finish(result, whole=whole_result)
    except BaseException:
        writer.abort()
        raise
    return result, files
