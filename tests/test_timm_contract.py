"""The contracts timm's own ``tests/test_models.py`` checks for its models, checked here for every gsanet model.

timm's test file is not installed with timm; these tests restate its checks (forward, backward, default config keys,
``forward_features`` at the config's ``pool_size``, ``forward_intermediates``, FX forward and backward,
``features_only``, pretrained loading) with the same tools (``timm.layers`` leaf registration, torchvision's FX
feature extraction). The tiny members run in the default suite; the rest, whose inputs are 224x224 or wide, under
``-m slow``.
"""

from __future__ import annotations

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
    x = torch.randn(2, 3, *fx_input_size(name, listed)[1:])
    with torch.no_grad():
        for a, b in zip(listed(x), graph(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
