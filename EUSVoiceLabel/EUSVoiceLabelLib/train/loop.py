"""Training the network: weighted loss, Adam, the resumable training loop, inference.

The paper's recipe (SPEC §1): class-weighted categorical cross-entropy with weights
max_count / count over the training data (loss normalised by the batch size, as in its
equation 2), Adam, batch 8, epochs and learning rate per variant from Table II
(:data:`..core.variants.VARIANT_SPECS`).  Everything can be overridden.

Design choices:

- The whole training fold (at most a few hundred windows) is put on the device once; batches are
  cut from it by index.  Frames stay uint8 on the device and are scaled to [0, 1] per batch.
- CUDA: bf16 autocast and channels-last tensors.  CPU: float32, deterministic algorithms, so a
  seed makes runs repeatable.  ``auto`` picks CUDA, then MPS (Apple), then CPU
  (:mod:`..nn.devices`).
- Shuffling, random pairs and random frame choice draw from one ``torch.Generator`` whose state
  is saved with the model, the optimiser and the epoch in a resume file, so an interrupted run
  that resumes ends with exactly the weights of an uninterrupted one (on CPU).
- Resume files, like checkpoints (:mod:`.checkpoints`), are plain dicts of tensors and JSON-able
  values, read with ``torch.load(weights_only=True)`` (no code is unpickled), and written
  atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from ..core.errors import ConfigError, OutputError, TrainingError
from ..nn.devices import seed_everything, select_device
from ..nn.network import build_model
from ..nn.torchfile import torch_save_atomic
from .config import TrainConfig
from .distributed import init_from_env

log = logging.getLogger(__name__)


STATE_FORMAT = "eusvoicelabel-train-state"
STATE_FORMAT_VERSION = 1


# --------------------------------------------------------------------------- mixed precision
def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


# --------------------------------------------------------------------------- data on device
@dataclass
class DeviceData:
    """A set of windows held on the compute device (frames as uint8)."""

    images: torch.Tensor   # (N, F, H, W) uint8
    voices: torch.Tensor   # (N, 1024, 66) float32
    labels: torch.Tensor   # (N,) int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def to_device_data(data: Any, indices: Optional[Sequence[int]], device: torch.device,
                   need_labels: bool = True) -> DeviceData:
    """Copy ``data.images/voices/labels`` (numpy or torch; e.g. a WindowSet) to the device."""
    idx = np.arange(len(data.labels)) if indices is None else np.asarray(indices, dtype=np.int64)
    images = torch.as_tensor(np.ascontiguousarray(np.asarray(data.images)[idx]))
    voices = torch.as_tensor(np.ascontiguousarray(np.asarray(data.voices, np.float32)[idx]))
    labels = torch.as_tensor(np.asarray(data.labels, np.int64)[idx])
    if images.dtype != torch.uint8:
        # Accept float frames in [0, 1] too; store as uint8 like the dataset does.
        images = (images.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return DeviceData(images.to(device), voices.to(device), labels.to(device))


def check_data_shape(data: Any, cfg: TrainConfig) -> None:
    """ConfigError if the windows do not have the configured frames / image size / voice."""
    shape = tuple(np.asarray(data.images).shape[1:]) if hasattr(data.images, "shape") else None
    want = (cfg.frames, *cfg.image_size)
    if shape != want:
        raise ConfigError(f"windows have shape {shape} (frames, H, W) but the model is set "
                          f"up for {want}",
                          hint="build the window set with the same --frames/--image-size")
    vshape = tuple(data.voices.shape[1:])
    if len(vshape) != 2:
        raise ConfigError(f"voice spectrograms must be (bins, time), got {vshape}")


def class_weights_from_labels(labels: np.ndarray | torch.Tensor, num_classes: int) -> list[float]:
    """max_count / count per class over ``labels`` (0 for classes with no sample)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64).reshape(-1), minlength=num_classes)
    top = counts.max() if counts.size else 0
    if top == 0:
        return [1.0] * num_classes
    return [float(top / c) if c > 0 else 0.0 for c in counts[:num_classes]]


def weighted_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
                  ) -> torch.Tensor:
    """Paper eq. 2: -(1/N) sum_n w_{s_n} log softmax(f)_{s_n} (divides by N, not by sum w)."""
    return F.cross_entropy(logits.float(), labels, weight=weights, reduction="sum") / len(labels)


