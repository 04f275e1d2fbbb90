"""``eusvoicelabel bench``: measure first, then optimise where the measurements point.

What is measured (docs/benchmarks.md has the figures and the commands that made them):

- **FLOPs** per sample of the image branch, the voice branch, the joint product + head and the
  whole network, forward and training step (forward + backward), counted with
  ``torch.utils.flop_counter.FlopCounterMode`` on *meta* tensors (shapes only, nothing runs), at
  the paper's size (25 x 350 x 690, 1024 x 66) and at the demo / test sizes.  The counter counts
  matrix products and convolutions (2 FLOPs per multiply-add); BatchNorm, ReLU and pooling are
  not counted (under 1 % of the total here).
- **Peak**: a large square matmul in fp32 and in bf16 timed in the same run (the machine's own
  attainable peak, not a datasheet figure).
- **Inference latency per window** (batch 1) with and without Grad-CAM and **training
  throughput** (samples/s of full Adam steps), the baseline (eager fp32, NCHW, trainable
  weights, ``no_grad``) and the optimised path of :mod:`.nn.fastpath` (frozen weights, BatchNorm
  folded, channels-last, ``inference_mode``, bf16 autocast where native, ``torch.compile`` on
  request) timed *interleaved* in one run (A B B A ...), several repeats, median.  Achieved
  FLOP/s are given as a fraction of the measured peak.
- **Data path**: windows/s decoded from video by time range vs read from the window cache; the
  keyword spotter's real-time factor.
- **Labelling** a long synthetic procedure in a fresh process: seconds per window with and
  without heat maps, and the process's peak RSS.
- **Memory**: peak host RSS per case (sampled every 5 ms), and peak CUDA memory on GPUs.

``bench --quick`` (CI, under 2 minutes on 2 cores) measures the reduced sizes only and fails
(exit code 1) when an optimised path is slower than its baseline by more than
:data:`QUICK_TOLERANCE`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import statistics
import tempfile
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from . import __version__
from .core.fileio import atomic_write_text
from .core.paper import IMAGE_SIZE, SPECTROGRAM_SHAPE, WINDOW_FRAMES
from .core.pool import process_cores, run_tasks, spawn_pool
from .core.progress import ProgressLike, as_progress
from .data.dataset import WindowSettings, load_windows_cached
from .data.outputs import OutputKind, json_object, text_file
from .data.procedure import load_procedure
from .data.vocabulary import LabelSet
from .demo import DemoSettings
from .labelling.folder import label_to_folder
from .labelling.run import LabelModel, label_procedure
from .nn.devices import select_device
from .nn.explain import grad_cam
from .nn.fastpath import (autocast_for, bf16_is_fast, maybe_compile, optimise_for_inference,
                          prepare_image)
from .nn.network import build_model
from .speech.detect import detect_mentions
from .synth.longvideo import make_procedure
from .train.checkpoints import save_checkpoint
from .train.config import TrainConfig
from .train.loop import TrainResult, weighted_loss

log = logging.getLogger(__name__)

DEMO_SIZE = DemoSettings().image_size   # the demo's network input ...
DEMO_WIDTH = DemoSettings().width       # ... and channel width
TEST_SIZE = (32, 64)       # the unit tests' windows (with width 0.125)
#: An optimised path may be at most this much slower than its baseline before ``--quick``
#: fails: medians of interleaved repeats on a shared 2-core machine still move by ~10 %.
QUICK_TOLERANCE = 0.15
#: (baseline, optimised) inference cases compared by the speed check.
INFERENCE_PAIRS = (("baseline", "optimised"), ("baseline_cam", "optimised_cam"))
MARK_BEGIN = "<!-- bench:begin -->"
MARK_END = "<!-- bench:end -->"


def _bench_result(path: Path) -> bool:
    return str((json_object(path) or {}).get("command", "")).startswith("eusvoicelabel bench")


def _markdown(path: Path) -> bool:
    return path.suffix.lower() in (".md", ".markdown") and text_file(path)


#: ``bench --out``: replaces an existing file only when it is a bench result of ours.
BENCH_RESULT = OutputKind("bench-result", "a result of 'eusvoicelabel bench'", folder=False,
                          signature=_bench_result)
#: ``bench --markdown``: a markdown text file whose bench section is replaced (the rest of the
#: file is kept byte for byte); any other existing file is refused.
BENCH_MARKDOWN = OutputKind("bench-markdown", "a markdown (.md) text file", folder=False,
                            signature=_markdown)


# --------------------------------------------------------------------------- settings
@dataclass
class BenchSettings:
    """What ``bench`` runs."""

    device: str = "cpu"
    image_size: tuple[int, int] = IMAGE_SIZE
    width: float = 1.0
    quick: bool = False
    repeats: int = 3
    threads: Optional[int] = None
    train_batch: Optional[int] = None      # default: 8 (paper) on CUDA, 2 on CPU
    compile: bool = False
    data: bool = True
    label_minutes: float = 20.0
    label_windows: int = 8
    num_classes: int = 5
    seed: int = 0

    @classmethod
    def quick_settings(cls, device: str = "cpu") -> "BenchSettings":
        """The CI check: demo size, more repeats, no data-path / labelling cases."""
        return cls(device=device, image_size=DEMO_SIZE, width=DEMO_WIDTH, quick=True, repeats=9,
                   train_batch=8, data=False, label_minutes=0.0)


# --------------------------------------------------------------------------- helpers
def load_average() -> Optional[list[float]]:
    """1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        import resource  # Unix only
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class PeakMemory:
    """Peak host RSS (sampled every ``interval`` s in a thread) and peak CUDA memory of a block.

    Use as ``with PeakMemory(device) as pm: ...`` then ``pm.host_mb`` / ``pm.cuda_mb``.
    """

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.005) -> None:
        self.device = torch.device(device)
        self.interval = interval
        self.host_mb = 0.0
        self.cuda_mb: Optional[float] = None
        self._stop = threading.Event()
        self._peak = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        self._peak = _rss_bytes()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, _rss_bytes())
        self.host_mb = round(self._peak / 2 ** 20, 1)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.cuda_mb = round(torch.cuda.max_memory_allocated(self.device) / 2 ** 20, 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(cases: dict[str, Callable[[], Any]], repeats: int, device: torch.device,
                     warmup: int = 1) -> dict[str, dict[str, Any]]:
    """Time each case ``repeats`` times, interleaved (order reversed every other round so slow
    drifts of the machine's load hit every case alike).  Returns per case the seconds of every
    repeat, their median, and the peak memory seen while running it."""
    names = list(cases)
    times: dict[str, list[float]] = {n: [] for n in names}
    mem: dict[str, PeakMemory] = {}
    for n in names:
        with PeakMemory(device) as pm:
            for _ in range(warmup):
                cases[n]()
            _sync(device)
        mem[n] = pm
    for r in range(repeats):
        for n in (names if r % 2 == 0 else names[::-1]):
            _sync(device)
            t0 = time.perf_counter()
            cases[n]()
            _sync(device)
            times[n].append(time.perf_counter() - t0)
    return {n: {"seconds": [round(t, 5) for t in times[n]],
                "median_s": statistics.median(times[n]), "min_s": min(times[n]),
                "peak_rss_mb": mem[n].host_mb, "peak_cuda_mb": mem[n].cuda_mb} for n in names}


# --------------------------------------------------------------------------- FLOPs
def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs counted by FlopCounterMode while ``fn`` runs."""
    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def model_flops(image_size: Sequence[int], width: float = 1.0, frames: int = WINDOW_FRAMES,
                num_classes: int = 5, variant: str = "proposed", batch: int = 2
                ) -> dict[str, float]:
    """FLOPs per sample (GFLOP) of each branch, the joint product + head and the whole
    network, forward and training step, on meta tensors (nothing is computed)."""
    with torch.device("meta"):
        model = build_model(variant, num_classes, frames, width=width)
    image = torch.empty(batch, frames, *image_size, device="meta")
    voice = torch.empty(batch, *SPECTROGRAM_SHAPE, device="meta")
    labels = torch.zeros(batch, dtype=torch.long, device="meta")
    w = torch.ones(num_classes, device="meta")
    model.eval()
    with torch.no_grad():
        f_img = count_flops(lambda: model.image_branch(image)) if model.image_branch else 0
        f_voice = count_flops(lambda: model.voice_branch(voice)) if model.voice_branch else 0
        f_all = count_flops(lambda: model(image, voice))
    model.train()

    def step() -> None:
        weighted_loss(model(image, voice), labels, w).backward()

    f_train = count_flops(step)
    f_img_train = 0
    if model.image_branch is not None:
        f_img_train = count_flops(lambda: model.image_branch(image).sum().backward())
    g = 1e9 * batch
    return {"image_branch_forward": f_img / g, "voice_branch_forward": f_voice / g,
            "joint_and_head_forward": (f_all - f_img - f_voice) / g,
            "total_forward": f_all / g, "total_train_step": f_train / g,
            "image_branch_train_step": f_img_train / g,
            "parameters_millions": sum(p.numel() for p in model.parameters()) / 1e6}


# --------------------------------------------------------------------------- peak
def measure_peak(device: torch.device, dtype: torch.dtype, min_seconds: float = 0.15,
                 max_n: int = 4096, repeats: int = 3) -> dict[str, Any]:
    """Attainable matmul FLOP/s: square matmuls grown until one takes ``min_seconds``, then
    the best of ``repeats``.  Slow dtypes (emulated bf16) stop growing early."""
    n = 256
    gen = torch.Generator(device="cpu").manual_seed(0)
    while True:
        a = torch.randn(n, n, generator=gen).to(device, dtype)
        b = torch.randn(n, n, generator=gen).to(device, dtype)
        (a @ b)
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        dt = time.perf_counter() - t0
        if dt >= min_seconds or n >= max_n:
            break
        n = min(max_n, n * 2) if dt < min_seconds / 8 else min(max_n, int(n * 1.26))
    best = dt
    for _ in range(repeats - 1):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return {"n": n, "seconds": round(best, 5), "gflops": 2 * n ** 3 / best / 1e9}


# --------------------------------------------------------------------------- model cases
def _inputs(batch: int, image_size: Sequence[int], device: torch.device, seed: int = 0
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, WINDOW_FRAMES, *image_size, generator=g)
    voice = torch.randn(batch, *SPECTROGRAM_SHAPE, generator=g)
    labels = torch.randint(0, 5, (batch,), generator=g)
    return image.to(device), voice.to(device), labels.to(device)


def _trained_like_batchnorm(model: torch.nn.Module, seed: int) -> None:
    """Give BatchNorm layers non-trivial statistics and affine parameters, as after training,
    so the check that folding keeps the predictions is a real one."""
    g = torch.Generator().manual_seed(seed + 7)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            with torch.no_grad():
                m.weight.copy_(0.8 + 0.4 * torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))


def inference_cases(image_size: Sequence[int], width: float, device: torch.device,
                    repeats: int, compile_: bool = False, seed: int = 0) -> dict[str, Any]:
    """Latency per window (batch 1), baseline vs optimised, with and without Grad-CAM."""
    torch.manual_seed(seed)
    base = build_model("proposed", 5, WINDOW_FRAMES, width=width)
    _trained_like_batchnorm(base, seed)
    base = base.to(device).eval()
    fast = optimise_for_inference(base, device)
    image, voice, _ = _inputs(1, image_size, device, seed)
    image_fast = prepare_image(image, device)

    def base_infer() -> None:
        with torch.no_grad():
            base(image, voice)

    def fast_infer() -> None:
        with torch.inference_mode(), autocast_for(device):
            fast(image_fast, voice)

    def base_cam() -> None:
        grad_cam(base, image, voice)

    def fast_cam() -> None:
        with autocast_for(device):
            grad_cam(fast, image_fast, voice)

    def fast_image_branch() -> None:
        with torch.inference_mode(), autocast_for(device):
            fast.image_branch(image_fast)

    # Same answers: the optimisation must not change predictions.
    with torch.no_grad():
        ref = torch.softmax(base(image, voice).float(), 1)
        got = torch.softmax(fast(image_fast, voice).float(), 1)
    max_diff = float((ref - got).abs().max())
    cases = {"baseline": base_infer, "optimised": fast_infer, "baseline_cam": base_cam,
             "optimised_cam": fast_cam, "optimised_image_branch": fast_image_branch}
    compiled_error = None
    if compile_:
        comp = maybe_compile(fast)
        try:
            t0 = time.perf_counter()
            with torch.inference_mode():
                comp(image_fast, voice)
            compile_s = time.perf_counter() - t0

            def comp_infer() -> None:
                with torch.inference_mode(), autocast_for(device):
                    comp(image_fast, voice)
            cases["optimised_compiled"] = comp_infer
        except Exception as exc:  # the compiler is optional
            compiled_error = f"{exc.__class__.__name__}: {str(exc)[:200]}"
    res = time_interleaved(cases, repeats, device)
    out: dict[str, Any] = {"cases": res, "max_probability_difference": max_diff}
    if compile_:
        out["compile"] = {"first_call_s": round(compile_s, 1)} if compiled_error is None \
            else {"error": compiled_error}
    return out


def training_cases(image_size: Sequence[int], width: float, device: torch.device, batch: int,
                   repeats: int, compile_: bool = False, seed: int = 0,
                   with_channels_last: bool = False) -> dict[str, Any]:
    """Seconds per Adam step on a preloaded batch, baseline (eager fp32 NCHW) vs optimised
    (the training loop's path: channels-last and bf16 autocast on CUDA, compiled on request;
    on CPU also the channels-last experiment when ``with_channels_last``)."""
    image, voice, labels = _inputs(batch, image_size, device, seed)
    weights = torch.ones(5, device=device)

    def make(optimised: bool, channels_last: bool) -> Callable[[], None]:
        torch.manual_seed(seed)
        model = build_model("proposed", 5, WINDOW_FRAMES, width=width).to(device).train()
        img = image
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            img = image.contiguous(memory_format=torch.channels_last)
        net = maybe_compile(model) if (optimised and compile_) else model
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        ctx = (lambda: autocast_for(device)) if optimised else contextlib.nullcontext

        def step() -> None:
            with ctx():
                logits = net(img, voice)
            loss = weighted_loss(logits, labels, weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    # The optimised path is what train_model does: channels-last + bf16 on CUDA; on CPU
    # channels-last measured 0.57x for training steps at the paper size (oneDNN's backward
    # in NHWC), so there it stays NCHW.  ``channels_last_cpu`` keeps that evidence measured.
    cases = {"baseline": make(False, False),
             "optimised": make(True, device.type == "cuda")}
    if device.type == "cpu" and with_channels_last:
        cases["channels_last_cpu"] = make(True, True)
    res = time_interleaved(cases, repeats, device)
    for r in res.values():
        r["samples_per_s"] = batch / r["median_s"]
    return {"batch": batch, "cases": res}



def data_cases(workdir: Path, image_size: Sequence[int], seconds: float = 120.0,
               n_mentions: int = 8, kws_seconds: float = 60.0) -> dict[str, Any]:
    """Windows/s from video (seek + decode + crop + resize + spectrogram) vs from the cache,
    and the keyword spotter's real-time factor."""
    folder = make_procedure(workdir / "data_proc", seconds, n_mentions)
    labels = LabelSet.default()
    settings = WindowSettings(image_size=tuple(image_size), frames=WINDOW_FRAMES)
    cache = workdir / "cache"
    out: dict[str, Any] = {"procedure_seconds": seconds, "windows": n_mentions,
                           "image_size": list(image_size)}
    with PeakMemory() as pm:
        t0 = time.perf_counter()
        load_windows_cached(folder, labels, settings, cache)  # miss: decodes, writes the cache
        dt_video = time.perf_counter() - t0
    t0 = time.perf_counter()
    w = load_windows_cached(folder, labels, settings, cache)   # hit
    dt_cache = time.perf_counter() - t0
    assert len(w.labels) == n_mentions
    out["video_windows_per_s"] = n_mentions / dt_video
    out["cache_windows_per_s"] = n_mentions / dt_cache
    out["video_peak_rss_mb"] = pm.host_mb
    proc = load_procedure(folder, labelset=labels)
    n = int(min(kws_seconds, proc.duration_s) * proc.sample_rate)
    t0 = time.perf_counter()
    found = detect_mentions(proc.audio[:n], proc.sample_rate, labels)
    dt = time.perf_counter() - t0
    out["kws"] = {"audio_seconds": n / proc.sample_rate, "seconds": round(dt, 2),
                  "real_time_factor": dt / (n / proc.sample_rate),
                  "mentions_found": len(found)}
    return out


# --------------------------------------------------------------------------- labelling
def _paper_checkpoint(path: Path, image_size: Sequence[int], width: float, seed: int) -> Path:
    """A random-init model saved as a checkpoint (labelling cost does not depend on weights)."""
    labels = LabelSet.default()
    cfg = TrainConfig(variant="proposed", epochs=0, image_size=tuple(image_size),
                      frames=WINDOW_FRAMES, width=width, seed=seed)
    torch.manual_seed(seed)
    model = build_model("proposed", len(labels), WINDOW_FRAMES, width=width).eval()
    pre = cfg.window_settings().to_json()
    pre["voice_shape"] = list(SPECTROGRAM_SHAPE)
    save_checkpoint(path, TrainResult(model, cfg, [1.0] * len(labels)), labels, pre)
    return path


def _label_child(folder: str, model_path: str, out_dir: str, device: str, threads: int
                 ) -> dict[str, Any]:
    """Runs in a fresh process: label with heat maps (all outputs written), then without."""
    torch.set_num_threads(threads)
    rss_import = round(_rss_bytes() / 2 ** 20, 1)
    try:
        # The whole 'label' command first (all outputs streamed to disk): its peak RSS,
        # sampled (ru_maxrss would include the parent's peak: Linux keeps it across fork+exec).
        t0 = time.perf_counter()
        with PeakMemory(device, interval=0.002) as pm:
            result, _ = label_to_folder(folder, model_path, out_dir, device=device,
                                        with_cam=True, progress=False)
        command_s = time.perf_counter() - t0
        rss_command = pm.host_mb
        model = LabelModel.load(model_path, device)
        proc = load_procedure(folder, labelset=model.labelset)
        label_procedure(proc, model, proc.mentions[:1], with_cam=True)  # warm-up
        times = {}
        for cam in (True, False):
            t0 = time.perf_counter()
            label_procedure(proc, model, with_cam=cam)
            times[cam] = time.perf_counter() - t0
        n = len(result.windows)
        return {"windows": n, "with_cam_s_per_window": times[True] / n,
                "without_cam_s_per_window": times[False] / n,
                "label_command_s_per_window": command_s / n,
                "peak_rss_mb_label_command": rss_command,
                "peak_cuda_mb_label_command": pm.cuda_mb,
                "rss_mb_after_import": rss_import}
    except Exception as exc:  # reported in the result
        return {"error": f"{exc.__class__.__name__}: {exc}"}


def labelling_case(workdir: Path, s: BenchSettings, device: str, threads: int
                   ) -> dict[str, Any]:
    """Label an ``s.label_minutes`` long synthetic procedure with ``s.label_windows`` windows
    (``label`` with heat maps and all outputs) in a fresh process; seconds per window with /
    without heat maps and its peak RSS."""
    folder = make_procedure(workdir / "long_proc", s.label_minutes * 60.0, s.label_windows,
                            s.seed)
    model_path = _paper_checkpoint(workdir / "paper_random.pt", s.image_size, s.width, s.seed)
    try:
        with spawn_pool(1) as pool:
            res = run_tasks(pool, _label_child, [(str(folder), str(model_path),
                                                  str(workdir / "label_out"), device,
                                                  threads)])[0]
    except BrokenProcessPool as exc:  # the process died before it could report
        res = {"error": f"the labelling process died ({exc})"}
    res.update({"minutes": s.label_minutes, "image_size": list(s.image_size),
                "width": s.width})
    return res


# --------------------------------------------------------------------------- the run
def _summaries(res: dict[str, Any], flops: dict[str, float], peak_gflops: float,
               peak_name: str) -> None:
    """Add speed-ups and achieved FLOP/s (fraction of ``peak``) to an inference result."""
    c = res["cases"]
    for name, f in (("baseline", flops["total_forward"]), ("optimised", flops["total_forward"]),
                    ("optimised_compiled", flops["total_forward"]),
                    ("optimised_image_branch", flops["image_branch_forward"])):
        if name in c:
            g = f / c[name]["median_s"]
            c[name]["achieved_gflops"] = g
            c[name]["fraction_of_peak"] = g / peak_gflops
    res["peak_used"] = peak_name
    res["speedup"] = c["baseline"]["median_s"] / c["optimised"]["median_s"]
    res["speedup_cam"] = c["baseline_cam"]["median_s"] / c["optimised_cam"]["median_s"]
    if "optimised_compiled" in c:
        res["speedup_compiled"] = c["baseline"]["median_s"] / c["optimised_compiled"]["median_s"]


def run_bench(s: BenchSettings, progress: ProgressLike = None) -> dict[str, Any]:
    """Run the benchmark and return its JSON-able result (see the module docstring);
    ``progress`` reports the stages (see :mod:`.core.progress`)."""
    device = select_device(s.device)
    threads = s.threads or process_cores()
    torch.set_num_threads(threads)
    t_start = time.perf_counter()
    out = _machine(s, device, threads)
    runs = _model_runs(s)
    data_stages = (1 + (s.label_minutes > 0)) if s.data and not s.quick else 0
    with as_progress(progress).task("bench", total=3 + 2 * len(runs) + data_stages,
                                    unit="stage") as task:

        def stage(name: str) -> None:
            task.update(task.done + (1 if task.info else 0), stage=name)

        stage("FLOPs (meta tensors)")
        out["flops_gflop_per_sample"] = {
            k: {"image_size": list(sz), "frames": WINDOW_FRAMES, "width": w,
                **model_flops(sz, w)} for k, (sz, w) in _flop_sizes(s).items()}
        stage("matmul peak fp32 / bf16")
        out["peak"] = _peaks(device)
        peak_name = "bf16" if bf16_is_fast(device) else "fp32"
        peak = (peak_name, out["peak"][peak_name]["gflops"])
        out["inference"], out["training"] = {}, {}
        for key, size, width in runs:
            run = _ModelRun(size, width, s.repeats if key == "chosen" or s.quick
                            else max(s.repeats, 5),
                            next(v for v in out["flops_gflop_per_sample"].values()
                                 if (tuple(v["image_size"]), v["width"]) == (size, width)))
            stage(f"inference {size[0]}x{size[1]} width {width}")
            out["inference"][key] = _inference_run(s, device, run, peak)
            batch = s.train_batch or (8 if device.type == "cuda" or min(size) < 200 else 2)
            stage(f"training {size[0]}x{size[1]} width {width}, batch {batch}")
            out["training"][key] = _training_run(s, device, run, batch, peak)
        if data_stages:
            with tempfile.TemporaryDirectory(prefix="eusvl_bench_") as tmp:
                stage("data path and keyword spotting")
                out["data"] = data_cases(Path(tmp), s.image_size)
                if s.label_minutes > 0:
                    stage(f"labelling a {s.label_minutes:g}-minute procedure in a fresh "
                          "process")
                    out["labelling"] = labelling_case(Path(tmp), s, str(device), threads)
        # The peak again at the end: on a shared machine one measurement can catch a busy
        # moment, and a fraction of a too-low "peak" would exceed 100 %.  The attainable peak
        # is the best.
        stage("matmul peak again")
        _best_peak(out, _peaks(device), peak_name)
        task.update(task.total)
    out["load_average_end"] = load_average()
    out["wall_time_s"] = round(time.perf_counter() - t_start, 1)
    out["regressions"] = check_regressions(out)
    return out


def _machine(s: BenchSettings, device: torch.device, threads: int) -> dict[str, Any]:
    """What the result says about the machine, the software and the settings."""
    return {
        "package_version": __version__, "torch": torch.__version__,
        "python": platform.python_version(), "machine": platform.machine(),
        "processor": _cpu_name(), "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "cores": process_cores(), "torch_threads": threads, "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(s).items()},
        "load_average_start": load_average(), "bf16_native": bf16_is_fast(device),
    }


