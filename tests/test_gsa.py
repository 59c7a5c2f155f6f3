"""Tests of the GSA module against the plain reference, and of its contract as a layer."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import gsanet.layers.gsa as gsa_module
from gsanet.layers import GlobalSelfAttention, axial_kernel, relative_to_absolute, resize_rel_pos
from tests.gsa_reference import reference_forward

SWITCHES = ["content", "positional", "pos_softmax", "query_softmax", "rel_pos", "axial"]


def randomize_(m: GlobalSelfAttention, seed: int) -> GlobalSelfAttention:
    """Fresh random values for every parameter and buffer, so no term can hide behind an init of 0 or 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
        if m.norm is not None:
            m.norm.running_mean.copy_(torch.randn(m.dim_out, generator=g, dtype=torch.float64))
            m.norm.running_var.copy_(torch.rand(m.dim_out, generator=g, dtype=torch.float64) + 0.5)
    return m


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def check_against_reference(seed: int, shape: tuple[int, int, int, int], train: bool, **kwargs) -> float:
    torch.manual_seed(seed)
    B, C, H, W = shape
    m = randomize_(GlobalSelfAttention(C, **kwargs).double(), seed)
    m.train(train)
    x = torch.randn(shape, dtype=torch.float64)
    with torch.no_grad():
        expected = reference_forward(m, x)
        actual = m(x)
    assert actual.shape == expected.shape
    err = rel_error(actual, expected)
    assert err < 1e-6, f"relative error {err:.2e} for {kwargs}, shape {shape}, train={train}"
    return err


# The grid: heads x span x stride x size, batch size and train/eval mode cycling through it.
SIZES = [(6, 6), (5, 7), (7, 4), (1, 5)]
GRID = [
    dict(heads=heads, pos_span=span, stride=stride, size=size)
    for heads, span, stride, size in itertools.product([1, 2, 8], [None, 3, 5], [1, 2], SIZES)
]


