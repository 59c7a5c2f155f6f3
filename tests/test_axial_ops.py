"""Tests of the axial layer's GEMM path (``gsanet.layers.axial_ops``) against plain autograd."""

from __future__ import annotations

import pytest
import torch

from gsanet.layers import axial_ops
from gsanet.layers.axial_ops import AxialRelPosAttention
from tests.gsa_reference import axial_gemm, axial_plain, random_lines, rel_error


@pytest.mark.parametrize("transposed", [False, True], ids=["rows", "columns"])
@pytest.mark.parametrize("chunk", [1, 16 * 2, 16 * 3, 16 * 10, 16 * 15, 16 * 30, 1 << 18], ids=lambda c: f"chunk{c}")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_axial_function_matches_plain_autograd_in_every_chunking(
    chunk: int, dtype: torch.dtype, transposed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks of 1, 2 + 2 + 1 and 3 + 2 lines of one image, 2 + 1 images, one whole head, head groups (2 + 1 of 3),
    one block; on contiguous inputs and on transposed views (the column pass reads the NCHW projection that way),
    whose memory order the output and the gradients keep."""
    monkeypatch.setitem(axial_ops.CHUNK_ELEMENTS, "cpu", chunk)
    torch.manual_seed(0)
    B, h, dk, L, S, dv = 3, 3, 2, 5, 4, 3
    q, v = random_lines(dtype, transposed, B, h, dk, L, S), random_lines(dtype, transposed, B, h, dv, L, S)
    rows = torch.randn(h, dk, 2 * S - 1, dtype=dtype, requires_grad=True)
    grad = torch.randn(B, h, dv, L, S, dtype=dtype)
    out = axial_gemm(q, v, rows)
    expected = axial_plain(q, v, rows)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, expected, **tol)
    assert out.stride(-1) < out.stride(-2) if not transposed else out.stride(-1) > out.stride(-2)
    actual_grads = torch.autograd.grad(out, (q, v, rows), grad)
    expected_grads = torch.autograd.grad(expected, (q, v, rows), grad)
    for a, e, name in zip(actual_grads, expected_grads, ("q", "v", "rows"), strict=True):
        torch.testing.assert_close(a, e, **tol, msg=lambda m, name=name: f"grad {name}: {m}")
    # numerical gradients too, except for the 1- and 2-line blockings (45 and 27 blocks: 15 s each)
    if dtype == torch.float64 and chunk >= 16 * 3:
        assert torch.autograd.gradcheck(axial_gemm, (q, v, rows))


@pytest.mark.parametrize("chunk", [16 * 3, 1 << 18], ids=lambda c: f"chunk{c}")
def test_axial_function_bf16_gradients_close_to_float64(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """In bfloat16 the key gradient is summed over blocks in float32 (many blocks, and one)."""
    monkeypatch.setitem(axial_ops.CHUNK_ELEMENTS, "cpu", chunk)
    torch.manual_seed(0)
    B, h, dk, L, S, dv = 3, 3, 2, 5, 4, 3
    q = torch.randn(B, h, dk, L, S, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, h, dv, L, S, dtype=torch.float64, requires_grad=True)
    rows = torch.randn(h, dk, 2 * S - 1, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(B, h, dv, L, S, dtype=torch.float64)
    low = [t.detach().bfloat16().requires_grad_() for t in (q, v, rows)]
    out = axial_gemm(*low)
    assert out.dtype == torch.bfloat16
    actual = torch.autograd.grad(out, low, grad.bfloat16())
    expected = torch.autograd.grad(axial_plain(q, v, rows), (q, v, rows), grad)
    for a, e, name in zip(actual, expected, ("q", "v", "rows"), strict=True):
        assert a.dtype == torch.bfloat16, name
        assert rel_error(a.double(), e) < 3e-2, name


def test_loop_free_axial_product_matches_the_blocked_function() -> None:
    """The single-block formulation that exporters record computes what ``AxialRelPosAttention`` computes."""
    torch.manual_seed(0)
    B, h, dk, dv, L, S = 3, 2, 4, 5, 6, 7
    q, v = torch.randn(B, h, dk, L, S, dtype=torch.float64), torch.randn(B, h, dv, L, S, dtype=torch.float64)
    keys = torch.randn(h, S, dk, S, dtype=torch.float64)
    expected = AxialRelPosAttention.apply(q, v, keys)
    torch.testing.assert_close(axial_ops.axial_matmul(q, v, keys), expected, rtol=1e-12, atol=1e-12)
    plain = torch.einsum("bhclx,hxcy,bhdly->bhdlx", q, keys, v)  # out[x] = sum_x' (q_x . r_(x'-x)) v_x'
    torch.testing.assert_close(expected, plain, rtol=1e-12, atol=1e-12)
