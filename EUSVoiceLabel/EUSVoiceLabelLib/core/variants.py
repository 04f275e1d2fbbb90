"""The network variants of the paper (Table II / III) and the input sizes the network takes.

:data:`VARIANT_SPECS` is the one table every part reads: :func:`..nn.network.build_model` builds
the branches a row names, :class:`..train.config.TrainConfig` takes its epochs and learning rate
by default, the training loop its random pairs / frame choice, the command line its
``--variant`` choices and help and which ``--*-weights`` file a row needs, and the Table III
writer (:func:`..train.evaluation.table_iii_markdown`) its title and the published numbers.
The rows are in the order of the paper's Table III.

Image sizes are checked once here, for the command line, the Slicer module and the library
(:func:`parse_image_size`, :func:`check_image_size`).  Standard library only, so the command
line reads the table without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from .errors import ConfigError
from .paper import REDUCED_FRAMES

#: Image-branch kinds: the paper's VGG16-style branch trained from scratch, or a frozen
#: torchvision backbone with ImageNet weights.
IMAGE_SCRATCH, IMAGE_VGG16, IMAGE_RESNET50 = "scratch", "vgg16", "resnet50"
#: Voice-branch kinds: six Conv1d from scratch, or the frozen pretrained keyword network.
VOICE_SCRATCH, VOICE_KEYWORD = "scratch", "keyword"
#: Kind of weights file a pretrained branch needs (``--vgg16-weights``, ``--resnet50-weights``,
#: ``--voice-weights``); "voice" is a ``pretrain-voice`` checkpoint.
WEIGHTS_OF_BRANCH = {IMAGE_VGG16: "vgg16", IMAGE_RESNET50: "resnet50", VOICE_KEYWORD: "voice"}


@dataclass(frozen=True)
class PaperResult:
    """A row of the paper's Table III: its title and the published LOPO scores."""

    title: str
    accuracy: float
    precision: float
    recall: float
    f1: float


@dataclass(frozen=True)
class VariantSpec:
    """One network variant.

    Attributes:
        name: the ``--variant`` value.
        image: image-branch kind (:data:`IMAGE_SCRATCH`, :data:`IMAGE_VGG16`,
            :data:`IMAGE_RESNET50`) or None.
        voice: voice-branch kind (:data:`VOICE_SCRATCH`, :data:`VOICE_KEYWORD`) or None.
        epochs, lr: the paper's training settings (Table II; the proposed model's 200 / 1e-3
            where the table gives none).
        paper: the Table III row.
        help: one line for ``--variant`` help.
        random_pairs: training pairs each voice with a random image of its class per epoch.
        frames_used: frames of each window the network sees (None: all); training picks them
            at random per epoch, inference takes evenly spaced ones.
    """

    name: str
    image: Optional[str]
    voice: Optional[str]
    epochs: int
    lr: float
    paper: PaperResult
    help: str
    random_pairs: bool = False
    frames_used: Optional[int] = None

    @property
    def weights(self) -> Optional[str]:
        """The kind of local weights file the variant needs ("vgg16", "resnet50", "voice")
        or None."""
        return WEIGHTS_OF_BRANCH.get(self.image) or WEIGHTS_OF_BRANCH.get(self.voice)

    @property
    def joint(self) -> bool:
        """Both branches, joined by the product C = Q P^T."""
        return self.image is not None and self.voice is not None