def _flop_sizes(s: BenchSettings) -> dict[str, tuple[tuple[int, int], float]]:
    """(image size, width) of each size FLOPs are counted at: the paper's, the demo's, the
    tests' and, when it is none of them, the chosen one."""
    sizes = {"paper": (IMAGE_SIZE, 1.0), "demo": (DEMO_SIZE, DEMO_WIDTH),
             "test": (TEST_SIZE, 0.125)}
    if tuple(s.image_size) not in {v[0] for v in sizes.values()} or \
            s.width not in {v[1] for v in sizes.values()}:
        sizes["chosen"] = (tuple(s.image_size), s.width)
    return sizes


def _model_runs(s: BenchSettings) -> list[tuple[str, tuple[int, int], float]]:
    """The model cases' (name, image size, width): the chosen size (default: the paper's)
    and, unless it is already that, the demo size."""
    runs = [("chosen", tuple(s.image_size), s.width)]
    if not s.quick and (tuple(s.image_size), s.width) != (DEMO_SIZE, DEMO_WIDTH):
        runs.append(("demo", DEMO_SIZE, DEMO_WIDTH))
    return runs


def _peaks(device: torch.device) -> dict[str, Any]:
    """The measured matmul peak in fp32 and bf16 (bf16 kept short where it is emulated)."""
    return {"fp32": measure_peak(device, torch.float32),
            "bf16": measure_peak(device, torch.bfloat16,
                                 min_seconds=0.15 if bf16_is_fast(device) else 0.05,
                                 max_n=8192 if device.type == "cuda" else 4096)}


