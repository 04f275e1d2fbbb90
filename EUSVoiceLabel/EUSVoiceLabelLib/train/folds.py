"""Leave-one-patient-out (LOPO) folds and the training of one fold.

For each patient a model is trained on every *other* patient (asserted) and predicts the held
out patient's windows.  :func:`run_fold` is a pure function (windows + fold + config in,
predictions out) so folds can run in turn (:func:`.evaluation.evaluate_cohort`) or in parallel
processes (:mod:`.parallel`); a fold's seed depends only on the run's seed and the held-out
patient.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..core.errors import ConfigError
from ..core.progress import ProgressLike
from .config import TrainConfig
from .loop import predict_proba, train_model


@dataclass(frozen=True)
class Fold:
    """One LOPO fold: the held-out patient and window indices."""

    patient: str
    train_idx: np.ndarray
    test_idx: np.ndarray


def lopo_folds(patients: Sequence[str]) -> list[Fold]:
    """One fold per patient (sorted by name); a patient is never in its own training set."""
    patients = list(patients)
    ids = sorted(set(patients))
    if len(ids) < 2:
        raise ConfigError(f"leave-one-patient-out needs at least 2 patients, got {len(ids)}",
                          hint="add patients to the cohort")
    arr = np.asarray(patients, dtype=object)
    folds = []
    for pid in ids:
        test = np.nonzero(arr == pid)[0]
        train = np.nonzero(arr != pid)[0]
        _assert_no_leak(pid, train, test, patients)
        folds.append(Fold(pid, train, test))
    return folds


def _assert_no_leak(pid: str, train: np.ndarray, test: np.ndarray,
                    patients: Sequence[str]) -> None:
    train_patients = {patients[i] for i in train}
    assert pid not in train_patients, f"patient {pid} leaked into its own training fold"
    assert all(patients[i] == pid for i in test), f"fold {pid} tests other patients' windows"
    assert not set(train.tolist()) & set(test.tolist()), f"fold {pid}: train/test overlap"


@dataclass
class FoldResult:
    """Held-out predictions of one fold."""

    patient: str
    indices: np.ndarray          # window indices in the window set
    probs: np.ndarray            # (n, K) float32
    train_info: dict[str, Any] = field(default_factory=dict)


def fold_seed(seed: int, patient: str) -> int:
    """Per-fold seed: depends only on the run's seed and the held-out patient's name."""
    return (int(seed) * 1_000_003 + zlib.crc32(patient.encode("utf-8"))) % (2 ** 31)


def run_fold(ws: Any, fold: Fold, cfg: TrainConfig, device: str = "auto",
             progress: ProgressLike = True, state_path: Optional[Path] = None) -> FoldResult:
    """Train on ``fold.train_idx`` and predict ``fold.test_idx`` (pure: no other output).

    ``ws`` is a WindowSet (or anything with images/voices/labels/patients/labelset);
    ``progress`` reports the fold's epochs (see :mod:`..core.progress`).
    """
    _assert_no_leak(fold.patient, fold.train_idx, fold.test_idx, ws.patients)
    k = len(ws.labelset)
    fcfg = cfg.with_(seed=fold_seed(cfg.seed, fold.patient))
    result = train_model(ws, fcfg, k, indices=fold.train_idx, device=device, progress=progress,
                         state_path=state_path, desc=f"fold {fold.patient}")
    probs = predict_proba(result.model, ws, fold.test_idx, device=device)
    last = result.history[-1] if result.history else {}
    info = {"seed": fcfg.seed, "epochs": fcfg.epochs, "final_loss": last.get("loss"),
            "final_train_accuracy": last.get("train_accuracy"),
            "wall_time_s": round(result.wall_time_s, 2), "device": result.device,
            "class_weights": result.class_weights, "n_train": int(len(fold.train_idx))}
    return FoldResult(fold.patient, np.asarray(fold.test_idx), probs, info)


__all__ = ["Fold", "FoldResult", "lopo_folds", "run_fold", "fold_seed"]
