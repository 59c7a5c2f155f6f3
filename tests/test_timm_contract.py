"""The contracts timm's own ``tests/test_models.py`` checks for its models, checked here for every gsanet model.

timm's test file is not installed with timm; these tests restate its checks (forward, backward, default config keys,
``forward_features`` at the config's ``pool_size``, ``forward_intermediates``, FX forward and backward,
``features_only``, pretrained loading) with the same tools (``timm.layers`` leaf registration, torchvision's FX
feature extraction). The tiny members run in the default suite; the rest, whose inputs are 224x224 or wide, under
``-m slow``.
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
from timm.layers import get_notrace_functions, get_notrace_modules
from torch import nn

import gsanet  # noqa: F401  (registers the models)
from gsanet.layers import GlobalSelfAttention
from gsanet.models import model_archs

torchvision_fx = pytest.importorskip("torchvision.models.feature_extraction")

MODELS = list(model_archs)
TINY = [name for name in MODELS if "_tiny" in name]
OTHERS = [name for name in MODELS if name not in TINY]
ALL = [*TINY, *(pytest.param(name, marks=pytest.mark.slow) for name in OTHERS)]
FX_SIZE = 16  # FX checks on a 16x16 input (small stem) / 64x64 (ImageNet stem): every stage runs, cheaply


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fx_input_size(name: str, model: nn.Module) -> tuple[int, int, int]:
    in_chans = model.pretrained_cfg["input_size"][0]
    return (in_chans, FX_SIZE, FX_SIZE) if model_archs[name].small_input else (in_chans, 64, 64)


def timm_input_size(model: nn.Module, target: int) -> tuple[int, int, int]:
    """timm's ``_get_input_size``: the config's input, each side capped at ``target`` unless the size is fixed."""
    cfg = model.pretrained_cfg
    if cfg.get("fixed_input_size"):
        return tuple(cfg["input_size"])
    return tuple(min(x, target) if i else x for i, x in enumerate(cfg["input_size"]))


# ---------------------------------------------------------------------------------------------------- timm's checks
@pytest.mark.parametrize("name", ALL)
def test_model_forward(name: str) -> None:
    """timm's ``test_model_forward``: eval mode, the default config's input, no NaN; grad checkpointing changes
    nothing."""
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    x = torch.randn(2, *timm_input_size(model, 256))
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, model.num_classes) and not torch.isnan(out).any()
        model.set_grad_checkpointing()
        torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_model_backward(name: str) -> None:
    """timm's ``test_model_backward``: 42 classes, train mode, every parameter gets a gradient."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=42).train()
    n_params = sum(p.numel() for p in model.parameters())
    out = model(torch.randn(2, *timm_input_size(model, 128)))
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert sum(p.grad.numel() for p in model.parameters()) == n_params
    assert out.shape == (2, 42) and not torch.isnan(out).any()


@pytest.mark.parametrize("name", ALL)
def test_model_default_cfgs(name: str) -> None:
    """timm's ``test_model_default_cfgs``: at the config's input, ``forward_features`` is ``pool_size`` and
    ``num_features`` wide; ``pre_logits``, a removed classifier and a removed pool agree with it; the config's
    ``first_conv`` and ``classifier`` are parameters."""
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    cfg, state = model.pretrained_cfg, model.state_dict()
    assert model.num_classes >= 0 and model.num_features > 0
    for key in ("input_size", "pool_size", "crop_pct", "interpolation", "mean", "std", "first_conv", "classifier"):
        assert cfg.get(key) is not None, key
    assert len(cfg["mean"]) == len(cfg["std"]) == cfg["input_size"][0] and not cfg.get("fixed_input_size")
    assert f"{cfg['classifier']}.weight" in state and f"{cfg['first_conv']}.weight" in state
    x = torch.randn(2, *cfg["input_size"])
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert features.shape == (2, model.num_features, *cfg["pool_size"])
        assert pre_logits.shape == (2, model.num_features)
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pre_logits)
        model.reset_classifier(0, "")
        assert model(x).shape == features.shape
        torch.manual_seed(0)
        unpooled = timm.create_model(name, num_classes=0, global_pool="").eval()
        assert unpooled(x).shape == features.shape