@dataclass(frozen=True)
class _ModelRun:
    """A size the model cases run at: image size, width, timed repeats and its FLOPs."""

    size: tuple[int, int]
    width: float
    repeats: int
    flops: dict[str, float]


def _inference_run(s: BenchSettings, device: torch.device, run: _ModelRun,
                   peak: tuple[str, float]) -> dict[str, Any]:
    """Inference cases at one size, timed again when they look slower, with their speed-ups
    and fractions of the ``peak`` (name, GFLOP/s)."""
    inf = _timed_twice_if_slower(
        lambda: inference_cases(run.size, run.width, device, run.repeats, s.compile, s.seed),
        lambda r: any(_slower(r["cases"], b, o, QUICK_TOLERANCE) is not None
                      for b, o in INFERENCE_PAIRS), log.info)
    _summaries(inf, run.flops, peak[1], peak[0])
    inf.update({"image_size": list(run.size), "width": run.width})
    return inf


def _training_run(s: BenchSettings, device: torch.device, run: _ModelRun, batch: int,
                  peak: tuple[str, float]) -> dict[str, Any]:
    """Training cases at one size, timed again when they look slower, with their achieved
    FLOP/s, speed-up and (on CUDA) the estimated time of one paper fold."""
    tr = _timed_twice_if_slower(
        lambda: training_cases(run.size, run.width, device, batch, run.repeats, s.compile,
                               s.seed, with_channels_last=not s.quick),
        lambda r: _slower(r["cases"], "baseline", "optimised", QUICK_TOLERANCE) is not None,
        log.info)
    for c in tr["cases"].values():
        c["achieved_gflops"] = run.flops["total_train_step"] * c["samples_per_s"]
        c["fraction_of_peak"] = c["achieved_gflops"] / peak[1]
    tr["speedup"] = tr["cases"]["optimised"]["samples_per_s"] / \
        tr["cases"]["baseline"]["samples_per_s"]
    tr.update({"image_size": list(run.size), "width": run.width, "peak_used": peak[0]})
    if device.type == "cuda":
        # One LOPO fold of the paper: 131 training windows x 200 epochs.
        tr["paper_fold_estimate_s"] = 131 * 200 / tr["cases"]["optimised"]["samples_per_s"]
    return tr


