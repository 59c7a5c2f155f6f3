"""Tests of the GSA module against the plain reference, and of its contract as a layer."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from gsanet.layers import GlobalSelfAttention, axial_kernel, resize_rel_pos
from tests.gsa_reference import randomize_, reference_forward, rel_error

SWITCHES = ["content", "positional", "pos_softmax", "query_softmax", "rel_pos", "axial"]


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
    """Under edge replication (or zero extension) without scaling the learned offsets keep their embeddings: the
    output is unchanged at the old size and at the new one."""
    torch.manual_seed(0)
    m = GlobalSelfAttention(8, heads=2, feat_size=(6, 5), rel_pos_extend="edge", pos_scale=False).eval()
    x_small, x_large = torch.randn(1, 8, 6, 5), torch.randn(1, 8, 10, 12)
    with torch.no_grad():
        before, before_large = m(x_small), m(x_large)
    resize_rel_pos(m, (10, 12))
    assert m.max_size == (10, 12) and m.rel_col.shape[0] == 19 and m.rel_row.shape[0] == 23
    with torch.no_grad():
        torch.testing.assert_close(m(x_small), before)
        torch.testing.assert_close(m(x_large), before_large)


def test_resize_rel_pos_under_the_default_policy_keeps_the_new_size() -> None:
    """Under the default policy the stored tables are the resampled, scaled ones the module uses at the new size: the
    output at exactly that size is unchanged (smaller inputs now use the resampled tables as they are)."""
    m = randomize_(GlobalSelfAttention(8, heads=2, feat_size=(6, 5)).double(), 6).eval()
    x_large = torch.randn(2, 8, 10, 12, dtype=torch.float64)
    with torch.no_grad():
        before = m(x_large)
        resize_rel_pos(m, (10, 12))
        assert m.max_size == (10, 12) and m.rel_col.shape[0] == 19
        torch.testing.assert_close(m(x_large), before, rtol=1e-12, atol=1e-12)


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


# ---------------------------------------------------------------------------------------------- larger inputs
@pytest.mark.parametrize("path", ["fused", "gemm", "pos_softmax", "non_axial"])
@pytest.mark.parametrize("stride", [1, 2])
def test_larger_input_equals_explicit_resize_rel_pos(path: str, stride: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond ``feat_size`` the module extends its tables at forward time: under edge replication the output and
    every gradient equal those of a copy whose tables ``resize_rel_pos`` enlarged (the extra rows' gradients summed
    into the edge rows), and the per-pixel reference run on that copy."""
    if path == "gemm":
        monkeypatch.setattr(axial_kernel, "usable", lambda *tensors: False)
    kwargs = dict(pos_softmax=path == "pos_softmax", axial=path != "non_axial", rel_pos_extend="edge", pos_scale=False)
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


def test_training_batch_of_one_1x1_map_says_why() -> None:
    """One value per channel reaches the inner batch norm: refused with the reason (torch's own message names no
    module), while eval mode, a larger batch or map, and a module without the norm run."""
    m = GlobalSelfAttention(16, heads=2).double().train()
    one = torch.randn(1, 16, 1, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"training mode got a batch of one 1x1 map: the batch norm .* \.eval\(\)"):
        m(one)
    for x in (torch.randn(2, 16, 1, 1, dtype=torch.float64), torch.randn(1, 16, 2, 1, dtype=torch.float64)):
        assert torch.isfinite(m(x)).all()
    assert torch.isfinite(m.eval()(one)).all()
    for kwargs in (dict(positional=False), dict(axial=False)):  # no inner norm
        assert torch.isfinite(GlobalSelfAttention(16, heads=2, **kwargs).double().train()(one)).all()
