"""What the image path of the proposed network adds to the voice, on a synthetic cohort (a
benchmark for docs/results.md, "What the image path adds"; not a test).

Four measurements, each its own sub-command (``--voice-aux-weight 0``: the preset as it was before its voice-path loss):

    python3 scripts/image_path_study.py folds COHORT [--folds 3] [--voice-aux-weight W]
        The proposed network and voice only, both with ``--preset cpu``, trained on the other
        folds' patients (patients dealt round-robin into ``--folds`` groups): how the image path
        behaves when the voice has heard fewer speakers than in leave-one-patient-out.

    python3 scripts/image_path_study.py parts COHORT --out PARTS.npz [--voice-aux-weight W]
        Leave-one-patient-out of the proposed preset (folds and seeds as ``evaluate``'s) keeping the parts of its logits for every
        held-out window: the voice path, the joint (image x voice) logits before their bound
        and the image branch's own head.  Prints how many windows each part names right alone
        and under a few other fusions of the image head.

    python3 scripts/image_path_study.py inner COHORT [--variant proposed]
        Model selection on an inner validation patient: leave one patient out as ``evaluate``
        does, but each fold also holds out the next patient (in cohort order) from training
        and scores every second epoch's weights on it (log-loss).  Prints the held-out windows
        right with the last epoch's weights, with the epoch the inner patient picks, and (for
        the proposed network) with the late voice path or the whole network, whichever the
        inner patient scores better.

    python3 scripts/image_path_study.py ceiling COHORT OTHER [OTHER ...]
        Synthetic cohorts only (reads the generator's truth.json): how often the set of
        landmarks visible in a window, had an image model seen it perfectly, names the landmark
        that was said (the most frequent label for that set in the OTHER cohorts).  An upper
        bound on what any image branch can add.

Windows come from the library's cache (``build_window_set``), training from ``train_model``,
as ``eusvoicelabel evaluate`` runs them; the draws are seeded, so a rerun repeats the figures.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np


def _config(variant: str, options: dict):
    from EUSVoiceLabelLib.core.presets import preset_settings
    from EUSVoiceLabelLib.train.config import TrainConfig
    return TrainConfig.from_settings(preset_settings("cpu"), options, variant=variant)


def _window_set(cohort: str, variant: str, options: dict):
    from EUSVoiceLabelLib.data.dataset import build_window_set
    cfg = _config(variant, options)
    return cfg, build_window_set(cohort, settings=cfg.window_settings(), progress=False)


_WINDOWS = None  # a worker's window set, given once by _fold_pool


def _keep_windows(ws) -> None:
    global _WINDOWS
    _WINDOWS = ws


def _fold_pool(ws) -> ProcessPoolExecutor:
    """Two worker processes that share the parent's window set: loading it from the cache in
    each worker at once would race for the cache's lock."""
    return ProcessPoolExecutor(2, initializer=_keep_windows, initargs=(ws,))


def _right(scores: np.ndarray, labels: np.ndarray) -> int:
    return int((scores.argmax(1) == labels).sum())


def folds(cohort: str, n_folds: int, options: dict) -> None:
    """Proposed and voice only, trained on n_folds - 1 of n_folds patient groups."""
    import torch
    from EUSVoiceLabelLib.train.loop import predict_proba, train_model
    torch.set_num_threads(2)
    for variant in ("proposed", "voice_only"):
        cfg, ws = _window_set(cohort, variant, options)
        patients = ws.patient_ids
        right, t0 = 0, time.time()
        for k in range(n_folds):
            test = ws.indices_of(patients[k::n_folds])
            train = np.setdiff1d(np.arange(len(ws)), test)
            res = train_model(ws, cfg, len(ws.labelset), indices=train, device="cpu",
                              progress=False)
            right += _right(predict_proba(res.model, ws, test, device="cpu"), ws.labels[test])
        print(json.dumps({"cohort": cohort, "variant": variant, "folds": n_folds,
                          "right": right, "windows": len(ws),
                          "seconds": round(time.time() - t0)}))


def _inputs(ws, idx: np.ndarray, with_image: bool = True):
    """(images in [0, 1] or None, voices) of the windows ``idx``, as tensors."""
    import torch
    image = torch.as_tensor(ws.images[idx]).float().div_(255.0) if with_image else None
    return image, torch.as_tensor(np.asarray(ws.voices, np.float32)[idx])