def _best_peak(out: dict[str, Any], end_peak: dict[str, Any], peak_name: str) -> None:
    """Keep the start and end peaks, use the best of them and recompute every fraction."""
    out["peak_start"] = out["peak"]
    out["peak_end"] = end_peak
    out["peak"] = {k: max(out["peak_start"][k], end_peak[k], key=lambda v: v["gflops"])
                   for k in end_peak}
    peak = out["peak"][peak_name]["gflops"]
    for group in ("inference", "training"):
        for res in out[group].values():
            for c in res["cases"].values():
                if "achieved_gflops" in c:
                    c["fraction_of_peak"] = c["achieved_gflops"] / peak


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _timed_twice_if_slower(measure: Callable[[], dict[str, Any]],
                           looks_slower: Callable[[dict[str, Any]], bool],
                           progress: Callable[[str], None]) -> dict[str, Any]:
    """``measure()``, and once more when its optimised cases look slower than their baselines:
    another process taking the cores for a while can slow one set of interleaved repeats, a
    real regression slows both.  The second measurement is the one kept (``"retimed"``)."""
    first = measure()
    if not looks_slower(first):
        return first
    progress("optimised path looked slower: timing again")
    second = measure()
    second["retimed"] = True
    return second


def _slower(c: dict[str, Any], base: str, opt: str, tolerance: float) -> Optional[float]:
    """Time ratio opt/base when the optimised case is slower beyond ``tolerance`` both by the
    medians and by the fastest repeats (a load spike on a shared machine moves one of them,
    a real regression moves both); else None."""
    med = c[opt]["median_s"] / c[base]["median_s"]
    best = c[opt]["min_s"] / c[base]["min_s"]
    return med if min(med, best) > 1 + tolerance else None


