"""Tests of the relative-position utilities (``gsanet.layers.rel_pos``): tables, spans and positional weights."""

from __future__ import annotations

import pytest
import torch

from gsanet.layers import GlobalSelfAttention
from gsanet.layers.rel_pos import (
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
    assert extend_rel_pos(table, 3) is table and extend_rel_pos(table, 2) is table
    grown = extend_rel_pos(table, 5)  # offsets -4 .. 4
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
    assert module.max_size == (max(built[0], 6), max(built[1], 5))  # a longer saved table is kept whole
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
