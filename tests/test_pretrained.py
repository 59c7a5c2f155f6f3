"""Shipped weights: timm loads them offline with ``pretrained=True`` and they reproduce their stated accuracy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.data import resolve_data_config

import gsanet  # noqa: F401  (registers the models)
from gsanet.datasets import DATASETS
from gsanet.models.pretrained import SHIPPED, shipped_cfg
from gsanet.train.data import find_fashion_mnist, idx_file, read_idx
from tests.shipped import evaluate_shipped

TOLERANCE = 0.2  # accuracy points
NAMES = sorted(SHIPPED)
needs_data = pytest.mark.skipif(find_fashion_mnist("data") is None, reason="Fashion-MNIST idx files not present")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No network: the Hugging Face hub is offline and so is every URL download."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("shipped weights must load without downloading")

    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(timm.models._builder, "download_cached_file", no_download)
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_hf", no_download)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a second thread only contends on a shared 2-core machine
    yield
    torch.set_num_threads(threads)


def _create(name: str, **kwargs: object) -> torch.nn.Module:
    return timm.create_model(name, pretrained=True, **kwargs)


def test_registry_is_consistent() -> None:
    assert {"gsa_resnet26_tiny", "conv_resnet26_tiny"} <= set(SHIPPED)
    for name, entry in SHIPPED.items():
        assert entry.model == name and entry.name == f"{name}.{entry.tag}" and entry.path.is_file(), name
        assert entry.path.stat().st_size < 5_000_000  # a few MB at most
        assert (entry.num_classes, entry.in_chans, entry.input_size) == (10, 1, (1, 28, 28))
        assert entry.dataset == "fashion-mnist" and len(entry.label_names) == 10
        assert "gsanet train" in entry.command and f"--model {name}" in entry.command
        assert 0 < entry.test_top1 <= 100 and 0 < entry.test_top1_first1000 <= 100
        cfg = shipped_cfg(entry)  # the timm config of the tag
        assert cfg["file"] == str(entry.path) and cfg["num_classes"] == 10
        assert cfg["input_size"] == (1, 28, 28) and cfg["mean"] == entry.mean
    assert "gsa_resnet50" not in SHIPPED


def test_weights_are_timm_pretrained_tags() -> None:
    """timm's own machinery sees the weights: listed, pretrained, the default tag, a complete config."""
    listed = set(timm.list_models(pretrained=True))
    for name, entry in SHIPPED.items():
        assert entry.name in listed and name in timm.list_models(pretrained=True, include_tags=False)
        assert timm.is_model_pretrained(name) and timm.is_model_pretrained(entry.name)
        cfg = timm.get_pretrained_cfg(entry.name)
        assert timm.get_pretrained_cfg(name) == cfg  # the default tag
        assert (cfg.architecture, cfg.tag, cfg.file) == (name, entry.tag, str(entry.path))
        assert (cfg.num_classes, cfg.input_size, cfg.mean, cfg.std) == (10, (1, 28, 28), entry.mean, entry.std)
        assert cfg.label_names == entry.label_names and cfg.pool_size == entry.pool_size and cfg.crop_pct == 1.0
    with pytest.raises(RuntimeError, match="Invalid pretrained tag"):
        timm.create_model("gsa_resnet26_tiny.cifar100", pretrained=True)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("tagged", [False, True], ids=["name", "tag"])
def test_pretrained_loads_the_shipped_file(name: str, tagged: bool) -> None:
    model = _create(SHIPPED[name].name if tagged else name)
    assert model.num_classes == 10 and model.pretrained_cfg["input_size"] == (1, 28, 28)
    stored = load_file(str(SHIPPED[name].path))
    state = model.state_dict()
    assert set(stored) == set(state)
    for key, value in stored.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)
    assert sum(p.numel() for p in model.parameters()) == SHIPPED[name].params
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    untrained = timm.create_model(name)  # the same default config, without the weights
    assert untrained.num_classes == 10 and untrained.stem.conv.in_channels == 1
    assert not torch.equal(untrained.head.fc.weight, model.head.fc.weight)


@pytest.mark.parametrize("name", NAMES)
def test_three_channel_input_as_timm_scripts_ask(name: str) -> None:
    """timm's scripts build the model with ``in_chans=3``: timm adapts the 1-channel first convolution, and the model's
    config (what ``resolve_data_config`` reads) says 3 channels with the weights' statistics repeated. A grey image
    given as RGB then gives the 1-channel model's output."""
    grey, rgb = _create(name).eval(), _create(name, in_chans=3).eval()
    data = resolve_data_config({}, model=rgb)
    assert data["input_size"] == (3, 28, 28) and data["mean"] == SHIPPED[name].mean * 3
    assert rgb.stem.conv.in_channels == 3 and timm.get_pretrained_cfg(name).input_size == (1, 28, 28)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(rgb(x.expand(-1, 3, -1, -1)), grey(x), rtol=1e-5, atol=1e-5)
    features = timm.create_model(name, pretrained=True, in_chans=3, features_only=True)
    assert resolve_data_config({}, model=features)["input_size"][0] == 3


def test_pretrained_without_shipped_weights_says_so() -> None:
    with pytest.raises(RuntimeError, match="No pretrained weights"):
        timm.create_model("gsa_resnet50", pretrained=True)


