"""The paper's metrics of pooled held-out predictions (``metrics.json``: docs/contracts.md).

- accuracy, and precision, recall and F1 macro-averaged over classes (per-class values
  averaged with equal weight).  As in scikit-learn's ``average="macro"``, the classes averaged
  are those occurring among the true or predicted labels, and a class never predicted has
  precision 0 (``zero_division=0``).  F1 is the mean of per-class F1, not the F1 of the means.
- the confusion matrix over all labels of the vocabulary, rows = true label, each row
  normalised to sum to 1 (a label with no sample has a row of zeros).
- bootstrap: 100 random subsets of ``subset_size`` patients drawn without replacement, the
  accuracy of each subset's pooled predictions, their mean and standard deviation (ddof 0).
  ``subset_size`` is the paper's 10 when there are 11 or more patients, else n_patients - 1
  (at least 1), so small cohorts still vary between subsets.
- per_patient: the accuracy on each held-out patient.

:func:`fit_temperature` calibrates the pooled held-out probabilities (``calibration.json`` of
``evaluate``; docs/fusion.md): one temperature ``T`` such that ``softmax(log p / T)`` has the
least negative log-likelihood of the true labels (temperature scaling, Guo et al. 2017), with
the expected calibration error before and after.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..core.errors import ConfigError
from ..core.paper import BOOTSTRAP_SUBSET_SIZE, BOOTSTRAP_SUBSETS


METRIC_KEYS = ("accuracy", "precision", "recall", "f1", "labels", "confusion_matrix",
               "n_samples", "n_patients", "bootstrap", "per_patient", "variant", "config")


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int],
                           num_classes: int) -> dict[str, Any]:
    """Accuracy, macro precision / recall / F1 (scikit-learn semantics, see module doc) and
    the row-normalised K x K confusion matrix."""
    yt = np.asarray(y_true, dtype=np.int64)
    yp = np.asarray(y_pred, dtype=np.int64)
    if yt.shape != yp.shape:
        raise ValueError("y_true and y_pred differ in length")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (yt, yp), 1)
    present = sorted(set(yt.tolist()) | set(yp.tolist()))
    tp = np.diag(cm).astype(float)
    pred_tot = cm.sum(axis=0).astype(float)
    true_tot = cm.sum(axis=1).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(pred_tot > 0, tp / pred_tot, 0.0)
        rec = np.where(true_tot > 0, tp / true_tot, 0.0)
        denom = pred_tot + true_tot
        f1 = np.where(denom > 0, 2 * tp / denom, 0.0)
        norm = np.where(true_tot[:, None] > 0, cm / true_tot[:, None], 0.0)
    sel = np.asarray(present, dtype=np.int64)
    n = len(yt)
    return {
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "precision": float(prec[sel].mean()) if n else 0.0,
        "recall": float(rec[sel].mean()) if n else 0.0,
        "f1": float(f1[sel].mean()) if n else 0.0,
        "confusion_matrix": norm.tolist(),
        "confusion_counts": cm.tolist(),
    }


def bootstrap_accuracy(y_true: Sequence[int], y_pred: Sequence[int], patients: Sequence[str],
                       n_subsets: int = BOOTSTRAP_SUBSETS, subset_size: Optional[int] = None,
                       seed: int = 0) -> dict[str, Any]:
    """Accuracy over random subsets of patients (pooled), mean and std (see module doc)."""
    yt = np.asarray(y_true)
    yp = np.asarray(y_pred)
    pats = np.asarray(list(patients), dtype=object)
    ids = sorted(set(pats.tolist()))
    if subset_size is None:
        subset_size = default_subset_size(len(ids))
    if not 1 <= subset_size <= len(ids):
        raise ConfigError(f"bootstrap subset size {subset_size} must be 1..{len(ids)}")
    rng = np.random.default_rng(seed)
    correct = yt == yp
    accs = []
    for _ in range(n_subsets):
        chosen = [ids[i] for i in rng.choice(len(ids), size=subset_size, replace=False)]
        mask = np.isin(pats, np.asarray(chosen, dtype=object))
        accs.append(float(correct[mask].mean()) if mask.any() else 0.0)
    return {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "n_subsets": n_subsets,
            "subset_size": int(subset_size)}


def default_subset_size(n_patients: int) -> int:
    """10 of 12 in the paper; n - 1 for smaller cohorts (at least 1)."""
    return max(1, min(BOOTSTRAP_SUBSET_SIZE, n_patients - 1))


def compute_metrics(y_true: Sequence[int], probs: np.ndarray, patients: Sequence[str],
                    label_ids: Sequence[str], variant: str, config: Mapping[str, Any],
                    seed: int = 0) -> dict[str, Any]:
    """The metrics.json dictionary (exactly :data:`METRIC_KEYS`) from pooled predictions."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(probs).argmax(axis=1) if len(y_true) else np.zeros(0, np.int64)
    m = classification_metrics(y_true, y_pred, len(label_ids))
    pats = list(patients)
    per_patient = {}
    for pid in sorted(set(pats)):
        mask = np.array([p == pid for p in pats])
        per_patient[pid] = float((y_true[mask] == y_pred[mask]).mean())
    out = {
        "accuracy": m["accuracy"], "precision": m["precision"], "recall": m["recall"],
        "f1": m["f1"], "labels": list(label_ids), "confusion_matrix": m["confusion_matrix"],
        "n_samples": int(len(y_true)), "n_patients": len(per_patient),
        "bootstrap": bootstrap_accuracy(y_true, y_pred, pats, seed=seed),
        "per_patient": per_patient, "variant": variant, "config": dict(config),
    }
    assert tuple(out) == METRIC_KEYS
    return out


