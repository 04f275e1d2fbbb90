"""The ``eusvoicelabel`` command line.

Each sub-command has a ``_add_<name>`` function that declares its arguments and a
``_run_<name>`` function that calls the library; the library does the work, this file only
parses, reports and turns project errors into one-line messages with a non-zero exit code.

A ``_run_<name>`` imports the library modules that need torch, PyAV or pocketsphinx when it
runs, so that starting the program (``eusvoicelabel --help``) imports none of them.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from . import __version__
from .core.errors import ConfigError, EUSVoiceLabelError, OutputError
from .core.fileio import atomic_write_text
from .core.outputlock import output_session
from .core.paper import BATCH_SIZE, IMAGE_SIZE, VIDEO_SIZE, WINDOW_FRAMES
from .core.presets import PRESETS, preset_settings
from .core.progress import JsonProgress, Progress, TqdmProgress
from .core.variants import DEFAULT_VARIANT, VARIANTS, parse_image_size, variant_help, variant_spec
from .data.mentions import write_mentions_csv
from .data.outputs import claim_output, input_paths
from .data.procedure import load_procedure
from .data.vocabulary import labels_file, load_labelset
from .nn.evidence import REGION_THRESHOLD

log = logging.getLogger("eusvoicelabel")

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


# --------------------------------------------------------------------------- shared options
def _seed(text: str) -> int:
    try:
        value = int(text)
        if not 0 <= value < 2 ** 32:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"the seed must be a whole number from 0 to {2 ** 32 - 1}, not {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
        if value < 1:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text!r}")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="compute device (default: auto = CUDA, then MPS, then CPU)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--progress", choices=["bars", "json", "none"], default="bars",
                   help="how long work shows its progress on stderr: bars (default), json "
                        "(one JSON object per line, for programs that run this one) or none "
                        "(same as --quiet)")
    p.add_argument("-v", "--verbose", action="store_true", help="more log output")


def _progress(args: argparse.Namespace) -> Progress:
    """The command's progress reporter (one per run, so nested work nests its bars)."""
    if getattr(args, "_reporter", None) is None:
        mode = "none" if args.quiet else args.progress
        args._reporter = {"bars": TqdmProgress, "json": JsonProgress, "none": Progress}[mode]()
    return args._reporter


def _image_size(text: str) -> tuple[int, int]:
    try:
        return parse_image_size(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_PAPER_SIZE = f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}"

#: The TrainConfig fields the training options set (None when not given: then the config's
#: default, the paper's per variant, applies).
_TRAIN_FIELDS = ("epochs", "lr", "batch_size", "image_size", "frames", "width", "joint_scale",
                 "seed", "optimizer", "weight_decay", "schedule", "label_smoothing", "augment",
                 "voice_init", "voice_lr_scale", "late_voice", "image_dropout",
                 "joint_bound", "image_aux_weight", "voice_aux_weight")


def _variant_choice(text: str) -> str:
    """A variant, ``all``, or variants separated by commas (checked here, one line on error)."""
    names = [t.strip() for t in text.split(",")]
    if text == "all" or all(n in VARIANTS for n in names):
        return ",".join(names)
    bad = next(n for n in names if n not in VARIANTS)
    raise argparse.ArgumentTypeError(f"unknown variant {bad!r} (choose from "
                                     f"{', '.join(VARIANTS)}, all)")


def _training_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variant", default=DEFAULT_VARIANT, type=_variant_choice,
                   metavar="VARIANT",
                   help=f"model variant (default: {DEFAULT_VARIANT}; evaluate also: all, every "
                        f"row of Table III, or rows separated by commas): {variant_help()}")
    p.add_argument("--epochs", type=_positive, default=None,
                   help="training epochs (default: the paper's for the variant)")
    p.add_argument("--batch-size", type=_positive, default=None,
                   help=f"batch size (default: {BATCH_SIZE})")
    p.add_argument("--lr", type=_finite, default=None,
                   help="learning rate (default: the paper's for the variant)")
    p.add_argument("--image-size", type=_image_size, default=None, metavar="HxW",
                   help=f"network input size after cropping (default: {_PAPER_SIZE})")
    p.add_argument("--frames", type=_positive, default=None,
                   help=f"frames per window (default: {WINDOW_FRAMES})")
    p.add_argument("--labels", type=Path, default=None,
                   help="label vocabulary JSON (default: COHORT/labels.json or the paper's five)")
    p.add_argument("--weights", type=Path, default=None,
                   help="local ImageNet weights for vgg16_pretrained / resnet50_pretrained, or a "
                        "voice keyword checkpoint for voice_pretrained")
    p.add_argument("--cache", type=Path, default=None,
                   help="folder for the preprocessed-window cache (default: ~/.cache/eusvoicelabel "
                        "or $EUSVOICELABEL_CACHE)")
    p.add_argument("--width", type=_finite, default=None,
                   help="channel multiplier of the scratch branches (default: 1.0 = the paper, "
                        "R = 1024; e.g. 0.25 for a light CPU model)")
    p.add_argument("--joint-scale", choices=["sum", "mean"], default=None,
                   help="joint map C = QP^T as in the paper (sum, default) or divided by R "
                        "(mean)")
    p.add_argument("--vgg16-weights", type=Path, default=None,
                   help="local torchvision VGG16 ImageNet state_dict (for --variant all)")
    p.add_argument("--resnet50-weights", type=Path, default=None,
                   help="local torchvision ResNet50 ImageNet state_dict (for --variant all)")
    p.add_argument("--voice-weights", type=Path, default=None,
                   help="keyword network from 'pretrain-voice' (for --variant all; default: "
                        "pretrained on synthetic speech into OUT/voice_keyword.pt)")
    _recipe_options(p)
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="EPOCHS",
                   help="save the resume state every N epochs (default: every 5 minutes)")


