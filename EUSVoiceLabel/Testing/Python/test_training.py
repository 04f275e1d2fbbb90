"""Training: weighted loss, learning really works, every variant trains, resume, checkpoints."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch

from EUSVoiceLabelLib.core.errors import CheckpointError, ConfigError
from EUSVoiceLabelLib.data.vocabulary import LabelSet
from EUSVoiceLabelLib.nn.devices import select_device
from EUSVoiceLabelLib.core.variants import VARIANT_SPECS, VARIANTS, variant_spec
from EUSVoiceLabelLib.train.checkpoints import load_checkpoint, save_checkpoint
from EUSVoiceLabelLib.train.config import TrainConfig
from EUSVoiceLabelLib.train.loop import (class_weights_from_labels, predict_proba, train_model,
                                         weighted_loss)

SIZE = (32, 64)
FRAMES = 5


# One torch thread (fixture in conftest.py): the 2 cores are shared.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_windows(n: int = 20, k: int = 5, seed: int = 0, frames: int = FRAMES,
                 size: tuple[int, int] = SIZE) -> types.SimpleNamespace:
    """Random windows with a weak class cue in both inputs (a tiny stand-in for a WindowSet)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k
    images = rng.integers(0, 200, size=(n, frames, *size)).astype(np.uint8)
    voices = rng.standard_normal((n, 1024, 66)).astype(np.float32)
    for i, c in enumerate(labels):
        images[i, :, 4 * c:4 * c + 4] = 255
        voices[i, 150 * c:150 * c + 100] += 1.0
    return types.SimpleNamespace(images=images, voices=voices, labels=labels.astype(np.int64),
                                 patients=[f"p{i % 4}" for i in range(n)],
                                 times=np.arange(n, dtype=float))


def cfg(variant: str = "proposed", **kw) -> TrainConfig:
    base = dict(variant=variant, epochs=2, lr=1e-3, image_size=SIZE, frames=FRAMES, width=0.25)
    base.update(kw)
    return TrainConfig(**base)


def test_class_weights_reproduce_the_papers():
    # Table I counts: pancreas 16, portal vein 24, PD 38, PVC 24, bile duct 41
    labels = np.repeat(np.arange(5), [16, 24, 38, 24, 41])
    w = class_weights_from_labels(labels, 5)
    assert [round(v, 1) for v in w] == [2.6, 1.7, 1.1, 1.7, 1.0]
    assert class_weights_from_labels(np.array([0, 0, 2]), 3) == [1.0, 0.0, 2.0]
    counts = dict(zip(LabelSet.default().ids, [16, 24, 38, 24, 41]))
    assert np.allclose(w, LabelSet.default().class_weights(counts))


def test_weighted_loss_is_equation_2():
    torch.manual_seed(0)
    logits, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    w = torch.tensor([2.0, 1.0, 0.5])
    expect = -sum(w[y[n]] * torch.log_softmax(logits[n], 0)[y[n]] for n in range(6)) / 6
    assert torch.allclose(weighted_loss(logits, y, w), expect)


def test_paper_defaults_per_variant():
    for name, spec in VARIANT_SPECS.items():
        assert (TrainConfig(name).epochs, TrainConfig(name).lr) == (spec.epochs, spec.lr)
    assert (TrainConfig("proposed").epochs, TrainConfig("proposed").lr) == (200, 1e-3)
    assert (TrainConfig("image_only").epochs, TrainConfig("image_only").lr) == (80, 1e-5)
    assert (TrainConfig("voice_only").epochs, TrainConfig("voice_only").lr) == (200, 1e-6)
    assert (TrainConfig("voice_pretrained").epochs, TrainConfig("voice_pretrained").lr) == \
        (1000, 1e-3)
    assert TrainConfig("vgg16_pretrained").lr == 1e-5 and TrainConfig("proposed").batch_size == 8
    c = TrainConfig("image_only", epochs=3, lr=0.1, batch_size=4)
    assert (c.epochs, c.lr, c.batch_size) == (3, 0.1, 4)
    assert TrainConfig.from_json(c.to_json()) == c
    with pytest.raises(ConfigError):
        TrainConfig("nope")
    with pytest.raises(ConfigError):
        TrainConfig("proposed", image_size=(16, 16))


def test_device_selection():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        assert select_device("auto").type in ("mps", "cpu")
        with pytest.raises(ConfigError, match="CUDA"):
            select_device("cuda")


def test_proposed_model_overfits_a_tiny_set():
    data = tiny_windows(n=20)
    res = train_model(data, cfg(epochs=20, seed=3), 5, device="cpu", progress=False)
    assert res.history[0]["loss"] > res.history[-1]["loss"]
    probs = predict_proba(res.model, data, device="cpu")
    acc = float((probs.argmax(1) == data.labels).mean())
    assert acc >= 0.95, (acc, res.history[-3:])
    assert np.allclose(probs.sum(1), 1, atol=1e-5)


