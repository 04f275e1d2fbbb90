"""The optimised inference path, justified by ``eusvoicelabel bench`` (see docs/benchmarks.md).

:func:`optimise_for_inference` returns a copy of a trained network that gives the same
predictions (to float rounding) with less work:

- **frozen parameters**: inference never needs weight gradients.  For Grad-CAM this matters
  most: with trainable weights the backward pass of ``explain.grad_cam`` runs through all 13
  image convolutions (about twice the forward's FLOPs) and the forward keeps every activation
  for it; with frozen weights the graph starts at the Grad-CAM layer and the backward only
  crosses what lies after it (the last image block, the joint product and the head).
  (Measured: see docs/benchmarks.md.)
- **BatchNorm folded into the preceding convolution** (eval-mode BatchNorm is an affine map),
  which saves one pass over every activation map.
- **channels-last** weights and inputs on CPU and CUDA: oneDNN / cuDNN convolutions work in
  NHWC natively, NCHW costs a reorder per layer.
- **bf16 autocast** only where the hardware computes in bf16 (CUDA; on CPUs without AVX512-BF16
  or AMX bf16 is emulated and hundreds of times slower, see :func:`bf16_is_fast`).
- ``torch.compile`` on request (:func:`maybe_compile`), guarded: a failing compiler falls back to
  eager with a warning.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

log = logging.getLogger(__name__)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm that directly follows a Conv in an ``nn.Sequential`` into
    that convolution (in place; the BatchNorm becomes ``nn.Identity``).  Returns ``model``.

    Frozen pretrained backbones are folded too; modules in training mode are left alone.
    """
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, (nn.Conv1d, nn.Conv2d)) and \
                    isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)) and \
                    not conv.training and not bn.training and bn.track_running_stats:
                seq._modules[a] = fuse_conv_bn_eval(conv, bn)
                seq._modules[b] = nn.Identity()
    return model


def bf16_is_fast(device: torch.device | str) -> bool:
    """True where bf16 arithmetic is native: CUDA GPUs with bf16 support, CPUs with AVX512-BF16
    or AMX.  (On an AVX2 CPU a bf16 matmul measured ~250x slower than fp32.)"""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        cap = str(torch.backends.cpu.get_cpu_capability()).upper()
        try:
            native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            native = False
        return native and ("AVX512" in cap or "AMX" in cap)
    return False


def autocast_for(device: torch.device | str, enabled: bool = True, training: bool = False):
    """bf16 autocast for work on ``device``, else a no-op context.

    Inference (default): where :func:`bf16_is_fast`.  Training (``training=True``): on CUDA
    only; on CPU (even one with native bf16) and MPS training stays float32, so that a seed
    repeats a CPU run bit for bit (docs/benchmarks.md).
    """
    device = torch.device(device)
    fast = device.type == "cuda" if training else bf16_is_fast(device)
    if enabled and fast:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def use_channels_last(device: torch.device | str) -> bool:
    """Channels-last pays for 4-D convolutions on CPU (oneDNN) and CUDA (cuDNN)."""
    return torch.device(device).type in ("cpu", "cuda")


def prepare_image(image: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """An image batch (B, frames, H, W) in the memory layout the optimised model wants."""
    if use_channels_last(device) and image.dim() == 4:
        return image.contiguous(memory_format=torch.channels_last)
    return image


def optimise_for_inference(model: nn.Module, device: torch.device | str = "cpu",
                           fold_bn: bool = True, channels_last: bool = True,
                           inplace: bool = False) -> nn.Module:
    """A copy of ``model`` for inference and Grad-CAM: eval mode, parameters frozen, BatchNorm
    folded, channels-last (see the module docstring).  Outputs equal the original's to float
    rounding; the original model is not changed unless ``inplace`` (no copy of the weights)."""
    device = torch.device(device)
    fast = (model if inplace else copy.deepcopy(model)).eval()
    for p in fast.parameters():
        p.requires_grad_(False)
    if fold_bn:
        fold_batchnorm(fast)
    fast = fast.to(device)
    if channels_last and use_channels_last(device):
        fast = fast.to(memory_format=torch.channels_last)
    # Attributes the rest of the package reads (variant, num_classes, input_frames, ...)
    # survive deepcopy; mark the copy so it is never trained by mistake.
    fast.optimised_for_inference = True
    return fast


def maybe_compile(model: nn.Module, enabled: bool = True, **kw: Any) -> nn.Module:
    """``torch.compile(model)`` when ``enabled`` and the compiler works here, else ``model``.

    Compilation is lazy in torch (it happens on the first call): callers time or try that
    first call and keep the eager model if it raises (``bench`` does).
    """
    if not enabled or not hasattr(torch, "compile"):
        return model
    try:
        return torch.compile(model, **kw)
    except Exception as exc:  # any backend problem: eager still works
        log.warning("torch.compile unavailable (%s); running eagerly", exc.__class__.__name__)
        return model


__all__ = ["fold_batchnorm", "bf16_is_fast", "autocast_for", "use_channels_last",
           "prepare_image", "optimise_for_inference", "maybe_compile"]