_SPECS = (
    VariantSpec("proposed", IMAGE_SCRATCH, VOICE_SCRATCH, 200, 1e-3,
                PaperResult("Proposed, image + voice (no pretrained weights)",
                            0.76, 0.74, 0.74, 0.74),
                "the two-branch network, image + voice"),
    VariantSpec("vgg16_pretrained", IMAGE_VGG16, VOICE_SCRATCH, 200, 1e-5,
                PaperResult("Image branch VGG16, ImageNet weights (frozen)",
                            0.66, 0.60, 0.59, 0.59),
                "image branch = frozen VGG16 with ImageNet weights (--weights)"),
    VariantSpec("resnet50_pretrained", IMAGE_RESNET50, VOICE_SCRATCH, 200, 1e-5,
                PaperResult("Image branch ResNet50, ImageNet weights (frozen)",
                            0.59, 0.54, 0.54, 0.54),
                "image branch = frozen ResNet50 with ImageNet weights (--weights)"),
    VariantSpec("image_only", IMAGE_SCRATCH, None, 80, 1e-5,
                PaperResult("Image only (no pretrained weights)", 0.20, 0.20, 0.34, 0.24),
                "the image branch alone"),
    VariantSpec("image_only_vgg16", IMAGE_VGG16, None, 200, 1e-5,
                PaperResult("Image only, VGG16 pretrained", 0.28, 0.24, 0.24, 0.23),
                "frozen VGG16 alone (--weights)"),
    VariantSpec("image_only_resnet50", IMAGE_RESNET50, None, 200, 1e-5,
                PaperResult("Image only, ResNet50 pretrained", 0.31, 0.26, 0.26, 0.26),
                "frozen ResNet50 alone (--weights)"),
    VariantSpec("voice_only", None, VOICE_SCRATCH, 200, 1e-6,
                PaperResult("Voice only (no pretrained weights)", 0.42, 0.40, 0.40, 0.38),
                "the voice branch alone"),
    VariantSpec("voice_pretrained", None, VOICE_KEYWORD, 1000, 1e-3,
                PaperResult("Voice only, pretrained on spoken commands", 0.66, 0.68, 0.65, 0.65),
                "frozen keyword network from 'pretrain-voice' alone (--weights)"),
    VariantSpec("random_pairs", IMAGE_SCRATCH, VOICE_SCRATCH, 200, 1e-3,
                PaperResult("Random image/voice pairs of the same class", 0.70, 0.67, 0.67, 0.67),
                "proposed, each voice paired with a random image of its class per epoch",
                random_pairs=True),
    VariantSpec("reduced_input", IMAGE_SCRATCH, VOICE_SCRATCH, 200, 1e-3,
                PaperResult(f"Reduced input: {REDUCED_FRAMES} random frames of 25",
                            0.66, 0.63, 0.63, 0.62),
                f"proposed fed {REDUCED_FRAMES} random frames of each window",
                frames_used=REDUCED_FRAMES),
)

#: Every variant by name, in the order of the paper's Table III.
VARIANT_SPECS: dict[str, VariantSpec] = {s.name: s for s in _SPECS}
VARIANTS: tuple[str, ...] = tuple(VARIANT_SPECS)
DEFAULT_VARIANT = "proposed"


def variant_spec(name: str) -> VariantSpec:
    """The row of ``name``; ConfigError naming the known variants otherwise."""
    spec = VARIANT_SPECS.get(name)
    if spec is None:
        raise ConfigError(f"unknown variant {name!r}", hint="choose one of " + ", ".join(VARIANTS))
    return spec


def variant_help() -> str:
    """``--variant`` help: every variant with its one-line description."""
    return "; ".join(f"{s.name}: {s.help}" for s in _SPECS)


# --------------------------------------------------------------------------- image sizes
#: Side limits of a ``--image-size`` (pixels).
IMAGE_SIDE_RANGE = (8, 4096)
#: Smallest side the scratch image branch accepts (4 valid max-pools of 3 / stride 2).
MIN_IMAGE_SIDE = 31


def parse_image_size(text: str) -> tuple[int, int]:
    """``"HxW"`` -> (H, W) with :data:`IMAGE_SIDE_RANGE` pixels per side.

    Raises:
        ConfigError: anything else.
    """
    lo, hi = IMAGE_SIDE_RANGE
    try:
        h, w = (int(v) for v in str(text).lower().replace(" ", "").split("x"))
    except ValueError:
        raise ConfigError(f"image size must be HxW with {lo}..{hi} pixels each "
                          f"(e.g. 350x690), not {text!r}") from None
    if not (lo <= h <= hi and lo <= w <= hi):
        raise ConfigError(f"image size must be HxW with {lo}..{hi} pixels each "
                          f"(e.g. 350x690), not {text!r}")
    return h, w


def check_image_size(image_size: Sequence[int]) -> tuple[int, int]:
    """(H, W) as ints; ConfigError when the image branch cannot take frames of that size."""
    h, w = (int(v) for v in image_size)
    if min(h, w) < MIN_IMAGE_SIDE:
        raise ConfigError(f"image size {h}x{w} is too small for the image branch",
                          hint=f"use at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} "
                               "(e.g. --image-size 64x128)")
    return h, w


__all__ = ["VariantSpec", "PaperResult", "VARIANT_SPECS", "VARIANTS", "DEFAULT_VARIANT",
           "variant_spec", "variant_help", "parse_image_size", "check_image_size",
           "MIN_IMAGE_SIDE", "IMAGE_SIDE_RANGE", "IMAGE_SCRATCH", "IMAGE_VGG16",
           "IMAGE_RESNET50", "VOICE_SCRATCH", "VOICE_KEYWORD"]
