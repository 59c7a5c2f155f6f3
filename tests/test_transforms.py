"""The GSA module and models under what PyTorch users apply to them: gradients of every order, ``torch.func``
transforms, and graphs recorded at one input size and run at others (``torch.export``, ONNX, ``torch.jit.trace``,
``torch.compile(dynamic=True)``). Every comparison is in float64 against the eager module (itself checked against the
reference in ``test_gsa.py``) or against finite differences."""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import timm
import torch
from torch import nn
from torch.export import Dim

from gsanet.layers import GlobalSelfAttention, axial_kernel
from gsanet.layers.axial_kernel import FusedAxialRelPosAttention
from gsanet.layers.axial_ops import AxialRelPosAttention
from gsanet.layers.rel_pos import REL_POS_EXTENDS, cover, gather_offsets, relative_to_absolute, table_center
from tests.gsa_reference import randomize_, rel_error
from tests.test_models import create_calibrated

# ------------------------------------------------------------------------------------------- gradients of every order
PATHS = {  # module arguments, the switch that forces the path, and the autograd function it runs (None: plain ops)
    "fused": (dict(), True, FusedAxialRelPosAttention),
    "gemm": (dict(), False, AxialRelPosAttention),
    "gemm-window": (dict(pos_span=3), False, AxialRelPosAttention),
    "plain-softmax": (dict(pos_softmax=True), False, None),
}