def _recipe_options(p: argparse.ArgumentParser) -> None:
    """--preset and the training recipe beyond the paper (defaults: the paper's, or the
    preset's)."""
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="named configuration: paper (the paper's settings) or cpu (64x128, "
                        "width 0.25, 20 epochs, AdamW + cosine, augmentation, vocabulary-"
                        "pretrained voice, late voice path, joint logits bounded to (-1, 1); a "
                        "paper-sized LOPO in about 30 min "
                        "on 2 cores); options given explicitly override it")
    p.add_argument("--optimizer", choices=["adam", "adamw"], default=None,
                   help="optimiser (default: adam, the paper's)")
    p.add_argument("--weight-decay", type=float, default=None, help="weight decay (default: 0)")
    p.add_argument("--schedule", choices=["constant", "cosine"], default=None,
                   help="learning-rate schedule (default: constant; cosine: one-epoch warm-up, "
                        "then cosine decay)")
    p.add_argument("--label-smoothing", type=float, default=None,
                   help="label smoothing of the loss (default: 0)")
    p.add_argument("--augment", choices=["none", "voice", "image", "all"], default=None,
                   help="training-time augmentation of the speech and/or frames (default: none)")
    p.add_argument("--voice-init", choices=["none", "vocabulary"], default=None,
                   help="start the voice branch from a network pretrained on the label "
                        "vocabulary spoken by offline voices (vocabulary; minutes once, then "
                        "cached) or from random weights (none, default)")
    p.add_argument("--voice-lr-scale", type=float, default=None,
                   help="the voice branch's learning rate as a multiple of --lr (default: 1)")
    p.add_argument("--late-voice", action=argparse.BooleanOptionalAction, default=None,
                   help="joint variants: add the voice features' own class scores to the "
                        "joint logits (default: off, the paper's head)")
    p.add_argument("--image-dropout", type=float, default=None, metavar="P",
                   help="with --late-voice: modality dropout, the probability that a training "
                        "window loses the image path's logits (default: 0)")
    p.add_argument("--joint-bound", type=float, default=None, metavar="B",
                   help="with --late-voice: bound the joint (image) logits to (-B, B), so "
                        "they settle what the voice leaves open but cannot outvote it "
                        "(default: 0, unbounded)")
    p.add_argument("--image-aux-weight", type=float, default=None, metavar="W",
                   help="joint variants: give the image branch its own class head, trained "
                        "with this weight on its loss beside the joint loss; heat maps "
                        "explain it (default: 0, none)")
    p.add_argument("--voice-aux-weight", type=float, default=None, metavar="W",
                   help="with --late-voice: train the late voice path's own class scores "
                        "with this weight on their loss beside the joint loss (default: 0)")


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


# --------------------------------------------------------------------------- train / evaluate
def _weights_for(args: argparse.Namespace, variant: str) -> Optional[Path]:
    """The weights file a variant needs: ``--weights``, else ``--<kind>-weights``."""
    kind = variant_spec(variant).weights
    if kind is None:
        return None
    return args.weights or getattr(args, f"{kind}_weights", None)


def _train_settings(args: argparse.Namespace) -> dict:
    """The TrainConfig fields of ``--preset`` with the options the command line gave over
    them (None: given by neither)."""
    settings = preset_settings(getattr(args, "preset", None))
    for name in _TRAIN_FIELDS:
        if getattr(args, name, None) is not None:
            settings[name] = getattr(args, name)
    return settings


def _train_config(args: argparse.Namespace, variant: Optional[str] = None):
    """The TrainConfig of the command line (``variant`` overrides ``--variant``)."""
    from .train.config import TrainConfig  # deferred: torch

    variant = variant or args.variant
    return TrainConfig.from_settings(_train_settings(args), variant=variant,
                                     weights=_weights_for(args, variant))


def _run_inputs(args: argparse.Namespace) -> list[Path]:
    """Every input of a train / evaluate run: the cohort (its patients and their files), its
    labels.json, --labels and the weights files."""
    return input_paths(args.cohort, labels_file(args.cohort), args.labels, args.weights,
                       args.vgg16_weights, args.resnet50_weights, args.voice_weights)