def _weights_files(tmp_path):
    """Random-init backbones (nothing downloads) and a random keyword net, saved to files."""
    import torchvision

    from EUSVoiceLabelLib.train.voice_pretrain import COMMAND_WORDS
    from EUSVoiceLabelLib.nn.keyword import KeywordNet, save_keyword_checkpoint

    torch.manual_seed(0)
    vgg = tmp_path / "vgg16.pth"
    # The classifier (top) is removed by the model, so a features-only file is enough.
    from torchvision.models.vgg import cfgs, make_layers
    feats = make_layers(cfgs["D"]).state_dict()  # = torchvision vgg16().features
    torch.save({f"features.{k}": v for k, v in feats.items()}, vgg)
    res = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), res)
    kw = tmp_path / "keyword.pt"
    save_keyword_checkpoint(kw, KeywordNet(len(COMMAND_WORDS)), COMMAND_WORDS, {})
    return {"vgg16": vgg, "resnet50": res, "voice": kw}


def test_every_variant_trains_one_step(tmp_path):
    files = _weights_files(tmp_path)
    data = tiny_windows(n=9)  # 8 + 1: the lone window joins the first batch (BatchNorm)
    for variant in VARIANTS:
        kind = variant_spec(variant).weights
        weights = files[kind] if kind else None
        c = cfg(variant, epochs=1, weights=weights)
        torch.manual_seed(c.seed)
        from EUSVoiceLabelLib import build_model
        before = {k: v.clone() for k, v in build_model(
            variant, 5, FRAMES, weights=weights, width=0.25).state_dict().items()}
        res = train_model(data, c, 5, device="cpu", progress=False)
        assert len(res.history) == 1 and math.isfinite(res.history[0]["loss"]), variant
        after = res.model.state_dict()
        changed = {k for k in before if before[k].dtype.is_floating_point
                   and not torch.equal(before[k], after[k])}
        assert changed, f"{variant}: no weight changed"
        trainable = {n for n, p in res.model.named_parameters() if p.requires_grad}
        if kind:  # frozen pretrained layers stay as loaded
            frozen = {n for n, p in res.model.named_parameters() if not p.requires_grad}
            assert frozen and not (frozen & changed), variant
            assert all(n.split(".")[1] == "adapter" or n.startswith("head") or
                       n.startswith("voice_branch.layers") or n.startswith("image_branch.layers")
                       for n in trainable), variant
        probs = predict_proba(res.model, data, device="cpu")
        assert probs.shape == (9, 5) and np.isfinite(probs).all(), variant


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    data = tiny_windows(n=12)
    c = cfg("reduced_input", epochs=4, seed=5)  # uses the shuffling and frame-choice RNG
    full = train_model(data, c, 5, device="cpu", progress=False)

    state = tmp_path / "run.resume.pt"

    class Interrupt(Exception):
        pass

    def stop_at_2(epoch, stats):
        if epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_model(data, c, 5, device="cpu", progress=False, state_path=state,
                    checkpoint_every=1, on_epoch_end=stop_at_2)
    assert state.is_file()
    # the resume file is a plain dict readable without unpickling code
    assert torch.load(state, weights_only=True)["epoch"] == 2
    resumed = train_model(data, c, 5, device="cpu", progress=False, state_path=state,
                          checkpoint_every=1)
    assert resumed.resumed_from_epoch == 2
    assert not state.exists()  # removed once training ends
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["loss"] for h in full.history] == [h["loss"] for h in resumed.history]

    # a resume file from another configuration is ignored, not applied
    with pytest.raises(Interrupt):
        train_model(data, c, 5, device="cpu", progress=False, state_path=state,
                    checkpoint_every=1, on_epoch_end=stop_at_2)
    other = train_model(data, c.with_(lr=5e-4), 5, device="cpu", progress=False,
                        state_path=state)
    assert other.resumed_from_epoch == 0


def test_each_epochs_weights_can_be_scored_without_changing_training():
    """``on_epoch_model`` sees the network and its training windows after every epoch; scoring
    a copy there (as ``scripts/image_path_study.py inner`` does) leaves training as it was."""
    import copy
    from EUSVoiceLabelLib.train.loop import recalibrate_batchnorm
    data = tiny_windows(n=12)
    c = cfg("proposed", epochs=3, seed=2)
    plain = train_model(data, c, 5, device="cpu", progress=False)
    seen = []

    def score(epoch, model, windows):
        assert model.training and len(windows) == 10
        with torch.random.fork_rng(devices=[]):
            m = copy.deepcopy(model)
            recalibrate_batchnorm(m, windows, 4, torch.device("cpu"))
            m.eval()
            with torch.no_grad():
                x = torch.as_tensor(data.images[10:]).float().div_(255.0)
                seen.append((epoch, m(x, torch.as_tensor(data.voices[10:])).argmax(1)))

    scored = train_model(data, c, 5, indices=list(range(10)), device="cpu", progress=False,
                         on_epoch_model=score)
    assert [e for e, _ in seen] == [1, 2, 3]
    again = train_model(data, c, 5, indices=list(range(10)), device="cpu", progress=False)
    for k, v in again.model.state_dict().items():
        assert torch.equal(v, scored.model.state_dict()[k]), k
    assert plain.history != scored.history  # the indices were honoured


