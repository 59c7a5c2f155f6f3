"""Tests of the fused CPU kernel (``gsanet.layers.axial_kernel``): its builds, its dispatch, and the module with it."""

from __future__ import annotations

import pytest
import torch

from gsanet.layers import GlobalSelfAttention, axial_kernel
from gsanet.layers.axial_kernel import FusedAxialRelPosAttention
from tests.gsa_reference import axial_plain, random_lines, rel_error


def _require_kernel(variant: str | None = None) -> None:
    """The fused kernel must have built: a machine without a compiler fails here rather than skipping."""
    assert axial_kernel.available(variant), f"the fused CPU kernel did not build: {axial_kernel.build_error(variant)}"


def _fused(q: torch.Tensor, v: torch.Tensor, rows: torch.Tensor, variant: str | None = None) -> torch.Tensor:
    return FusedAxialRelPosAttention.apply(q, v, rows, variant)


_VARIANTS = axial_kernel.host_variants()  # every build this CPU can execute (an AVX2 build runs on AVX-512 too)


@pytest.mark.parametrize("transposed", [False, True], ids=["rows", "columns"])
@pytest.mark.parametrize(
    "shape",
    [(3, 3, 2, 5, 4, 3), (2, 2, 5, 9, 19, 3), (3, 1, 16, 11, 17, 16), (1, 2, 8, 40, 7, 12), (2, 1, 3, 1, 1, 2)],
    ids=["tiny", "S19-dk5", "dk16", "L40", "S1"],
)
@pytest.mark.parametrize(
    "dtype,bound",  # of the largest magnitude; bfloat16/float16: float32 arithmetic, rounded once on the way out
    [(torch.float64, 1e-13), (torch.float32, 1e-6), (torch.bfloat16, 1e-2), (torch.float16, 1.5e-3)],
    ids=["f64", "f32", "bf16", "f16"],
)
@pytest.mark.parametrize("variant", _VARIANTS)
def test_fused_axial_kernel_matches_plain_autograd(
    shape: tuple[int, ...], dtype: torch.dtype, bound: float, transposed: bool, variant: str
) -> None:
    """The fused CPU kernel against plain autograd in float64 on the same (rounded) inputs: lanes partly empty
    (B*L < 16) or spanning images (B*L = 33, 80), positions in more than one 16-wide transpose block (S = 17, 19),
    channel counts split 8 + 4 + 2 + 1 (dk 5, dv 3, 16, 12), S = 1; contiguous inputs and the column pass's
    transposed views; every dtype the kernel takes; every build of the kernel this CPU can execute."""
    _require_kernel(variant)
    torch.manual_seed(0)
    B, h, dk, L, S, dv = shape
    q, v = random_lines(dtype, transposed, B, h, dk, L, S), random_lines(dtype, transposed, B, h, dv, L, S)
    rows = torch.randn(h, dk, 2 * S - 1, dtype=dtype, requires_grad=True)
    grad = torch.randn(B, h, dv, L, S, dtype=dtype)
    out = _fused(q, v, rows, variant)
    exact = [t.detach().double().requires_grad_() for t in (q, v, rows)]  # the float64 truth of these inputs
    expected = axial_plain(*exact)
    assert out.dtype == dtype and rel_error(out.double(), expected) < bound
    if L > 1 and S > 1:
        assert out.stride(-1) < out.stride(-2) if not transposed else out.stride(-1) > out.stride(-2)
    actual_grads = torch.autograd.grad(out, (q, v, rows), grad)
    expected_grads = torch.autograd.grad(expected, exact, grad.double())
    for a, e, name in zip(actual_grads, expected_grads, ("q", "v", "rows"), strict=True):
        assert a.dtype == dtype and rel_error(a.double(), e) < bound, name