@pytest.mark.parametrize("case", range(len(GRID)))
def test_matches_reference_grid(case: int, record_property) -> None:
    c = GRID[case]
    batch, train = (1, 3)[case % 2], bool((case // 2) % 2)
    err = check_against_reference(
        case,
        (batch, 12, *c["size"]),
        train,
        dim_out=16,
        dim_key=8,
        heads=c["heads"],
        pos_span=c["pos_span"],
        stride=c["stride"],
    )
    record_property("rel_error", err)


SWITCH_CASES = [
    dict(content=False),
    dict(positional=False),
    dict(pos_softmax=True),
    dict(query_softmax=True),
    dict(rel_pos=False),
    dict(axial=False),
    dict(axial=False, pos_softmax=True),
    dict(axial=False, rel_pos=False),
    dict(rel_pos=False, pos_softmax=True),
    dict(content=False, pos_softmax=True, query_softmax=True),
    dict(qkv_bias=True),
]


@pytest.mark.parametrize("switches", SWITCH_CASES, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()))
@pytest.mark.parametrize("pos_span", [None, 3])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_matches_reference_switches(
    switches: dict, pos_span: int | None, stride: int, train: bool, record_property
) -> None:
    err = check_against_reference(7, (2, 8, 5, 6), train, heads=2, pos_span=pos_span, stride=stride, **switches)
    record_property("rel_error", err)


def test_relative_to_absolute() -> None:
    table = torch.randn(9, 3)  # offsets -4..4
    for size in (1, 3, 5, 7):
        rel = relative_to_absolute(table, 4, size)
        for a in range(size):
            for b in range(size):
                d = b - a
                expected = table[4 + d] if abs(d) <= 4 else torch.zeros(3)
                assert torch.equal(rel[a, b], expected)


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(pos_span=3), dict(pos_softmax=True, query_softmax=True), dict(axial=False), dict(stride=2)],
    ids=["global", "window3", "softmaxes", "2d", "stride2"],
)
def test_gradcheck(kwargs: dict) -> None:
    torch.manual_seed(0)
    m = randomize_(GlobalSelfAttention(4, heads=2, feat_size=(3, 4), **kwargs).double(), 1)
    x = torch.randn(2, 4, 3, 4, dtype=torch.float64, requires_grad=True)
    params = {n: p.detach().clone().requires_grad_(True) for n, p in m.named_parameters()}

    def fn(x: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(m, dict(zip(params, values, strict=False)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params.values()), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("switches", [dict()] + SWITCH_CASES)
def test_every_parameter_gets_a_gradient(switches: dict) -> None:
    m = GlobalSelfAttention(8, heads=2, **switches)
    x = torch.randn(2, 8, 5, 6, requires_grad=True)
    m(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"
    rows = m.qkv.weight.grad[:, :, 0, 0].abs().sum(1).split([m.dim_key, m.dim_key, m.dim_out])
    assert (rows[0] > 0).all() and (rows[2] > 0).all(), "every query and value channel gets a gradient"
    assert bool((rows[1] > 0).all()) == m.content, "keys are used by (and only by) the content layer"


def _input_gradient_support(m: GlobalSelfAttention, H: int, W: int, a: int, b: int) -> torch.Tensor:
    m.eval()  # train-mode batch norm couples every pixel through the batch statistics
    x = torch.randn(1, m.dim, H, W, dtype=torch.float64, requires_grad=True)
    m(x)[0, :, a, b].sum().backward()
    return x.grad[0].abs().sum(0) > 0


def test_receptive_field_global_is_whole_image() -> None:
    for positional_only in (False, True):
        m = randomize_(GlobalSelfAttention(8, heads=2, content=not positional_only).double(), 3)
        support = _input_gradient_support(m, 9, 7, 2, 5)
        assert support.all(), "the global module must see every pixel"


@pytest.mark.parametrize("L", [1, 3, 5])
@pytest.mark.parametrize("axial", [True, False])
def test_receptive_field_window_is_exactly_LxL(L: int, axial: bool) -> None:
    H, W, a, b = 9, 8, 4, 2
    m = randomize_(GlobalSelfAttention(8, heads=2, content=False, pos_span=L, axial=axial).double(), 4)
    support = _input_gradient_support(m, H, W, a, b)
    half = (L - 1) // 2
    expected = torch.zeros(H, W, dtype=torch.bool)
    expected[max(0, a - half) : a + half + 1, max(0, b - half) : b + half + 1] = True
    assert torch.equal(support, expected)


def test_content_attention_is_permutation_equivariant() -> None:
    torch.manual_seed(0)
    m = randomize_(GlobalSelfAttention(8, heads=2, positional=False).double(), 5)
    B, C, H, W = 2, 8, 5, 6
    x = torch.randn(B, C, H, W, dtype=torch.float64)
    perm = torch.randperm(H * W)
    permuted = x.flatten(2)[:, :, perm].view(B, C, H, W)
    expected = m(x).flatten(2)[:, :, perm].view(B, C, H, W)
    torch.testing.assert_close(m(permuted), expected, rtol=1e-10, atol=1e-10)
    # ... and positional attention is not (the test would notice a layer that ignores positions)
    full = randomize_(GlobalSelfAttention(8, heads=2).double().eval(), 5)
    assert not torch.allclose(full(permuted), full(x).flatten(2)[:, :, perm].view(B, C, H, W))


@pytest.mark.parametrize("size", [(64, 64), (63, 17), (1, 64), (2, 3), (1, 1)])
def test_default_module_accepts_inputs_up_to_64(size: tuple[int, int]) -> None:
    m = GlobalSelfAttention(16)
    assert m(torch.randn(2, 16, *size)).shape == (2, 16, *size)
    assert GlobalSelfAttention(16, stride=2)(torch.randn(2, 16, *size)).shape == (
        2,
        16,
        (size[0] + 1) // 2,
        (size[1] + 1) // 2,
    )


def test_bf16_autocast_close_to_fp32() -> None:
    torch.manual_seed(0)
    m = GlobalSelfAttention(32, heads=4).eval()
    x = torch.randn(2, 32, 12, 10)
    with torch.no_grad():
        ref = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x)
    assert torch.isfinite(out).all()
    assert rel_error(out.float(), ref) < 5e-2


def test_channels_last() -> None:
    torch.manual_seed(0)
    m = GlobalSelfAttention(16, heads=2).eval()
    x = torch.randn(2, 16, 7, 9)
    with torch.no_grad():
        ref = m(x)
        out = m.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_torch_compile_same_output() -> None:
    torch.manual_seed(0)
    m = GlobalSelfAttention(16, heads=2, stride=2).eval()
    x = torch.randn(2, 16, 8, 6)
    with torch.no_grad():
        ref = m(x)
        out = torch.compile(m)(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_timm_byobnet_uses_it_as_self_attn_layer() -> None:
    from timm.models.byobnet import ByoBlockCfg, ByobNet, ByoModelCfg

    cfg = ByoModelCfg(
        blocks=(
            ByoBlockCfg(type="self_attn", d=1, c=32, s=1, gs=0, br=0.25),
            ByoBlockCfg(type="self_attn", d=1, c=64, s=2, gs=0, br=0.25),
        ),
        stem_chs=16,
        stem_type="",
        stem_pool="",
        self_attn_layer=GlobalSelfAttention,
        self_attn_kwargs=dict(heads=2),
    )
    model = ByobNet(cfg, num_classes=10, in_chans=1, img_size=20)
    layers = [m for m in model.modules() if isinstance(m, GlobalSelfAttention)]
    assert len(layers) == 2 and layers[1].stride == 2
    assert model(torch.randn(2, 1, 20, 20)).shape == (2, 10)


def test_resize_rel_pos_keeps_learned_offsets() -> None:
    torch.manual_seed(0)
    m = GlobalSelfAttention(8, heads=2, feat_size=(6, 5)).eval()
    x_small = torch.randn(1, 8, 6, 5)
    with torch.no_grad():
        before = m(x_small)
    resize_rel_pos(m, (10, 12))
    assert m.max_size == (10, 12) and m.rel_col.shape[0] == 19 and m.rel_row.shape[0] == 23
    with torch.no_grad():
        torch.testing.assert_close(m(x_small), before)
        assert m(torch.randn(1, 8, 10, 12)).shape == (1, 8, 10, 12)


def test_state_dict_round_trip() -> None:
    a = GlobalSelfAttention(8, heads=2, pos_span=5)
    b = GlobalSelfAttention(8, heads=2, pos_span=5)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 8, 9, 9)
    a.eval(), b.eval()
    torch.testing.assert_close(a(x), b(x))


def test_windowed_tables_cover_any_size() -> None:
    m = GlobalSelfAttention(8, heads=2, pos_span=7, feat_size=4)
    assert m.rel_col.shape == (7, 8)
    assert m(torch.randn(1, 8, 80, 70)).shape == (1, 8, 80, 70)


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(dim=12, heads=8), ValueError, "not divisible by heads"),
        (dict(dim=16, dim_key=12, heads=8), ValueError, "dim_key=12 is not divisible"),
        (dict(dim=16, pos_span=4), ValueError, "positive odd window"),
        (dict(dim=16, pos_span=0), ValueError, "positive odd window"),
        (dict(dim=16, pos_span=-3), ValueError, "positive odd window"),
        (dict(dim=16, pos_span=3.0), TypeError, "pos_span must be an int"),
        (dict(dim=16, stride=3), ValueError, "stride must be 1 or 2"),
        (dict(dim=16, stride=0), ValueError, "stride must be 1 or 2"),
        (dict(dim=16, heads=2.0), TypeError, "heads must be an int"),
        (dict(dim=16, content=False, positional=False), ValueError, "both off"),
        (dict(dim=16, feat_size=(4, 4, 4)), TypeError, "feat_size"),
    ],
)
def test_bad_construction(kwargs: dict, error: type, message: str) -> None:
    dim = kwargs.pop("dim")
    with pytest.raises(error, match=message):
        GlobalSelfAttention(dim, **kwargs)