def _batches(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    chunks = list(torch.split(order, batch_size))
    # A last batch of one window would break BatchNorm on 1x1 grids: merge it into the previous.
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2] = torch.cat([chunks[-2], chunks[-1]])
        chunks.pop()
    return chunks


def same_class_partners(labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """For each window, a random window of the same class (the paper's random pairs)."""
    labels = labels.cpu()
    partner = torch.empty_like(labels)
    for c in torch.unique(labels):
        members = torch.nonzero(labels == c).flatten()
        pick = torch.randint(len(members), (len(members),), generator=gen)
        partner[members] = members[pick]
    return partner


def random_frame_choice(n: int, frames: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """(n, k) sorted random frame indices out of ``frames`` for each window."""
    return torch.rand(n, frames, generator=gen).argsort(dim=1)[:, :k].sort(dim=1).values


# --------------------------------------------------------------------------- training loop
@dataclass
class TrainResult:
    """What :func:`train_model` returns."""

    model: torch.nn.Module
    config: TrainConfig
    class_weights: list[float]
    history: list[dict[str, float]] = field(default_factory=list)
    wall_time_s: float = 0.0
    device: str = "cpu"
    resumed_from_epoch: int = 0


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training; ``state_path`` holds the progress when it could be saved."""

    def __init__(self, message: str, state_path: Optional[Path] = None, epoch: int = 0):
        super().__init__(message)
        self.state_path = state_path
        self.epoch = epoch


@contextlib.contextmanager
def _deferred_interrupt():
    """Turn the first Ctrl-C into a request to stop after the current batch.

    A batch interrupted half-way (e.g. during ``optimizer.step``) would leave the weights in a
    state no epoch ever had; stopping between batches lets the resume file hold an exact
    position.  A second Ctrl-C stops at once.  Only the main thread can own signal handlers;
    elsewhere (e.g. a GUI worker thread) nothing is deferred.
    """
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous in (signal.SIG_IGN, None):
        yield requested
        return

    def handler(signum, frame):  # noqa: ARG001 - signal handler signature
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()
        log.warning("interrupt: stopping after this batch and saving progress "
                    "(press Ctrl-C again to stop at once)")

    signal.signal(signal.SIGINT, handler)
    try:
        yield requested
    finally:
        signal.signal(signal.SIGINT, previous)


def data_signature(d: DeviceData) -> str:
    h = hashlib.sha256()
    h.update(str(tuple(d.images.shape)).encode())
    h.update(d.labels.cpu().numpy().tobytes())
    h.update(d.voices[:, :4, :4].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def train_model(data: Any, cfg: TrainConfig, num_classes: int, *,
                indices: Optional[Sequence[int]] = None, device: str | torch.device = "auto",
                progress: bool = True, state_path: Optional[Path] = None,
                checkpoint_every: int = 0, checkpoint_seconds: float = 300.0,
                on_epoch_end: Optional[Callable[[int, dict[str, float]], None]] = None,
                desc: str = "train", position: int = 0, keep_state: bool = False
                ) -> TrainResult:
    """Train ``cfg.variant`` on the windows ``data[indices]`` and return the model.

    Args:
        data: anything with ``images`` (N, F, H, W) uint8, ``voices`` (N, 1024, 66) float32 and
            ``labels`` (N,) int64 (e.g. a dataset WindowSet).
        cfg: the configuration (variant, epochs, lr, batch size, ...).
        num_classes: K.
        indices: the training windows (default: all).
        device: "auto", "cpu", "cuda", "mps" or a torch.device.
        progress: show a tqdm bar with epoch, loss and speed.
        state_path: resume file.  If it exists and matches this run, training continues from it;
            it is rewritten every ``checkpoint_every`` epochs (0: only by time) or every
            ``checkpoint_seconds`` and removed when training ends (unless ``keep_state``).
            Ctrl-C finishes the current batch, saves the exact position (mid-epoch) there and
            raises :class:`TrainingInterrupted`; a failing write of it is logged and training
            goes on with the previous file intact.
        keep_state: write the final state to ``state_path`` instead of removing it, so a caller
            whose own save fails loses nothing (it removes the file after saving).
        on_epoch_end: called as ``on_epoch_end(epoch, stats)`` after each epoch (after the
            resume file is written); raising from it interrupts training.
        desc / position: tqdm label and line.

    Raises:
        TrainingError: the loss became NaN or infinite (the resume file of the last good
            position is kept; nothing is saved from the diverged run).
        TrainingInterrupted: Ctrl-C (a KeyboardInterrupt).
    """
    t0 = time.time()
    dev = select_device(device)
    # Under torchrun (WORLD_SIZE > 1): data-parallel over the processes (distributed.py).
    ctx = init_from_env(str(device))
    if ctx is not None:
        dev = ctx.device
    check_data_shape(data, cfg)
    seed_everything(cfg.seed, dev)
    model = build_model(cfg.variant, num_classes, cfg.frames, weights=cfg.weights,
                        width=cfg.width, joint_scale=cfg.joint_scale)
    _check_voice_settings(model, data)
    d = to_device_data(data, indices, dev)
    if len(d) == 0:
        raise ConfigError("no training windows", hint="the cohort needs labelled mentions")
    weights = class_weights_from_labels(d.labels.cpu().numpy(), num_classes)
    w_t = torch.tensor(weights, dtype=torch.float32, device=dev)
    if dev.type == "cuda":
        model = model.to(dev, memory_format=torch.channels_last)
    else:
        model = model.to(dev)
    net = ctx.wrap(model) if ctx is not None else model  # DDP: gradients averaged
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    history: list[dict[str, float]] = []
    start = 0
    skip_batches = 0  # batches of the first epoch already done (a mid-epoch resume)
    partial = {"loss": 0.0, "correct": 0, "seen": 0}
    signature = {"config": cfg.signature(), "data": data_signature(d),
                 "num_classes": num_classes}
    if state_path is not None and Path(state_path).is_file():
        state = _read_state(Path(state_path))
        if state is not None and state.get("signature") == signature:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            gen.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            if dev.type == "cuda" and state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(state["cuda_rng"])
            history = list(state.get("history", []))
            start = int(state["epoch"])
            if int(state.get("batch", 0)) > 0:
                # Replay the epoch's draws from its start, then skip the batches already done.
                gen.set_state(state["epoch_generator"])
                skip_batches = int(state["batch"])
                partial = dict(state["partial"])
            log.info("resuming %s from epoch %d (%s)", desc, start, state_path)
        elif state is not None:
            log.warning("%s: resume file is from a different run; starting over", state_path)

    n_frames = d.images.shape[1]
    bar = tqdm(range(start, cfg.epochs), initial=start, total=cfg.epochs, desc=desc,
               unit="epoch", disable=not progress or (ctx is not None and not ctx.is_main),
               position=position, leave=position == 0,
               dynamic_ncols=True)
    last_save = time.time()

    def save_state(epoch_done: int, batch: int = 0, epoch_gen: Optional[torch.Tensor] = None,
                   acc: Optional[dict] = None) -> bool:
        if ctx is not None and not ctx.is_main:
            return True  # one resume file, written by the first process
        try:
            _write_state(Path(state_path), model, opt, gen, epoch_done, history, signature,
                         dev, batch=batch, epoch_generator=epoch_gen, partial=acc)
            return True
        except OutputError as exc:  # a full or failing disk must not end a long run
            log.warning("cannot save the resume state (%s); training goes on and the previous "
                        "resume file is kept", exc)
            return False

    with _deferred_interrupt() as stop:
        for epoch in bar:
            stats = _run_epoch(epoch, net, opt, d, cfg, gen, w_t, dev, n_frames, stop,
                               skip_batches, partial, save_state, state_path, desc, ctx)
            skip_batches, partial = 0, {"loss": 0.0, "correct": 0, "seen": 0}
            history.append(stats)
            bar.set_postfix(loss=f"{stats['loss']:.4f}", acc=f"{stats['train_accuracy']:.2f}",
                            speed=f"{stats['seen'] / max(stats['seconds'], 1e-9):.1f} win/s")
            del stats["seen"]
            if state_path is not None and epoch + 1 < cfg.epochs and (
                    (checkpoint_every and (epoch + 1) % checkpoint_every == 0)
                    or time.time() - last_save >= checkpoint_seconds):
                save_state(epoch + 1)
                last_save = time.time()
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, stats)
    bar.close()
    bad = [k for k, v in model.state_dict().items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise TrainingError(f"training diverged: weights {bad[0]} hold NaN or infinite values",
                            state_path, "lower --lr; the last good resume state is kept")
    recalibrate_batchnorm(model, d, cfg.batch_size, dev)
    if state_path is not None:
        if keep_state:
            save_state(cfg.epochs)
        else:
            Path(state_path).unlink(missing_ok=True)
    model.eval()
    return TrainResult(model, cfg, weights, history, time.time() - t0, str(dev), start)


def recalibrate_batchnorm(model: torch.nn.Module, d: DeviceData, batch_size: int,
                          dev: torch.device) -> None:
    """Recompute the BatchNorm running statistics of the final weights over the training data.

    During training the running averages trail weights that keep changing (momentum 0.1), so
    with few steps the eval-mode network can behave very differently from the trained one (on
    a tiny set we measured 100 % training accuracy in train mode and 50 % in eval mode).  One
    pass without gradients, in train mode, with a cumulative average (momentum None) makes the
    statistics those of the final network on inputs as inference sees them.  Frozen
    BatchNorm layers (pretrained backbones stay in eval mode) are left alone.
    """
    model.train()
    bns = [m for m in model.modules()
           if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training
           and m.track_running_stats]
    if not bns or len(d) == 0:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    try:
        for _ in _forward_batches(model, d, batch_size, dev):
            pass
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom


def _run_epoch(epoch: int, model: torch.nn.Module, opt: torch.optim.Optimizer, d: DeviceData,
               cfg: TrainConfig, gen: torch.Generator, w_t: torch.Tensor, dev: torch.device,
               n_frames: int, stop: threading.Event, skip_batches: int, partial: dict,
               save_state: Callable[..., bool], state_path: Optional[Path], desc: str,
               ctx: Any = None) -> dict[str, float]:
    """One epoch of training; returns its stats (with ``seen``).

    Raises TrainingInterrupted after a batch when ``stop`` is set (saving the position first)
    and TrainingError on a non-finite loss (before the optimiser step, so the weights stay
    those of the last good batch).
    """
    t_ep = time.time()
    epoch_gen = gen.get_state()
    model.train()
    order = torch.randperm(len(d), generator=gen)
    image_of = torch.arange(len(d))
    spec = cfg.spec
    if spec.random_pairs:
        image_of = same_class_partners(d.labels, gen)
    frame_sel = None
    if spec.frames_used:
        frame_sel = random_frame_choice(len(d), n_frames, spec.frames_used, gen)
    total_loss, correct, seen = partial["loss"], partial["correct"], partial["seen"]
    for k, b in enumerate(_batches(order, cfg.batch_size)):
        if k < skip_batches:
            continue
        n_batch = len(b)
        if ctx is not None:
            b = ctx.shard(b)  # this process's share of the global batch
        ib = image_of[b]
        img = d.images[ib.to(dev)]
        if frame_sel is not None:
            sel = frame_sel[ib].to(dev)
            img = torch.gather(img, 1, sel[:, :, None, None].expand(-1, -1, *img.shape[2:]))
        img = img.float().div_(255.0)
        if dev.type == "cuda":
            img = img.contiguous(memory_format=torch.channels_last)
        bd = b.to(dev)
        voice, y = d.voices[bd], d.labels[bd]
        with _autocast(dev):
            logits = model(img, voice)
        loss = weighted_loss(logits, y, w_t)
        loss_value = float(loss.detach())
        diverged = not math.isfinite(loss_value)
        if ctx is not None:  # every process stops together (see DistContext.any)
            diverged = ctx.any(diverged)
        if diverged:
            kept = f"; the last good resume state is kept in {state_path}" \
                if state_path is not None and Path(state_path).is_file() else ""
            what = f"the loss became {loss_value}" if not math.isfinite(loss_value) else \
                "the loss became NaN or infinite in another process"
            raise TrainingError(
                f"{desc}: {what} at epoch {epoch + 1}, batch {k + 1}; "
                f"training stopped{kept}", None,
                "lower --lr, or check the inputs for corrupt audio or frames")
        if ctx is not None:
            loss = loss * ctx.loss_scale(len(b), n_batch)  # DDP's mean = global batch loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total_loss += loss_value * len(b)
        correct += int((logits.detach().argmax(1) == y).sum())
        seen += len(b)
        if stop.is_set():
            saved = state_path is not None and save_state(
                epoch, k + 1, epoch_gen, {"loss": total_loss, "correct": correct,
                                          "seen": seen})
            where = f"progress saved in {state_path}; run the same command again to " \
                    "resume" if saved else "no progress saved"
            raise TrainingInterrupted(f"{desc} stopped at epoch {epoch + 1}, batch {k + 1}: "
                                      f"{where}", state_path if saved else None, epoch)
    if ctx is not None:
        total_loss, correct, seen = ctx.sum([total_loss, correct, seen])
    return {"epoch": epoch + 1, "loss": total_loss / seen, "train_accuracy": correct / seen,
            "seconds": time.time() - t_ep, "seen": seen}


def _check_voice_settings(model: torch.nn.Module, data: Any) -> None:
    """A pretrained keyword network only understands spectrograms scaled as in pretraining."""
    expected = getattr(getattr(model, "voice_branch", None), "spectrogram_settings", None)
    got = getattr(getattr(data, "settings", None), "spectrogram", None)
    if expected and got is not None and hasattr(got, "to_json") and got.to_json() != expected:
        raise ConfigError(f"the keyword network was pretrained on spectrograms {expected} but "
                          f"the windows use {got.to_json()}",
                          hint="re-run 'pretrain-voice' with the same spectrogram settings")


def _write_state(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                 gen: torch.Generator, epoch: int, history: list, signature: dict,
                 dev: torch.device, batch: int = 0, epoch_generator: Optional[torch.Tensor] = None,
                 partial: Optional[dict] = None) -> None:
    """Write the resume file atomically (epoch = completed epochs; ``batch`` > 0 marks a
    position inside the next epoch, replayed from ``epoch_generator``)."""
    state = {"format": STATE_FORMAT, "format_version": STATE_FORMAT_VERSION, "epoch": epoch,
             "batch": batch, "epoch_generator": epoch_generator, "partial": partial,
             "signature": signature, "history": history,
             "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
             "optimizer": _to_cpu(opt.state_dict()), "generator": gen.get_state(),
             "torch_rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state() if dev.type == "cuda" else None}
    torch_save_atomic(path, state)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _read_state(path: Path) -> Optional[dict]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged resume file only costs the progress it held
        log.warning("%s: cannot read resume file (%s); starting over", path,
                    exc.__class__.__name__)
        return None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or \
            state.get("format_version") != STATE_FORMAT_VERSION:
        log.warning("%s: not a resume file of this version; starting over", path)
        return None
    return state


# --------------------------------------------------------------------------- inference
def _forward_batches(model: torch.nn.Module, d: DeviceData, batch_size: int,
                     dev: torch.device) -> Iterator[torch.Tensor]:
    """Logits of ``d`` batch by batch, without gradients, as inference feeds the network."""
    with torch.no_grad():
        for i in range(0, len(d), batch_size):
            img = d.images[i:i + batch_size].float().div_(255.0)
            if dev.type == "cuda":
                img = img.contiguous(memory_format=torch.channels_last)
            with _autocast(dev):
                yield model(img, d.voices[i:i + batch_size])


def predict_proba(model: torch.nn.Module, data: Any, indices: Optional[Sequence[int]] = None,
                  device: str | torch.device = "auto", batch_size: int = 16) -> np.ndarray:
    """Class probabilities (N, K) float32 for windows ``data[indices]``."""
    dev = select_device(device)
    d = to_device_data(data, indices, dev)
    model = model.to(dev).eval()
    out = [torch.softmax(logits.float(), dim=1).cpu().numpy()
           for logits in _forward_batches(model, d, batch_size, dev)]
    if not out:
        k = getattr(model, "num_classes", 0)
        return np.zeros((0, k), np.float32)
    return np.concatenate(out).astype(np.float32)


# --------------------------------------------------------------------------- checkpoints


__all__ = ["train_model", "TrainResult", "TrainingInterrupted", "predict_proba",
           "class_weights_from_labels", "weighted_loss", "to_device_data", "DeviceData"]
