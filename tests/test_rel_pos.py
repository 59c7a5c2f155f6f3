"""Tests of the relative-position utilities (``gsanet.layers.rel_pos``): tables, spans and positional weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gsanet.layers import GlobalSelfAttention, axial_kernel
from gsanet.layers.rel_pos import (
    REL_POS_EXTENDS,
    cover,
    extend_rel_pos,
    relative_to_absolute,
    span_mask,
    table_center,
    table_length,
    uniform_weights,
)
from tests.gsa_reference import randomize_


def test_relative_to_absolute() -> None:
    table = torch.randn(9, 3)  # offsets -4..4
    for size in (1, 3, 5, 7):
        rel = relative_to_absolute(table, 4, size)
        for a in range(size):
            for b in range(size):
                d = b - a
                expected = table[4 + d] if abs(d) <= 4 else torch.zeros(3)
                assert torch.equal(rel[a, b], expected)


def test_extend_rel_pos_replicates_the_edge_offsets() -> None:
    table = torch.randn(5, 3, dtype=torch.float64)  # offsets -2 .. 2
    assert extend_rel_pos(table, 3, "edge") is table and extend_rel_pos(table, 2, "edge") is table
    grown = extend_rel_pos(table, 5, "edge")  # offsets -4 .. 4
    assert grown.shape == (9, 3)
    torch.testing.assert_close(grown[2:7], table, rtol=0, atol=0)
    for row in (0, 1):
        torch.testing.assert_close(grown[row], table[0], rtol=0, atol=0)
        torch.testing.assert_close(grown[8 - row], table[4], rtol=0, atol=0)


def test_tables_spans_and_centres() -> None:
    assert table_length(5, None) == 9 and table_length(5, 3) == 3
    assert table_center(torch.zeros(9, 2)) == 4 and table_center(torch.zeros(3, 2)) == 1
    offsets = torch.arange(6)[None, :] - torch.arange(6)[:, None]  # [x, x'] = x' - x
    assert span_mask(6, None).all()
    assert torch.equal(span_mask(6, 3), offsets.abs() <= 1)
    torch.testing.assert_close(uniform_weights(6, 5, torch.float64).sum(1), torch.ones(6, dtype=torch.float64))


def _project(m: GlobalSelfAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    B, _, H, W = x.shape
    q, _, v = m.qkv(x).split([m.dim_key, m.dim_key, m.dim_out], dim=1)
    return q.reshape(B, m.heads, -1, H, W), v.reshape(B, m.heads, -1, H, W)


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(pos_span=3), dict(pos_softmax=True), dict(rel_pos=False), dict(pos_span=5, pos_softmax=True)],
)
@pytest.mark.parametrize("size", [(6, 5), (9, 7)], ids=["within", "beyond_feat_size"])
def test_axis_weights_are_what_the_forward_pass_applies(kwargs: dict, size: tuple[int, int]) -> None:
    """The column layer is ``axis_weights(q, 0)`` applied to the values, the row layer ``axis_weights(q, 1)`` applied
    to the batch norm's output, also on inputs larger than the tables were built for (edge replication)."""
    torch.manual_seed(0)
    m = randomize_(GlobalSelfAttention(8, heads=2, content=False, feat_size=(6, 5), **kwargs).double(), 2).eval()
    x = torch.randn(2, 8, *size, dtype=torch.float64)
    seen = []
    handle = m.norm.register_forward_hook(lambda mod, args, out: seen.extend((args[0], out)))
    with torch.no_grad():
        out = m(x)
    handle.remove()
    q, v = _project(m, x)
    B, h, dv, H, W = v.shape
    col = torch.einsum("bhwas,bhdsw->bhdaw", m.axis_weights(q, 0), v)  # (B, h, dv, H, W)
    torch.testing.assert_close(col.reshape(B, h * dv, H, W), seen[0], rtol=1e-10, atol=1e-10)
    row = torch.einsum("bhaws,bhdas->bhdaw", m.axis_weights(q, 1), seen[1].view(B, h, dv, H, W))
    torch.testing.assert_close(row.reshape(B, h * dv, H, W), out, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kwargs", [dict(), dict(pos_span=3), dict(pos_softmax=True), dict(rel_pos=False)])
def test_plane_weights_are_what_the_2d_layer_applies(kwargs: dict) -> None:
    torch.manual_seed(0)
    m = randomize_(GlobalSelfAttention(8, heads=2, content=False, axial=False, feat_size=4, **kwargs).double(), 3)
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    q, v = _project(m, x)
    B, h, dv, H, W = v.shape
    expected = torch.einsum("bhnm,bhdm->bhdn", m.plane_weights(q), v.reshape(B, h, dv, H * W))
    with torch.no_grad():
        torch.testing.assert_close(m(x), expected.reshape(B, h * dv, H, W), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------------- loading
@pytest.mark.parametrize("built", [(4, 3), (9, 8)], ids=["shorter_tables", "longer_tables"])
def test_load_state_dict_fits_tables_saved_at_another_size(built: tuple[int, int]) -> None:
    """Plain ``load_state_dict`` loads tables saved at another size: the module computes what the saved one computes,
    within and beyond the saved size, and its table parameters stay the objects an optimizer holds."""
    saved = randomize_(GlobalSelfAttention(8, heads=2, feat_size=(6, 5)).double(), seed=3).eval()
    module = GlobalSelfAttention(8, heads=2, feat_size=built).double().eval()
    params = dict(module.named_parameters())
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    result = module.load_state_dict(saved.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    assert dict(module.named_parameters()) == params  # the same Parameter objects
    assert module.max_size == (6, 5)  # the saved tables are kept whole, shorter or longer than the built ones
    for size in ((6, 5), (11, 13)):
        x = torch.randn(2, 8, *size, dtype=torch.float64)
        with torch.no_grad():
            torch.testing.assert_close(module(x), saved(x), rtol=1e-10, atol=1e-10)
    module.train()
    module(torch.randn(2, 8, 7, 6, dtype=torch.float64)).square().sum().backward()
    before = module.rel_col.detach().clone()
    optimizer.step()
    assert not torch.equal(module.rel_col, before)  # the optimizer trains the loaded table


def test_load_state_dict_still_reports_real_mismatches() -> None:
    saved = GlobalSelfAttention(8, heads=2, feat_size=6).state_dict()
    module = GlobalSelfAttention(8, heads=2, feat_size=4)
    missing = {k: v for k, v in saved.items() if k != "rel_row"}
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: \"rel_row\""):
        module.load_state_dict(missing)
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\) in state_dict: \"extra\""):
        module.load_state_dict({**saved, "extra": torch.zeros(1)})
    result = module.load_state_dict(missing, strict=False)
    assert result.missing_keys == ["rel_row"] and module.rel_col.shape[0] == 11  # the present table was fitted
    windowed = GlobalSelfAttention(8, heads=2, pos_span=5)  # a window of another span is not a size change
    with pytest.raises(RuntimeError, match="size mismatch for rel_col"):
        windowed.load_state_dict(GlobalSelfAttention(8, heads=2, pos_span=3).state_dict())
    with pytest.raises(RuntimeError, match="size mismatch for rel_col"):  # another width
        module.load_state_dict(GlobalSelfAttention(16, 16, heads=2, feat_size=6).state_dict(), strict=False)