def test_bad_inputs() -> None:
    m = GlobalSelfAttention(16, heads=2, feat_size=(8, 8))
    with pytest.raises(ValueError, match=r"4-D input .*unsqueeze"):
        m(torch.randn(16, 8, 8))
    with pytest.raises(ValueError, match=r"8 channels but the module was built for dim=16"):
        m(torch.randn(1, 8, 8, 8))
    with pytest.raises(TypeError, match="floating-point"):
        m(torch.ones(1, 16, 4, 4, dtype=torch.long))


def test_extra_repr_names_the_choices() -> None:
    text = repr(GlobalSelfAttention(16, heads=2, pos_span=5, axial=False))
    assert "pos_span=5" in text and "axial=False" in text


def test_output_changes_with_each_branch() -> None:
    """Sanity: the positional and content branches both contribute to the default output."""
    torch.manual_seed(0)
    full = randomize_(GlobalSelfAttention(8, heads=2).double().eval(), 9)
    x = torch.randn(1, 8, 5, 5, dtype=torch.float64)
    content = GlobalSelfAttention(8, heads=2, positional=False).double().eval()
    content.load_state_dict({k: v for k, v in full.state_dict().items() if k.startswith("qkv")})
    y_full, y_content = full(x), content(x)
    assert not torch.allclose(y_full, y_content)
    # stride 2 is the stride-1 output average-pooled
    strided = GlobalSelfAttention(8, heads=2, stride=2).double().eval()
    strided.load_state_dict(full.state_dict())
    torch.testing.assert_close(strided(x), F.avg_pool2d(y_full, 2, ceil_mode=True))


