"""The two-branch network: shapes at the paper's sizes, layer counts, the joint map, variants."""

from __future__ import annotations

import pytest
import torch

from EUSVoiceLabelLib import build_model
from EUSVoiceLabelLib.core.errors import CheckpointError, ConfigError
from EUSVoiceLabelLib.core.variants import VARIANTS, check_image_size
from EUSVoiceLabelLib.nn.explain import grad_cam
from EUSVoiceLabelLib.nn.network import (count_layers, evenly_spaced, feature_grid,
                                         voice_time_steps)


# One torch thread (fixture in conftest.py): the 2 cores are shared.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_shapes_at_the_papers_input_size():
    torch.manual_seed(0)
    model = build_model("proposed", num_classes=5, frames=25).eval()
    image = torch.rand(1, 25, 350, 690)
    voice = torch.randn(1, 1024, 66)
    with torch.no_grad():
        f = model.features(image, voice)
    assert tuple(f["P"].shape) == (1, 1024, 15)           # R x T'
    assert tuple(f["Q"].shape) == (1, 1024, 20, 42)       # R x H' x W'
    assert tuple(f["C"].shape) == (1, 15, 20, 42)         # one map per voice time step
    assert tuple(f["logits"].shape) == (1, 5)
    assert feature_grid((350, 690)) == (20, 42)
    assert voice_time_steps(66) == 15
    # C really is Q P^T: the sum over the R channels.
    expect = torch.einsum("rhw,rt->thw", f["Q"][0].double(), f["P"][0].double())
    assert torch.allclose(f["C"][0].double(), expect, rtol=1e-4, atol=1e-3)
    # logits = global average of the head's class maps
    assert torch.allclose(f["logits"], f["maps"].mean(dim=(2, 3)), atol=1e-5)


def test_layer_counts_follow_the_paper():
    proposed = count_layers(build_model("proposed"))
    # 13 image convs + the joint head; 6 voice convs; a BatchNorm after every branch conv.
    assert proposed == {"Conv1d": 6, "Conv2d": 14, "BatchNorm1d": 6, "BatchNorm2d": 13}
    assert count_layers(build_model("image_only")) == \
        {"Conv1d": 0, "Conv2d": 14, "BatchNorm1d": 0, "BatchNorm2d": 13}
    assert count_layers(build_model("voice_only")) == \
        {"Conv1d": 7, "Conv2d": 0, "BatchNorm1d": 6, "BatchNorm2d": 0}
    m = build_model("proposed")
    convs = [mod for mod in m.image_branch.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert convs[0].in_channels == 25 and convs[-1].out_channels == 1024
    assert all(c.kernel_size == (3, 3) for c in convs)
    pools = [mod for mod in m.modules() if isinstance(mod, (torch.nn.MaxPool1d,
                                                            torch.nn.MaxPool2d))]
    assert all(p.kernel_size in (3, (3, 3)) and p.stride in (2, (2, 2)) for p in pools)
    # no dense layers anywhere in the scratch model
    assert not any(isinstance(mod, torch.nn.Linear) for mod in m.modules())


def test_joint_scale_sum_is_the_plain_product():
    torch.manual_seed(1)
    m_mean = build_model("proposed", width=0.125, joint_scale="mean").eval()
    m_sum = build_model("proposed", width=0.125).eval()
    m_sum.load_state_dict(m_mean.state_dict())
    x, v = torch.rand(2, 25, 40, 48), torch.randn(2, 1024, 66)
    with torch.no_grad():
        c_mean = m_mean.features(x, v)["C"]
        c_sum = m_sum.features(x, v)["C"]
    r = m_mean.image_branch.out_channels
    assert torch.allclose(c_sum, c_mean * r, rtol=1e-4, atol=1e-4)


def test_cam_layer_is_the_end_of_block_4_and_voice_only_has_none():
    """Grad-CAM explains the image branch's block 4, on a grid twice as fine as Q's (the heat
    maps of Q's 3 x 7 cells at 64 x 128 pointed at the named landmark less often)."""
    torch.manual_seed(0)
    m = build_model("proposed", width=0.125).eval()
    seen = {}
    handle = m.cam_layer().register_forward_hook(lambda mod, i, o: seen.setdefault("out", o))
    x, v = torch.rand(1, 25, 64, 128), torch.randn(1, 1024, 66)
    with torch.no_grad():
        q = m.features(x, v)["Q"]
    handle.remove()
    assert tuple(q.shape[2:]) == (3, 7)
    assert tuple(seen["out"].shape[2:]) == (7, 15)
    exp = grad_cam(m, x, v)
    assert exp.cam is not None and exp.cam.shape == (7, 15) and exp.cam.max() == 1.0
    assert build_model("voice_only", width=0.125).cam_layer() is None


def test_single_branch_variants_ignore_the_other_input():
    torch.manual_seed(0)
    x, v = torch.rand(2, 25, 40, 40), torch.randn(2, 1024, 66)
    img = build_model("image_only", width=0.125).eval()
    voc = build_model("voice_only", width=0.125).eval()
    with torch.no_grad():
        assert torch.equal(img(x, v), img(x, None))
        assert torch.equal(voc(x, v), voc(None, v))
        assert tuple(voc(None, v).shape) == (2, 5)


def test_reduced_input_takes_three_frames_or_a_full_window():
    torch.manual_seed(0)
    m = build_model("reduced_input", width=0.125, frames=25).eval()
    convs = [mod for mod in m.image_branch.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert convs[0].in_channels == 3
    x, v = torch.rand(1, 25, 40, 40), torch.randn(1, 1024, 66)
    idx = evenly_spaced(25, 3)
    assert idx == [0, 12, 24]
    with torch.no_grad():
        assert torch.allclose(m(x, v), m(x[:, idx], v))


def test_bad_settings_raise_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown variant"):
        build_model("transformer")
    with pytest.raises(ConfigError):
        build_model("proposed", num_classes=1)
    m = build_model("image_only", width=0.125)
    with pytest.raises(ConfigError, match="too small"):
        check_image_size((16, 64))
    with pytest.raises(ConfigError, match="weights"):
        build_model("vgg16_pretrained")                       # no weights file given
    with pytest.raises(CheckpointError, match="not found"):
        build_model("resnet50_pretrained", weights=tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(3)}, bad)
    with pytest.raises(CheckpointError, match="do not fit"):
        build_model("vgg16_pretrained", weights=bad)
    with pytest.raises(ConfigError, match="keyword"):
        build_model("voice_pretrained")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        build_model("voice_pretrained", weights=junk)
    assert m is not None
    assert set(VARIANTS) >= {"proposed", "image_only", "voice_only", "vgg16_pretrained",
                             "resnet50_pretrained", "voice_pretrained", "random_pairs",
                             "reduced_input"}