#: Range of a fitted temperature: beyond it the posterior is one-hot or flat to float precision.
TEMPERATURE_RANGE = (0.05, 100.0)


def is_temperature(value: Any) -> bool:
    """A number a stored calibration may hold as its temperature (in :data:`TEMPERATURE_RANGE`)."""
    lo, hi = TEMPERATURE_RANGE
    return isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi


def scale_probabilities(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` over the last axis (T = 1 leaves ``probs`` as they are)."""
    p = np.asarray(probs, dtype=np.float64)
    if temperature == 1.0:
        return p
    logp = np.log(np.clip(p, 1e-12, 1.0)) / float(temperature)
    logp -= logp.max(axis=-1, keepdims=True)
    out = np.exp(logp)
    return out / out.sum(axis=-1, keepdims=True)


def expected_calibration_error(probs: np.ndarray, y_true: Sequence[int], bins: int = 10) -> float:
    """Top-label expected calibration error over ``bins`` equal-width confidence bins."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    if len(y) == 0:
        return 0.0
    conf, right = p.max(axis=1), (p.argmax(axis=1) == y)
    which = np.minimum((conf * bins).astype(np.int64), bins - 1)
    return float(sum(abs(right[which == b].mean() - conf[which == b].mean()) * (which == b).sum()
                     for b in range(bins) if (which == b).any()) / len(y))


def _nll(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)).mean())


def fit_temperature(probs: np.ndarray, y_true: Sequence[int]) -> dict[str, Any]:
    """The temperature of least held-out negative log-likelihood, with the NLL and expected
    calibration error of the probabilities before (``raw``) and after (``calibrated``).

    A temperature above 1 softens a network more sure of itself than it is right; below 1
    sharpens one that is less sure.  Fitted in log T over :data:`TEMPERATURE_RANGE`.
    """
    from scipy.optimize import minimize_scalar  # deferred: scipy is slow to import

    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    if len(y) == 0:
        raise ConfigError("no held-out predictions to fit a temperature on")
    lo, hi = np.log(TEMPERATURE_RANGE)
    best = minimize_scalar(lambda t: _nll(scale_probabilities(p, float(np.exp(t))), y),
                           bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    temperature = float(np.exp(best.x))
    calibrated = scale_probabilities(p, temperature)
    return {"temperature": round(temperature, 4), "n_samples": int(len(y)),
            "nll_raw": round(_nll(p, y), 4), "nll_calibrated": round(_nll(calibrated, y), 4),
            "ece_raw": round(expected_calibration_error(p, y), 4),
            "ece_calibrated": round(expected_calibration_error(calibrated, y), 4)}


__all__ = ["classification_metrics", "bootstrap_accuracy", "default_subset_size",
           "compute_metrics", "METRIC_KEYS", "fit_temperature", "scale_probabilities",
           "expected_calibration_error", "is_temperature", "TEMPERATURE_RANGE"]