def _window_set(args: argparse.Namespace, labelset, cfg):
    """The cohort's sample windows, made as ``cfg`` trains on them."""
    from .data.dataset import build_window_set  # deferred: torch

    return build_window_set(args.cohort, labelset, settings=cfg.window_settings(),
                            cache_dir=args.cache, progress=_progress(args))


def _run_train(args: argparse.Namespace) -> int:
    from .train.checkpoints import CHECKPOINT  # deferred: torch
    from .train.distributed import init_from_env, shutdown
    from .train.evaluation import read_calibration
    from .train.loop import TRAIN_STATE, train_model

    if args.variant == "all" or "," in args.variant:
        raise ConfigError("'train' trains one variant", hint="use 'evaluate --variant all'")
    cfg = _train_config(args)
    state = args.out.with_name(args.out.name + ".resume.pt")
    # Before the long work: the checkpoint and its resume file may overwrite no input and no
    # file that is not ours (data.outputs).
    inputs = _run_inputs(args)
    claim_output(args.out, CHECKPOINT, inputs)
    claim_output(state, TRAIN_STATE, inputs)
    # Read before the long work, so that a wrong calibration file fails in a second.
    calibration = None if args.temperature_from is None else \
        read_calibration(args.temperature_from, cfg.variant)
    labelset = load_labelset(args.labels, args.cohort)
    # torchrun --nproc_per_node=K -m EUSVoiceLabelLib train ...: data-parallel training.  The
    # first process builds the window cache, the others then read it.
    ctx = init_from_env(args.device)
    if ctx is not None and not ctx.is_main:
        ctx.barrier()
    ws = _window_set(args, labelset, cfg)
    if ctx is not None and ctx.is_main:
        ctx.barrier()
    # keep_state: the finished weights stay in the resume file until the checkpoint is written,
    # so a failing disk costs a re-run of the same command, not the training.
    result = train_model(ws, cfg, len(labelset), device=args.device, progress=_progress(args),
                         state_path=state, checkpoint_every=args.checkpoint_every,
                         keep_state=True)
    world = ctx.world if ctx is not None else 1
    if ctx is not None:
        ctx.barrier()
    if ctx is None or ctx.is_main:  # the replicas are identical: the first process saves
        verifier = None if args.no_verifier else _train_verifier(args, ws, cfg)
        _save_trained(args, ws, cfg, result, state, world, calibration, verifier)
    if ctx is not None:
        shutdown()
    return 0


def _train_verifier(args: argparse.Namespace, ws, cfg):
    """The mention verifier of ``train`` on the training patients' recordings, as checkpoint
    state (None when the cohort gives none)."""
    from .speech.verify import train_verifier  # deferred: torch, pocketsphinx

    verifier = train_verifier(args.cohort, ws.labelset, progress=_progress(args),
                              patients=ws.patient_ids, seed=cfg.seed)
    return None if verifier is None else verifier.to_state()


def _save_trained(args: argparse.Namespace, ws, cfg, result, state: Path, world: int,
                  calibration: Optional[dict] = None, verifier=None) -> None:
    """Write the checkpoint of ``train`` (then drop its resume file) and say what was
    trained."""
    from .train.checkpoints import preprocessing_settings, save_checkpoint  # deferred: torch

    extra = {"cohort": str(args.cohort), "patients": ws.patient_ids, "n_windows": len(ws),
             "label_counts": ws.label_counts(), "wall_time_s": round(result.wall_time_s, 1),
             "device": result.device, "data_parallel_processes": world}
    try:
        save_checkpoint(args.out, result, ws.labelset, preprocessing_settings(ws, cfg), extra,
                        _run_inputs(args), calibration=calibration, verifier=verifier)
    except OutputError as exc:
        kept = f"the trained weights are kept in {state}; " if state.is_file() else ""
        raise OutputError(exc.message, exc.path,
                          f"{kept}fix the disk and run the same command again") from None
    state.unlink(missing_ok=True)
    last = result.history[-1] if result.history else {}
    print(f"trained {cfg.variant} on {len(ws)} windows of {len(ws.patient_ids)} patients "
          f"({cfg.epochs} epochs, final loss {last.get('loss', float('nan')):.4f}, train "
          f"accuracy {last.get('train_accuracy', float('nan')):.2f}, "
          f"{result.wall_time_s:.0f} s on {result.device}"
          + (f" x {world} processes" if world > 1 else "") + f") -> {args.out}")


