"""Training the network: weighted loss, Adam, the resumable training loop, inference.

The paper's recipe: class-weighted categorical cross-entropy with weights
max_count / count over the training data (loss normalised by the batch size, as in its
equation 2), Adam, batch 8, epochs and learning rate per variant from Table II
(:data:`..core.variants.VARIANT_SPECS`).  Everything can be overridden, and the configuration
can add what generalises better to unseen patients (:mod:`..core.presets`): AdamW and weight
decay, a warm-up + cosine schedule, label smoothing, speech and frame augmentation
(:mod:`.augment`), a voice branch pretrained on the spoken label vocabulary
(:mod:`.vocabulary_voice`) trained at a scaled rate, and the late voice path of the network.

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

from ..core.errors import ConfigError, OutputError, TrainingError
from ..core.progress import SILENT, ProgressLike, ProgressTask, as_progress
from ..data.outputs import OutputKind, torch_file_of_format
from ..nn.devices import seed_everything, select_device
from ..nn.fastpath import autocast_for
from ..nn.network import build_model
from ..nn.torchfile import torch_save_atomic
from .augment import ImageAugment, VoiceAugment, augment_images, batch_generator, voice_windows
from .config import TrainConfig
from .distributed import init_from_env
from .vocabulary_voice import initialise_voice, vocabulary_voice_weights

log = logging.getLogger(__name__)


STATE_FORMAT = "eusvoicelabel-train-state"
STATE_FORMAT_VERSION = 1
#: A resume file (``MODEL.resume.pt``): replaced only when it is a resume file of ours.
TRAIN_STATE = OutputKind("train-state", "a training resume file of eusvoicelabel",
                         folder=False, signature=torch_file_of_format(STATE_FORMAT))


# --------------------------------------------------------------------------- data on device
@dataclass
class DeviceData:
    """A set of windows held on the compute device (frames as uint8)."""

    images: torch.Tensor   # (N, F, H, W) uint8
    voices: torch.Tensor   # (N, 1024, 66) float32
    labels: torch.Tensor   # (N,) int64
    voice_context: Optional[torch.Tensor] = None  # (N, 1024, T) float16 dB, for augmentation
    voice_ends: Optional[torch.Tensor] = None     # (N,) float64 seconds after the onset

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def to_device_data(data: Any, indices: Optional[Sequence[int]], device: torch.device,
                   need_labels: bool = True, speech_context: bool = False) -> DeviceData:
    """Copy ``data.images/voices/labels`` (numpy or torch; e.g. a WindowSet) to the device."""
    idx = np.arange(len(data.labels)) if indices is None else np.asarray(indices, dtype=np.int64)
    images = torch.as_tensor(np.ascontiguousarray(np.asarray(data.images)[idx]))
    voices = torch.as_tensor(np.ascontiguousarray(np.asarray(data.voices, np.float32)[idx]))
    labels = torch.as_tensor(np.asarray(data.labels, np.int64)[idx])
    if images.dtype != torch.uint8:
        # Accept float frames in [0, 1] too; store as uint8 like the dataset does.
        images = (images.float().clamp(0, 1) * 255).round().to(torch.uint8)
    context = getattr(data, "voice_context", None)
    ends = getattr(data, "voice_ends", None)
    if speech_context and context is not None and ends is not None:
        # Augmentation cuts its windows on the CPU (small tensors, cheap), so the contexts
        # stay there.
        context = torch.as_tensor(np.ascontiguousarray(np.asarray(context)[idx]))
        ends = torch.as_tensor(np.asarray(ends, np.float64)[idx])
    else:
        context = ends = None
    return DeviceData(images.to(device), voices.to(device), labels.to(device), context, ends)


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


def weighted_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """Paper eq. 2: -(1/N) sum_n w_{s_n} log softmax(f)_{s_n} (divides by N, not by sum w);
    ``label_smoothing`` > 0 spreads that share of each target over all classes."""
    return F.cross_entropy(logits.float(), labels, weight=weights, reduction="sum",
                           label_smoothing=label_smoothing) / len(labels)


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


@dataclass
class _Run:
    """What the epochs of one training run share (built by :func:`_start_run`)."""

    cfg: TrainConfig
    model: torch.nn.Module         # the network itself (its weights are saved)
    net: torch.nn.Module           # what is called: the network, or its DDP wrapper
    opt: torch.optim.Optimizer
    data: DeviceData
    class_weights: list[float]
    weight_t: torch.Tensor
    gen: torch.Generator           # shuffling, random pairs, random frames
    device: torch.device
    ctx: Any                       # distributed.DistContext under torchrun, else None
    state_path: Optional[Path]
    desc: str
    signature: dict
    history: list[dict[str, float]] = field(default_factory=list)
    spectrogram: Any = None            # the windows' SpectrogramSettings (voice augmentation)
    checkpoint_every: int = 0          # epochs between resume files (0: by time only)
    checkpoint_seconds: float = 300.0  # seconds between resume files

    def save_state(self, epoch_done: int, position: Optional["_Position"] = None) -> bool:
        """Write the resume file (``position``: a point inside the next epoch); False when the
        disk refused it (logged: a full or failing disk must not end a long run)."""
        if self.ctx is not None and not self.ctx.is_main:
            return True  # one resume file, written by the first process
        try:
            _write_state(Path(self.state_path), self, epoch_done, position or _Position())
            return True
        except OutputError as exc:
            log.warning("cannot save the resume state (%s); training goes on and the previous "
                        "resume file is kept", exc)
            return False


@dataclass
class _Position:
    """Where training stands inside an epoch: batches done, the epoch's generator state (to
    replay its draws) and the running sums of loss, correct predictions and windows seen."""

    batch: int = 0
    epoch_generator: Optional[torch.Tensor] = None
    partial: dict = field(default_factory=lambda: {"loss": 0.0, "correct": 0, "seen": 0})


def train_model(data: Any, cfg: TrainConfig, num_classes: int, *,
                indices: Optional[Sequence[int]] = None, device: str | torch.device = "auto",
                progress: ProgressLike = True, state_path: Optional[Path] = None,
                checkpoint_every: int = 0, checkpoint_seconds: float = 300.0,
                on_epoch_end: Optional[Callable[[int, dict[str, float]], None]] = None,
                on_epoch_model: Optional[Callable[[int, torch.nn.Module, DeviceData], None]]
                = None, desc: str = "train", keep_state: bool = False) -> TrainResult:
    """Train ``cfg.variant`` on the windows ``data[indices]`` and return the model.

    Args:
        data: anything with ``images`` (N, F, H, W) uint8, ``voices`` (N, 1024, 66) float32 and
            ``labels`` (N,) int64 (e.g. a dataset WindowSet).
        cfg: the configuration (variant, epochs, lr, batch size, ...).
        num_classes: K.
        indices: the training windows (default: all).
        device: "auto", "cpu", "cuda", "mps" or a torch.device.
        progress: reporter of the epochs (True: a tqdm bar with loss, accuracy and speed; see
            :mod:`..core.progress`).  When it is cancelled, training stops as on Ctrl-C.
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
        on_epoch_model: called as ``on_epoch_model(epoch, model, training_windows)`` after
            each epoch, before ``on_epoch_end``: the network as it stands (in train mode) and
            the training windows on the device, e.g. to score a copy of the epoch's weights on
            held-out windows (``scripts/image_path_study.py inner``).  It must not change
            them: training goes on from them.
        desc: the run's name in progress and messages.

    Raises:
        TrainingError: the loss became NaN or infinite (the resume file of the last good
            position is kept; nothing is saved from the diverged run).
        TrainingInterrupted: Ctrl-C (a KeyboardInterrupt), or the reporter was cancelled.
    """
    t0 = time.time()
    reporter = as_progress(progress)
    run = _start_run(data, cfg, num_classes, indices, device, state_path, desc, reporter)
    run.checkpoint_every, run.checkpoint_seconds = checkpoint_every, checkpoint_seconds
    start, position = _resume(run)
    if run.ctx is not None and not run.ctx.is_main:
        reporter = SILENT  # one bar, the first process's
    with reporter.task(desc, total=cfg.epochs, unit="epoch", done=start) as task:
        _train_epochs(run, start, position, task, reporter.cancelled, on_epoch_end,
                      on_epoch_model)
    _finish_run(run, keep_state)
    return TrainResult(run.model, cfg, run.class_weights, run.history, time.time() - t0,
                       str(run.device), start)


def _start_run(data: Any, cfg: TrainConfig, num_classes: int,
               indices: Optional[Sequence[int]], device: str | torch.device,
               state_path: Optional[Path], desc: str, progress: ProgressLike = None) -> _Run:
    """The device, the seeded network, the training windows on the device, the optimiser and
    the generator of a run (in this order: the seed decides the initial weights)."""
    dev = select_device(device)
    # Under torchrun (WORLD_SIZE > 1): data-parallel over the processes (distributed.py).
    ctx = init_from_env(str(device))
    if ctx is not None:
        dev = ctx.device
    check_data_shape(data, cfg)
    seed_everything(cfg.seed, dev)
    model = build_model(cfg.variant, num_classes, cfg.frames, **cfg.model_options())
    _check_voice_settings(model, data)
    spectrogram = getattr(getattr(data, "settings", None), "spectrogram", None)
    if cfg.voice_init == "vocabulary":
        labelset = getattr(data, "labelset", None)
        if labelset is None or spectrogram is None:
            raise ConfigError("voice_init 'vocabulary' needs windows with their label set and "
                              "spectrogram settings (a WindowSet)")
        initialise_voice(model, vocabulary_voice_weights(labelset, cfg.width, spectrogram,
                                                         device=str(dev), progress=progress))
    d = to_device_data(data, indices, dev, speech_context=cfg.augments_voice)
    if len(d) == 0:
        raise ConfigError("no training windows", hint="the cohort needs labelled mentions")
    weights = class_weights_from_labels(d.labels.cpu().numpy(), num_classes)
    if dev.type == "cuda":
        model = model.to(dev, memory_format=torch.channels_last)
    else:
        model = model.to(dev)
    net = ctx.wrap(model) if ctx is not None else model  # DDP: gradients averaged
    return _Run(cfg, model, net, _optimizer(model, cfg), d, weights,
                torch.tensor(weights, dtype=torch.float32, device=dev),
                torch.Generator().manual_seed(cfg.seed + 1), dev, ctx, state_path, desc,
                {"config": cfg.signature(), "data": data_signature(d),
                 "num_classes": num_classes}, spectrogram=spectrogram)


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam (the paper) or AdamW; the voice branch's rate scaled by ``cfg.voice_lr_scale``
    (a pretrained branch is fine-tuned more gently than the rest is trained)."""
    voice = getattr(model, "voice_branch", None)
    voice_ids = {id(p) for p in voice.parameters()} if voice is not None else set()
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) not in voice_ids], "lr": cfg.lr,
               "base_lr": cfg.lr}]
    voice_params = [p for p in trainable if id(p) in voice_ids]
    if voice_params:
        rate = cfg.lr * cfg.voice_lr_scale
        groups.append({"params": voice_params, "lr": rate, "base_lr": rate})
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, epoch: int, batch: int, batches: int) -> float:
    """The learning rate's multiplier at ``batch`` of ``epoch`` (0-based): 1 for the constant
    schedule; for ``cosine`` a linear warm-up over the first epoch, then a cosine decay to 0
    at the end of training."""
    if cfg.schedule == "constant":
        return 1.0
    step = epoch * batches + batch
    total = max(1, cfg.epochs * batches)
    warm = min(1.0, (step + 1) / max(1, batches))
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / total)))