# ------------------------------------------------------------------------------------------ size policy (issue 22)
def _resampled(table: torch.Tensor, size: int) -> torch.Tensor:
    """The ``"interp"`` extension by its definition: offset ``d`` of the new table is offset ``d (M-1)/(S-1)`` of the
    old one, linearly interpolated channel by channel (NumPy)."""
    half = (len(table) - 1) // 2
    old = np.arange(-half, half + 1)
    new = np.arange(-(size - 1), size) * half / (size - 1)
    return torch.from_numpy(np.stack([np.interp(new, old, column) for column in table.numpy().T], axis=1))


def test_extensions_are_their_definitions() -> None:
    table = torch.randn(7, 4, dtype=torch.float64)  # offsets -3 .. 3
    zero = extend_rel_pos(table, 8, "zero")  # offsets -7 .. 7
    assert torch.equal(zero, torch.cat([torch.zeros(4, 4, dtype=torch.float64), table, torch.zeros(4, 4).double()]))
    torch.testing.assert_close(extend_rel_pos(table, 8, "interp"), _resampled(table, 8), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(extend_rel_pos(table, 7, "interp")[::2], table, rtol=1e-12, atol=1e-12)  # 2x: kept
    torch.testing.assert_close(cover(table, 8, None, "interp", True), _resampled(table, 8) * 4 / 8)
    for mode in REL_POS_EXTENDS:
        assert extend_rel_pos(table, 4, mode) is table and cover(table, 3, None, mode, True) is table
        assert cover(table, 9, 7, mode, True) is table  # a windowed table covers any axis
    with pytest.raises(ValueError, match="rel_pos_extend must be one of 'edge', 'zero', 'interp', got 'nearest'"):
        extend_rel_pos(table, 8, "nearest")
    with pytest.raises(ValueError, match="rel_pos_extend must be one of"):
        GlobalSelfAttention(8, heads=2, rel_pos_extend="linear")


def _explicit_copy(m: GlobalSelfAttention, size: tuple[int, int], scale: bool) -> GlobalSelfAttention:
    """A copy of ``m`` built for ``size`` holding the policy's tables computed independently (``_resampled``, times
    ``M / S`` with ``scale``): it uses them as they are on an input of ``size``."""
    copy = GlobalSelfAttention(
        m.dim, m.dim_out, heads=m.heads, feat_size=size, content=m.content, axial=m.axial, pos_softmax=m.pos_softmax
    ).double()
    state = m.state_dict()
    for name, old, new in (("rel_col", m.max_size[0], size[0]), ("rel_row", m.max_size[1], size[1])):
        state[name] = _resampled(state[name], new) * (old / new if scale else 1.0)
    copy.load_state_dict(state)
    return copy.eval()


@pytest.mark.parametrize("path", ["fused", "gemm", "pos_softmax", "non_axial"])
def test_module_at_twice_its_tables_computes_the_policy(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trained-like module (random non-trivial weights, float64) on an input twice the size its tables cover
    computes with the default policy's tables: resampled and, for the paper's sum (no softmax), scaled by M / S;
    the 2-D ablation scales its weights by the product of both axes' factors."""
    if path == "gemm":
        monkeypatch.setattr(axial_kernel, "usable", lambda *tensors: False)
    axial, softmax = path != "non_axial", path == "pos_softmax"
    m = GlobalSelfAttention(8, heads=2, feat_size=(5, 4), content=axial, axial=axial, pos_softmax=softmax)
    m = randomize_(m.double(), 4).eval()
    size = (10, 8)
    x = torch.randn(2, 8, *size, dtype=torch.float64)
    with torch.no_grad():
        out = m(x)
        if axial:
            expected = _explicit_copy(m, size, scale=not softmax)(x)
        else:  # no content, no batch norm: the output is linear in the weights
            expected = _explicit_copy(m, size, scale=False)(x) * (5 / 10) * (4 / 8)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("factor", [2, 4])
def test_positional_sum_at_larger_sizes_keeps_the_trained_bound(factor: int) -> None:
    """On an axis ``factor`` times the table's, the absolute weights a query gives its line sum to at most
    ``M * max_d |q . r_d|`` over the learned offsets ``d``, the bound of an axis of the table's length M (a resampled
    row is a convex combination of learned rows, and the sum of S of them is scaled by M / S)."""
    M = 6
    m = randomize_(GlobalSelfAttention(8, heads=2, feat_size=M).double(), 5).eval()
    q = torch.randn(3, 2, 4, M * factor, 7, dtype=torch.float64)  # (B, h, dk, H, W): the column layer's lines
    weights = m.axis_weights(q, 0)  # (B, h, W, H, H)
    learned = m.rel_col.view(2 * M - 1, 2, 4)  # (offsets, h, dk)
    bound = torch.einsum("bhdaw,ohd->bhwao", q, learned).abs().amax(-1) * M  # (B, h, W, H)
    total = weights.abs().sum(-1)
    assert (total <= bound * (1 + 1e-12)).all()
    assert (total / bound).mean() > 0.15  # and not vanishing (about 0.35 for these random weights)