def _run_evaluate(args: argparse.Namespace) -> int:
    from .train.evaluation import EVALUATION, evaluate_all, evaluate_cohort  # deferred: torch

    claim_output(args.out, EVALUATION, _run_inputs(args))  # before the long work
    labelset = load_labelset(args.labels, args.cohort)
    if args.variant == "all" or "," in args.variant:
        # Every variant trains on the same windows (image size and frames are shared).
        ws = _window_set(args, labelset, _train_config(args, DEFAULT_VARIANT))
        weights = {"vgg16": args.vgg16_weights, "resnet50": args.resnet50_weights,
                   "voice": args.voice_weights}
        rows = None if args.variant == "all" else args.variant.split(",")
        res = evaluate_all(ws, _train_settings(args), args.out, weights=weights,
                           variants=rows, device=args.device,
                           progress=_progress(args), resume=not args.restart,
                           workers=args.workers)
        print(res["table"])
        print(f"wrote {args.out}/<variant>/metrics.json ... and {args.out}/table_iii.md")
        return 0
    cfg = _train_config(args)
    ws = _window_set(args, labelset, cfg)
    m = evaluate_cohort(ws, cfg, args.out, device=args.device, progress=_progress(args),
                        resume=not args.restart, workers=args.workers)
    b = m["bootstrap"]
    print(f"{cfg.variant}: LOPO over {m['n_patients']} patients, {m['n_samples']} windows: "
          f"accuracy {m['accuracy']:.3f}, precision {m['precision']:.3f}, recall "
          f"{m['recall']:.3f}, F1 {m['f1']:.3f}; bootstrap {b['mean']:.3f} +- {b['std']:.3f} "
          f"({b['n_subsets']} x {b['subset_size']} patients) -> {args.out}")
    return 0


def _add_pretrain_voice(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain-voice",
                       help="pretrain the keyword network for the voice_pretrained variant",
                       description="Train the paper's small keyword-recognition network on "
                                   "one-second spoken command words (the 30 Speech Commands "
                                   "words) made by the synthetic TTS speakers, with noise and "
                                   "speed augmentation.  The landmark names are not among them.")
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    p.add_argument("--speakers", default=None,
                   help="comma-separated synthetic speaker names (default: all)")
    p.add_argument("--repeats", type=_positive, default=6,
                   help="augmented renderings of each word per speaker (default: 6)")
    p.add_argument("--epochs", type=_positive, default=15, help="training epochs (default: 15)")
    p.add_argument("--lr", type=_finite, default=1e-3, help="learning rate (default: 1e-3)")
    p.add_argument("--batch-size", type=_positive, default=64, help="batch size (default: 64)")
    _common(p)


def _run_pretrain_voice(args: argparse.Namespace) -> int:
    from .train.voice_pretrain import pretrain_keyword_model  # deferred: torch

    speakers = [s.strip() for s in args.speakers.split(",") if s.strip()] \
        if args.speakers else None
    info = pretrain_keyword_model(args.out, speakers=speakers, repeats=args.repeats,
                                  epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                  seed=args.seed, device=args.device, progress=_progress(args))
    held = info["heldout_speaker_accuracy"]
    print(f"keyword network: {info['n_clips']} clips, train accuracy "
          f"{info['train_accuracy']:.3f}, held-out speaker ({info['heldout_speaker']}) accuracy "
          f"{'n/a' if held is None else f'{held:.3f}'}, {info['wall_time_s']} s -> {args.out}")
    return 0


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="make a synthetic EUS + speech cohort",
                       description="Write a synthetic cohort (H.264 video with EUS-like "
                                   "scenes, spoken commentary from several TTS speakers with "
                                   "room noise, mentions.csv, procedure.json and a truth.json "
                                   "per patient) in the cohort layout.")
    p.add_argument("out", type=Path, help="output cohort folder (must be empty unless --force)")
    p.add_argument("--patients", type=_positive, default=12,
                   help="number of patients (default: 12)")
    p.add_argument("--counts", default="paper",
                   help="'paper' (Table I: 143 mentions over 12 patients), 'small' (about a "
                        "third) or N mentions per patient (default: paper)")
    p.add_argument("--snr-db", type=_finite, default=15.0,
                   help="speech to room-noise ratio in dB, varied +-3 dB per patient "
                        "(default: 15)")
    p.add_argument("--frame-size", type=_frame_size, default=VIDEO_SIZE, metavar="WxH",
                   help="video frame size; the crop scales alike (default: "
                        f"{VIDEO_SIZE[0]}x{VIDEO_SIZE[1]})")
    p.add_argument("--workers", type=_positive, default=None,
                   help="parallel processes (default: number of CPUs)")
    p.add_argument("--force", action="store_true", help="write into a non-empty folder")
    _common(p)


def _frame_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        if w < 64 or h < 48 or w > 4096 or h > 4096 or w % 2 or h % 2:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"frame size must be WxH, even, at least 64x48 (e.g. 720x480), not {text!r}")
    return w, h


def _run_synth(args: argparse.Namespace) -> int:
    from .synth import synth_cohort  # deferred: torch and PyAV

    t0 = time.perf_counter()
    out = synth_cohort(args.out, patients=args.patients, seed=args.seed, counts=args.counts,
                       snr_db=args.snr_db, progress=_progress(args), frame_size=args.frame_size,
                       workers=args.workers, force=args.force)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    if not args.quiet:
        print(f"wrote {out} ({size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s")
    return 0


