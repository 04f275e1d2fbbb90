"""Heat maps that show where in the image the evidence for a prediction lies.

Grad-CAM (Selvaraju et al. 2017) on an image-branch layer (the paper's last convolution; for
the scratch branch we take the end of its block 4, whose grid is twice as fine: see
``ImageBranch.cam_layer``): with A_r the activation maps of that layer and y_c the image
path's score of class c (the image head's logit where the model has one, ``--image-aux-weight``:
what the image alone says of c; else the joint head's logit before any bound on it; the late
voice path adds a term that does not depend on the image, so it changes nothing here),

    alpha_r = mean over (i, j) of d y_c / d A_r[i, j]
    CAM     = ReLU( sum_r alpha_r * A_r )

normalised to 0-1 by its maximum.  When that map is empty (no region argues *for* the class:
the network decided by the absence of the other classes' features) the negative part is shown
instead, so a heat map always points at the decisive evidence; ``Explanation.cam_sign`` says
which.  A few lines with hooks do it; the result is tested against a case computed by hand.
The *joint map* is the network's own product C = Q P^T averaged over the voice time steps:
where the image features agree with what was said.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Explanation:
    """Prediction and heat maps for one window."""

    probabilities: np.ndarray  # float32 (K,)
    target: int  # class the heat map explains
    cam: Optional[np.ndarray]  # float32 (h', w') in 0-1, None without an image branch
    joint: Optional[np.ndarray]  # float32 (h', w') in 0-1, None without a joint map
    cam_sign: int = 1  # +1: evidence for the class; -1: decisive evidence against the others


def _normalise(m: torch.Tensor) -> np.ndarray:
    m = m.detach().float().clamp_min(0)
    top = float(m.max())
    return (m / top if top > 0 else m).cpu().numpy().astype(np.float32)


def grad_cam(model: nn.Module, image: torch.Tensor, voice: torch.Tensor,
             target: Union[int, Callable[[np.ndarray], int], None] = None,
             layer: Optional[nn.Module] = None, joint: bool = False) -> Explanation:
    """Grad-CAM of one sample (batch of 1) for ``target`` (default: the predicted class; a
    function of the class probabilities chooses it, e.g. the label fused with speech).

    Args:
        model: an :class:`~EUSVoiceLabelLib.nn.network.EUSVoiceLabelNet` (or any module with
            ``cam_layer()``), in eval mode.
        image: (1, frames, H, W) float in [0, 1]; voice: (1, 1024, 66).
        layer: the layer to explain (default ``model.cam_layer()``).
        joint: also return the joint map C (needs ``model.features``).
    """
    layer = layer if layer is not None else getattr(model, "cam_layer", lambda: None)()
    store: dict[str, torch.Tensor] = {}

    def keep(_module, _inputs, output):
        if not output.requires_grad:
            # Frozen layers up to here (or inference inputs): make the map a leaf of the graph
            # so the gradient still reaches it; returning it replaces the layer's output.
            output = output.detach().requires_grad_(True)
        else:
            output.retain_grad()
        store["A"] = output
        return output

    handle = layer.register_forward_hook(keep) if layer is not None else None
    try:
        with torch.enable_grad():
            if hasattr(model, "features"):
                feats = model.features(image, voice)
                logits = feats["logits"]
            else:
                feats, logits = {}, model(image, voice)
            # The score explained: the image head's own where the model has one (what the
            # image alone says, trained by its own loss), else the joint head's, before a
            # bound on the joint logits (whose gradient vanishes where it saturates) and
            # without the late voice path (which does not depend on the image).
            score = feats.get("image_head_logits", feats.get("image_logits", logits))
            probs = torch.softmax(logits.detach().float(), dim=1)[0]
            if callable(target):
                cls = int(target(probs.cpu().numpy()))
            else:
                cls = int(probs.argmax()) if target is None else int(target)
            cam = None
            if "A" in store:
                model.zero_grad(set_to_none=True)
                score[0, cls].backward()
                a = store["A"]
                grad = a.grad
                if grad is None:  # layer output not on the path to the logit
                    grad = torch.zeros_like(a)
                weights = grad[0].mean(dim=(1, 2))  # alpha_r
                raw = torch.einsum("r,rhw->hw", weights, a[0].detach())
                if float(raw.max()) <= 0.0 < float(-raw.max()):
                    # No region argues *for* the class: the network decided by features that
                    # argue against the others.  Show where those decisive features lie.
                    raw, sign = -raw, -1
                else:
                    sign = 1
                cam = _normalise(raw)
            joint_map = None
            if joint and "C" in feats:
                joint_map = _normalise(feats["C"][0].detach().mean(dim=0))
    finally:
        if handle is not None:
            handle.remove()
    return Explanation(probs.cpu().numpy().astype(np.float32), cls, cam, joint_map,
                       sign if cam is not None else 0)


def upsample_map(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a (h, w) map to ``size`` = (H, W), kept in 0-1."""
    t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
    out = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)
    return out[0, 0].clamp(0, 1).numpy()
