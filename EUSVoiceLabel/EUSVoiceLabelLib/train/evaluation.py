"""Leave-one-patient-out (LOPO) evaluation of a cohort and the Table III comparison.

:func:`evaluate_cohort` trains one model per held-out patient (:mod:`.folds`; in parallel
processes with :mod:`.parallel`), pools the held-out predictions of all folds into one vector
and scores them with the paper's metrics (:mod:`.metrics`); it caches each finished fold under
``OUT/folds/`` so an interrupted evaluation resumes where it stopped.  :func:`evaluate_all` runs
every variant of the paper's Table III and writes ours beside the paper's numbers.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure

from .. import __version__
from ..core.errors import ConfigError
from ..core.paper import BOOTSTRAP_PROPOSED, PATIENTS, WINDOWS
from ..core.progress import ProgressLike, as_progress
from ..core.variants import VARIANT_SPECS, VARIANTS, variant_spec
from ..core.csvtext import csv_text
from ..core.fileio import StagedFolder, atomic_path, atomic_write_text, file_sha256
from ..data.outputs import OutputKind, claim_output, json_with_keys
from ..nn.devices import select_device
from .checkpoints import preprocessing_settings
from .config import TrainConfig
from .folds import Fold, FoldResult, lopo_folds, run_fold
from .loop import data_signature, to_device_data
from .metrics import (TEMPERATURE_RANGE, classification_metrics, compute_metrics,
                      fit_temperature, is_temperature)
from .parallel import run_folds
from .vocabulary_voice import vocabulary_voice_weights
from .voice_pretrain import pretrain_keyword_model

log = logging.getLogger(__name__)


def _earlier_evaluation(folder: Path) -> bool:
    """An evaluation folder written before the output marker existed."""
    return json_with_keys("bootstrap", "config", name="metrics.json")(folder) or \
        ((folder / "summary.json").is_file() and (folder / "table_iii.md").is_file())


#: The network's calibration on the held-out folds (docs/contracts.md), which ``train
#: --temperature-from`` stores in a checkpoint for label fusion.
CALIBRATION_FILE = "calibration.json"

#: ``evaluate --out``: metrics.json, predictions.csv, confusion_matrix.png, timings.json,
#: calibration.json and the fold cache ``folds/`` (``--variant all``: one such folder per
#: variant, table_iii.md, summary.json).
EVALUATION = OutputKind("evaluate", "an 'evaluate' output folder", folder=True,
                        signature=_earlier_evaluation, sweep=("folds",))


def _claim(out_dir: Path, ws: Any, weights: Sequence[Any] = ()) -> None:
    """Claim an evaluation folder: not the cohort, nor inside it or any other input."""
    claim_output(out_dir, EVALUATION, [*getattr(ws, "sources", ()), *weights])


# --------------------------------------------------------------------------- outputs
def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:80] or "patient"


def write_predictions_csv(path: Path, ws: Any, indices: np.ndarray, probs: np.ndarray) -> None:
    """predictions.csv: patient, time_s, true, predicted, then p_<label> per label."""
    ids = list(ws.labelset.ids)
    rows = [[ws.patients[i], f"{float(ws.times[i]):.3f}", ids[int(ws.labels[i])],
             ids[int(np.argmax(p))]] + [f"{float(v):.6f}" for v in p]
            for i, p in zip(indices, probs)]
    atomic_write_text(path, csv_text(["patient", "time_s", "true", "predicted"]
                                     + [f"p_{i}" for i in ids], rows))


def plot_confusion_matrix(path: Path, matrix: Sequence[Sequence[float]],
                          names: Sequence[str], title: str,
                          counts: Optional[Sequence[Sequence[int]]] = None) -> None:
    """Row-normalised confusion matrix as a labelled PNG (matplotlib, Agg backend)."""
    matplotlib.use("Agg", force=False)

    cm = np.asarray(matrix, dtype=float)
    k = len(names)
    fig = Figure(figsize=(3.2 + 1.1 * k, 2.2 + 1.0 * k), dpi=120, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(cm, vmin=0.0, vmax=1.0, cmap="Blues")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(names, rotation=35, ha="right")
    ax.set_yticklabels(names)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title(title, fontsize=10)
    for i in range(k):
        for j in range(k):
            text = f"{cm[i, j]:.2f}"
            if counts is not None:
                text += f"\n({int(np.asarray(counts)[i, j])})"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if cm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true label")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


# --------------------------------------------------------------------------- a whole run
def evaluate_cohort(ws: Any, cfg: TrainConfig, out_dir: Path, device: str = "auto",
                    progress: ProgressLike = True, resume: bool = True,
                    extra_config: Optional[Mapping[str, Any]] = None,
                    workers: int = 1) -> dict[str, Any]:
    """LOPO over every patient of ``ws``; writes metrics.json, predictions.csv and
    confusion_matrix.png into ``out_dir`` and returns the metrics.  Wall times go to
    timings.json, so metrics.json depends only on the data, the settings and the seed.

    Finished folds are cached in ``out_dir/folds/`` (keyed by the configuration and the
    data) and reused when ``resume``; a fold interrupted mid-training resumes from its last
    saved epoch.  ``workers`` > 1 runs the folds in that many processes (one per GPU when
    there are several; see :mod:`.parallel`), with the same pooled predictions.
    ``progress`` reports the folds and, nested, each fold's epochs (see
    :mod:`..core.progress`).
    """
    t0 = time.time()
    out_dir = Path(out_dir)
    _claim(out_dir, ws, [cfg.weights])
    folds = lopo_folds(ws.patients)
    cache = _FoldCache(out_dir / "folds", _fold_key(ws, cfg), resume)
    progress = as_progress(progress)
    ready: dict[str, FoldResult] = {}
    if workers > 1:
        todo = [f for f in folds if cache.read(f) is None]
        # Even one remaining fold runs in a worker: with its torch threads (cores / workers),
        # so a resumed run gives the predictions of an uninterrupted one (in this process,
        # with all cores' threads, the sums would be ordered differently).
        if todo:
            if cfg.voice_init == "vocabulary":
                # Pretrained once here, with every core, and cached: each worker would
                # otherwise pretrain the same weights at the same time on one core.
                vocabulary_voice_weights(ws.labelset, cfg.width, ws.settings.spectrogram,
                                         device=str(select_device(device)), progress=progress)
            states = {f.patient: cache.state_path(f.patient) for f in todo}

            def finished(r: FoldResult) -> None:
                cache.write(r)
                ready[r.patient] = r

            run_folds(ws, todo, cfg, device, workers, states, finished, progress)
    results: list[FoldResult] = []
    with progress.task(f"LOPO {cfg.variant}", total=len(folds), unit="fold") as task:
        for fold in folds:
            res = ready.get(fold.patient) or cache.read(fold)
            if res is None:
                res = run_fold(ws, fold, cfg, device, progress, cache.state_path(fold.patient))
                cache.write(res)
            results.append(res)
            acc = float((res.probs.argmax(1) == ws.labels[res.indices]).mean())
            task.advance(patient=fold.patient, acc=f"{acc:.2f}")
    config = {
        **cfg.to_json(),
        "device": str(select_device(device)),
        "preprocessing": preprocessing_settings(ws, cfg),
        "package_version": __version__,
        "n_folds": len(folds),
        "paper_settings": "epochs/lr from Table II unless overridden",
        **(dict(extra_config) if extra_config else {}),
    }
    return _write_evaluation(out_dir, ws, cfg, results, config, time.time() - t0)


def _fold_key(ws: Any, cfg: TrainConfig) -> dict[str, Any]:
    """What a cached fold must have been trained with to be reused."""
    return {"config": cfg.signature(),
            "data": data_signature(to_device_data(ws, None, torch.device("cpu"))),
            "labels": list(ws.labelset.ids),
            # a replaced weights file must not be served with folds trained on the old one
            "weights": file_sha256(cfg.weights) if cfg.weights and Path(cfg.weights).is_file()
            else None}


@dataclass
class _FoldCache:
    """Finished folds (``<patient>.json``) and the resume files of unfinished ones
    (``<patient>.state.pt``) in ``folder``; ``resume`` False ignores both."""

    folder: Path
    key: dict
    resume: bool = True

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    def _stem(self, patient: str) -> Path:
        return self.folder / _safe_name(patient)

    def state_path(self, patient: str) -> Path:
        """The fold's resume file (an earlier run's is removed when not resuming)."""
        state = Path(f"{self._stem(patient)}.state.pt")
        if not self.resume:
            state.unlink(missing_ok=True)
        return state

    def write(self, res: FoldResult) -> None:
        data = {"key": self.key, "patient": res.patient, "indices": res.indices.tolist(),
                "probs": res.probs.tolist(), "train_info": res.train_info}
        atomic_write_text(Path(f"{self._stem(res.patient)}.json"), json.dumps(data) + "\n")

    def read(self, fold: Fold) -> Optional[FoldResult]:
        """The cached result of ``fold`` when resuming and it was made with this key."""
        path = Path(f"{self._stem(fold.patient)}.json")
        if not self.resume or not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if data.get("key") != self.key or data.get("indices") != fold.test_idx.tolist():
            return None
        log.info("fold %s: reusing %s", fold.patient, path)
        return FoldResult(fold.patient, np.asarray(data["indices"], dtype=np.int64),
                          np.asarray(data["probs"], dtype=np.float32),
                          data.get("train_info", {}))


def _write_evaluation(out_dir: Path, ws: Any, cfg: TrainConfig, results: Sequence[FoldResult],
                      config: dict[str, Any], wall_time_s: float) -> dict[str, Any]:
    """Pool the folds' held-out predictions; write metrics.json, timings.json,
    calibration.json (the temperature of the held-out probabilities:
    :func:`.metrics.fit_temperature`),
    predictions.csv and confusion_matrix.png, moved into ``out_dir`` together; return the
    metrics."""
    idx = np.concatenate([r.indices for r in results])
    probs = np.concatenate([r.probs for r in results])
    y_true = np.asarray(ws.labels)[idx]
    pats = [ws.patients[i] for i in idx]
    metrics = compute_metrics(y_true, probs, pats, ws.labelset.ids, cfg.variant, config,
                              seed=cfg.seed)
    # The four files move in together: a failing disk leaves the previous ones.
    stage = StagedFolder(out_dir)
    try:
        with stage.writing() as d:
            atomic_write_text(d / "metrics.json", json.dumps(metrics, indent=2) + "\n")
            # Wall times live apart so that metrics.json is byte-identical for the same
            # command and seed on CPU (test_reliability.py).
            timings = {"wall_time_s": round(wall_time_s, 1),
                       "fold_wall_time_s": {r.patient: r.train_info.get("wall_time_s")
                                            for r in results}}
            atomic_write_text(d / "timings.json", json.dumps(timings, indent=2) + "\n")
            calibration = {"variant": cfg.variant, "config": dict(config),
                           **fit_temperature(probs, y_true)}
            atomic_write_text(d / CALIBRATION_FILE, json.dumps(calibration, indent=2) + "\n")
            order = np.argsort(idx, kind="stable")
            write_predictions_csv(d / "predictions.csv", ws, idx[order], probs[order])
            counts = classification_metrics(y_true, probs.argmax(1),
                                            len(ws.labelset))["confusion_counts"]
            names = [lab.name for lab in ws.labelset.labels]
            plot_confusion_matrix(d / "confusion_matrix.png", metrics["confusion_matrix"],
                                  names, f"{cfg.variant}: LOPO over {metrics['n_patients']} "
                                  f"patients, accuracy {metrics['accuracy']:.2f}", counts)
        stage.commit()
    except BaseException:
        stage.abort()
        raise
    return metrics


def read_calibration(path: Path, variant: str) -> dict[str, Any]:
    """The calibration ``evaluate`` wrote (``path``: its output folder or the
    calibration.json in it) for a model of ``variant``; ConfigError when there is none, it is
    unreadable, or it was fitted on another variant."""
    path = Path(path)
    file = path / CALIBRATION_FILE if path.is_dir() else path
    hint = ("give the folder 'eusvoicelabel evaluate' wrote for the same cohort and "
            "training options")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no {CALIBRATION_FILE} here", file, hint) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"unreadable calibration ({exc})", file, hint) from None
    lo, hi = TEMPERATURE_RANGE
    t = data.get("temperature") if isinstance(data, dict) else None
    if not is_temperature(t):
        raise ConfigError(f"calibration holds no temperature in [{lo}, {hi}]", file, hint)
    if data.get("variant") != variant:
        raise ConfigError(f"calibration was fitted on variant {data.get('variant')!r}, the "
                          f"model is {variant!r}", file, hint)
    return {"temperature": float(t), "source": str(file),
            **{k: data[k] for k in ("n_samples", "nll_raw", "nll_calibrated", "ece_raw",
                                    "ece_calibrated") if k in data}}


# --------------------------------------------------------------------------- Table III
def table_iii_markdown(results: Mapping[str, Optional[Mapping[str, Any]]],
                       notes: Optional[Mapping[str, str]] = None,
                       seconds: Optional[Mapping[str, float]] = None) -> str:
    """A markdown table shaped like the paper's Table III: ours next to the paper's numbers.

    ``results`` maps variant -> metrics dict (or None when the variant was not run);
    ``notes`` gives a reason per variant not run; ``seconds`` the training time of a row (the
    sum over its folds).
    """
    notes = notes or {}
    seconds = seconds or {}
    lines = ["| model | variant | paper acc | paper P | paper R | paper F1 | acc | P | R | F1 "
             "| bootstrap acc (mean ± std) | time |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for variant, spec in VARIANT_SPECS.items():
        if variant not in results and variant not in notes:
            continue
        m = results.get(variant)
        pub = spec.paper
        paper = f"{pub.accuracy:.2f} | {pub.precision:.2f} | {pub.recall:.2f} | {pub.f1:.2f}"
        if m:
            b = m["bootstrap"]
            ours = (f"{m['accuracy']:.2f} | {m['precision']:.2f} | {m['recall']:.2f} | "
                    f"{m['f1']:.2f} | {b['mean']:.2f} ± {b['std']:.2f} "
                    f"({b['n_subsets']} x {b['subset_size']} patients) | "
                    + (f"{seconds[variant] / 60:.1f} min" if variant in seconds else "–"))
        else:
            ours = f"– | – | – | – | not run: {notes.get(variant, 'not requested')} | –"
        lines.append(f"| {pub.title} | `{variant}` | {paper} | {ours} |")
    pm, ps = BOOTSTRAP_PROPOSED
    lines.append("")
    lines.append(f"Paper: {PATIENTS} patients, {WINDOWS} windows, bootstrap of the proposed "
                 f"model {pm:.2f} ± {ps:.2f}.")
    return "\n".join(lines) + "\n"


def evaluate_all(ws: Any, settings: Mapping[str, Any], out_dir: Path,
                 weights: Optional[Mapping[str, Optional[Path]]] = None,
                 variants: Optional[Sequence[str]] = None, device: str = "auto",
                 progress: ProgressLike = True, resume: bool = True, workers: int = 1,
                 pretrain_voice: bool = True) -> dict[str, Any]:
    """Run every variant of Table III and write ``OUT/<variant>/...`` plus ``OUT/table_iii.md``
    and ``OUT/summary.json``.

    Args:
        settings: TrainConfig fields shared by all variants (image_size, frames, width,
            batch_size, seed, ...); ``epochs`` / ``lr`` absent or None give each variant its
            paper values.
        weights: local weights per kind: ``{"vgg16": PATH, "resnet50": PATH, "voice": PATH}``.
            Variants whose ImageNet weights are missing are skipped and marked so in the table.
            A missing voice keyword network is pretrained on synthetic speech
            (``OUT/voice_keyword.pt``) when ``pretrain_voice``.
        variants: subset to run (default: all of Table III).
    """
    out_dir = Path(out_dir)
    progress = as_progress(progress)
    weights = dict(weights or {})
    _claim(out_dir, ws, list(weights.values()))
    variants = list(variants or VARIANTS)
    results: dict[str, Optional[dict[str, Any]]] = {}
    notes: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for variant in variants:
        kind = variant_spec(variant).weights
        wpath = weights.get(kind) if kind else None
        if kind == "voice" and wpath is None and pretrain_voice:
            wpath = out_dir / "voice_keyword.pt"
            if not wpath.is_file():
                log.info("pretraining the keyword network for voice_pretrained -> %s", wpath)
                pretrain_keyword_model(wpath, seed=int(settings.get("seed", 0)), device=device,
                                       settings=ws.settings.spectrogram, progress=progress)
            weights["voice"] = wpath
        if kind and wpath is None:
            notes[variant] = f"no {kind} weights (pass --{kind}-weights PATH)"
            results[variant] = None
            log.warning("%s skipped: %s", variant, notes[variant])
            continue
        shared = {k: v for k, v in settings.items() if k not in ("variant", "weights")}
        cfg = TrainConfig.from_settings(shared, variant=variant,
                                        weights=str(wpath) if wpath else None)
        results[variant] = evaluate_cohort(ws, cfg, out_dir / variant, device, progress, resume,
                                           workers=workers)
        fold_times = json.loads((out_dir / variant / "timings.json").read_text())
        seconds[variant] = sum(t or 0.0 for t in fold_times["fold_wall_time_s"].values())
    table = table_iii_markdown(results, notes, seconds)
    atomic_write_text(out_dir / "table_iii.md", table)
    summary = {v: (None if m is None else {k: m[k] for k in ("accuracy", "precision", "recall",
                                                              "f1", "bootstrap")})
               for v, m in results.items()}
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return {"results": results, "notes": notes, "table": table}


__all__ = ["evaluate_all", "evaluate_cohort", "write_predictions_csv", "plot_confusion_matrix",
           "table_iii_markdown", "read_calibration", "CALIBRATION_FILE"]