def _add_detect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "detect", help="find spoken landmark mentions automatically",
        description="Keyword spotting of the vocabulary's landmark names in a procedure's audio "
                    "(pocketsphinx, offline).  With --evaluate or --calibrate the folder is a "
                    "cohort whose mentions.csv files are the reference.")
    p.add_argument("procedure", type=Path, help="procedure folder (a cohort with --evaluate or "
                                                "--calibrate)")
    p.add_argument("--out", type=Path, default=None,
                   help="file to write: mentions CSV (detect), report JSON (--evaluate) or "
                        "calibrated vocabulary JSON (--calibrate)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--evaluate", action="store_true",
                      help="compare detections with each patient's mentions.csv")
    mode.add_argument("--calibrate", action="store_true",
                      help="choose per-phrase thresholds maximising F1 on the cohort")
    p.add_argument("--vocab", type=Path, default=None,
                   help="calibrated vocabulary from --calibrate (its thresholds are used)")
    p.add_argument("--labels", type=Path, default=None,
                   help="label vocabulary JSON (default: the folder's labels.json or the "
                        "paper's five)")
    p.add_argument("--workers", type=_positive, default=None,
                   help="decoding processes (default: up to 2 on long recordings)")
    p.add_argument("--model", type=Path, default=None,
                   help="check every detected mention with this model's mention verifier, "
                        "as 'label --mentions auto' does (docs/detection.md step 6); a "
                        "--vocab must name the model's labels")
    _common(p)


def _detection_model(args: argparse.Namespace, labelset):
    """``detect --model``: (the model's mention verifier, the vocabulary to detect with: the
    model's, or ``--vocab`` when it names the model's labels)."""
    from .labelling.run import LabelModel  # deferred: torch

    vocab = labelset if args.vocab is not None else None
    # the checkpoint's own check refuses a vocabulary of other labels
    model = LabelModel.load(args.model, device="cpu", labelset=vocab)
    if model.verifier is None:
        raise ConfigError("the model holds no mention verifier", args.model,
                          "train it again without --no-verifier, or detect without --model")
    return model.verifier, vocab if vocab is not None else model.labelset


def _run_detect(args: argparse.Namespace) -> int:
    from .speech.detect import DETECTED_MENTIONS  # deferred: pocketsphinx
    from .speech.calibrate import CALIBRATED_VOCABULARY, calibrate
    from .speech.evaluate import DETECTION_REPORT, evaluate_detection

    labelset = load_labelset(args.vocab or args.labels, args.procedure)
    progress = _progress(args)
    inputs = input_paths(args.procedure, labels_file(args.procedure), args.vocab, args.labels,
                         args.model)
    if args.model is not None and (args.calibrate or args.evaluate):
        raise ConfigError("--model checks the mentions of one procedure",
                          hint="drop --model with --evaluate or --calibrate")
    if args.calibrate:
        if args.out is None:
            raise ConfigError("--calibrate needs --out VOCAB.json")
        claim_output(args.out, CALIBRATED_VOCABULARY, inputs)
        calibrate(args.procedure, labelset, out=args.out, progress=progress,
                  workers=args.workers)
        print(f"calibrated vocabulary written to {args.out}")
        return 0
    if args.evaluate:
        if args.out is not None:
            claim_output(args.out, DETECTION_REPORT, inputs)
        report = evaluate_detection(args.procedure, labelset, progress=progress,
                                    workers=args.workers)
        text = json.dumps(report, indent=2)
        if args.out is not None:
            atomic_write_text(args.out, text + "\n")
        o, e, sp = report["overall"], report["onset_error_s"], report["speed"]
        print(f"precision {o['precision']:.3f}  recall {o['recall']:.3f}  F1 {o['f1']:.3f}  "
              f"({o['tp']} hits, {o['fp']} false, {o['fn']} missed of "
              f"{report['n_reference']})")
        if e["n"]:
            print(f"onset error median {e['median']:.3f} s, 90th percentile {e['p90']:.3f} s")
        print(f"speed {sp['x_real_time']}x real time "
              f"(noise suppressor: {report['noise_suppressor']})")
        for lid, v in report["per_label"].items():
            print(f"  {lid:>26}: P {v['precision']:.3f}  R {v['recall']:.3f}  F1 {v['f1']:.3f}")
        return 0
    if args.out is None:
        raise ConfigError("detect needs --out MENTIONS.csv")
    claim_output(args.out, DETECTED_MENTIONS, inputs)
    from .speech.verify import find_mentions  # deferred: torch

    verifier = None
    if args.model is not None:
        verifier, labelset = _detection_model(args, labelset)
    proc = load_procedure(args.procedure, labelset=labelset, mentions=[])
    mentions = find_mentions(proc, labelset, verifier, progress=progress, workers=args.workers)
    write_mentions_csv(args.out, mentions)
    print(f"{len(mentions)} mentions written to {args.out}")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one model on a whole cohort",
                       description="Train the two-branch network on every patient of a cohort.")
    p.add_argument("cohort", type=Path, help="cohort folder")
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    p.add_argument("--temperature-from", type=Path, default=None, metavar="EVAL_DIR",
                   help="store the calibration temperature that 'evaluate' fitted on its "
                        "held-out folds (EVAL_DIR/calibration.json, same variant) in the "
                        "checkpoint; label fusion then weighs the network as often right as "
                        "it was on unseen patients (default: none, temperature 1)")
    p.add_argument("--no-verifier", action="store_true",
                   help="do not train the mention verifier that checks each detected mention "
                        "when the model labels with '--mentions auto' (docs/detection.md)")
    _training_options(p)
    _common(p)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="leave-one-patient-out cross-validation",
                       description="LOPO cross-validation; writes metrics.json, predictions.csv "
                                   "and confusion_matrix.png.")
    p.add_argument("cohort", type=Path, help="cohort folder")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--restart", action="store_true",
                   help="ignore finished folds and resume files in OUT from an earlier run")
    p.add_argument("--workers", type=_positive, default=1, metavar="N",
                   help="run the folds in N parallel processes: one per GPU when there are "
                        "several, else N CPU workers with cores/N torch threads each "
                        "(default: 1 = in turn)")
    _training_options(p)
    _common(p)


