"""``convert_to_gsa``: GSA modules in place of the 3x3 convolutions of a torchvision or timm CNN."""

from __future__ import annotations

import copy
import runpy
from collections import OrderedDict
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import gsanet
from gsanet.layers import GlobalSelfAttention, auto_heads
from gsanet.models.convert import stage_of


def gsa_modules(model: nn.Module) -> dict[str, GlobalSelfAttention]:
    return {name: m for name, m in model.named_modules() if isinstance(m, GlobalSelfAttention)}


class TinyNet(nn.Module):
    """A stem and one stage of odd widths (20 channels: not divisible by 8)."""

    def __init__(self, **conv: object) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1, bias=False)  # outside every stage: never converted
        self.layer1 = nn.Sequential(
            nn.Conv2d(12, 20, 3, **{"padding": 1, "bias": False, **conv}), nn.BatchNorm2d(20), nn.ReLU()
        )
        self.head = nn.Linear(20, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer1(self.stem(x)).mean((2, 3)))


def test_converted_torchvision_resnet18_trains(one_thread: None) -> None:
    """The brief's check: a converted torchvision ResNet-18 fine-tunes at a small size (its loss on a batch goes
    down and the GSA modules' parameters change), and every weight outside the replaced convolutions is kept."""
    torch.manual_seed(0)
    original = torchvision.models.resnet18(num_classes=10)
    model = gsanet.convert_to_gsa(copy.deepcopy(original), img_size=32)
    layers = gsa_modules(model)
    assert len(layers) == 16 and all(name.endswith(("conv1", "conv2")) for name in layers)
    strided = sorted(name for name, m in layers.items() if m.stride == 2)
    assert strided == ["layer2.0.conv1", "layer3.0.conv1", "layer4.0.conv1"]
    assert layers["layer1.0.conv1"].max_size == (8, 8) and layers["layer4.1.conv2"].max_size == (1, 1)
    assert isinstance(model.conv1, nn.Conv2d)  # the 7x7 stem
    kept = original.state_dict()
    for key, value in model.state_dict().items():
        if not any(key.startswith(f"{name}.") for name in layers):
            assert torch.equal(value, kept.pop(key)), key
    assert all(any(key.startswith(f"{name}.") for name in layers) for key in kept)  # only the replaced convs went

    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    before = {name: m.qkv.weight.detach().clone() for name, m in layers.items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(4):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    assert all(not torch.equal(m.qkv.weight, before[name]) for name, m in layers.items())
    assert all(m.rel_col.grad is not None and m.rel_col.grad.abs().sum() > 0 for m in layers.values())


def test_conversion_keeps_output_sizes_modes_and_the_timm_input_size(one_thread: None) -> None:
    """Stride 2 becomes a stride-2 module with the output size of the padded convolution (odd sizes included); the
    tables are sized from the timm model's pretrained_cfg (224x224) unless img_size says otherwise."""
    model = timm.create_model("resnet18", num_classes=5).eval()
    x = torch.randn(2, 3, 45, 37)
    with torch.no_grad():
        sizes = [f.shape for f in model.forward_intermediates(x, intermediates_only=True)]
    gsanet.convert_to_gsa(model, stages=(3, 4))
    layers = gsa_modules(model)
    assert sorted({stage_of(name) for name in layers}) == [3, 4] and len(layers) == 8
    assert layers["layer3.0.conv1"].max_size == (28, 28) and layers["layer4.1.conv2"].max_size == (7, 7)
    assert not model.training and not any(m.training for m in layers.values())  # the mode is kept
    with torch.no_grad():
        converted = [f.shape for f in model.forward_intermediates(x, intermediates_only=True)]
        out = model(x)
    assert converted == sizes and out.shape == (2, 5) and torch.isfinite(out).all()
    small = gsanet.convert_to_gsa(timm.create_model("resnet18"), stages=(4,), img_size=(64, 96))
    assert gsa_modules(small)["layer4.0.conv1"].max_size == (4, 6)
    byob = gsanet.convert_to_gsa(timm.create_model("conv_resnet26_tiny"), stages=(4,))  # timm's stages.N naming
    assert list(gsa_modules(byob)) == ["stages.3.0.conv2_kxk.conv"]
    assert gsa_modules(byob)["stages.3.0.conv2_kxk.conv"].max_size == (7, 7)  # 28x28 input (its pretrained_cfg)


def test_auto_heads_for_any_width() -> None:
    assert [auto_heads(w) for w in (512, 64, 32, 24, 16, 100, 36, 20, 12, 7, 3)] == [8, 8, 4, 3, 2, 5, 4, 2, 1, 1, 1]
    assert auto_heads(96, dim_key=40) == 4  # divides both, key channels a head >= 8
    layer = GlobalSelfAttention(100, heads=None)
    assert layer.heads == 5 and layer(torch.randn(2, 100, 5, 4)).shape == (2, 100, 5, 4)
    with pytest.raises(ValueError, match=r"dim_out=100 is not divisible by heads=8: .* or heads=None"):
        GlobalSelfAttention(100)


def test_converted_odd_width_chooses_heads_and_trains(one_thread: None) -> None:
    torch.manual_seed(0)
    model = gsanet.convert_to_gsa(TinyNet(), img_size=12)
    (layer,) = gsa_modules(model).values()
    assert (layer.dim, layer.dim_out, layer.heads, layer.max_size) == (12, 20, 2, (12, 12))
    assert isinstance(model.stem, nn.Conv2d)
    assert gsanet.convert_to_gsa(TinyNet(), img_size=12, heads=4).layer1[0].heads == 4
    x, y = torch.randn(3, 3, 12, 10), torch.tensor([0, 1, 2])
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert F.cross_entropy(model(x), y) < loss


@pytest.mark.parametrize(
    ("conv", "match"),
    [
        (dict(groups=2), "groups=2"),
        (dict(dilation=2, padding=2), r"dilation=\(2, 2\)"),
        (dict(bias=True), "a bias"),
        (dict(stride=(2, 1)), r"stride=\(2, 1\)"),
        (dict(padding=0), r"padding=\(0, 0\)"),
    ],
)
def test_convolutions_gsa_cannot_replace_are_refused(conv: dict, match: str) -> None:
    model = TinyNet(**conv)
    with pytest.raises(ValueError, match=rf"cannot replace layer1\.0 .*{match}.*choose stages without it"):
        gsanet.convert_to_gsa(model, img_size=8)
    assert isinstance(model.layer1[0], nn.Conv2d)  # nothing was replaced


def test_conversion_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ValueError, match="found no 3x3 convolution in a stage of Sequential"):
        gsanet.convert_to_gsa(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1)))
    with pytest.raises(ValueError, match=r"stages \[2\] have no 3x3 convolution; .* are \[1\]"):
        gsanet.convert_to_gsa(TinyNet(), stages=(2,))
    with pytest.raises(TypeError, match=r"convert_to_gsa sets \['stride'\] from each convolution"):
        gsanet.convert_to_gsa(TinyNet(), stride=2)
    model = torchvision.models.resnet18()
    with pytest.raises(ValueError, match=r"cannot replace layer1\.0\.conv1 .*dim_out=64 is not divisible by heads=3"):
        gsanet.convert_to_gsa(model, img_size=32, heads=3)
    assert not gsa_modules(model)  # refused before any replacement
    tiny = TinyNet()
    fixed = nn.Sequential(OrderedDict(stem=tiny.stem, layer1=tiny.layer1, flat=nn.Flatten(), head=nn.Linear(320, 3)))
    with pytest.raises(ValueError, match=r"could not run Sequential on a \(1, 3, 5, 5\) input .* pass an img_size"):
        gsanet.convert_to_gsa(fixed, img_size=5)


def test_the_finetuning_script_runs(fmnist: Path, one_thread: None, capsys: pytest.CaptureFixture[str]) -> None:
    """``scripts/finetune_converted.py`` (the README's example) converts, fine-tunes and evaluates."""
    script = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "finetune_converted.py"))
    argv = ["--stages", "4", "--img-size", "16", "--steps", "2", "--batch-size", "8", "--eval-images", "16"]
    assert script["main"]([*argv, "--data-dir", str(fmnist), "--log-every", "1"]) == 0
    out = capsys.readouterr().out
    assert "converted 4 convolutions" in out and "step 2/2" in out and "top-1 on the first 16 test images" in out