def _parts_fold(args: tuple[str, dict]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One LOPO fold trained as ``evaluate`` trains it (its folds and per-fold seed)."""
    import torch
    from EUSVoiceLabelLib.train.folds import fold_seed, lopo_folds
    from EUSVoiceLabelLib.train.loop import train_model
    patient, options = args
    torch.set_num_threads(1)
    cfg, ws = _config("proposed", options), _WINDOWS
    fold = next(f for f in lopo_folds(ws.patients) if f.patient == patient)
    model = train_model(ws, cfg.with_(seed=fold_seed(cfg.seed, patient)), len(ws.labelset),
                        indices=fold.train_idx, device="cpu", progress=False).model.eval()
    with torch.no_grad():
        f = model.features(*_inputs(ws, fold.test_idx))
        return fold.test_idx, {"voice": f["voice_logits"].numpy(),
                               "joint": f["image_logits"].numpy(),
                               "image_head": f["image_head_logits"].numpy(),
                               "final": f["logits"].numpy()}


def parts(cohort: str, out: Path, options: dict) -> None:
    """LOPO of the proposed preset, keeping the voice / joint / image-head logits."""
    from scipy.special import log_softmax
    _, ws = _window_set(cohort, "proposed", options)
    y = np.asarray(ws.labels)
    got = {k: np.zeros((len(ws), len(ws.labelset)), np.float32)
           for k in ("voice", "joint", "image_head", "final")}
    with _fold_pool(ws) as pool:
        for test, p in pool.map(_parts_fold, [(pat, options) for pat in ws.patient_ids]):
            for k, v in p.items():
                got[k][test] = v
    import io
    from EUSVoiceLabelLib.core.fileio import atomic_write_bytes
    buf = io.BytesIO()
    np.savez(buf, labels=y, **got)
    atomic_write_bytes(out, buf.getvalue())
    v, j, a = got["voice"], got["joint"], got["image_head"]
    report = {"windows": len(y), "final (the product's rule)": _right(got["final"], y),
              "voice path alone": _right(v, y), "joint logits alone": _right(j, y),
              "image head alone": _right(a, y)}
    for b in (0.5, 1.0, 2.0):
        report[f"voice + {b} tanh(image head / {b})"] = _right(v + b * np.tanh(a / b), y)
    for w in (0.25, 0.5, 1.0):
        report[f"log p(voice) + {w} log p(image head)"] = _right(
            log_softmax(v, axis=1) + w * log_softmax(a, axis=1), y)
    print(json.dumps(report, indent=1))


FIRST_SCORED_EPOCH = 6  # the inner patient scores every second epoch from here, and the last


def _inner_fold(args: tuple[str, str, str]) -> dict:
    """One LOPO fold (test patient ``p``) trained without the inner patient ``q``, with the
    held-out logits of both patients after the scored epochs."""
    import copy
    import torch
    from EUSVoiceLabelLib.train.folds import fold_seed
    from EUSVoiceLabelLib.train.loop import recalibrate_batchnorm, train_model
    variant, p, q = args
    torch.set_num_threads(1)
    cfg, ws = _config(variant, {}), _WINDOWS
    test, inner = ws.indices_of([p]), ws.indices_of([q])
    train = np.setdiff1d(np.arange(len(ws)), np.concatenate([test, inner]))
    held_out = {"inner": _inputs(ws, inner, cfg.spec.image is not None),
                "test": _inputs(ws, test, cfg.spec.image is not None)}
    scored: dict[int, dict] = {}

    def score(epoch: int, model, data) -> None:
        if epoch != cfg.epochs and (epoch < FIRST_SCORED_EPOCH or epoch % 2):
            return
        with torch.random.fork_rng(devices=[]):  # training's random draws stay its own
            m = copy.deepcopy(model)
            recalibrate_batchnorm(m, data, cfg.batch_size, torch.device("cpu"))
            m.eval()
            with torch.no_grad():
                scored[epoch] = {}
                for name, inputs in held_out.items():
                    f = m.features(*inputs)
                    scored[epoch][name] = {k: f[k].numpy() for k in ("logits", "voice_logits")
                                           if k in f}

    train_model(ws, cfg.with_(seed=fold_seed(cfg.seed, p)), len(ws.labelset), indices=train,
                device="cpu", progress=False, on_epoch_model=score)
    return {"inner": np.asarray(ws.labels)[inner], "test": np.asarray(ws.labels)[test],
            "epochs": scored}


def inner(cohort: str, variant: str) -> None:
    """Leave one patient out with an inner validation patient per fold (see the module doc)."""
    from scipy.special import log_softmax
    t0 = time.time()
    _, ws = _window_set(cohort, variant, {})
    patients = list(ws.patient_ids)
    jobs = [(variant, p, patients[(i + 1) % len(patients)])
            for i, p in enumerate(patients)]

    def nll(logits: np.ndarray, y: np.ndarray) -> float:
        return float(-log_softmax(logits, axis=1)[np.arange(len(y)), y].sum())

    last = picked = by_path = 0
    chosen = []
    with _fold_pool(ws) as pool:
        for fold in pool.map(_inner_fold, jobs):
            e, yi, yt = fold["epochs"], fold["inner"], fold["test"]
            final = e[max(e)]
            last += _right(final["test"]["logits"], yt)
            best = min(e, key=lambda k: (nll(e[k]["inner"]["logits"], yi), -k))
            chosen.append(best)
            picked += _right(e[best]["test"]["logits"], yt)
            if "voice_logits" in final["test"]:
                voice_better = nll(final["inner"]["voice_logits"], yi) < \
                    nll(final["inner"]["logits"], yi)
                by_path += _right(final["test"]["voice_logits" if voice_better else "logits"], yt)
    report = {"cohort": cohort, "variant": variant, "windows": len(ws),
              "last epoch": last, "epoch the inner patient picks": picked,
              "epochs picked": chosen, "seconds": round(time.time() - t0)}
    if variant == "proposed":
        report["voice path or whole network, as the inner patient picks"] = by_path
    print(json.dumps(report))


def _visible_sets(cohort: Path) -> list[tuple[frozenset, str]]:
    rows = []
    for truth in sorted(cohort.glob("*/truth.json")):
        for m in json.loads(truth.read_text())["mentions"]:
            seen = frozenset(k for k, v in m["window"]["landmarks"].items() if v["visible"])
            rows.append((seen, m["label"]))
    return rows


def ceiling(cohort: Path, others: Sequence[Path]) -> None:
    """How often the visible set alone names the said landmark (a synthetic-only bound)."""
    counts: dict[frozenset, collections.Counter] = collections.defaultdict(collections.Counter)
    for other in others:
        for seen, label in _visible_sets(other):
            counts[seen][label] += 1
    rows = _visible_sets(cohort)
    right = sum(1 for seen, label in rows
                if counts[seen] and counts[seen].most_common(1)[0][0] == label)
    alone = sum(1 for seen, label in rows if seen == {label})
    print(json.dumps({"windows": len(rows), "named by the visible set": right,
                      "only the said landmark visible": alone}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    f = sub.add_parser("folds")
    f.add_argument("cohort")
    f.add_argument("--folds", type=int, default=3)
    p = sub.add_parser("parts")
    p.add_argument("cohort")
    p.add_argument("--out", type=Path, required=True)
    for trained in (f, p):  # the preset's value unless given (0: the preset before it)
        trained.add_argument("--voice-aux-weight", type=float, default=None)
    i = sub.add_parser("inner")
    i.add_argument("cohort")
    i.add_argument("--variant", default="proposed", choices=("proposed", "voice_only"))
    c = sub.add_parser("ceiling")
    c.add_argument("cohort", type=Path)
    c.add_argument("others", type=Path, nargs="+")
    a = ap.parse_args()
    if a.what == "parts" and (a.out.suffix != ".npz" or
                              a.out.resolve().is_relative_to(Path(a.cohort).resolve())):
        ap.error(f"--out {a.out}: give a .npz file outside the cohort {a.cohort}")
    options = {} if getattr(a, "voice_aux_weight", None) is None else \
        {"voice_aux_weight": a.voice_aux_weight}
    if a.what == "folds":
        folds(a.cohort, a.folds, options)
    elif a.what == "parts":
        parts(a.cohort, a.out, options)
    elif a.what == "inner":
        inner(a.cohort, a.variant)
    else:
        ceiling(a.cohort, a.others)


if __name__ == "__main__":
    main()