@contextlib.contextmanager
def counting(function: type[torch.autograd.Function] | None) -> Iterator[list[int]]:
    """Counts the calls of an autograd function's ``apply`` in the block (nothing for None)."""
    calls: list[int] = []
    if function is None:
        yield calls
        return
    original = function.apply

    def spy(*args: object) -> torch.Tensor:
        calls.append(1)
        return original(*args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(function, "apply", spy)
        yield calls


def tiny_module(**kwargs: object) -> GlobalSelfAttention:
    torch.manual_seed(0)
    return randomize_(GlobalSelfAttention(2, heads=1, feat_size=(2, 3), **kwargs).double(), 1).eval()


def as_function(m: nn.Module, names: list[str]) -> Callable[..., torch.Tensor]:
    """``m``'s forward as a function of its input and the named parameters."""

    def fn(x: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(m, dict(zip(names, values, strict=True)), (x,))

    return fn


@pytest.mark.parametrize("path", list(PATHS))
def test_gradgradcheck_on_every_path(path: str) -> None:
    """Second derivatives with respect to the input and the relative tables (the mixed ones a gradient penalty needs)
    are exact on every path the module takes; the path is checked to be the one named."""
    kwargs, kernel, function = PATHS[path]
    if kernel:
        assert axial_kernel.available(), f"the fused kernel did not build: {axial_kernel.build_error()}"
    m = tiny_module(**kwargs)
    x = torch.randn(1, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    names = ["rel_col", "rel_row"]
    tables = [getattr(m, n).detach().clone().requires_grad_() for n in names]
    with axial_kernel.kernel_enabled(kernel), counting(function) as calls:
        assert torch.autograd.gradgradcheck(as_function(m, names), (x, *tables), eps=1e-6, atol=1e-5, fast_mode=True)
    assert function is None or calls, f"the {path} path did not run"


def smooth_(model: nn.Module) -> nn.Module:
    """``model`` with every ReLU replaced by SiLU: a gradient penalty through ReLUs jumps wherever a pre-activation
    crosses zero, so finite differences of it do not converge."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(module, name, nn.SiLU())
    return model


def test_input_gradient_penalty_matches_finite_differences() -> None:
    """The derivative of a gradient penalty ``|dL/dx|^2`` with respect to the weights, through a whole GSA-ResNet on
    its default paths, equals its central finite difference along a random direction."""
    torch.manual_seed(0)
    x = torch.randn(2, 1, 12, 12, dtype=torch.float64)
    model = smooth_(create_calibrated("gsa_resnet26_tiny", x.float(), num_classes=3).double())
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(1)
    direction = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) * p.abs().mean().item() for n, p in params.items()}
    weights = torch.randn(2, 3, dtype=torch.float64, generator=g)

    def penalty(values: dict[str, torch.Tensor]) -> torch.Tensor:
        xg = x.clone().requires_grad_()
        loss = (torch.func.functional_call(model, values, (xg,)) * weights).sum()
        (grad_x,) = torch.autograd.grad(loss, xg, create_graph=True)
        return grad_x.square().sum()

    grads = torch.autograd.grad(penalty(params), list(params.values()), materialize_grads=True)  # head bias: unused
    autograd = sum((gr * direction[n]).sum() for gr, n in zip(grads, params, strict=True)).item()
    eps = 1e-6
    with torch.no_grad():
        ahead = {n: p + eps * direction[n] for n, p in params.items()}
        behind = {n: p - eps * direction[n] for n, p in params.items()}
    finite = ((penalty(ahead) - penalty(behind)) / (2 * eps)).item()
    assert abs(autograd - finite) <= 1e-6 * abs(finite), f"autograd {autograd:.9e}, finite differences {finite:.9e}"


# --------------------------------------------------------------------------------------------------------- torch.func
@pytest.mark.parametrize("kernel", [True, False], ids=["kernel-allowed", "gemm"])
def test_func_grad_vmap_jvp_on_the_module(kernel: bool) -> None:
    """``torch.func.grad``, ``vmap`` and ``jvp`` give what eager autograd and a loop give."""
    torch.manual_seed(0)
    m = randomize_(GlobalSelfAttention(8, heads=2, feat_size=4).double(), 2).eval()
    x = torch.randn(3, 8, 5, 6, dtype=torch.float64)
    tangent = torch.randn_like(x)
    with axial_kernel.kernel_enabled(kernel):
        xg = x.clone().requires_grad_()
        (expected,) = torch.autograd.grad(m(xg).square().sum(), xg)
        actual = torch.func.grad(lambda t: m(t).square().sum())(x)
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)

        batched = torch.func.vmap(lambda t: m(t.unsqueeze(0)).squeeze(0))(x)
        torch.testing.assert_close(batched, torch.cat([m(t[None]) for t in x]).detach(), rtol=1e-10, atol=1e-12)

        out, jvp = torch.func.jvp(m, (x,), (tangent,))
        u = torch.randn_like(out)
        (vjp,) = torch.autograd.grad(m(xg), xg, u)  # <u, J t> = <J^T u, t>
        torch.testing.assert_close((u * jvp).sum(), (vjp * tangent).sum(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(out, m(x).detach(), rtol=1e-10, atol=1e-12)


def test_per_sample_gradients_of_a_model_equal_the_loop() -> None:
    """Per-sample gradients by ``vmap(grad(...))`` through a GSA-ResNet, against one backward pass per sample."""
    torch.manual_seed(0)
    x = torch.randn(3, 1, 10, 10)
    model = create_calibrated("gsa_resnet26_tiny", x, num_classes=4).double()
    x, y = x.double(), torch.tensor([0, 3, 1])
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logits = torch.func.functional_call(model, p, (xi[None],))
        return nn.functional.cross_entropy(logits, yi[None])

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(len(x)):
        model.zero_grad()
        loss(dict(model.named_parameters()), x[i], y[i]).backward()
        for n, p in model.named_parameters():
            assert rel_error(per_sample[n][i], p.grad) < 1e-9, f"{n}, sample {i}"


def test_stack_module_state_ensemble_equals_the_loop() -> None:
    """A model ensemble by ``stack_module_state`` + ``vmap`` computes each member's output."""
    members = [tiny_module() for _ in range(3)]
    for i, m in enumerate(members):
        randomize_(m, 10 + i)
    params, buffers = torch.func.stack_module_state(members)
    base = tiny_module().to("meta")
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64)

    def run(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.func.functional_call(base, (p, b), (x,))

    with torch.no_grad():
        ensemble = torch.func.vmap(run)(params, buffers)
        for i, m in enumerate(members):
            torch.testing.assert_close(ensemble[i], m(x), rtol=1e-10, atol=1e-12)


def test_model_ensemble_and_jvp() -> None:
    """Through whole GSA-ResNets: a ``stack_module_state`` ensemble equals each member, and ``jvp`` agrees with the
    vector-Jacobian product of eager autograd (``<u, J t> = <J^T u, t>``)."""
    x = torch.randn(2, 1, 10, 10)
    members = [create_calibrated("gsa_resnet26_tiny", x, num_classes=4, seed=seed).double() for seed in (1, 2)]
    x = x.double()
    params, buffers = torch.func.stack_module_state(members)
    base = copy.deepcopy(members[0]).to("meta")

    def run(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.func.functional_call(base, (p, b), (x,))

    with torch.no_grad():
        ensemble = torch.func.vmap(run)(params, buffers)
        for i, m in enumerate(members):
            assert rel_error(ensemble[i], m(x)) < 1e-10, f"member {i}"
    tangent = torch.randn_like(x)
    out, jvp = torch.func.jvp(members[0], (x,), (tangent,))
    u = torch.randn_like(out)
    xg = x.clone().requires_grad_()
    (vjp,) = torch.autograd.grad(members[0](xg), xg, u)
    torch.testing.assert_close((u * jvp).sum(), (vjp * tangent).sum(), rtol=1e-10, atol=1e-12)


# -------------------------------------------------------------------------------------- graphs at symbolic sizes
@pytest.mark.parametrize("extend", REL_POS_EXTENDS)
@pytest.mark.parametrize("scale", [False, True], ids=["unscaled", "scaled"])
def test_gathered_keys_extend_as_extend_rel_pos_does(extend: str, scale: bool) -> None:
    """The index form the recorded graphs use lays out the same keys as the eager path under every size policy, on
    axes shorter than, equal to and longer than the table (where the global table is extended), and for a window;
    exactly (bit for bit) where the table covers the axis."""
    torch.manual_seed(0)
    for pos_span, n_rel in ((None, 7), (3, 3), (5, 5)):
        table = torch.randn(n_rel, 6, dtype=torch.float64)
        for size in (1, 2, 4, 6, 9, 13):
            extended = cover(table, size, pos_span, extend, scale)
            expected = relative_to_absolute(extended, table_center(extended), size)
            exact = pos_span is not None or size <= (n_rel + 1) // 2
            tol = 0 if exact else 1e-12
            got = gather_offsets(table, size, pos_span, extend, scale)
            torch.testing.assert_close(got, expected, rtol=tol, atol=tol)


def gsa_and_inputs(**kwargs: object) -> tuple[GlobalSelfAttention, torch.Tensor, list[torch.Tensor]]:
    """A stride-2 module with tables for 6x6 (and ``kwargs``), an example input, and inputs of other sizes (odd, even,
    beyond the tables), in float64."""
    torch.manual_seed(0)
    m = randomize_(GlobalSelfAttention(8, heads=2, feat_size=6, stride=2, **kwargs).double(), 3).eval()
    others = [torch.randn(3, 8, 9, 4, dtype=torch.float64), torch.randn(2, 8, 5, 11, dtype=torch.float64)]
    return m, torch.randn(2, 8, 6, 7, dtype=torch.float64), others


def spatial_dims(batch: bool = True) -> dict[str, dict[int, Dim]]:
    dims = {2: Dim("height", min=3, max=256), 3: Dim("width", min=3, max=256)}  # maps of 1 specialise
    return {"x": {0: Dim("batch"), **dims} if batch else dims}


@pytest.mark.parametrize("kwargs", [dict(), dict(pos_softmax=True, pos_span=3)], ids=["default", "softmax-window"])
def test_export_with_dynamic_height_and_width_runs_at_other_sizes(kwargs: dict) -> None:
    """``torch.export`` with ``Dim`` on batch, height and width: no specialisation, and the exported program equals
    eager at sizes other than the example's (the paper's layer, and the softmax ablation with a window)."""
    m, x, others = gsa_and_inputs(**kwargs)
    program = torch.export.export(m, (x,), dynamic_shapes=spatial_dims())
    for other in others:
        with torch.no_grad():
            torch.testing.assert_close(program.module()(other), m(other), rtol=1e-12, atol=1e-12)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_jit_trace_runs_at_other_sizes() -> None:
    """A ``torch.jit.trace`` taken at one size computes the eager result at other sizes."""
    m, x, others = gsa_and_inputs()
    with torch.no_grad():
        traced = torch.jit.trace(m, x)
        for other in others:
            torch.testing.assert_close(traced(other), m(other), rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_onnx_export_with_dynamic_height_and_width_matches_eager(tmp_path: Path) -> None:
    """Dynamo ONNX export with symbolic batch, height and width; onnxruntime at other sizes equals eager."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    m, x, others = gsa_and_inputs()
    m, x = m.float(), x.float()
    path = tmp_path / "gsa.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x,), str(path), dynamo=True, dynamic_shapes=spatial_dims())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert not any(isinstance(d, int) for d in session.get_inputs()[0].shape[2:]), "height and width are symbolic"
    for other in others:
        other = other.float()
        with torch.no_grad():
            expected = m(other)
        (actual,) = session.run(None, {session.get_inputs()[0].name: other.numpy()})
        torch.testing.assert_close(torch.from_numpy(actual), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_compile_dynamic_does_not_recompile_per_size() -> None:
    """``torch.compile(dynamic=True)``: one graph for three input sizes, each equal to eager (batches of 2 or more:
    dynamo specialises a size of 1)."""
    import torch._dynamo

    m, x, others = gsa_and_inputs()
    torch._dynamo.reset()
    compiled = torch.compile(m, dynamic=True)
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        for t in (x, *others):
            torch.testing.assert_close(compiled(t), m(t), rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_model_export_and_onnx_with_dynamic_height_and_width(tmp_path: Path) -> None:
    """The shipped GSA-ResNet exported at 28x28 with symbolic batch, height and width runs at 40x48 and 33x29 (odd
    maps through every stride-2 module), by ``torch.export`` and in onnxruntime; the smallest size keeps the last
    stage's map above 1 (export specialises sizes of 1, for the conv twin too)."""
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28)
    model = timm.create_model("gsa_resnet26_tiny", pretrained=True).eval()
    dims = {"x": {0: Dim("batch"), 2: Dim("height", min=16, max=512), 3: Dim("width", min=16, max=512)}}
    others = [torch.randn(3, 1, 40, 48), torch.randn(1, 1, 33, 29)]
    program = torch.export.export(model, (x,), dynamic_shapes=dims)
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=True, dynamic_shapes=dims)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for other in others:
        with torch.no_grad():
            expected = model(other)
            assert expected.isfinite().all()
            torch.testing.assert_close(program.module()(other), expected, rtol=1e-4, atol=1e-5)
        (actual,) = session.run(None, {session.get_inputs()[0].name: other.numpy()})
        torch.testing.assert_close(torch.from_numpy(actual), expected, rtol=1e-4, atol=1e-4)
