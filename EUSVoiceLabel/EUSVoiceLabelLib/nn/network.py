"""The two-branch image + voice network of Bonmati et al. and the paper's ablation variants.

Every model takes ``image`` (B, frames, H, W) float in [0, 1] and ``voice`` (B, 1024, 66) float
and returns logits (B, K).  Build one with :func:`build_model`.

Architecture (the paper's; where it is silent the choice made here is marked *ours*)
-----------------------------------------------------------------------------------

Voice branch (input 1024 x 66: frequency bins are the Conv1d input channels, time is the axis):
six Conv1d (kernel 3, padding 1) each followed by BatchNorm1d and ReLU, MaxPool1d(3, stride 2)
after the 2nd and the 4th convolution (*ours*: the paper says "between some of them")::

    1024 -> 256 -> 256 | pool | -> 512 -> 512 | pool | -> 1024 -> 1024      (channel plan, *ours*)
    time:  66          | 32   |                 | 15   |   P = (R=1024, T'=15)

Image branch (input = the frames stacked as channels): VGG16's 13 Conv2d (kernel 3, padding 1)
in its 5 blocks (2, 2, 3, 3, 3 convolutions), each followed by BatchNorm2d and ReLU; no dense
layers.  VGG16 widths 64, 128, 256, 512 for blocks 1-4; block 5 is widened from 512 to R = 1024
(*ours*: all three of its convolutions, so Q has R channels without an extra layer).
MaxPool2d(3, stride 2, no padding, as TensorFlow's default "valid") *between* the blocks, i.e.
4 pools (*ours*: VGG16 also pools after block 5; we do not, to keep a finer grid for Grad-CAM).
At 350 x 690 the grid is 350 -> 174 -> 86 -> 42 -> 20 and 690 -> 344 -> 171 -> 85 -> 42, so
Q = (1024, 20, 42).  Inputs smaller than 31 pixels on a side are refused (the grid would vanish).

Joint map and head: ``C[t, i, j] = sum_r Q[r, i, j] * P[r, t]`` (the paper's parameter-free
product over the R channels; one map per voice time step, T' = 15 channels over the H' x W'
grid), then Conv2d(T' -> K, kernel 3, padding 1) and global average pooling give the K logits.
``joint_scale="mean"`` divides C by R instead (an option we measured, not the default: on a
6-patient synthetic cohort, 20 epochs at lr 1e-3, the plain sum reached 0.44 LOPO accuracy and
97 % training accuracy, the mean 0.29 and 60 %: the small values of C/R make the head learn
slowly at the paper's learning rate).

Variants (the paper's Table II/III; the rows of :data:`..core.variants.VARIANT_SPECS`):

- ``proposed``: the above.
- ``image_only``: image branch -> Conv2d(R -> K) -> GAP (no product; "skipping the
  multiplication", paper Fig. 1 dotted arrows).
- ``voice_only``: voice branch -> Conv1d(R -> K, kernel 3) -> GAP.  The branch output is 1-D, so
  the head is the 1-D form of the paper's "Conv + GAP".
- ``vgg16_pretrained`` / ``resnet50_pretrained``: the image branch is torchvision's VGG16
  ``features`` / ResNet50 without avgpool and fc ("top removed"), ImageNet weights loaded from a
  local file, every backbone layer frozen (BatchNorm in inference mode, as Keras does for frozen
  layers), then a Conv2d(kernel 3) to R = 1024 channels; joined with the voice branch as above.
  The backbone's first convolution takes 3 channels, so 3 of the frames are fed (*ours*: frames
  evenly spaced over the window: first, middle, last), normalised with the ImageNet mean/std.
- ``image_only_vgg16`` / ``image_only_resnet50``: the same image branches alone (Table III rows
  5-6).
- ``voice_pretrained``: voice-only with the keyword network of :mod:`.keyword` (frozen) up
  to its first Dropout, then Conv2d(64 -> R, kernel 3) "after the Dropout layer", averaged over
  the frequency axis (*ours*) to give P (R, T'), then the voice-only head.
- ``random_pairs``: the proposed network; only the training data differ (see train/loop.py).
- ``reduced_input``: the proposed network fed 3 frames (the first conv has 3 input channels);
  training picks 3 random frames per sample and epoch, evaluation the 3 evenly spaced frames.

Image head (*ours*, ``build_model(image_head=True)``, ``--image-aux-weight``): a joint model
can also give the image branch the image-only head (Conv2d(R -> K) -> GAP on Q), trained by a
loss of its own beside the joint loss; the labels still come from the joint logits, and
Grad-CAM explains this head (docs/evidence.md).

Grad-CAM: :meth:`EUSVoiceLabelNet.cam_layer` returns the module whose output is the image
feature map used for heat maps: the last ReLU of block 4 of the scratch image branch (*ours*:
its grid is twice as fine as Q's in each direction, 7 x 15 cells against 3 x 7 at 64 x 128; the
heat-map peak fell inside the named landmark's box 1.2-1.3 times as often on unseen patients,
docs/evidence.md), or the added Conv2d for pretrained backbones; ``None`` for voice-only
models.  :meth:`EUSVoiceLabelNet.features` returns P, Q and C for inspection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from ..core.errors import CheckpointError, ConfigError
from ..core.paper import N_BINS, N_FRAMES, R_CHANNELS, WINDOW_FRAMES
from ..core.variants import IMAGE_SCRATCH, VOICE_KEYWORD, VOICE_SCRATCH, variant_spec
from .keyword import KeywordFeatures, load_keyword_model
from .torchfile import load_untrusted_torch

#: VGG16 block plan: (number of convolutions, channels) per block; block 5 widened to R.
IMAGE_BLOCKS: tuple[tuple[int, int], ...] = ((2, 64), (2, 128), (3, 256), (3, 512),
                                             (3, R_CHANNELS))
#: Voice branch: output channels of the 6 Conv1d; a MaxPool1d follows the convs listed in
#: VOICE_POOL_AFTER (0-based).
VOICE_CHANNELS: tuple[int, ...] = (256, 256, 512, 512, R_CHANNELS, R_CHANNELS)
VOICE_POOL_AFTER: tuple[int, ...] = (1, 3)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _scaled(channels: int, width: float) -> int:
    return max(4, int(round(channels * width)))


def pool_out(size: int, times: int = 4) -> int:
    """Grid size after ``times`` max-pools of kernel 3, stride 2, no padding."""
    for _ in range(times):
        size = (size - 3) // 2 + 1
    return size


def feature_grid(image_size: Sequence[int]) -> tuple[int, int]:
    """(H', W') of Q for an input of ``image_size`` = (H, W) in the scratch image branch."""
    return pool_out(int(image_size[0])), pool_out(int(image_size[1]))


# --------------------------------------------------------------------------- branches
class VoiceBranch(nn.Module):
    """Six Conv1d + BatchNorm1d + ReLU over a (B, 1024, 66) spectrogram -> P (B, R, T')."""

    def __init__(self, in_bins: int = N_BINS, width: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_bins
        for i, c in enumerate(VOICE_CHANNELS):
            c_out = _scaled(c, width)
            layers += [nn.Conv1d(c_in, c_out, 3, padding=1), nn.BatchNorm1d(c_out),
                       nn.ReLU(inplace=True)]
            if i in VOICE_POOL_AFTER:
                layers.append(nn.MaxPool1d(3, stride=2))
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.out_channels = c_in

    def forward(self, voice: torch.Tensor) -> torch.Tensor:
        return self.layers(voice)


class ImageBranch(nn.Module):
    """VGG16-style 13 Conv2d + BatchNorm2d + ReLU, pools between blocks -> Q (B, R, H', W')."""

    def __init__(self, in_frames: int = WINDOW_FRAMES, width: float = 1.0,
                 select_from: Optional[int] = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_frames
        for b, (n_conv, c) in enumerate(IMAGE_BLOCKS):
            if b > 0:
                layers.append(nn.MaxPool2d(3, stride=2))
            c_out = _scaled(c, width)
            for _ in range(n_conv):
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out),
                           nn.ReLU(inplace=True)]
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.out_channels = c_in
        self.in_frames = in_frames
        # reduced_input: a full window (select_from frames) is cut to evenly spaced in_frames;
        # training passes its randomly chosen in_frames directly.
        self.select_from = select_from
        idx = evenly_spaced(select_from, in_frames) if select_from else []
        self.register_buffer("frame_indices", torch.tensor(idx, dtype=torch.long),
                             persistent=False)

    def cam_layer(self) -> nn.Module:
        """The layer Grad-CAM explains: the last ReLU before the last pool (the end of block
        4), on a grid twice as fine as Q's (see the module doc); the last layer when the
        branch has a single block."""
        pools = [i for i, m in enumerate(self.layers) if isinstance(m, nn.MaxPool2d)]
        return self.layers[pools[-1] - 1] if pools else self.layers[-1]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.select_from and image.shape[1] == self.select_from != self.in_frames:
            image = image.index_select(1, self.frame_indices)
        return self.layers(image)


class PretrainedImageBranch(nn.Module):
    """Frozen torchvision VGG16 / ResNet50 ("top removed") + a trainable Conv2d to R channels.

    ``weights`` is a local state_dict file of the full torchvision model (e.g. the ImageNet
    weights torchvision distributes, ``vgg16-397923af.pth``); nothing is downloaded.
    """

    def __init__(self, arch: str, weights: Optional[Path], frames: int, out_channels: int,
                 load: bool = True) -> None:
        super().__init__()
        import torchvision  # deferred: ~2 s to import, pretrained backbones only

        if arch == "vgg16":
            # Only VGG16's convolutional part ("features"): the 120 M-parameter classifier is
            # the removed top, so it is never built.
            from torchvision.models.vgg import cfgs, make_layers

            full: nn.Module = nn.Module()
            full.features = make_layers(cfgs["D"], batch_norm=False)
            top = "classifier."
        elif arch == "resnet50":
            full = torchvision.models.resnet50(weights=None)
            top = "fc."
        else:  # pragma: no cover - guarded by build_model
            raise ConfigError(f"unknown backbone {arch!r}")
        if load:
            if weights is None:
                raise ConfigError(f"the {arch} image branch needs ImageNet weights from a local "
                                  "file",
                                  hint=f"pass --weights PATH to a torchvision {arch} state_dict "
                                       "(.pth); nothing is downloaded at run time")
            state = load_state_dict_file(weights, arch)
            # The top is removed anyway, so a file with or without it is accepted.
            state = {k: v for k, v in state.items() if not k.startswith(top)}
            try:
                missing, unexpected = full.load_state_dict(state, strict=False)
            except RuntimeError as exc:  # shape mismatch
                lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
                raise CheckpointError(f"weights do not fit torchvision's {arch} "
                                      f"({lines[-1] if lines else exc})", weights) from None
            missing = [k for k in missing if not k.startswith(top)]
            if missing or unexpected:
                what = (missing or unexpected)[0]
                raise CheckpointError(
                    f"weights do not fit torchvision's {arch} ("
                    f"{'missing' if missing else 'unexpected'} key {what!r})", weights,
                    f"give the state_dict of torchvision.models.{arch}")
        if arch == "vgg16":
            self.backbone: nn.Module = full.features  # includes the last pool, like Keras
            feat = 512
        else:
            self.backbone = nn.Sequential(*list(full.children())[:-2])  # drop avgpool + fc
            feat = 2048
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()
        self.adapter = nn.Conv2d(feat, out_channels, 3, padding=1)
        self.out_channels = out_channels
        self.arch = arch
        idx = evenly_spaced(frames, 3)
        self.register_buffer("frame_indices", torch.tensor(idx, dtype=torch.long),
                             persistent=False)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)
        self.in_frames = frames

    def train(self, mode: bool = True) -> "PretrainedImageBranch":
        super().train(mode)
        self.backbone.eval()  # frozen: BatchNorm keeps its ImageNet statistics
        return self

    def cam_layer(self) -> nn.Module:
        return self.adapter

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.index_select(1, self.frame_indices)
        x = (x - self.mean) / self.std
        return self.adapter(self.backbone(x))