def check_regressions(result: dict[str, Any], tolerance: float = QUICK_TOLERANCE) -> list[str]:
    """Optimised paths slower than their baseline by more than ``tolerance`` (see
    :func:`_slower`), and optimised predictions that differ from the baseline's."""
    bad = []
    for key, inf in result.get("inference", {}).items():
        c = inf["cases"]
        for base, opt in INFERENCE_PAIRS:
            ratio = _slower(c, base, opt, tolerance)
            if ratio is not None:
                bad.append(f"inference {key}: {opt} takes {ratio:.2f}x the time of {base}")
        if inf.get("max_probability_difference", 0) > 1e-3:
            bad.append(f"inference {key}: optimised probabilities differ by "
                       f"{inf['max_probability_difference']:.2g}")
    for key, tr in result.get("training", {}).items():
        ratio = _slower(tr["cases"], "baseline", "optimised", tolerance)
        if ratio is not None:
            bad.append(f"training {key}: optimised step takes {ratio:.2f}x the baseline's")
    return bad


# --------------------------------------------------------------------------- report
def markdown_report(r: dict[str, Any], command: str) -> str:
    """The markdown tables of a result (what goes between the markers in docs/benchmarks.md)."""
    L = [f"Command: `{command}`", "",
         f"Machine: {r['processor']} ({r['cpu_capability']}), {r['cores']} cores, "
         f"{r['torch_threads']} torch threads, device {r['device']}"
         + (f" ({r['gpu']})" if r.get("gpu") else "")
         + f"; torch {r['torch']}; load average {r['load_average_start']} at the start, "
           f"{r['load_average_end']} at the end; {r['wall_time_s']} s.", ""]
    L += ["**FLOPs per sample** (GFLOP, FlopCounterMode; convolutions and matmuls):", "",
          "| size | frames x H x W | width | params (M) | image fwd | voice fwd | joint+head fwd "
          "| total fwd | image train step | total train step |", "|---|---|---|---|---|---|---|---|---|---|"]
    for k, f in r["flops_gflop_per_sample"].items():
        h, w = f["image_size"]
        L.append(f"| {k} | {f['frames']} x {h} x {w} | {f['width']} | "
                 f"{f['parameters_millions']:.1f} | {f['image_branch_forward']:.3f} | "
                 f"{f['voice_branch_forward']:.3f} | {f['joint_and_head_forward']:.4f} | "
                 f"{f['total_forward']:.3f} | {f['image_branch_train_step']:.3f} | "
                 f"{f['total_train_step']:.3f} |")
    p = r["peak"]
    L += ["", f"**Measured matmul peak** (best of the start and the end of the run): fp32 "
              f"{p['fp32']['gflops']:.1f} GFLOP/s (n = {p['fp32']['n']}), bf16 "
              f"{p['bf16']['gflops']:.2f} GFLOP/s (n = {p['bf16']['n']}); bf16 native here: "
              f"{r['bf16_native']}.  Fractions of peak can still pass 100 % when the machine "
              f"was busier during both peak measurements than during a case.", ""]
    L += ["**Inference per window** (batch 1; median of interleaved repeats):", "",
          "| size | width | case | median s | GFLOP/s | of peak | peak RSS MB |",
          "|---|---|---|---|---|---|---|"]
    for k, inf in r["inference"].items():
        h, w = inf["image_size"]
        for name, c in inf["cases"].items():
            g = c.get("achieved_gflops")
            gs = "" if g is None else f"{g:.1f}"
            fs = "" if g is None else f"{100 * c['fraction_of_peak']:.0f} %"
            L.append(f"| {h}x{w} | {inf['width']} | {name} | {c['median_s']:.4f} | {gs} | "
                     f"{fs} | {c['peak_rss_mb']:.0f}"
                     + (f" (CUDA {c['peak_cuda_mb']:.0f})" if c.get("peak_cuda_mb") else "")
                     + " |")
        L.append(f"| {h}x{w} | {inf['width']} | **speed-up** | optimised {inf['speedup']:.2f}x, "
                 f"with Grad-CAM {inf['speedup_cam']:.2f}x"
                 + (f", compiled {inf['speedup_compiled']:.2f}x" if "speedup_compiled" in inf
                    else "") + f" | | | max prob. diff {inf['max_probability_difference']:.1e} |")
    L += ["", "**Training** (Adam steps on a preloaded batch):", "",
          "| size | width | batch | case | samples/s | GFLOP/s | of peak | peak RSS MB |",
          "|---|---|---|---|---|---|---|---|"]
    for k, tr in r["training"].items():
        h, w = tr["image_size"]
        for name, c in tr["cases"].items():
            L.append(f"| {h}x{w} | {tr['width']} | {tr['batch']} | {name} | "
                     f"{c['samples_per_s']:.2f} | {c['achieved_gflops']:.1f} | "
                     f"{100 * c['fraction_of_peak']:.0f} % | {c['peak_rss_mb']:.0f}"
                     + (f" (CUDA {c['peak_cuda_mb']:.0f})" if c.get("peak_cuda_mb") else "")
                     + " |")
        L.append(f"| {h}x{w} | {tr['width']} | {tr['batch']} | **speed-up** | "
                 f"{tr['speedup']:.2f}x | | | |")
    if "data" in r:
        d = r["data"]
        k = d["kws"]
        L += ["", f"**Data path** ({d['windows']} windows of a {d['procedure_seconds']:g}-s "
                  f"720x480 H.264 procedure, {d['image_size'][0]}x{d['image_size'][1]}): "
                  f"{d['video_windows_per_s']:.2f} windows/s from video by time range, "
                  f"{d['cache_windows_per_s']:.1f} windows/s from the window cache "
                  f"({d['cache_windows_per_s'] / d['video_windows_per_s']:.0f}x); keyword "
                  f"spotting real-time factor {k['real_time_factor']:.3f} "
                  f"({k['audio_seconds']:.0f} s of audio in {k['seconds']:.1f} s)."]
    if "labelling" in r:
        lb = r["labelling"]
        if "error" in lb:
            L += ["", f"**Labelling**: failed: {lb['error']}"]
        else:
            L += ["", f"**Labelling** a {lb['minutes']:g}-minute procedure ({lb['windows']} "
                      f"windows, {lb['image_size'][0]}x{lb['image_size'][1]}, width "
                      f"{lb['width']}, fresh process, all outputs written): "
                      f"{lb['with_cam_s_per_window']:.2f} s per window with heat maps, "
                      f"{lb['without_cam_s_per_window']:.2f} s without; the whole `label` "
                      f"command (decoding, heat maps, every output file) "
                      f"{lb['label_command_s_per_window']:.2f} s per window with a peak RSS "
                      f"of {lb['peak_rss_mb_label_command']:.0f} MB (of which "
                      f"{lb['rss_mb_after_import']:.0f} MB is the process after importing "
                      f"torch)."]
    L += ["", "Regressions (optimised slower than baseline by more than "
              f"{100 * QUICK_TOLERANCE:.0f} %): "
              + ("; ".join(r["regressions"]) if r["regressions"] else "none") + "."]
    return "\n".join(L) + "\n"


def update_markdown(path: Path, section: str, text: str) -> None:
    """Replace the ``section`` block between the bench markers of ``path`` (append if absent)."""
    begin = f"{MARK_BEGIN[:-4]} {section} -->"
    end = f"{MARK_END[:-4]} {section} -->"
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    block = f"{begin}\n{text}{end}"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = old + ("\n" if old and not old.endswith("\n") else "") + block + "\n"
    atomic_write_text(path, new)


def write_result(path: Path, result: dict[str, Any]) -> None:
    """The JSON result, written atomically."""
    atomic_write_text(path, json.dumps(result, indent=2, default=float) + "\n")


__all__ = ["BenchSettings", "run_bench", "model_flops", "measure_peak", "inference_cases",
           "training_cases", "data_cases", "labelling_case", "time_interleaved", "PeakMemory",
           "check_regressions", "markdown_report", "update_markdown", "write_result",
           "BENCH_RESULT", "BENCH_MARKDOWN", "QUICK_TOLERANCE", "DEMO_SIZE"]
