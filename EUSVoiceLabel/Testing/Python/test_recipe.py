"""The training recipe beyond the paper: augmentation, presets, the late voice path, the
vocabulary-pretrained voice branch, schedules, and that resume stays exact with all of them."""

from __future__ import annotations

import os
import shutil
import signal
import time

import numpy as np
import pytest
import torch

import mediafactory as mf
from EUSVoiceLabelLib.core.errors import ConfigError
from EUSVoiceLabelLib.core.presets import PRESETS, preset_settings
from EUSVoiceLabelLib.data.audio import SpectrogramSettings
from EUSVoiceLabelLib.data.dataset import build_window_set
from EUSVoiceLabelLib.data.vocabulary import LabelSet
from EUSVoiceLabelLib.nn.network import build_model
from EUSVoiceLabelLib.train import vocabulary_voice as vv
from EUSVoiceLabelLib.train.augment import (ImageAugment, VoiceAugment, augment_images,
                                            batch_generator, voice_windows)
from EUSVoiceLabelLib.train.config import TrainConfig
from EUSVoiceLabelLib.train.loop import TrainingInterrupted, lr_factor, train_model


@pytest.fixture(scope="module")
def windows(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe") / "cohort"
    for i in range(2):
        mf.make_procedure(root / f"patient{i + 1}", seconds=3.0)
    return build_window_set(root, image_size=(32, 48), frames=3, progress=False,
                            cache_dir=tmp_path_factory.mktemp("cache"))


def test_speech_context_reproduces_the_window_and_augmentation_changes_it(windows):
    ctx = torch.from_numpy(windows.voice_context)
    ends = torch.from_numpy(windows.voice_ends)
    assert ctx.dtype == torch.float16 and ctx.shape[:2] == (len(windows), 1024)
    plain = voice_windows(ctx, ends, windows.settings.spectrogram)
    # The cut from the context is the cached spectrogram up to the frame straddling the end.
    assert float((plain - torch.from_numpy(windows.voices)).abs().mean()) < 0.05
    a = voice_windows(ctx, ends, windows.settings.spectrogram, VoiceAugment(),
                      batch_generator(0, 1, 2))
    b = voice_windows(ctx, ends, windows.settings.spectrogram, VoiceAugment(),
                      batch_generator(0, 1, 2))
    c = voice_windows(ctx, ends, windows.settings.spectrogram, VoiceAugment(),
                      batch_generator(0, 1, 3))
    assert torch.equal(a, b) and not torch.equal(a, c)  # seeded per batch
    assert bool(torch.isfinite(a).all()) and float((a - plain).abs().mean()) > 0.1
    # Magnitude scaling follows the settings too.
    mag = voice_windows(ctx, ends, SpectrogramSettings(scale="magnitude", normalize=False))
    assert float(mag.min()) >= 0


def test_masks_and_image_augmentation():
    gen = batch_generator(3, 0, 0)
    ctx = torch.full((4, 1024, 115), 40.0, dtype=torch.float16)
    ctx[:, :, 40:60] = 70.0
    aug = VoiceAugment(speed=0, shift_frames=0, p_no_end=1.0, p_noise=0, vtlp=0,
                       freq_masks=1, freq_mask_bins=200, time_masks=0)
    out = voice_windows(ctx, torch.full((4,), float("nan")), SpectrogramSettings(), aug, gen)
    # A frequency band of each window is masked to exactly 0 across all time frames.
    assert all(bool((out[i] == 0).all(dim=1).any()) for i in range(4))
    img = torch.rand(4, 3, 32, 48)
    x = augment_images(img, ImageAugment(), batch_generator(3, 0, 0))
    y = augment_images(img, ImageAugment(), batch_generator(3, 0, 0))
    assert x.shape == img.shape and torch.equal(x, y)
    assert float(x.min()) >= 0 and float(x.max()) <= 1 and not torch.allclose(x, img)
    with pytest.raises(ConfigError):
        VoiceAugment(speed=0.9)


def test_presets_layer_under_explicit_options():
    cfg = TrainConfig.from_settings(preset_settings("cpu"), variant="proposed", epochs=3)
    assert cfg.epochs == 3 and cfg.image_size == (64, 128) and cfg.optimizer == "adamw"
    assert cfg.augment == "all" and cfg.voice_init == "vocabulary" and cfg.late_voice
    # What a variant has no branch for is dropped, so one preset serves every row.
    img = TrainConfig.from_settings(preset_settings("cpu"), variant="image_only")
    assert img.voice_init == "none" and not img.late_voice and not img.augments_voice
    assert TrainConfig.from_settings(preset_settings("paper")) == TrainConfig()
    assert TrainConfig().epochs == 200 and TrainConfig().image_size == (350, 690)
    with pytest.raises(ConfigError, match="unknown preset"):
        preset_settings("gpu")
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(schedule="step")
    assert set(PRESETS) == {"cpu", "paper"}


def test_cosine_schedule_warms_up_and_decays():
    cfg = TrainConfig(epochs=4, schedule="cosine")
    f = [lr_factor(cfg, e, b, 5) for e in range(4) for b in range(5)]
    assert f[0] == pytest.approx(0.2) and max(f) <= 1.0 and f[-1] < 0.05
    assert f.index(max(f)) == 4  # the end of the first epoch
    assert lr_factor(TrainConfig(epochs=4), 3, 4, 5) == 1.0


def test_late_voice_path_adds_the_voice_scores_and_round_trips(tmp_path, windows):
    model = build_model("proposed", 3, 3, width=0.125, late_voice=True).eval()
    img = torch.rand(2, 3, 32, 48)
    voice = torch.from_numpy(windows.voices[:2])
    f = model.features(img, voice)
    joint_only = f["maps"].flatten(2).mean(2)
    late = model.voice_head(f["P"]).mean(2)
    assert torch.allclose(f["logits"], joint_only + late, atol=1e-5)
    with pytest.raises(ConfigError):
        build_model("image_only", 3, 3, width=0.125).__class__(
            "image_only", model.image_branch, None, 3, late_voice=True)
    # A trained late-voice model saves and loads with its extra head.
    from EUSVoiceLabelLib.train.checkpoints import (load_checkpoint, preprocessing_settings,
                                                    save_checkpoint)
    cfg = TrainConfig(epochs=1, image_size=(32, 48), frames=3, width=0.125, batch_size=4,
                      late_voice=True)
    res = train_model(windows, cfg, len(windows.labelset), device="cpu", progress=False)
    path = tmp_path / "m.pt"
    save_checkpoint(path, res, windows.labelset, preprocessing_settings(windows, cfg))
    loaded = load_checkpoint(path, device="cpu")
    assert loaded.config.late_voice and loaded.model.voice_head is not None


def test_image_dropout_drops_the_joint_logits_in_training_only(windows):
    torch.manual_seed(0)
    model = build_model("proposed", 3, 3, width=0.125, late_voice=True, image_dropout=0.5)
    img = torch.rand(64, 3, 32, 48)
    voice = torch.from_numpy(np.repeat(windows.voices[:1], 64, axis=0))
    model.eval()
    f = model.features(img, voice)
    joint = f["maps"].flatten(2).mean(2)
    late = model.voice_head(f["P"]).mean(2)
    assert torch.allclose(f["logits"], joint + late, atol=1e-5)  # inference: both paths
    model.train()
    for m in model.modules():  # the branches' own dropout and batch statistics off
        if m is not model:
            m.eval()
    logits = model.features(img, voice)["logits"]
    voice_only = (logits - late).abs().amax(1) < 1e-5
    both = (logits - (joint + late)).abs().amax(1) < 1e-5
    assert bool((voice_only | both).all())  # each window keeps or loses the whole image path
    assert 16 <= int(voice_only.sum()) <= 48  # about half of the 64 lose it
    with pytest.raises(ConfigError):
        model.__class__("proposed", model.image_branch, model.voice_branch, 3,
                        image_dropout=0.5)  # no late voice path to keep
    with pytest.raises(ConfigError):
        TrainConfig(image_dropout=1.0)
    assert TrainConfig(image_dropout=0.5).image_dropout == 0.0  # no late voice: nothing to drop
    cfg = TrainConfig(epochs=1, image_size=(32, 48), frames=3, width=0.125, batch_size=4,
                      late_voice=True, image_dropout=0.5)
    res = train_model(windows, cfg, len(windows.labelset), device="cpu", progress=False)
    assert res.model.image_dropout == 0.5


def test_joint_bound_limits_what_the_image_path_adds(windows):
    torch.manual_seed(0)
    free = build_model("proposed", 3, 3, width=0.125, late_voice=True).eval()
    with torch.no_grad():  # a joint head whose scores reach well past the bound
        free.head.weight.mul_(200.0)
        free.head.bias.mul_(200.0)
    bounded = build_model("proposed", 3, 3, width=0.125, late_voice=True, joint_bound=0.5)
    bounded.load_state_dict(free.state_dict())
    bounded.eval()
    img = torch.rand(4, 3, 32, 48)
    voice = torch.from_numpy(np.repeat(windows.voices[:1], 4, axis=0))
    f = free.features(img, voice)
    joint = f["maps"].flatten(2).mean(2)
    late = free.voice_head(f["P"]).mean(2)
    assert float(joint.detach().abs().max()) > 0.5
    got = bounded(img, voice)
    assert torch.allclose(got, late + 0.5 * torch.tanh(joint / 0.5), atol=1e-5)
    assert float((got - late).detach().abs().max()) <= 0.5 + 1e-6  # never past the bound
    with pytest.raises(ConfigError):
        free.__class__("proposed", free.image_branch, free.voice_branch, 3, joint_bound=1.0)
    assert TrainConfig(joint_bound=1.0).joint_bound == 0.0  # no late voice path: unbounded
    assert TrainConfig.from_settings(preset_settings("cpu")).joint_bound == 1.0
    # Grad-CAM explains the image path's own score: where the bound saturates (its gradient
    # is 0 in float32) the heat map is the unbounded model's, not an empty one.
    from EUSVoiceLabelLib.nn.explain import grad_cam

    free_cam = grad_cam(free, img[:1], voice[:1], target=0).cam
    bounded_cam = grad_cam(bounded, img[:1], voice[:1], target=0).cam
    assert free_cam is not None and float(free_cam.max()) == pytest.approx(1.0)
    np.testing.assert_allclose(bounded_cam, free_cam, atol=1e-5)


def test_the_image_head_learns_from_its_own_loss_and_is_what_heat_maps_explain(windows):
    """``image_aux_weight``: the joint model's image branch gets a class head of its own,
    trained by its own loss, and Grad-CAM explains that head."""
    import hashlib
    import json

    from EUSVoiceLabelLib.nn.explain import grad_cam

    assert TrainConfig(variant="voice_only", image_aux_weight=1.0).image_aux_weight == 0.0
    assert TrainConfig(variant="image_only", image_aux_weight=1.0).image_aux_weight == 0.0
    assert TrainConfig.from_settings(preset_settings("cpu")).image_aux_weight == 1.0
    # A run made before the field existed keeps its signature (and is resumed and reused).
    plain = TrainConfig()
    old = plain.to_json()
    old.pop("weights")
    old.pop("image_aux_weight")
    old.pop("voice_aux_weight")
    assert plain.signature() == \
        hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    assert TrainConfig(image_aux_weight=1.0).signature() != plain.signature()
    image_only = build_model("image_only", 3, 3, width=0.125)
    with pytest.raises(ConfigError):  # a head of its own needs a joint model
        image_only.__class__("image_only", image_only.image_branch, None, 3, image_head=True)

    base = dict(image_size=(32, 48), frames=3, width=0.125, batch_size=4, late_voice=True,
                joint_bound=1.0, lr=1e-2)
    k = len(windows.labelset)
    start = train_model(windows, TrainConfig(epochs=0, image_aux_weight=1.0, **base), k,
                        device="cpu", progress=False).model
    with_head = train_model(windows, TrainConfig(epochs=2, image_aux_weight=1.0, **base), k,
                            device="cpu", progress=False).model
    without = train_model(windows, TrainConfig(epochs=2, **base), k, device="cpu",
                          progress=False).model
    assert without.image_head is None and with_head.image_head is not None
    # Its loss trains the head and reaches the image branch.
    assert not torch.equal(start.image_head.weight, with_head.image_head.weight)
    first = lambda m: next(m.image_branch.parameters())  # noqa: E731
    assert not torch.equal(first(with_head), first(without))
    img = torch.from_numpy(windows.images[:1]).float() / 255.0
    voice = torch.from_numpy(windows.voices[:1])
    with torch.no_grad():
        out = with_head.eval().features(img, voice)
    assert out["image_head_logits"].shape == (1, k)
    # The heat map explains the image head: with the joint head blanked (no gradient through
    # the product with the voice) the map is unchanged.
    cam = grad_cam(with_head, img, voice, target=0).cam
    with torch.no_grad():
        with_head.head.weight.zero_()
    assert cam is not None and float(cam.max()) == pytest.approx(1.0)
    np.testing.assert_allclose(grad_cam(with_head, img, voice, target=0).cam, cam, atol=1e-5)


def test_the_late_voice_path_learns_from_its_own_loss(windows, monkeypatch):
    """``voice_aux_weight``: a loss on the late voice path's own class scores is added to the
    joint loss (weighted as asked); it changes the training, and no network is added."""
    from EUSVoiceLabelLib.train import loop

    assert TrainConfig(variant="voice_only", voice_aux_weight=1.0).voice_aux_weight == 0.0
    assert TrainConfig(voice_aux_weight=1.0).voice_aux_weight == 0.0  # needs the late path
    assert TrainConfig.from_settings(preset_settings("cpu")).voice_aux_weight == 1.0
    cfg = TrainConfig(late_voice=True, voice_aux_weight=1.0)
    assert cfg.voice_aux_weight == 1.0 and cfg.signature() != \
        TrainConfig(late_voice=True).signature()
    assert cfg.model_options() == TrainConfig(late_voice=True).model_options()

    base = dict(image_size=(32, 48), frames=3, width=0.125, batch_size=4, late_voice=True,
                joint_bound=1.0, lr=1e-2, epochs=2)
    k = len(windows.labelset)
    real, seen = loop.weighted_loss, []

    def spy(logits, *a, **kw):
        seen.append(logits.detach().clone())
        return real(logits, *a, **kw)

    monkeypatch.setattr(loop, "weighted_loss", spy)
    with_loss = train_model(windows, TrainConfig(voice_aux_weight=2.0, **base), k,
                            device="cpu", progress=False).model
    calls_with = len(seen)
    seen.clear()
    without = train_model(windows, TrainConfig(**base), k, device="cpu", progress=False).model
    assert calls_with == 2 * len(seen) > 0  # one more loss per batch
    assert with_loss.voice_head is not None
    assert not torch.equal(with_loss.voice_head.weight, without.voice_head.weight)
    img = torch.from_numpy(windows.images[:2]).float() / 255.0
    voice = torch.from_numpy(windows.voices[:2])
    with torch.no_grad():
        logits, voice_logits = with_loss.eval()(img, voice, voice_path=True)
        out = with_loss.features(img, voice)
    torch.testing.assert_close(voice_logits, out["voice_logits"])
    # The product's logits are the voice path's plus the bounded joint logits.
    torch.testing.assert_close(logits - voice_logits, torch.tanh(out["image_logits"]))


def _interrupt_at(monkeypatch, call: int) -> None:
    from EUSVoiceLabelLib.train import loop

    real, count = loop.weighted_loss, {"n": 0}

    def loss(*a, **kw):
        count["n"] += 1
        if count["n"] == call:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
        return real(*a, **kw)

    monkeypatch.setattr(loop, "weighted_loss", loss)


def test_resume_is_exact_with_augmentation_and_schedule(tmp_path, monkeypatch, windows):
    cfg = TrainConfig(epochs=2, image_size=(32, 48), frames=3, width=0.125, batch_size=2,
                      augment="all", schedule="cosine", optimizer="adamw", weight_decay=0.01,
                      label_smoothing=0.1, late_voice=True, voice_lr_scale=0.5)
    k = len(windows.labelset)
    full = train_model(windows, cfg, k, device="cpu", progress=False)
    state = tmp_path / "run.resume.pt"
    _interrupt_at(monkeypatch, 3)  # inside an epoch
    with pytest.raises(TrainingInterrupted):
        train_model(windows, cfg, k, device="cpu", progress=False, state_path=state)
    monkeypatch.undo()
    resumed = train_model(windows, cfg, k, device="cpu", progress=False, state_path=state)
    sa, sb = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[n], sb[n]) for n in sa)
    # Augmentation really ran: the same run without it ends elsewhere.
    plain = train_model(windows, cfg.with_(augment="none"), k, device="cpu", progress=False)
    assert not torch.equal(plain.model.head.weight, full.model.head.weight)