def evenly_spaced(n: int, k: int) -> list[int]:
    """``k`` frame indices spread evenly over ``n`` frames (first and last included)."""
    if n < k:
        raise ConfigError(f"{k} frames are needed but a window has only {n}",
                          hint=f"use --frames {k} or more")
    if k == 1:
        return [n // 2]
    return [int(round(i * (n - 1) / (k - 1))) for i in range(k)]


def load_state_dict_file(path: Path, what: str) -> dict[str, torch.Tensor]:
    """Read a plain state_dict (tensors only) with ``weights_only=True``."""
    path = Path(path)
    data = load_untrusted_torch(
        path, ("weights file not found", f"give a local {what} state_dict (.pth) with --weights"),
        ("cannot read weights ({error})",
         "the file must be a torch state_dict saved with torch.save"))
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError("not a state_dict of tensors", path)
    return data


# --------------------------------------------------------------------------- the network
class EUSVoiceLabelNet(nn.Module):
    """Two-branch network (or one branch alone) with a Conv + GAP head.

    Attributes:
        variant: the variant name it was built as.
        image_branch / voice_branch: the branches (``None`` when a variant does not use one).
        head: the Conv2d (joint / image-only) or Conv1d (voice-only) producing class maps.
        image_head: joint models trained with ``image_aux_weight``: the image branch's own
            Conv2d to class maps (its logits are ``features()["image_head_logits"]``).
    """

    def __init__(self, variant: str, image_branch: Optional[nn.Module],
                 voice_branch: Optional[nn.Module], num_classes: int,
                 joint_scale: str = "sum", late_voice: bool = False,
                 image_dropout: float = 0.0, joint_bound: float = 0.0,
                 image_head: bool = False) -> None:
        super().__init__()
        self.variant = variant
        self.image_branch = image_branch
        self.voice_branch = voice_branch
        self.num_classes = num_classes
        if joint_scale not in ("mean", "sum"):
            raise ConfigError(f"joint_scale must be 'mean' or 'sum', not {joint_scale!r}")
        self.joint_scale = joint_scale
        if image_branch is not None and voice_branch is not None:
            self.mode = "joint"
            t_prime = getattr(voice_branch, "time_steps", None) or voice_time_steps()
            self.head: nn.Module = nn.Conv2d(t_prime, num_classes, 3, padding=1)
        elif image_branch is not None:
            self.mode = "image"
            self.head = nn.Conv2d(image_branch.out_channels, num_classes, 3, padding=1)
        elif voice_branch is not None:
            self.mode = "voice"
            self.head = nn.Conv1d(voice_branch.out_channels, num_classes, 3, padding=1)
        else:  # pragma: no cover
            raise ConfigError("a model needs at least one branch")
        # Late voice path (an extension of the paper, off by default): the voice features'
        # own class scores, as the voice-only head computes them, added to the joint logits.
        # The joint head can only express a class through the time pattern of P (its input
        # channels are P's time steps), so a voice branch pretrained to name the labels in
        # its channels needs this path to pass what it knows to the joint model.  Its own
        # scores can also be trained by a loss of their own (``voice_aux_weight``), so the
        # joint logits beside them do not take over part of what the voice alone can name.
        self.voice_head: Optional[nn.Module] = None
        if late_voice:
            if self.mode != "joint":
                raise ConfigError("late_voice needs a model with both branches")
            self.voice_head = nn.Conv1d(voice_branch.out_channels, num_classes, 3, padding=1)
        # Modality dropout of the image path (ModDrop, Neverova et al. 2015): in training, each
        # window loses the joint logits with this probability, so the voice path must name the
        # label on its own and the image path learns to add to it rather than to carry it.
        if not 0.0 <= image_dropout < 1.0:
            raise ConfigError(f"image_dropout must be in [0, 1), not {image_dropout!r}")
        if image_dropout and self.voice_head is None:
            raise ConfigError("image_dropout needs the late voice path (late_voice)")
        self.image_dropout = float(image_dropout)
        # A bound on the joint logits beside the voice path (b * tanh(joint / b)): the image
        # path can settle what the voice leaves open, but its scores, fitted to the training
        # patients' images, cannot outvote a confident voice on a new patient.
        if joint_bound < 0 or (joint_bound and self.voice_head is None):
            raise ConfigError("joint_bound must be >= 0 and needs the late voice path")
        self.joint_bound = float(joint_bound)
        # The image path's own head (an extension of the paper, off by default): class scores
        # from Q alone, as the image-only network computes them, trained by an auxiliary loss
        # of their own (uni-modal auxiliary losses against "modality laziness", Wang et al.
        # 2020): in the joint model the image branch is otherwise only trained through the
        # product with P, and a confident voice leaves it little to learn.
        self.image_head: Optional[nn.Module] = None
        if image_head:
            if self.mode != "joint":
                raise ConfigError("image_head needs a model with both branches")
            self.image_head = nn.Conv2d(image_branch.out_channels, num_classes, 3, padding=1)

    def cam_layer(self) -> Optional[nn.Module]:
        """Module whose output is the image feature map Q used for Grad-CAM (None if no image)."""
        if self.image_branch is None:
            return None
        return self.image_branch.cam_layer()

    def joint(self, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """C (B, T', H', W') from Q (B, R, H', W') and P (B, R, T'): C = Q P^T (sum over R;
        divided by R when ``joint_scale == "mean"``)."""
        if q.shape[1] != p.shape[1]:
            raise ConfigError(f"image and voice branches disagree on R ({q.shape[1]} vs "
                              f"{p.shape[1]})")
        c = torch.einsum("brhw,brt->bthw", q, p)
        if self.joint_scale == "mean":
            c = c / q.shape[1]
        return c

    def features(self, image: Optional[torch.Tensor], voice: Optional[torch.Tensor]
                 ) -> dict[str, torch.Tensor]:
        """The intermediate maps: ``P`` (voice), ``Q`` (image), ``C`` (joint), ``maps`` (head
        output before GAP), ``image_logits`` (the GAP of ``maps``: the head's own class
        scores), ``image_head_logits`` and ``voice_logits`` (the late voice path's own class
        scores) where the model has them, and ``logits``; only those the variant computes."""
        out: dict[str, torch.Tensor] = {}
        if self.image_branch is not None:
            if image is None:
                raise ConfigError(f"variant {self.variant!r} needs image input")
            if image.dim() != 4:
                raise ConfigError(f"image input must be (B, frames, H, W), got "
                                  f"{tuple(image.shape)}")
            out["Q"] = self.image_branch(image)
        if self.voice_branch is not None:
            if voice is None:
                raise ConfigError(f"variant {self.variant!r} needs voice input")
            out["P"] = self.voice_branch(voice)
        if self.mode == "joint":
            out["C"] = self.joint(out["Q"], out["P"])
            maps = self.head(out["C"])
        elif self.mode == "image":
            maps = self.head(out["Q"])
        else:
            maps = self.head(out["P"])
        out["maps"] = maps
        out["logits"] = maps.flatten(2).mean(dim=2)  # global average pooling
        # The image path's own class scores (before the bound, the dropout and the voice
        # path): what Grad-CAM explains, so a saturated bound does not blank the heat map.
        out["image_logits"] = out["logits"]
        if self.image_head is not None:
            out["image_head_logits"] = self.image_head(out["Q"]).flatten(2).mean(dim=2)
        if self.voice_head is not None:
            joint = out["logits"]
            if self.joint_bound > 0:
                joint = self.joint_bound * torch.tanh(joint / self.joint_bound)
            if self.training and self.image_dropout > 0:
                keep = torch.rand(joint.shape[0], 1, device=joint.device) >= self.image_dropout
                joint = joint * keep.to(joint.dtype)
            out["voice_logits"] = self.voice_head(out["P"]).mean(dim=2)
            out["logits"] = joint + out["voice_logits"]
        return out

    def forward(self, image: Optional[torch.Tensor], voice: Optional[torch.Tensor],
                image_head: bool = False, voice_path: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Logits (B, K) from image (B, frames, H, W) and voice (B, 1024, 66); with
        ``image_head`` and / or ``voice_path``, the tuple (logits, then the image head's and /
        or the late voice path's own logits, in that order) for their auxiliary losses."""
        out = self.features(image, voice)
        if not (image_head or voice_path):
            return out["logits"]
        extra = ([out["image_head_logits"]] if image_head else []) + \
            ([out["voice_logits"]] if voice_path else [])
        return (out["logits"], *extra)


def voice_time_steps(time_bins: int = N_FRAMES) -> int:
    """T' of the scratch voice branch for ``time_bins`` spectrogram frames."""
    t = time_bins
    for _ in VOICE_POOL_AFTER:
        t = (t - 3) // 2 + 1
    return t


class PretrainedVoiceBranch(nn.Module):
    """Frozen keyword network (see :mod:`.keyword`) up to its first Dropout, then a
    trainable Conv2d to R channels, averaged over frequency -> P (B, R, T').

    ``weights`` is a ``pretrain-voice`` checkpoint; ``None`` with ``load=False`` builds the
    structure only (its weights then come from a saved model checkpoint).
    """

    def __init__(self, weights: Optional[Path], out_channels: int, load: bool = True) -> None:
        super().__init__()

        if load:
            if weights is None:
                raise ConfigError("the voice_pretrained variant needs a pretrained keyword "
                                  "network",
                                  hint="run 'eusvoicelabel pretrain-voice --out keyword.pt' and "
                                       "pass --weights keyword.pt")
            full = load_keyword_model(weights)
            self.keyword = full.features
            #: spectrogram settings the keyword network was pretrained with (checked in training)
            self.spectrogram_settings = getattr(full, "settings_json", None)
        else:
            self.keyword = KeywordFeatures()
            self.spectrogram_settings = None
        for p in self.keyword.parameters():
            p.requires_grad_(False)
        self.keyword.eval()
        self.adapter = nn.Conv2d(KeywordFeatures.feature_channels, out_channels, 3, padding=1)
        self.out_channels = out_channels
        self.time_steps = KeywordFeatures.feature_grid[0]

    def train(self, mode: bool = True) -> "PretrainedVoiceBranch":
        super().train(mode)
        self.keyword.eval()  # frozen, dropout off
        return self

    def forward(self, voice: torch.Tensor) -> torch.Tensor:
        f = self.keyword(voice)                   # (B, 64, T', F')
        return self.adapter(f).mean(dim=3)        # (B, R, T')


# --------------------------------------------------------------------------- factory
def build_model(variant: str = "proposed", num_classes: int = 5, frames: int = WINDOW_FRAMES, *,
                weights: Optional[str | Path] = None, width: float = 1.0,
                joint_scale: str = "sum", load_pretrained: bool = True,
                late_voice: bool = False, image_dropout: float = 0.0,
                joint_bound: float = 0.0, image_head: bool = False, **kw: Any
                ) -> EUSVoiceLabelNet:
    """Build the network of ``variant`` (see the module docstring).

    Args:
        variant: one of :data:`..core.variants.VARIANTS`; its row of :data:`..core.variants.VARIANT_SPECS` says
            which branches to build.
        num_classes: K, the number of labels.
        frames: frames per window in the image input (``reduced_input`` feeds 3 of them to the
            network; the pretrained backbones take 3 evenly spaced ones).
        weights: local weights file for the pretrained variants (torchvision state_dict for
            VGG16/ResNet50, a ``pretrain-voice`` checkpoint for ``voice_pretrained``).
        width: channel multiplier of the scratch branches (1.0 = the paper, R = 1024; smaller
            values give a light model for CPU tests and laptops).
        joint_scale: "sum" (the paper's plain product, default) or "mean" (C / R).
        load_pretrained: False builds pretrained branches without reading ``weights`` (for
            loading a saved checkpoint, which holds them).
        late_voice: joint variants only: add the voice features' own class scores to the
            joint logits (see :class:`EUSVoiceLabelNet`).
        image_dropout: with ``late_voice``, the probability that a training window loses the
            joint (image) logits (see :class:`EUSVoiceLabelNet`).
        joint_bound: with ``late_voice``, > 0 bounds the joint logits to (-b, b) by
            b * tanh(joint / b) (see :class:`EUSVoiceLabelNet`); 0 leaves them unbounded.
        image_head: joint variants only: give the image branch its own class head (see
            :class:`EUSVoiceLabelNet`), trained by an auxiliary loss.
        **kw: ``in_bins`` (spectrogram bins, default :data:`..core.paper.N_BINS`).

    Returns:
        An :class:`EUSVoiceLabelNet` whose ``forward(image, voice)`` returns logits (B, K).
    """
    spec = variant_spec(variant)
    if num_classes < 2:
        raise ConfigError(f"need at least 2 classes, got {num_classes}")
    if frames < 1:
        raise ConfigError(f"frames must be positive, got {frames}")
    if not (0 < width <= 4):
        raise ConfigError(f"width must be in (0, 4], got {width}")
    in_bins = int(kw.pop("in_bins", N_BINS))
    if kw:
        raise ConfigError("unknown model options: " + ", ".join(sorted(kw)))
    r = _scaled(R_CHANNELS, width)
    wpath = Path(weights) if weights is not None else None

    image: Optional[nn.Module] = None
    voice: Optional[nn.Module] = None
    if spec.image == IMAGE_SCRATCH and spec.frames_used:
        if frames < spec.frames_used:
            raise ConfigError(f"{variant} needs windows of at least {spec.frames_used} frames")
        image = ImageBranch(spec.frames_used, width, select_from=frames)
    elif spec.image == IMAGE_SCRATCH:
        image = ImageBranch(frames, width)
    elif spec.image is not None:  # a torchvision backbone: "vgg16" / "resnet50"
        image = PretrainedImageBranch(spec.image, wpath, frames, r, load_pretrained)
    if spec.voice == VOICE_SCRATCH:
        voice = VoiceBranch(in_bins, width)
    elif spec.voice == VOICE_KEYWORD:
        voice = PretrainedVoiceBranch(wpath, r, load_pretrained)
    late = late_voice and image is not None and voice is not None
    model = EUSVoiceLabelNet(variant, image, voice, num_classes, joint_scale, late,
                             image_dropout if late else 0.0, joint_bound if late else 0.0,
                             image_head and image is not None and voice is not None)
    model.input_frames = frames  # frames per window the caller supplies
    return model


def count_layers(model: nn.Module) -> dict[str, int]:
    """Number of Conv1d, Conv2d, BatchNorm1d and BatchNorm2d modules (for checks and docs)."""
    kinds = {"Conv1d": nn.Conv1d, "Conv2d": nn.Conv2d, "BatchNorm1d": nn.BatchNorm1d,
             "BatchNorm2d": nn.BatchNorm2d}
    return {name: sum(isinstance(m, cls) for m in model.modules()) for name, cls in kinds.items()}


def parameter_count(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (only those with gradients when ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = ["build_model", "EUSVoiceLabelNet", "VoiceBranch", "ImageBranch",
           "PretrainedImageBranch", "PretrainedVoiceBranch",
           "R_CHANNELS", "feature_grid", "count_layers", "parameter_count",
           "evenly_spaced", "voice_time_steps", "load_state_dict_file"]