def _axial_plain(q: torch.Tensor, v: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``AxialRelPosAttention`` written with plain autograd: ``out[x] = sum_x' (q_x . rows[x'-x+S-1]) v_x'``."""
    S = q.shape[-1]
    offsets = torch.arange(S)[None, :] - torch.arange(S)[:, None] + S - 1  # [x, x']
    keys = rows[:, :, offsets]  # (h, dk, x, x')
    weights = torch.einsum("bhclx,hcxy->bhlxy", q, keys)
    return torch.einsum("bhlxy,bhdly->bhdlx", weights, v)


def _axial_fast(q: torch.Tensor, v: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``AxialRelPosAttention`` on the absolute keys of ``rows (h, dk, 2S-1)``, as ``GlobalSelfAttention`` calls it."""
    h, dk, n = rows.shape
    S = (n + 1) // 2
    keys = relative_to_absolute(rows.permute(2, 0, 1).reshape(n, h * dk), S - 1, S)  # (S, S, h*dk)
    return gsa_module.AxialRelPosAttention.apply(q, v, keys.view(S, S, h, dk).permute(2, 0, 3, 1).contiguous())


def _lines(dtype: torch.dtype, transposed: bool, *shape: int) -> torch.Tensor:
    """Random ``(B, h, C, L, S)`` leaf; with ``transposed``, a view whose L axis is the faster one in memory (as the
    column pass reads the NCHW projection)."""
    if transposed:
        return torch.randn(*shape[:-2], shape[-1], shape[-2], dtype=dtype).transpose(-1, -2).requires_grad_()
    return torch.randn(*shape, dtype=dtype, requires_grad=True)


@pytest.mark.parametrize("transposed", [False, True], ids=["rows", "columns"])
@pytest.mark.parametrize("chunk", [1, 16 * 2, 16 * 3, 16 * 10, 16 * 15, 16 * 30, 1 << 18], ids=lambda c: f"chunk{c}")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_axial_function_matches_plain_autograd_in_every_chunking(
    chunk: int, dtype: torch.dtype, transposed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks of 1, 2 + 2 + 1 and 3 + 2 lines of one image, 2 + 1 images, one whole head, head groups (2 + 1 of 3),
    one block; on contiguous inputs and on transposed views (the column pass reads the NCHW projection that way),
    whose memory order the output and the gradients keep."""
    monkeypatch.setitem(gsa_module._CHUNK_ELEMENTS, "cpu", chunk)
    torch.manual_seed(0)
    B, h, dk, L, S, dv = 3, 3, 2, 5, 4, 3
    q, v = _lines(dtype, transposed, B, h, dk, L, S), _lines(dtype, transposed, B, h, dv, L, S)
    rows = torch.randn(h, dk, 2 * S - 1, dtype=dtype, requires_grad=True)
    grad = torch.randn(B, h, dv, L, S, dtype=dtype)
    out = _axial_fast(q, v, rows)
    expected = _axial_plain(q, v, rows)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, expected, **tol)
    assert out.stride(-1) < out.stride(-2) if not transposed else out.stride(-1) > out.stride(-2)
    actual_grads = torch.autograd.grad(out, (q, v, rows), grad)
    expected_grads = torch.autograd.grad(expected, (q, v, rows), grad)
    for a, e, name in zip(actual_grads, expected_grads, ("q", "v", "rows"), strict=True):
        torch.testing.assert_close(a, e, **tol, msg=lambda m, name=name: f"grad {name}: {m}")
    # numerical gradients too, except for the 1- and 2-line blockings (45 and 27 blocks: 15 s each)
    if dtype == torch.float64 and chunk >= 16 * 3:
        assert torch.autograd.gradcheck(_axial_fast, (q, v, rows))