@needs_data
@pytest.mark.parametrize("name", NAMES)
def test_accuracy_on_the_first_1000_test_images(name: str) -> None:
    accuracy = evaluate_shipped(_create(name), limit=1000)
    assert accuracy == pytest.approx(SHIPPED[name].test_top1_first1000, abs=TOLERANCE)


@pytest.mark.slow
@needs_data
@pytest.mark.parametrize("name", NAMES)
def test_accuracy_on_the_full_test_set(name: str) -> None:
    accuracy = evaluate_shipped(_create(name))
    assert accuracy == pytest.approx(SHIPPED[name].test_top1, abs=TOLERANCE)


@pytest.mark.parametrize("img_size", [16, 64, (40, 56)])
def test_pretrained_at_another_img_size(img_size: int | tuple[int, int]) -> None:
    """The loaded tables are kept whole in a model built for another ``img_size`` (its tables take their length): it
    computes what the model at the weights' own size computes, at that size and at a larger one."""
    name = "gsa_resnet26_tiny"
    reference = timm.create_model(name, pretrained=True).eval()
    model = timm.create_model(name, pretrained=True, img_size=img_size).eval()

    def lengths(net: torch.nn.Module) -> list[int]:
        return [len(m.rel_col) for m in net.modules() if getattr(m, "rel_col", None) is not None]

    built = lengths(timm.create_model(name, img_size=img_size))  # the tables' lengths before loading
    assert built != lengths(reference)
    assert lengths(model) == lengths(reference)
    stored = load_file(str(SHIPPED[name].path))["stages.0.0.self_attn.rel_col"]  # (2 * 32 - 1, 16)
    torch.testing.assert_close(model.state_dict()["stages.0.0.self_attn.rel_col"], stored, rtol=0, atol=0)
    for size in ((28, 28), (64, 48)):
        x = torch.randn(2, 1, *size)
        with torch.no_grad():
            expected = reference(x)
            torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
        assert torch.isfinite(expected).all()


@pytest.mark.parametrize("path", ["checkpoint_path", "pretrained_cfg_overlay", "load_checkpoint", "load_state_dict"])
def test_weights_load_at_another_img_size_through_every_path(path: str) -> None:
    """Weights saved at one size load into a model built at another by each ordinary path (each GSA module fits the
    tables it loads), and the model computes what the saved one computes, at the saved size and a larger one."""
    name, file = "gsa_resnet26_tiny", str(SHIPPED["gsa_resnet26_tiny"].path)
    reference = _create(name).eval()
    x = {size: torch.randn(2, 1, *size) for size in ((28, 28), (40, 36))}
    for img_size in (16, 64):  # shorter and longer tables than the saved 28x28 model's
        if path == "checkpoint_path":
            model = timm.create_model(name, img_size=img_size, checkpoint_path=file)
        elif path == "pretrained_cfg_overlay":
            model = _create(name, img_size=img_size, pretrained_cfg_overlay=dict(file=file))
        else:
            model = timm.create_model(name, img_size=img_size)
            if path == "load_checkpoint":
                timm.models.load_checkpoint(model, file)
            else:
                model.load_state_dict(load_file(file))
        model.eval()
        with torch.no_grad():
            for inputs in x.values():
                torch.testing.assert_close(model(inputs), reference(inputs), rtol=1e-5, atol=1e-5)


def _first_test_images(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` Fashion-MNIST test images resized (bilinear) to ``size`` and normalised, and their labels."""
    folder = find_fashion_mnist("data")
    images = read_idx(idx_file(folder, "t10k-images-idx3-ubyte"))[:n].unsqueeze(1).float() / 255.0
    labels = read_idx(idx_file(folder, "t10k-labels-idx1-ubyte"))[:n].long()
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False) if size != 28 else images
    fmnist = DATASETS["fashion-mnist"]
    return (images - fmnist.mean[0]) / fmnist.std[0], labels


@needs_data
@pytest.mark.parametrize("size", [56, 64])
def test_shipped_gsa_model_keeps_sensible_values_at_larger_inputs(size: int) -> None:
    """At 2x and 2.3x its training size the shipped GSA model gives finite logits of the size it gives at 28 px (its
    largest there is 4.6) and classifies well above chance (results/size_sweep.md: 74% at 56 px on 1,000 images)."""
    x, labels = _first_test_images(64, size)
    with torch.no_grad():
        logits = _create("gsa_resnet26_tiny").eval()(x)
    assert torch.isfinite(logits).all()
    assert logits.abs().max() < 10
    assert (logits.argmax(1) == labels).double().mean() > 0.4


def test_size_policy_leaves_the_trained_size_unchanged() -> None:
    """At 28 px (and below) the tables cover every offset: the default size policy computes bit for bit what edge
    replication without scaling (the behaviour before the policy existed) computes."""
    x = torch.randn(4, 1, 28, 28)
    before = _create("gsa_resnet26_tiny", gsa_kwargs=dict(rel_pos_extend="edge", pos_scale=False)).eval()
    with torch.no_grad():
        assert torch.equal(_create("gsa_resnet26_tiny").eval()(x), before(x))
