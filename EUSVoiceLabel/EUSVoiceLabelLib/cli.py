"""The ``eusvoicelabel`` command line.

Each sub-command has a ``_add_<name>`` function that declares its arguments and a
``_run_<name>`` function that calls the library; the library does the work, this file only
parses, reports and turns project errors into one-line messages with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from . import __version__
from .errors import EUSVoiceLabelError

log = logging.getLogger("eusvoicelabel")

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


# --------------------------------------------------------------------------- shared options
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="compute device (default: auto = CUDA, then MPS, then CPU)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="more log output")


def _image_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        if h < 8 or w < 8 or h > 4096 or w > 4096:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"image size must be HxW with 8..4096 pixels each (e.g. 350x690), not {text!r}")
    return h, w


def _training_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variant", default="proposed",
                   help="model variant: proposed, image_only, voice_only, vgg16_pretrained, "
                        "resnet50_pretrained, voice_pretrained, random_pairs, reduced_input")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs (default: the paper's for the variant)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: 8)")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: the paper's for the variant)")
    p.add_argument("--image-size", type=_image_size, default=(350, 690), metavar="HxW",
                   help="network input size after cropping (default: 350x690)")
    p.add_argument("--frames", type=int, default=25, help="frames per window (default: 25)")
    p.add_argument("--labels", type=Path, default=None,
                   help="label vocabulary JSON (default: COHORT/labels.json or the paper's five)")
    p.add_argument("--weights", type=Path, default=None,
                   help="local ImageNet weights for vgg16_pretrained / resnet50_pretrained, or a "
                        "voice keyword checkpoint for voice_pretrained")
    p.add_argument("--cache", type=Path, default=None,
                   help="folder for the preprocessed-window cache (default: ~/.cache/eusvoicelabel "
                        "or $EUSVOICELABEL_CACHE)")


# --------------------------------------------------------------------------- info
def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print what is loaded from a procedure folder",
                       description="Load a procedure folder (video or frames, audio, mentions, "
                                   "procedure.json) and print what was found.")
    p.add_argument("procedure", type=Path, help="procedure folder")
    p.add_argument("--labels", type=Path, default=None, help="label vocabulary JSON")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    _common(p)


def _run_info(args: argparse.Namespace) -> int:
    import json

    from .procedure import load_procedure
    from .vocabulary import load_labelset

    labelset = load_labelset(args.labels, args.procedure)
    proc = load_procedure(args.procedure, labelset=labelset)
    proc.validate()
    summary = proc.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            if isinstance(value, dict):
                value = ", ".join(f"{k}: {v}" for k, v in value.items()) or "none"
            print(f"{key:>20}: {value}")
    return 0


# --------------------------------------------------------------------------- later issues
def _not_yet(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        raise EUSVoiceLabelError(f"'{name}' is not available in this version")
    return run


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="make a synthetic EUS + speech cohort",
                       description="Write a synthetic cohort (video, speech, mentions) in the "
                                   "cohort layout.")
    p.add_argument("out", type=Path, help="output cohort folder")
    p.add_argument("--patients", type=int, default=12, help="number of patients (default: 12)")
    _common(p)


def _add_detect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="find spoken landmark mentions automatically",
                       description="Keyword spotting of landmark names in a procedure's audio.")
    p.add_argument("procedure", type=Path, help="procedure (or cohort with --evaluate)")
    p.add_argument("--out", type=Path, help="mentions CSV to write")
    _common(p)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one model on a whole cohort",
                       description="Train the two-branch network on every patient of a cohort.")
    p.add_argument("cohort", type=Path, help="cohort folder")
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    _training_options(p)
    _common(p)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="leave-one-patient-out cross-validation",
                       description="LOPO cross-validation; writes metrics.json, predictions.csv "
                                   "and confusion_matrix.png.")
    p.add_argument("cohort", type=Path, help="cohort folder")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    _training_options(p)
    _common(p)


def _add_label(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("label", help="label a procedure with a trained model",
                       description="Label every mention window of a procedure; writes CSVs and "
                                   "Slicer files.")
    p.add_argument("procedure", type=Path, help="procedure folder")
    p.add_argument("--model", type=Path, required=True, help="checkpoint from 'train'")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--mentions", default=None,
                   help="'auto' (detect), a mentions CSV or an SRT/WebVTT transcript "
                        "(default: the procedure's mentions.csv, else auto)")
    _common(p)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a labelled dataset (PNG + CSV)",
                       description="Write images/<label>/*.png and labels.csv from a cohort or a "
                                   "'label' output folder.")
    p.add_argument("source", type=Path, help="cohort folder or label output folder")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    _common(p)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="synth -> evaluate/train -> label, small and fast on CPU",
                       description="Run the whole pipeline on a small synthetic cohort.")
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder")
    _common(p)


_COMMANDS: dict[str, tuple[Callable, Callable]] = {
    "info": (_add_info, _run_info),
    "synth": (_add_synth, _not_yet("synth")),
    "detect": (_add_detect, _not_yet("detect")),
    "train": (_add_train, _not_yet("train")),
    "evaluate": (_add_evaluate, _not_yet("evaluate")),
    "label": (_add_label, _not_yet("label")),
    "export": (_add_export, _not_yet("export")),
    "demo": (_add_demo, _not_yet("demo")),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eusvoicelabel",
        description="Voice-assisted labelling of endoscopic ultrasound video "
                    "(Bonmati et al.): synthetic cohorts, mention detection, training, "
                    "LOPO evaluation, labelling with heat maps and Slicer-native outputs.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (add, run) in _COMMANDS.items():
        add(sub)
        sub.choices[name].set_defaults(_run=run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``eusvoicelabel`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
                        format="%(levelname)s: %(message)s", stream=sys.stderr)
    logging.captureWarnings(True)
    try:
        return int(args._run(args) or 0)
    except EUSVoiceLabelError as exc:
        print(f"eusvoicelabel {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"eusvoicelabel {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