def _require_kernel(variant: str | None = None) -> None:
    """The fused kernel must have built: a machine without a compiler fails here rather than skipping."""
    assert axial_kernel.available(variant), f"the fused CPU kernel did not build: {axial_kernel.build_error(variant)}"


def _fused(q: torch.Tensor, v: torch.Tensor, rows: torch.Tensor, variant: str | None = None) -> torch.Tensor:
    return gsa_module.FusedAxialRelPosAttention.apply(q, v, rows, variant)


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
    q, v = _lines(dtype, transposed, B, h, dk, L, S), _lines(dtype, transposed, B, h, dv, L, S)
    rows = torch.randn(h, dk, 2 * S - 1, dtype=dtype, requires_grad=True)
    grad = torch.randn(B, h, dv, L, S, dtype=dtype)
    out = _fused(q, v, rows, variant)
    exact = [t.detach().double().requires_grad_() for t in (q, v, rows)]  # the float64 truth of these inputs
    expected = _axial_plain(*exact)
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
    expected = torch.autograd.grad(_axial_plain(q, v, rows).sum(), (q, v, rows))
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
    apply = gsa_module.FusedAxialRelPosAttention.apply

    def spy(*args: torch.Tensor) -> torch.Tensor:
        calls.append(args[0].dtype)
        return apply(*args)

    monkeypatch.setattr(gsa_module.FusedAxialRelPosAttention, "apply", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
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
    assert all(axial_kernel.usable(x.to(dtype)) for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.half))
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
        gsa_module.FusedAxialRelPosAttention.apply(x[:, :, None], x[:, :, None], torch.zeros(2, 8, 9))
    with torch.no_grad():
        torch.testing.assert_close(m(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk", [16 * 3, 1 << 18], ids=lambda c: f"chunk{c}")
def test_axial_function_bf16_gradients_close_to_float64(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """In bfloat16 the key gradient is summed over blocks in float32 (many blocks, and one)."""
    monkeypatch.setitem(gsa_module._CHUNK_ELEMENTS, "cpu", chunk)
    torch.manual_seed(0)
    B, h, dk, L, S, dv = 3, 3, 2, 5, 4, 3
    q = torch.randn(B, h, dk, L, S, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, h, dv, L, S, dtype=torch.float64, requires_grad=True)
    rows = torch.randn(h, dk, 2 * S - 1, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(B, h, dv, L, S, dtype=torch.float64)
    low = [t.detach().bfloat16().requires_grad_() for t in (q, v, rows)]
    out = _axial_fast(*low)
    assert out.dtype == torch.bfloat16
    actual = torch.autograd.grad(out, low, grad.bfloat16())
    expected = torch.autograd.grad(_axial_plain(q, v, rows), (q, v, rows), grad)
    for a, e, name in zip(actual, expected, ("q", "v", "rows"), strict=True):
        assert a.dtype == torch.bfloat16, name
        assert rel_error(a.double(), e) < 3e-2, name


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
    for variant, (largest, _machines) in axial_kernel.MEASURED.items():
        assert axial_kernel.prefer_kernel(variant, largest)
        assert not axial_kernel.prefer_kernel(variant, largest + 1)
    assert not axial_kernel.prefer_kernel("no_such_build", 8)
    monkeypatch.setattr(axial_kernel.platform, "machine", lambda: "aarch64")
    assert not axial_kernel.prefer_kernel("generic", 8)  # measured on x86 only
    monkeypatch.setenv("GSANET_FUSED_AXIAL", "1")
    assert axial_kernel.prefer_kernel("generic", 10**4)


def test_module_takes_the_gemm_path_beyond_the_measured_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per pass: an axis longer than the measured bound runs the GEMM path, a shorter one the kernel."""
    _require_kernel()
    variant = axial_kernel.selected_variant()
    monkeypatch.setitem(axial_kernel.MEASURED, variant, (6, axial_kernel.MEASURED[variant][1]))
    sizes = []
    apply = gsa_module.FusedAxialRelPosAttention.apply

    def spy(*args: object) -> torch.Tensor:
        sizes.append(args[0].shape[-1])
        return apply(*args)

    monkeypatch.setattr(gsa_module.FusedAxialRelPosAttention, "apply", spy)
    m = GlobalSelfAttention(8, heads=2, feat_size=9).double()
    x = torch.randn(1, 8, 9, 5, dtype=torch.float64)
    fused_rows = m(x)
    assert sizes == [5]  # the column pass (S = 9) took the GEMM path, the row pass the kernel
    monkeypatch.setattr(axial_kernel, "usable", lambda *tensors: False)
    torch.testing.assert_close(fused_rows, m(x), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------- empty batch
@pytest.mark.parametrize("path", ["fused", "gemm"])
@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(stride=2), dict(pos_span=3), dict(pos_softmax=True), dict(rel_pos=False), dict(axial=False)],
    ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()) or "default",
)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_empty_batch(path: str, kwargs: dict, train: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch of 0 images gives an empty output of the right shape on every path, and backward gives zero
    gradients (as a convolution does) instead of failing."""
    if path == "gemm":
        monkeypatch.setattr(axial_kernel, "usable", lambda *tensors: False)
    m = GlobalSelfAttention(16, heads=2, feat_size=8, **kwargs).train(train)
    x = torch.randn(0, 16, 7, 5, requires_grad=True)
    y = m(x)
    stride = kwargs.get("stride", 1)
    assert y.shape == (0, 16, -(-7 // stride), -(-5 // stride))
    y.sum().backward()
    assert x.grad.shape == x.shape
    for name, p in m.named_parameters():
        assert p.grad is not None and not p.grad.any(), name


def test_loop_free_axial_product_matches_the_blocked_function() -> None:
    """The single-block formulation that exporters record computes what ``AxialRelPosAttention`` computes."""
    torch.manual_seed(0)
    B, h, dk, dv, L, S = 3, 2, 4, 5, 6, 7
    q, v = torch.randn(B, h, dk, L, S, dtype=torch.float64), torch.randn(B, h, dv, L, S, dtype=torch.float64)
    keys = torch.randn(h, S, dk, S, dtype=torch.float64)
    expected = gsa_module.AxialRelPosAttention.apply(q, v, keys)
    torch.testing.assert_close(gsa_module._axial_matmul(q, v, keys), expected, rtol=1e-12, atol=1e-12)
    plain = torch.einsum("bhclx,hxcy,bhdly->bhdlx", q, keys, v)  # out[x] = sum_x' (q_x . r_(x'-x)) v_x'
    torch.testing.assert_close(expected, plain, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------- larger inputs
def test_extend_rel_pos_replicates_the_edge_offsets() -> None:
    table = torch.randn(5, 3, dtype=torch.float64)  # offsets -2 .. 2
    assert gsa_module.extend_rel_pos(table, 3) is table and gsa_module.extend_rel_pos(table, 2) is table
    grown = gsa_module.extend_rel_pos(table, 5)  # offsets -4 .. 4
    assert grown.shape == (9, 3)
    torch.testing.assert_close(grown[2:7], table, rtol=0, atol=0)
    for row in (0, 1):
        torch.testing.assert_close(grown[row], table[0], rtol=0, atol=0)
        torch.testing.assert_close(grown[8 - row], table[4], rtol=0, atol=0)


@pytest.mark.parametrize("path", ["fused", "gemm", "pos_softmax", "non_axial"])
@pytest.mark.parametrize("stride", [1, 2])
def test_larger_input_equals_explicit_resize_rel_pos(path: str, stride: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond ``feat_size`` the module extends its tables at forward time: the output and every gradient equal those
    of a copy whose tables ``resize_rel_pos`` enlarged (the extra rows' gradients summed into the edge rows), and the
    per-pixel reference run on that copy."""
    if path == "gemm":
        monkeypatch.setattr(axial_kernel, "usable", lambda *tensors: False)
    kwargs = dict(pos_softmax=path == "pos_softmax", axial=path != "non_axial")
    H, W = 9, 7
    m, resized = (
        randomize_(GlobalSelfAttention(8, heads=2, feat_size=(4, 3), stride=stride, **kwargs).double(), 3).train()
        for _ in range(2)
    )
    resize_rel_pos(resized, (H, W))
    assert resized.rel_col.shape[0] == 2 * H - 1 and m.rel_col.shape[0] == 7
    x = torch.randn(2, 8, H, W, dtype=torch.float64)
    grad_out = torch.randn_like(m(x))
    out = m(x)
    out.backward(grad_out)
    expected = resized(x)
    expected.backward(grad_out)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(out, reference_forward(resized, x), rtol=1e-9, atol=1e-9)
    for (name, p), q in zip(m.named_parameters(), resized.parameters(), strict=True):
        g = q.grad
        if name in ("rel_col", "rel_row"):  # fold the extra rows of the resized table onto the edge rows
            extra = (g.shape[0] - p.shape[0]) // 2
            edges = g[: extra + 1].sum(0, keepdim=True), g[-extra - 1 :].sum(0, keepdim=True)
            g = torch.cat([edges[0], g[extra + 1 : -extra - 1], edges[1]])
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-10, msg=name)


def test_larger_input_under_windowed_span_and_uniform_averaging() -> None:
    for kwargs in (dict(pos_span=3), dict(rel_pos=False)):
        m = GlobalSelfAttention(8, heads=2, feat_size=4, **kwargs).eval()
        assert m(torch.randn(1, 8, 11, 6)).shape == (1, 8, 11, 6)


# ---------------------------------------------------------------------------------------------- TorchScript
@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_torchscript_script_refused_clearly_trace_works() -> None:
    """``torch.jit.script`` (deprecated upstream) is refused with the reason and the alternatives, for the module and
    for any model holding it; ``torch.jit.trace`` records the loop-free path and runs at another batch size."""
    torch.manual_seed(0)
    m = GlobalSelfAttention(8, heads=2, feat_size=6).eval()
    for obj in (m, torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), m)):
        with pytest.raises(RuntimeError, match=r"does not support torch.jit.script.*torch.jit.trace, torch.export"):
            torch.jit.script(obj)
    traced = torch.jit.trace(m, torch.randn(2, 8, 5, 7))
    x = torch.randn(3, 8, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), m(x), rtol=1e-5, atol=1e-5)


def test_kernel_enabled_block_forces_either_path_in_its_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """``kernel_enabled(False)`` keeps the GEMM path, ``kernel_enabled(True)`` takes the kernel beyond the measured
    bound; the setting holds in the calling thread only."""
    import threading

    _require_kernel()
    variant = axial_kernel.selected_variant()
    monkeypatch.setitem(axial_kernel.MEASURED, variant, (4, axial_kernel.MEASURED[variant][1]))
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