@pytest.mark.parametrize("variant", _VARIANTS)
def test_fused_axial_kernel_gradcheck_and_broadcast_gradient(variant: str) -> None:
    """Numerical gradients in float64; an expanded incoming gradient (stride 0, as from ``out.sum()``)."""
    _require_kernel(variant)
    torch.manual_seed(0)
    q = torch.randn(2, 2, 3, 5, 6, dtype=torch.float64).transpose(-1, -2).requires_grad_()  # (2, 2, 3, 6, 5)
    v = torch.randn(2, 2, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    rows = torch.randn(2, 3, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: _fused(*t, variant), (q, v, rows))
    actual = torch.autograd.grad(_fused(q, v, rows, variant).sum(), (q, v, rows))
    expected = torch.autograd.grad(axial_plain(q, v, rows).sum(), (q, v, rows))
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


def test_module_same_with_and_without_the_fused_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The module's output and every parameter gradient agree between the kernel and the batched-GEMM path."""
    _require_kernel()
    torch.manual_seed(0)
    m = GlobalSelfAttention(24, heads=3, feat_size=20).double()
    x = torch.randn(2, 24, 19, 13, dtype=torch.float64, requires_grad=True)

    def run() -> list[torch.Tensor]:
        m.zero_grad()
        y = m(x)
        grads = torch.autograd.grad(
            y, [x, *m.parameters()], torch.randn_like(y, generator=torch.Generator().manual_seed(1))
        )
        return [y, *grads]

    fused = run()
    monkeypatch.setattr(axial_kernel, "usable", lambda *tensors: False)
    gemm = run()
    for a, e in zip(fused, gemm, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_module_under_bf16_autocast_runs_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under CPU autocast the queries and values are bfloat16 while the relative tables stay float32 parameters:
    both passes still take the kernel, and agree with the GEMM path within bfloat16 rounding."""
    _require_kernel()
    torch.manual_seed(0)
    m = GlobalSelfAttention(16, heads=4)
    x = torch.randn(2, 16, 9, 7)
    calls = []
    apply = FusedAxialRelPosAttention.apply

    def spy(*args: torch.Tensor) -> torch.Tensor:
        calls.append(args[0].dtype)
        return apply(*args)

    monkeypatch.setattr(FusedAxialRelPosAttention, "apply", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16), axial_kernel.kernel_enabled(True):  # bounds aside
        fused = m(x)
    assert calls == [torch.bfloat16, torch.bfloat16]
    monkeypatch.setattr(axial_kernel, "usable", lambda *tensors: False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gemm = m(x)
    assert len(calls) == 2 and fused.dtype == gemm.dtype
    assert rel_error(fused.double(), gemm.double()) < 2e-2


def test_fused_kernel_only_where_it_applies() -> None:
    """CPU floating tensors of one dtype in eager mode; never for mixed dtypes, integers, meta tensors or under a
    dispatch mode (the FLOP counter must see the GEMM path's operators)."""
    _require_kernel()
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, 3)
    assert axial_kernel.usable(x, x.double()) is False
    with axial_kernel.kernel_enabled(True):  # where it can run, measured faster or not
        assert all(axial_kernel.usable(x.to(t)) for t in (torch.float32, torch.float64, torch.bfloat16, torch.half))
    assert axial_kernel.usable(x) and axial_kernel.usable(x.double())
    assert not axial_kernel.usable(x.half())  # float16 was never measured against the GEMM path
    assert not axial_kernel.usable(x.long())
    assert not axial_kernel.usable(torch.empty(2, 3, device="meta"))
    with FlopCounterMode(display=False):
        assert not axial_kernel.usable(x)


def test_failed_kernel_build_warns_once_and_falls_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A machine without a compiler: one warning that says what failed and what to install, then the GEMM path."""
    from torch.utils import cpp_extension

    def no_compiler(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Error building extension: c++: command not found")

    monkeypatch.setattr(axial_kernel, "_state", {})
    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    with caplog.at_level("WARNING", logger=axial_kernel.__name__):
        assert not axial_kernel.build() and not axial_kernel.build()
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "command not found" in warnings[0].getMessage()
    assert "g++" in warnings[0].getMessage() and "command not found" in axial_kernel.build_error()
    m = GlobalSelfAttention(8, heads=2).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 8, 5, 4)).shape == (1, 8, 5, 4)


def test_kernel_switch_off_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """``GSANET_FUSED_AXIAL=0`` (or a failed build) leaves the GEMM path, with the same output."""
    torch.manual_seed(0)
    m = GlobalSelfAttention(8, heads=2).double().eval()
    x = torch.randn(2, 8, 6, 5, dtype=torch.float64)
    with torch.no_grad():
        expected = m(x)
    monkeypatch.setattr(axial_kernel, "_state", {})
    monkeypatch.setenv("GSANET_FUSED_AXIAL", "0")
    assert not axial_kernel.available() and "GSANET_FUSED_AXIAL" in axial_kernel.build_error()
    assert not axial_kernel.usable(x)
    with pytest.raises(RuntimeError, match="unavailable.*GSANET_FUSED_AXIAL=0"):
        FusedAxialRelPosAttention.apply(x[:, :, None], x[:, :, None], torch.zeros(2, 8, 9))
    with torch.no_grad():
        torch.testing.assert_close(m(x), expected, rtol=1e-12, atol=1e-12)


_AVX2_ONLY = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma bmi1 bmi2 f16c movbe abm xsave popcnt"
_AVX512 = _AVX2_ONLY + " avx512f avx512bw avx512cd avx512dq avx512vl"


@pytest.mark.parametrize(
    "flags,machine,expected",
    [
        (_AVX512 + " avx512_bf16", "x86_64", ["avx512_bf16", "avx512", "avx2", "generic"]),
        (_AVX512, "x86_64", ["avx512", "avx2", "generic"]),
        (_AVX2_ONLY, "x86_64", ["avx2", "generic"]),
        (_AVX2_ONLY.replace(" fma", ""), "x86_64", ["generic"]),  # AVX2 without FMA is not x86-64-v3
        (None, "x86_64", ["generic"]),  # flags unreadable
        (_AVX512, "aarch64", ["generic"]),
    ],
    ids=["avx512bf16", "avx512", "avx2", "avx2-no-fma", "unknown", "arm"],
)
def test_kernel_variants_the_cpu_can_execute(
    flags: str | None, machine: str, expected: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build for one instruction set is offered only to CPUs that have every flag of it."""
    monkeypatch.setattr(axial_kernel, "_cpu_flags", lambda: None if flags is None else frozenset(flags.split()))
    monkeypatch.setattr(axial_kernel.platform, "machine", lambda: machine)
    assert axial_kernel.host_variants() == expected


def test_kernel_variant_follows_torch_capability_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The selected build is the CPU's best, capped by PyTorch's capability (ATEN_CPU_CAPABILITY); GSANET_KERNEL_ISA
    names one explicitly, and a build the CPU cannot execute is refused, never loaded."""
    monkeypatch.delenv("GSANET_KERNEL_ISA", raising=False)
    monkeypatch.setattr(axial_kernel, "host_variants", lambda: ["avx512", "avx2", "generic"])
    for capability, expected in ((2, "avx512"), (1, "avx2"), (0, "generic")):
        monkeypatch.setattr(axial_kernel, "_torch_capability", lambda c=capability: c)
        assert axial_kernel.selected_variant() == expected
    monkeypatch.setenv("GSANET_KERNEL_ISA", "AVX2")
    assert axial_kernel.selected_variant() == "avx2"
    monkeypatch.setenv("GSANET_KERNEL_ISA", "avx512_bf16")
    with pytest.raises(ValueError, match="cannot execute"):
        axial_kernel.selected_variant()
    with pytest.raises(ValueError, match="cannot run on this CPU"):
        axial_kernel.build("avx512_bf16")
    monkeypatch.setenv("GSANET_KERNEL_ISA", "sse9")
    with pytest.raises(ValueError, match="not a kernel variant"):
        axial_kernel.selected_variant()
    assert not axial_kernel.usable(torch.randn(2, 3))  # a bad setting: the GEMM path, with a warning


def test_kernel_dispatch_only_where_measured_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel runs at axis lengths and on architectures where its build was measured to beat the GEMM path;
    GSANET_FUSED_AXIAL=1 forces it anywhere."""
    monkeypatch.delenv("GSANET_FUSED_AXIAL", raising=False)
    for (variant, precision), (largest, _machines) in axial_kernel.MEASURED.items():
        assert axial_kernel.prefer_kernel(variant, largest, precision)
        assert not axial_kernel.prefer_kernel(variant, largest + 1, precision)
    assert not axial_kernel.prefer_kernel("no_such_build", 8)
    assert not axial_kernel.prefer_kernel("avx2", 8, "fp16")  # a precision never measured: the GEMM path
    monkeypatch.setattr(axial_kernel.platform, "machine", lambda: "aarch64")
    assert not axial_kernel.prefer_kernel("generic", 8)  # measured on x86 only
    monkeypatch.setenv("GSANET_FUSED_AXIAL", "1")
    assert axial_kernel.prefer_kernel("generic", 10**4)


def test_module_takes_the_gemm_path_beyond_the_measured_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per pass: an axis longer than the measured bound runs the GEMM path, a shorter one the kernel."""
    _require_kernel()
    variant = axial_kernel.selected_variant()
    monkeypatch.setitem(axial_kernel.MEASURED, (variant, "fp32"), (6, ("x86_64", "aarch64")))
    sizes = []
    apply = FusedAxialRelPosAttention.apply

    def spy(*args: object) -> torch.Tensor:
        sizes.append(args[0].shape[-1])
        return apply(*args)

    monkeypatch.setattr(FusedAxialRelPosAttention, "apply", spy)
    m = GlobalSelfAttention(8, heads=2, feat_size=9).double()
    x = torch.randn(1, 8, 9, 5, dtype=torch.float64)
    fused_rows = m(x)
    assert sizes == [5]  # the column pass (S = 9) took the GEMM path, the row pass the kernel
    monkeypatch.setattr(axial_kernel, "usable", lambda *tensors: False)
    torch.testing.assert_close(fused_rows, m(x), rtol=1e-10, atol=1e-10)


def test_kernel_enabled_block_forces_either_path_in_its_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """``kernel_enabled(False)`` keeps the GEMM path, ``kernel_enabled(True)`` takes the kernel beyond the measured
    bound; the setting holds in the calling thread only."""
    import threading

    _require_kernel()
    variant = axial_kernel.selected_variant()
    monkeypatch.setitem(axial_kernel.MEASURED, (variant, "fp32"), (4, ("x86_64", "aarch64")))
    q = torch.randn(1, 1, 2, 3, 6)
    assert not axial_kernel.usable(q)  # S = 6 is beyond the (patched) measured bound
    with axial_kernel.kernel_enabled(True):
        assert axial_kernel.usable(q)
        with axial_kernel.kernel_enabled(False):
            assert not axial_kernel.usable(q[..., :3])
        seen = []
        worker = threading.Thread(target=lambda: seen.append(axial_kernel.usable(q)))
        worker.start()
        worker.join()
        assert seen == [False]  # another thread keeps the default rule
    assert not axial_kernel.usable(q)


@pytest.mark.parametrize("transposed", [False, True], ids=["rows", "columns"])
@pytest.mark.parametrize("dtype,bound", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)], ids=["f32", "bf16"])
@pytest.mark.parametrize("variant", _VARIANTS)
def test_forward_normalized_is_the_pass_on_normalised_values(
    dtype: torch.dtype, bound: float, transposed: bool, variant: str
) -> None:
    """The inference form with a per-channel affine applied as values load equals the plain pass (float64 truth) on
    ``scale * v + shift``, for every build, both layouts and the two activation dtypes; lanes partly empty (B*L = 15)
    and channel counts split 8 + 4 + 2 + 1 (dv 15)."""
    _require_kernel(variant)
    torch.manual_seed(0)
    B, h, dk, L, S, dv = 3, 2, 5, 5, 9, 15
    q, v = random_lines(dtype, transposed, B, h, dk, L, S), random_lines(dtype, transposed, B, h, dv, L, S)
    rows = torch.randn(h, dk, 2 * S - 1, dtype=dtype)
    scale, shift = torch.randn(h * dv), torch.randn(h * dv)
    with torch.no_grad():
        out = axial_kernel.forward_normalized(q, v, rows, scale, shift, variant)
        normalised = v.double() * scale.double().view(h, dv, 1, 1) + shift.double().view(h, dv, 1, 1)
        expected = axial_plain(q.double(), normalised, rows.double())
    assert out.dtype == dtype and rel_error(out.double(), expected) < bound
    with pytest.raises(RuntimeError, match="no gradient"):
        axial_kernel.forward_normalized(q.detach().requires_grad_(), v, rows, scale, shift, variant)


@pytest.mark.parametrize(
    "kwargs,size",
    [({}, (9, 7)), ({"stride": 2}, (9, 7)), ({"pos_span": 5}, (8, 6)), ({}, (14, 13))],
    ids=["global", "stride2", "window", "beyond-tables"],
)
def test_inference_folds_the_batch_norm_into_the_row_pass(
    kwargs: dict, size: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """In eval mode without autograd the module applies the batch norm inside the row pass (the norm module never
    runs) and gives the unfolded result; with gradients on, in training, or in float64 it runs the norm itself."""
    _require_kernel()
    torch.manual_seed(0)
    m = GlobalSelfAttention(16, heads=2, feat_size=9, **kwargs)
    with torch.no_grad():  # trained-looking statistics and affine parameters, never zeros or ones
        m.norm.running_mean.normal_()
        m.norm.running_var.uniform_(0.5, 2.0)
        m.norm.weight.normal_()
        m.norm.bias.normal_()
    m.eval()
    runs = []
    m.norm.register_forward_hook(lambda *args: runs.append(1))
    x = torch.randn(3, 16, *size)
    with axial_kernel.kernel_enabled(True):
        unfolded = m(x)  # grad mode on: the norm runs
        assert len(runs) == 1
        with torch.no_grad():
            folded = m(x)
            assert len(runs) == 1
            m.double()(x.double())  # float64: unfolded
            assert len(runs) == 2
            m.float().train()(x)
            assert len(runs) == 3
    torch.testing.assert_close(folded, unfolded.detach(), rtol=1e-5, atol=1e-5)


def test_projection_as_a_matrix_product_equals_the_convolution(monkeypatch: pytest.MonkeyPatch) -> None:
    """The q/k/v projection's matrix-product form equals the 1x1 convolution, with and without bias, in float64;
    the dispatch takes it for float32 and, where this CPU has AMX, for bf16 autocast (close to float32 there) at up
    to 64 channels or as many as the pixels, never for float64 or a channels-last input."""
    from gsanet.layers import gsa

    torch.manual_seed(0)
    x = torch.randn(2, 12, 5, 7, dtype=torch.float64)
    for bias in (False, True):
        m = GlobalSelfAttention(12, 16, heads=2, qkv_bias=bias).double()
        if bias:
            torch.nn.init.normal_(m.qkv.bias)
        conv = m._project(x)
        monkeypatch.setattr(gsa, "_projection_as_bmm", lambda t, dim: t.dtype)
        torch.testing.assert_close(m._project(x), conv, rtol=1e-12, atol=1e-12)
        monkeypatch.undo()
    x = x.float()
    capability = torch.backends.cpu.get_cpu_capability()
    assert (gsa._projection_as_bmm(x, 12) == torch.float32) == (capability in ("AVX2", "AVX512"))
    assert gsa._projection_as_bmm(x, 64) == gsa._projection_as_bmm(x, 12)  # up to 64 channels on any map
    assert gsa._projection_as_bmm(x, 65) is None  # more than 64 channels and more than the 35 pixels
    assert gsa._projection_as_bmm(torch.randn(1, 100, 10, 10), 100) == gsa._projection_as_bmm(x, 12)
    assert gsa._projection_as_bmm(x.double(), 12) is None
    assert gsa._projection_as_bmm(x.to(memory_format=torch.channels_last), 12) is None
    m = GlobalSelfAttention(12, 16, heads=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        taken = gsa._projection_as_bmm(x, 12)
        out = m._project(x)
        assert gsa._projection_as_bmm(x, 65) is None
    amx = capability == "AVX512" and axial_kernel.cpu_has("amx_bf16", "amx_tile")
    assert taken == (torch.bfloat16 if amx else None)
    assert out.dtype == torch.bfloat16 and rel_error(out.double(), m._project(x).double()) < 1e-2


@pytest.mark.parametrize("shape", [(2, 3, 7, 5), (1, 2, 1, 1), (2, 2, 4, 6), (3, 1, 5, 1), (1, 1, 1, 6), (2, 9, 8)])
@pytest.mark.parametrize("variant", _VARIANTS)
def test_pool2_is_ceil_mode_average_pool(shape: tuple[int, ...], variant: str) -> None:
    """The extension's 2x2 pool equals ``F.avg_pool2d(x, 2, ceil_mode=True)`` forward and backward, in float64 (odd
    sizes: windows of 2 and 1; 1x1 maps; 3-D input), and within rounding in bfloat16 (sums in float32); gradients of
    the second order through ATen's backward."""
    _require_kernel(variant)
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    out = axial_kernel.Pool2.apply(x, variant)
    expected = torch.nn.functional.avg_pool2d(x, 2, ceil_mode=True)
    torch.testing.assert_close(out, expected, rtol=1e-13, atol=1e-13)
    grad = torch.randn_like(out)
    torch.testing.assert_close(
        torch.autograd.grad(out, x, grad)[0], torch.autograd.grad(expected, x, grad)[0], rtol=1e-13, atol=1e-13
    )
    assert torch.autograd.gradgradcheck(lambda t: axial_kernel.Pool2.apply(t, variant), (x,))
    low = x.detach().bfloat16()
    assert rel_error(axial_kernel.Pool2.apply(low, variant).double(), expected.detach()) < 1e-2


def test_module_pools_with_the_extension_where_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stride-2 module pools by the extension on CPU (eager, contiguous, kernel on), by ATen with the kernel off,
    and both give the same output."""
    _require_kernel()
    calls = []
    apply = axial_kernel.Pool2.apply
    monkeypatch.setattr(axial_kernel.Pool2, "apply", lambda *a: calls.append(1) or apply(*a))
    m = GlobalSelfAttention(8, heads=2, stride=2).double()
    x = torch.randn(2, 8, 7, 6, dtype=torch.float64)
    fused = m(x)
    assert calls == [1]
    with axial_kernel.kernel_enabled(False):
        assert not axial_kernel.pool_usable(fused)
        torch.testing.assert_close(m(x), fused, rtol=1e-12, atol=1e-12)
    assert calls == [1]
    assert not axial_kernel.pool_usable(torch.empty(0, 3, 4, 4)) and not axial_kernel.pool_usable(x.transpose(2, 3))