def test_same_seed_same_weights_different_seed_different():
    data = tiny_windows(n=8)
    a = train_model(data, cfg("random_pairs", seed=1), 5, device="cpu", progress=False)
    b = train_model(data, cfg("random_pairs", seed=1), 5, device="cpu", progress=False)
    c = train_model(data, cfg("random_pairs", seed=2), 5, device="cpu", progress=False)
    sa, sb, sc = (m.model.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_checkpoint_round_trip_and_refusals(tmp_path, monkeypatch):
    data = tiny_windows(n=10)
    labelset = LabelSet.default()
    res = train_model(data, cfg(epochs=1), 5, device="cpu", progress=False)
    path = tmp_path / "model.pt"
    pre = {"image_size": list(SIZE), "frames": FRAMES, "spectrogram": {"scale": "log"}}
    save_checkpoint(path, res, labelset, pre, {"note": "test"})
    raw = torch.load(path, weights_only=True)  # plain data only
    assert raw["variant"] == "proposed" and raw["labelset"]["labels"][0]["id"] == "pancreas"
    assert raw["preprocessing"]["image_size"] == list(SIZE) and raw["package_version"]

    loaded = load_checkpoint(path)
    assert loaded.config == res.config and loaded.labelset.ids == labelset.ids
    assert loaded.preprocessing["frames"] == FRAMES
    assert np.allclose(predict_proba(loaded.model, data, device="cpu"),
                       predict_proba(res.model, data, device="cpu"), atol=1e-6)
    assert load_checkpoint(path, labelset=labelset, variant="proposed").model is not None

    other = LabelSet.from_json([{"id": "a"}, {"id": "b"}])
    with pytest.raises(CheckpointError, match="trained on labels"):
        load_checkpoint(path, labelset=other)
    with pytest.raises(CheckpointError, match="variant 'proposed', not 'image_only'"):
        load_checkpoint(path, variant="image_only")
    from EUSVoiceLabelLib.train import checkpoints
    monkeypatch.setattr(checkpoints, "__version__", "9.9.0")  # the version load_checkpoint reads
    with pytest.raises(CheckpointError, match="written by eusvoicelabel"):
        load_checkpoint(path)
    monkeypatch.undo()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(junk)
    torch.save({"weights": torch.zeros(2)}, junk)
    with pytest.raises(CheckpointError, match="not an EUSVoiceLabel"):
        load_checkpoint(junk)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_wrong_window_shape_is_a_config_error():
    data = tiny_windows(n=4)
    with pytest.raises(ConfigError, match="frames, H, W"):
        train_model(data, cfg(image_size=(40, 64)), 5, device="cpu", progress=False)


def test_pretrain_voice_makes_a_usable_keyword_network(tmp_path):
    from EUSVoiceLabelLib import build_model
    from EUSVoiceLabelLib.data.audio import SpectrogramSettings
    from EUSVoiceLabelLib.nn.keyword import load_keyword_model
    from EUSVoiceLabelLib.train.voice_pretrain import pretrain_keyword_model

    out = tmp_path / "keyword.pt"
    words = ["yes", "no", "left", "right"]
    info = pretrain_keyword_model(out, words=words, speakers=["flite_slt", "flite_awb",
                                                              "flite_rms"],
                                  repeats=2, epochs=8, device="cpu", progress=False)
    assert info["n_clips"] == 3 * 2 * 4 and info["heldout_speaker"] == "flite_rms"
    assert info["train_accuracy"] > 0.5  # 4 words, 16 training clips: it learns them
    raw = torch.load(out, weights_only=True)
    assert raw["words"] == words and raw["info"]["spectrogram"]["scale"] == "log"
    net = load_keyword_model(out)
    assert tuple(net(torch.randn(2, 1024, 66)).shape) == (2, 4)
    m = build_model("voice_pretrained", weights=out)
    assert all(not p.requires_grad for p in m.voice_branch.keyword.parameters())
    assert tuple(m(None, torch.randn(3, 1024, 66)).shape) == (3, 5)
    # the windows must use the spectrogram scaling the keyword network was trained on
    data = tiny_windows(n=4)
    data.settings = types.SimpleNamespace(spectrogram=SpectrogramSettings(scale="magnitude"))
    with pytest.raises(ConfigError, match="pretrained on spectrograms"):
        train_model(data, cfg("voice_pretrained", weights=out), 5, device="cpu",
                    progress=False)