def _resume(run: _Run) -> tuple[int, _Position]:
    """Load the run's resume file when it matches: (epochs done, position in the next)."""
    if run.state_path is None or not Path(run.state_path).is_file():
        return 0, _Position()
    state = _read_state(Path(run.state_path))
    if state is None:
        return 0, _Position()
    if state.get("signature") != run.signature:
        log.warning("%s: resume file is from a different run; starting over", run.state_path)
        return 0, _Position()
    run.model.load_state_dict(state["model"])
    run.opt.load_state_dict(state["optimizer"])
    run.gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if run.device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"])
    run.history = list(state.get("history", []))
    position = _Position()
    if int(state.get("batch", 0)) > 0:
        # Replay the epoch's draws from its start, then skip the batches already done.
        run.gen.set_state(state["epoch_generator"])
        position = _Position(int(state["batch"]), None, dict(state["partial"]))
    log.info("resuming %s from epoch %d (%s)", run.desc, int(state["epoch"]), run.state_path)
    return int(state["epoch"]), position


def _train_epochs(run: _Run, start: int, position: _Position, task: ProgressTask,
                  cancelled: Callable[[], bool],
                  on_epoch_end: Optional[Callable[[int, dict[str, float]], None]],
                  on_epoch_model: Optional[Callable[[int, torch.nn.Module, DeviceData], None]]
                  = None) -> None:
    """Epochs ``start`` .. ``cfg.epochs`` (the first from ``position``), saving the resume
    file on schedule."""
    epochs = run.cfg.epochs
    last_save = time.time()
    with _deferred_interrupt() as interrupt:

        def stop() -> bool:
            return interrupt.is_set() or cancelled()

        for epoch in range(start, epochs):
            stats = _run_epoch(run, epoch, position, stop)
            position = _Position()
            run.history.append(stats)
            task.advance(loss=f"{stats['loss']:.4f}", acc=f"{stats['train_accuracy']:.2f}",
                         speed=f"{stats['seen'] / max(stats['seconds'], 1e-9):.1f} win/s")
            del stats["seen"]
            if run.state_path is not None and epoch + 1 < epochs and (
                    (run.checkpoint_every and (epoch + 1) % run.checkpoint_every == 0)
                    or time.time() - last_save >= run.checkpoint_seconds):
                run.save_state(epoch + 1)
                last_save = time.time()
            if on_epoch_model is not None:
                on_epoch_model(epoch + 1, run.model, run.data)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, stats)