def _add_label(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("label", help="label a procedure with a trained model",
                       description="Label every mention window of a procedure with a trained "
                                   "model: labels.csv, frame_labels.csv, Grad-CAM heat maps and "
                                   "files 3D Slicer opens natively (frames.seq.nrrd, "
                                   "cam.seq.nrrd, landmarks.seq.nrrd + landmarks.csv, "
                                   "landmarks.mrk.json, scene.mrml).")
    p.add_argument("procedure", type=Path, help="procedure folder")
    p.add_argument("--model", type=Path, required=True, help="checkpoint from 'train'")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--mentions", default=None,
                   help="'auto' (detect from the audio), a mentions CSV or an SRT/WebVTT "
                        "transcript (default: the procedure's mentions.csv, else auto)")
    p.add_argument("--no-cam", action="store_true", help="skip the Grad-CAM heat maps")
    p.add_argument("--cam-threshold", type=_finite, default=REGION_THRESHOLD,
                   help="heat-map level (0-1 of the window's range) that bounds the evidence "
                        f"region around the peak (default: {REGION_THRESHOLD})")
    w = p.add_argument_group("whole-procedure labelling (docs/whole.md)")
    w.add_argument("--whole", action="store_true",
                   help="also label every frame of the procedure (or every --stride-th): "
                        "frame_labels.csv for the whole procedure with a source column, "
                        "whole_labels.seq.mrb, whole_frames.seq.nrrd, whole.mrml, timeline.png")
    w.add_argument("--frame-model", type=Path, default=None,
                   help="frame classifier from 'train-frames' (default: MODEL with "
                        ".frames.pt in place of its suffix)")
    w.add_argument("--stride", type=_positive, default=1,
                   help="label every N-th frame of the 25 fps grid (default: 1 = every frame)")
    w.add_argument("--reject-below", type=_finite, default=None,
                   help="frames whose label's posterior is below this are 'none' (default: "
                        "the frame model's calibrated threshold)")
    w.add_argument("--dwell-s", type=_finite, default=None,
                   help="mean time a landmark stays in view, the temporal model's prior "
                        "(default: 5)")
    w.add_argument("--no-match", action="store_true",
                   help="do not match frames to the procedure's spoken windows by appearance "
                        "(the frame classifier and the temporal model alone)")
    w.add_argument("--preview-s", type=_finite, default=1.0,
                   help="interval of the half-resolution preview frames in "
                        "whole_frames.seq.nrrd (default: 1 s; 0: none)")
    _common(p)


def _whole_settings(args: argparse.Namespace):
    from .labelling.whole import WholeSettings

    options = {"stride": args.stride, "reject_below": args.reject_below,
               "match": not args.no_match}
    if args.dwell_s is not None:
        options["dwell_s"] = args.dwell_s
    return WholeSettings(**options)