@pytest.mark.parametrize("name", ALL)
def test_model_forward_intermediates(name: str) -> None:
    """timm's ``test_model_forward_intermediates``: one map per ``feature_info`` entry, of its channels and
    reduction; the final output is ``forward_features``', with and without grad checkpointing."""
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    assert len(info.channels()) >= 3
    size = timm_input_size(model, 96)
    x = torch.randn(2, *size)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x, output_fmt="NCHW")
        assert len(intermediates) == len(info.channels())
        for chs, red, fmap in zip(info.channels(), info.reduction(), intermediates, strict=True):
            assert fmap.shape == (2, chs, math.ceil(size[1] / red), math.ceil(size[2] / red))
            assert not torch.isnan(fmap).any()
        torch.testing.assert_close(final, model.forward_features(x))
        model.set_grad_checkpointing()
        torch.testing.assert_close(model.forward_intermediates(x)[0], final, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("feature_cls", ["list", "hook", "fx"])
def test_model_forward_features(name: str, feature_cls: str) -> None:
    """timm's ``test_model_forward_features``: ``features_only`` models (every feature class), maps of the
    ``feature_info`` channels and reductions, a subset by ``out_indices``."""
    torch.manual_seed(0)
    model = timm.create_model(name, features_only=True, feature_cls=feature_cls).eval()
    size = timm_input_size(model, 96)
    x = torch.randn(2, *size)
    with torch.no_grad():
        maps = model(x)
    maps = list(maps.values()) if isinstance(maps, dict) else maps
    info = model.feature_info
    assert len(maps) == len(info.channels()) == 5
    for chs, red, fmap in zip(info.channels(), info.reduction(), maps, strict=True):
        assert fmap.shape == (2, chs, math.ceil(size[1] / red), math.ceil(size[2] / red))
        assert not torch.isnan(fmap).any()
    subset = timm.create_model(name, features_only=True, feature_cls=feature_cls, out_indices=(1, 3))
    assert subset.feature_info.reduction() == [info.reduction()[1], info.reduction()[3]]


PRETRAINED = timm.list_models("*", pretrained=True, include_tags=True)


@pytest.mark.parametrize("name", [n for n in PRETRAINED if n.split(".")[0] in model_archs])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_model_load_pretrained(name: str, in_chans: int) -> None:
    """timm's ``test_model_load_pretrained`` / ``test_model_features_pretrained``: the weights load with other
    classes (head dropped) or none, at another channel count (first conv adapted), and into ``features_only``."""
    for num_classes in (5, 0):
        model = timm.create_model(name, pretrained=True, in_chans=in_chans, num_classes=num_classes).eval()
        with torch.no_grad():
            out = model(torch.randn(2, in_chans, 28, 28))
        assert out.shape == (2, num_classes or model.num_features) and torch.isfinite(out).all()
    features = timm.create_model(name, pretrained=True, features_only=True)
    assert len(features(torch.randn(2, 1, 28, 28))) == 5


def create_fx_model(model: nn.Module, train: bool = False) -> nn.Module:
    """timm's ``_create_fx_model``: a graph module returning the model's output, traced with timm's leaf modules."""
    tracer_kwargs = dict(
        leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(), param_shapes_constant=True
    )
    train_nodes, eval_nodes = torchvision_fx.get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    return torchvision_fx.create_feature_extractor(
        model,
        train_return_nodes=[train_nodes[-1]],
        eval_return_nodes=[eval_nodes[-1]],
        tracer_kwargs=tracer_kwargs,
    )


# ---------------------------------------------------------------------------------------------------- FX
def test_gsa_module_is_a_registered_fx_leaf() -> None:
    assert GlobalSelfAttention in get_notrace_modules()
    model = nn.Sequential(nn.Conv2d(3, 8, 1), GlobalSelfAttention(8, heads=2))
    with pytest.raises(TypeError, match="leaf"):  # traced through, it says how to trace it as a leaf
        torch.fx.symbolic_trace(model)
    traced = torchvision_fx.create_feature_extractor(
        model, ["1"], tracer_kwargs={"leaf_modules": [GlobalSelfAttention]}
    )
    x = torch.randn(2, 3, 5, 6)
    torch.testing.assert_close(traced(x)["1"], model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL)
def test_forward_fx(name: str) -> None:
    torch.manual_seed(0)
    # live residual branches (no zero-init), batch statistics: the output depends on every GSA module and stays finite
    model = timm.create_model(name, zero_init_last=False).train()
    fx_model = create_fx_model(model)
    x = torch.randn(2, *fx_input_size(name, model))
    with torch.inference_mode():
        expected = model(x)
        actual = tuple(fx_model(x).values())[0]
    assert torch.equal(actual, expected) and torch.isfinite(expected).all()
    leaves = [n for n in fx_model.graph.nodes if n.op == "call_module"]
    n_gsa = sum(isinstance(m, GlobalSelfAttention) for m in model.modules())
    assert sum(isinstance(model.get_submodule(str(n.target)), GlobalSelfAttention) for n in leaves) == n_gsa


@pytest.mark.parametrize("name", ALL)
def test_backward_fx(name: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=42, zero_init_last=False).train()
    n_params = sum(p.numel() for p in model.parameters())
    fx_model = create_fx_model(model, train=True)
    out = tuple(fx_model(torch.randn(2, *fx_input_size(name, model))).values())[0]
    out.mean().backward()
    missing = [n for n, p in fx_model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert out.shape == (2, 42) and sum(p.grad.numel() for p in fx_model.parameters()) == n_params


@pytest.mark.parametrize("name", ["gsa_resnet26_tiny", pytest.param("gsa_resnet26", marks=pytest.mark.slow)])
def test_features_only_fx_matches_hooks(name: str) -> None:
    torch.manual_seed(0)
    listed = timm.create_model(name, features_only=True, zero_init_last=False).train()
    torch.manual_seed(0)
    graph = timm.create_model(name, features_only=True, feature_cls="fx", zero_init_last=False).train()
    x = torch.randn(2, *fx_input_size(name, listed))
    with torch.no_grad():
        for a, b in zip(listed(x), graph(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