def _finish_run(run: _Run, keep_state: bool) -> None:
    """Refuse diverged weights, recompute BatchNorm statistics, settle the resume file."""
    bad = [k for k, v in run.model.state_dict().items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise TrainingError(f"training diverged: weights {bad[0]} hold NaN or infinite values",
                            run.state_path, "lower --lr; the last good resume state is kept")
    recalibrate_batchnorm(run.model, run.data, run.cfg.batch_size, run.device)
    if run.state_path is not None:
        if keep_state:
            run.save_state(run.cfg.epochs)
        else:
            Path(run.state_path).unlink(missing_ok=True)
    run.model.eval()


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


def _epoch_plan(run: _Run) -> tuple[list[torch.Tensor], torch.Tensor, Optional[torch.Tensor]]:
    """An epoch's draws from the run's generator: its batches of window indices, the image
    each window is paired with (random pairs) and the frames each window keeps (reduced
    input)."""
    d, spec = run.data, run.cfg.spec
    order = torch.randperm(len(d), generator=run.gen)
    image_of = same_class_partners(d.labels, run.gen) if spec.random_pairs else \
        torch.arange(len(d))
    frame_sel = None
    if spec.frames_used:
        frame_sel = random_frame_choice(len(d), d.images.shape[1], spec.frames_used, run.gen)
    return _batches(order, run.cfg.batch_size), image_of, frame_sel


def _batch_inputs(run: _Run, b: torch.Tensor, image_of: torch.Tensor,
                  frame_sel: Optional[torch.Tensor], epoch: int = 0, batch: int = 0
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images in [0, 1], voices, labels) of the windows ``b`` on the device, augmented as
    the configuration says (draws seeded by the run's seed, ``epoch`` and ``batch``)."""
    d, dev, cfg = run.data, run.device, run.cfg
    ib = image_of[b]
    img = d.images[ib.to(dev)]
    if frame_sel is not None:
        sel = frame_sel[ib].to(dev)
        img = torch.gather(img, 1, sel[:, :, None, None].expand(-1, -1, *img.shape[2:]))
    img = img.float().div_(255.0)
    gen = batch_generator(cfg.seed, epoch, batch) \
        if cfg.augments_images or cfg.augments_voice else None
    if cfg.augments_images:
        img = augment_images(img, ImageAugment(), gen)
    if dev.type == "cuda":
        img = img.contiguous(memory_format=torch.channels_last)
    bd = b.to(dev)
    voice = d.voices[bd]
    if cfg.augments_voice and d.voice_context is not None:
        bc = b.cpu()
        voice = voice_windows(d.voice_context[bc], d.voice_ends[bc], run.spectrogram,
                              VoiceAugment(), gen).to(dev)
    return img, voice, d.labels[bd]


def _run_epoch(run: _Run, epoch: int, position: _Position,
               stop: Callable[[], bool]) -> dict[str, float]:
    """One epoch of training from ``position``; returns its stats (with ``seen``).

    Raises TrainingInterrupted after a batch when ``stop()`` is True (saving the position
    first) and TrainingError on a non-finite loss (before the optimiser step, so the weights
    stay those of the last good batch).
    """
    t_ep = time.time()
    epoch_gen = run.gen.get_state()
    run.net.train()
    batches, image_of, frame_sel = _epoch_plan(run)
    ctx = run.ctx
    sums = dict(position.partial)
    for k, b in enumerate(batches):
        if k < position.batch:
            continue
        n_batch = len(b)
        if ctx is not None:
            b = ctx.shard(b)  # this process's share of the global batch
        img, voice, y = _batch_inputs(run, b, image_of, frame_sel, epoch, k)
        factor = lr_factor(run.cfg, epoch, k, len(batches))
        for group in run.opt.param_groups:
            group["lr"] = group.get("base_lr", group["lr"]) * factor
        with autocast_for(run.device, training=True):
            logits, aux = _forward_with_aux(run, img, voice)
        loss = weighted_loss(logits, y, run.weight_t, run.cfg.label_smoothing)
        for weight, aux_logits in aux:  # the uni-modal paths' own losses (EUSVoiceLabelNet)
            loss = loss + weight * weighted_loss(aux_logits, y, run.weight_t,
                                                 run.cfg.label_smoothing)
        loss_value = float(loss.detach())
        _check_finite(run, loss_value, epoch, k)
        if ctx is not None:
            loss = loss * ctx.loss_scale(len(b), n_batch)  # DDP's mean = global batch loss
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
        sums["loss"] += loss_value * len(b)
        sums["correct"] += int((logits.detach().argmax(1) == y).sum())
        sums["seen"] += len(b)
        if stop():
            _interrupt(run, epoch, _Position(k + 1, epoch_gen, dict(sums)))
    total_loss, correct, seen = sums["loss"], sums["correct"], sums["seen"]
    if ctx is not None:
        total_loss, correct, seen = ctx.sum([total_loss, correct, seen])
    return {"epoch": epoch + 1, "loss": total_loss / seen, "train_accuracy": correct / seen,
            "seconds": time.time() - t_ep, "seen": seen}


def _forward_with_aux(run: _Run, img: torch.Tensor, voice: torch.Tensor
                      ) -> tuple[torch.Tensor, list[tuple[float, torch.Tensor]]]:
    """The logits of a training batch and, for each auxiliary loss the configuration asks
    for (the image head's, the late voice path's), its weight and its path's own logits."""
    weights = [run.cfg.image_aux_weight, run.cfg.voice_aux_weight]
    if not any(w > 0 for w in weights):
        return run.net(img, voice), []
    out = run.net(img, voice, image_head=weights[0] > 0, voice_path=weights[1] > 0)
    return out[0], list(zip([w for w in weights if w > 0], out[1:]))


def _check_finite(run: _Run, loss_value: float, epoch: int, batch: int) -> None:
    """TrainingError when the loss of batch ``batch`` (0-based) is not finite (in any process
    under torchrun: every process stops together, see DistContext.any)."""
    diverged = not math.isfinite(loss_value)
    if run.ctx is not None:
        diverged = run.ctx.any(diverged)
    if not diverged:
        return
    state = run.state_path
    kept = f"; the last good resume state is kept in {state}" \
        if state is not None and Path(state).is_file() else ""
    what = f"the loss became {loss_value}" if not math.isfinite(loss_value) else \
        "the loss became NaN or infinite in another process"
    raise TrainingError(f"{run.desc}: {what} at epoch {epoch + 1}, batch {batch + 1}; "
                        f"training stopped{kept}", None,
                        "lower --lr, or check the inputs for corrupt audio or frames")


def _interrupt(run: _Run, epoch: int, position: _Position) -> None:
    """Save the exact position and raise :class:`TrainingInterrupted`."""
    saved = run.state_path is not None and run.save_state(epoch, position)
    where = f"progress saved in {run.state_path}; run the same command again to resume" \
        if saved else "no progress saved"
    raise TrainingInterrupted(f"{run.desc} stopped at epoch {epoch + 1}, batch "
                              f"{position.batch}: {where}",
                              run.state_path if saved else None, epoch)


def _check_voice_settings(model: torch.nn.Module, data: Any) -> None:
    """A pretrained keyword network only understands spectrograms scaled as in pretraining."""
    expected = getattr(getattr(model, "voice_branch", None), "spectrogram_settings", None)
    got = getattr(getattr(data, "settings", None), "spectrogram", None)
    if expected and got is not None and hasattr(got, "to_json") and got.to_json() != expected:
        raise ConfigError(f"the keyword network was pretrained on spectrograms {expected} but "
                          f"the windows use {got.to_json()}",
                          hint="re-run 'pretrain-voice' with the same spectrogram settings")


def _write_state(path: Path, run: _Run, epoch: int, position: _Position) -> None:
    """Write the resume file atomically (epoch = completed epochs; ``position.batch`` > 0
    marks a point inside the next epoch, replayed from ``position.epoch_generator``)."""
    state = {"format": STATE_FORMAT, "format_version": STATE_FORMAT_VERSION, "epoch": epoch,
             "batch": position.batch, "epoch_generator": position.epoch_generator,
             "partial": position.partial if position.batch else None,
             "signature": run.signature, "history": run.history,
             "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
             "optimizer": _to_cpu(run.opt.state_dict()), "generator": run.gen.get_state(),
             "torch_rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state() if run.device.type == "cuda" else None}
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
            with autocast_for(dev, training=True):  # the precision training ran in
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