@pytest.mark.skipif(shutil.which("flite") is None, reason="flite is not installed")
def test_vocabulary_voice_is_pretrained_once_and_initialises_the_branch(tmp_path, monkeypatch,
                                                                        windows):
    labels = LabelSet.default()
    phrases = vv.vocabulary_phrases(labels)
    assert (0, "pancreas") in phrases and len({k for k, _ in phrases}) == len(labels)
    voices = [s for s in vv.vocabulary_voices() if s.engine == "flite"][:2]
    monkeypatch.setattr(vv, "vocabulary_voices", lambda seed=7: voices)
    cache = tmp_path / "vv"
    state = vv.vocabulary_voice_weights(labels, 0.125, SpectrogramSettings(), device="cpu",
                                        cache_dir=cache, progress=False, epochs=1)
    assert len(list(cache.glob("*.pt"))) == 1

    def fail(*a, **k):
        raise AssertionError("pretrained again despite the cache")
    monkeypatch.setattr(vv, "pretrain_vocabulary_voice", fail)
    again = vv.vocabulary_voice_weights(labels, 0.125, SpectrogramSettings(), device="cpu",
                                        cache_dir=cache, progress=False, epochs=1)
    assert all(torch.equal(state[n], again[n]) for n in state)
    # The weights start the voice branch (and the late head) of the joint network.
    model = build_model("proposed", len(labels), 3, width=0.125, late_voice=True)
    vv.initialise_voice(model, state)
    assert torch.equal(model.voice_branch.state_dict()[next(iter(
        model.voice_branch.state_dict()))], state[next(k for k in state
                                                       if k.startswith("voice_branch."))])
    assert torch.equal(model.voice_head.weight, state["head.weight"])


def test_command_line_preset_with_explicit_options_over_it(tmp_path, windows):
    from EUSVoiceLabelLib.cli import main as cli
    from EUSVoiceLabelLib.train.checkpoints import load_checkpoint

    cohort = tmp_path / "cohort"
    for i in range(2):
        mf.make_procedure(cohort / f"patient{i + 1}", seconds=3.0)
    out = tmp_path / "m.pt"
    rc = cli(["train", str(cohort), "--out", str(out), "--preset", "cpu", "--voice-init",
              "none", "--epochs", "1", "--width", "0.125", "--cache", str(tmp_path / "c"),
              "--device", "cpu", "--quiet"])
    assert rc == 0
    cfg = load_checkpoint(out, device="cpu").config
    # The preset's values, except where the command line said otherwise.
    assert (cfg.epochs, cfg.width, cfg.voice_init) == (1, 0.125, "none")
    assert cfg.image_size == (64, 128) and cfg.optimizer == "adamw" and cfg.augment == "all"
    assert cfg.late_voice and cfg.schedule == "cosine"
    assert cli(["train", str(cohort), "--out", str(tmp_path / "x.pt"), "--variant",
                "proposed,voice_only"]) == 2