def _run_label(args: argparse.Namespace) -> int:
    from .labelling.folder import label_to_folder  # deferred: torch
    from .nn.devices import seed_everything

    seed_everything(args.seed)
    whole = _whole_settings(args) if args.whole else None
    if not args.whole and (args.frame_model is not None or args.stride != 1
                           or args.reject_below is not None):
        raise ConfigError("--frame-model, --stride and --reject-below need --whole")
    result, files = label_to_folder(args.procedure, args.model, args.out, args.mentions,
                                    device=args.device, with_cam=not args.no_cam,
                                    cam_threshold=args.cam_threshold, progress=_progress(args),
                                    whole=whole, frame_model=args.frame_model,
                                    preview_s=args.preview_s)
    agree = [w for w in result.windows if w.spoken_label]
    summary = f"labelled {len(result.windows)} windows"
    if agree:
        n_ok = sum(w.spoken_label == w.predicted for w in agree)
        n_review = sum(w.needs_review for w in result.windows)
        summary += (f" (the network agrees with the spoken label in {n_ok}/{len(agree)}; "
                    f"{n_review} flagged for review)")
    if result.whole is not None:
        labels = result.whole.labels()
        n_none = sum(lab == "none" for lab in labels)
        summary += (f"; whole procedure: {len(labels)} frames labelled "
                    f"({len(labels) - n_none} with a landmark, {n_none} none)")
    print(f"{summary} -> {args.out} ({', '.join(sorted(files))})")
    return 0


def _add_train_frames(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-frames", help="train the frame classifier of 'label --whole'",
                       description="Train the per-frame landmark classifier of whole-procedure "
                                   "labelling on a cohort's voice-labelled windows and "
                                   "calibrate its rejection threshold on held-out patients "
                                   "(docs/whole.md).")
    p.add_argument("cohort", type=Path, help="cohort folder")
    p.add_argument("--out", type=Path, required=True,
                   help="frame-model file to write (put it beside MODEL as MODEL.frames.pt "
                        "for 'label --whole' to find it)")
    p.add_argument("--epochs", type=_positive, default=None, help="epochs (default: 12)")
    p.add_argument("--labels", type=Path, default=None, help="label vocabulary JSON")
    p.add_argument("--cache", type=Path, default=None, help="window cache folder")
    p.add_argument("--no-calibrate", action="store_true",
                   help="skip the held-out calibration (rejection threshold 0.5)")
    p.add_argument("--min-precision", type=_finite, default=0.5,
                   help="calibration: keep a label where held-out frames of its confidence "
                        "are right at least this often (default: 0.5)")
    _common(p)


def _run_train_frames(args: argparse.Namespace) -> int:
    from .labelling.framemodel import FrameTrainConfig  # deferred: torch
    from .labelling.frametrain import train_frames
    from .nn.devices import seed_everything

    seed_everything(args.seed)
    cfg = FrameTrainConfig(seed=args.seed)
    if args.epochs is not None:
        cfg.epochs = args.epochs
    model = train_frames(args.cohort, args.out, cfg, labels=args.labels, cache_dir=args.cache,
                         calibrate=not args.no_calibrate, min_precision=args.min_precision,
                         progress=_progress(args))
    cal = model.calibration
    print(f"frame model ({model.extra.get('n_windows')} windows) -> {args.out}; rejection "
          f"threshold {model.reject_below:.3f} ({cal.get('method')})")
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a labelled dataset (PNG + CSV)",
                       description="Write images/<label>/<patient>_<time>_<k>.png and "
                                   "labels.csv (ImageFolder layout) from a cohort (spoken "
                                   "labels) or a 'label' output folder (reviewed, else "
                                   "predicted labels).")
    p.add_argument("source", type=Path, help="cohort folder or label output folder")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--every", type=_positive, default=1,
                   help=f"keep every N-th frame of each window (default: 1 = all "
                        f"{WINDOW_FRAMES})")
    _common(p)


