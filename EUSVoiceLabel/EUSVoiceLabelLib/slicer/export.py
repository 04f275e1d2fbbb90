"""The Slicer module's export of a reviewed labelling run, under the command line's output rule.

``exportResults`` of the module writes the files of ``eusvoicelabel label`` with the reviewer's
labels in ``labels.csv`` and, optionally, the image dataset of ``eusvoicelabel export``.  Both
folders are claimed (:func:`..data.outputs.claim_output`) before anything is written, in one
:func:`..core.outputlock.output_session`, so the module refuses exactly what the command line
refuses (an input, a procedure, a cohort, someone else's folder, the dataset inside or around
the label folder) and holds both locks until the export ends.  ``exportWhole`` writes a
whole-procedure ``frame_labels.csv`` with the reviewed runs under the same rule.

This module imports torch (through the labelling outputs) and Pillow: the Slicer module imports
it only when it exports.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, Optional

from ..core.fileio import atomic_write_text
from ..core.outputlock import output_session
from ..data.export import EXPORT_DATASET, export_dataset
from ..data.outputs import claim_output, procedure_inputs
from ..labelling.output import LABEL_OUTPUT, write_label_outputs
from ..labelling.run import LabelResult
from ..labelling.whole import FRAME_LABELS, WholeResult, write_frame_labels
from .review import labels_csv_with_review

#: What a second run on one of the folders is told holds them.
EXPORT_COMMAND = "3D Slicer EUSVoiceLabel export"


def export_reviewed(result: LabelResult, reviewed: Mapping[int, str],
                    out_dir: os.PathLike | str,
                    dataset_dir: Optional[os.PathLike | str] = None) -> dict[str, Path]:
    """Write the label outputs of ``result`` into ``out_dir`` with the reviewed labels
    (``{window: label}``) and, with ``dataset_dir``, the image dataset exported from them.

    Returns:
        ``{name: path}`` of the written files (the dataset's ``labels.csv`` as
        ``"dataset labels.csv"``).

    Raises:
        OutputError: either folder breaks the output rule (nothing is written then), is being
            written by another run, or cannot be written (the previous outputs are kept).
    """
    out_dir = Path(out_dir)
    inputs = procedure_inputs(result.procedure)
    with output_session(EXPORT_COMMAND):
        claim_output(out_dir, LABEL_OUTPUT, inputs)
        if dataset_dir is not None:  # the label folder is the dataset's input
            dataset_dir = claim_output(dataset_dir, EXPORT_DATASET, [*inputs, out_dir])
        files = write_label_outputs(result, out_dir)
        labels_csv = out_dir / "labels.csv"
        atomic_write_text(labels_csv, labels_csv_with_review(
            labels_csv.read_text(encoding="utf-8"), dict(reviewed)))
        if dataset_dir is not None:
            files["dataset labels.csv"] = export_dataset(out_dir, dataset_dir)
    return files


def export_whole(result: LabelResult, whole: WholeResult, frame_rows: Iterable[dict],
                 path: os.PathLike | str) -> Path:
    """Write the whole-procedure ``frame_labels.csv`` of ``whole`` (the labelled frames
    ``frame_rows``, reviewed runs relabelled) to ``path``, atomically.

    Raises:
        OutputError: ``path`` is an input of the procedure, a file that is not ours, or
            being written by another run (nothing is written then).
    """
    path = Path(path)
    with output_session(EXPORT_COMMAND):
        claim_output(path, FRAME_LABELS, procedure_inputs(result.procedure))
        return write_frame_labels(path, whole, iter(frame_rows))


__all__ = ["export_reviewed", "export_whole", "EXPORT_COMMAND"]