def _run_export(args: argparse.Namespace) -> int:
    from .data.export import export_dataset  # deferred: Pillow

    path = export_dataset(args.source, args.out, every=args.every, progress=_progress(args))
    with open(path, encoding="utf-8") as fh:
        n = sum(1 for _ in fh) - 1
    print(f"exported {n} images -> {args.out}")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="synth -> evaluate/train -> label, small and fast on CPU",
                       description="Run the whole pipeline on a small synthetic cohort: "
                                   "synth, LOPO evaluate, train, label a held-out procedure "
                                   "with automatic mention detection, export, and write "
                                   "report.md.  About 5 minutes on 2 CPU cores.")
    p.add_argument("--out", type=Path, default=Path("demo_out"),
                   help="output folder (default: demo_out)")
    p.add_argument("--patients", type=_positive, default=6, help="training patients (default: 6)")
    p.add_argument("--epochs", type=_positive, default=None,
                   help="training epochs (default: 30, or the preset's)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="train the demo's network with a named configuration (see 'train "
                        "--help'; cpu pretrains the voice branch first: minutes more)")
    p.add_argument("--force", action="store_true", help="replace an earlier demo in OUT")
    _common(p)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import DemoSettings, run_demo  # deferred: torch and matplotlib

    settings = DemoSettings(patients=args.patients, epochs=args.epochs, seed=args.seed,
                            preset=args.preset)
    device = "cpu" if args.device == "auto" else args.device
    report = run_demo(args.out, settings, device=device, progress=_progress(args),
                      force=args.force)
    print(f"demo finished: {report}")
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure FLOPs, peak, speed and memory",
                       description="Benchmark the network and the data path: FLOPs per "
                                   "branch, the machine's measured matmul peak, inference "
                                   "latency (with and without Grad-CAM) and training "
                                   "throughput of the baseline and the optimised path side by "
                                   "side, data-path and keyword-spotting speed, labelling time "
                                   "and peak memory.  Exit code 1 when an optimised path is "
                                   "slower than its baseline.")
    p.add_argument("--image-size", type=_image_size, default=IMAGE_SIZE, metavar="HxW",
                   help=f"network input size to measure (default: the paper's {_PAPER_SIZE})")
    p.add_argument("--width", type=_finite, default=1.0,
                   help="channel multiplier of the model measured (default: 1.0)")
    p.add_argument("--quick", action="store_true",
                   help="CI check (under 2 minutes on 2 cores): demo size, no data path or "
                        "labelling; fails when the optimised path is slower than the baseline")
    p.add_argument("--repeats", type=_positive, default=None,
                   help="timed repeats per case (default: 3, quick: 7)")
    p.add_argument("--threads", type=_positive, default=None,
                   help="torch threads (default: all cores of this process)")
    p.add_argument("--train-batch", type=_positive, default=None,
                   help="batch of the training-step cases (default: 8; 2 at the paper size "
                        "on CPU)")
    p.add_argument("--compile", action="store_true",
                   help="also measure torch.compile (compilation time is reported apart)")
    p.add_argument("--no-data", action="store_true",
                   help="skip the data-path, keyword-spotting and labelling cases")
    p.add_argument("--label-minutes", type=_finite, default=20.0,
                   help="length of the synthetic procedure labelled (default: 20; 0 = skip)")
    p.add_argument("--out", type=Path, default=None, help="JSON file to write")
    p.add_argument("--markdown", type=Path, default=None,
                   help="markdown file whose bench section is replaced by the tables "
                        "(e.g. docs/benchmarks.md)")
    p.add_argument("--section", default=None,
                   help="name of that section (default: quick / full and the device)")
    _common(p)


def _run_bench(args: argparse.Namespace) -> int:
    # deferred: torch
    from .bench import (BENCH_MARKDOWN, BENCH_RESULT, BenchSettings, markdown_report, run_bench,
                        update_markdown, write_result)

    if args.out is not None:
        claim_output(args.out, BENCH_RESULT)
    if args.markdown is not None:
        claim_output(args.markdown, BENCH_MARKDOWN)
    device = "cpu" if args.device == "auto" and not _cuda() else args.device
    if args.quick:
        s = BenchSettings.quick_settings(device)
    else:
        s = BenchSettings(device=device, image_size=tuple(args.image_size), width=args.width,
                          data=not args.no_data, label_minutes=args.label_minutes)
    if args.repeats is not None:
        s.repeats = max(1, args.repeats)
    s.threads, s.compile, s.seed = args.threads, args.compile, args.seed
    if args.train_batch is not None:
        s.train_batch = args.train_batch
    result = run_bench(s, progress=_progress(args))
    command = "eusvoicelabel bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]) \
        if sys.argv[1:2] == ["bench"] else "eusvoicelabel bench"
    result["command"] = command
    text = markdown_report(result, command)
    print(text)
    if args.out is not None:
        write_result(args.out, result)
    if args.markdown is not None:
        section = args.section or f"{'quick' if s.quick else 'full'}-{result['device']}"
        update_markdown(args.markdown, section, text)
    if result["regressions"]:
        print("bench: optimised path slower than the baseline: " +
              "; ".join(result["regressions"]), file=sys.stderr)
        return 1
    return 0


def _cuda() -> bool:
    import torch  # deferred: not needed for --help

    return torch.cuda.is_available()


_COMMANDS: dict[str, tuple[Callable, Callable]] = {
    "info": (_add_info, _run_info),
    "synth": (_add_synth, _run_synth),
    "detect": (_add_detect, _run_detect),
    "train": (_add_train, _run_train),
    "evaluate": (_add_evaluate, _run_evaluate),
    "pretrain-voice": (_add_pretrain_voice, _run_pretrain_voice),
    "label": (_add_label, _run_label),
    "train-frames": (_add_train_frames, _run_train_frames),
    "export": (_add_export, _run_export),
    "demo": (_add_demo, _run_demo),
    "bench": (_add_bench, _run_bench),
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

    # torchrun: only the first process writes outputs, so only it locks them.
    writes = int(os.environ.get("RANK", "0")) == 0
    try:
        # One writer per output: each output the run claims (data.outputs) stays locked until
        # it ends, so a second run on the same --out is refused, not interleaved.
        with output_session(f"eusvoicelabel {args.command}", writes):
            return int(args._run(args) or 0)
    except EUSVoiceLabelError as exc:
        print(f"eusvoicelabel {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as exc:
        detail = f" ({exc})" if str(exc) else ""
        print(f"eusvoicelabel {args.command}: interrupted{detail}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
