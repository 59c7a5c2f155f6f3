"""Plain reference implementation of the GSA module, written straight from the equations.

Per-pixel loops, explicit weights, no tricks: used only by the tests to check the module in ``gsanet/layers/gsa.py``
and its operators. It reads the parameters of a ``GlobalSelfAttention`` module. Also the tests' shared helpers: the
axial layer in plain autograd (``axial_plain``) and on the GEMM path (``axial_gemm``), random inputs and parameters.

    content:     F_c = Q (rho(K^T) V), rho = softmax over the N positions of each key channel
    column:      f_col(a, b) = sum_{delta in span} (q_ab . r^col_delta) v_{a+delta, b}
    batch norm:  Z = BN(F_col)
    row:         f_row(a, b) = sum_{delta in span} (q_ab . r^row_delta) z_{a, b+delta}
    output:      F_c + F_row, then a 2x2 average pool when stride is 2
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gsanet.layers import GlobalSelfAttention
from gsanet.layers.axial_ops import AxialRelPosAttention
from gsanet.layers.rel_pos import head_keys, table_center

__all__ = ["axial_gemm", "axial_plain", "random_lines", "randomize_", "reference_forward", "rel_error"]


def _offsets(m: GlobalSelfAttention, size: int) -> list[int]:
    half = size - 1 if m.pos_span is None else (m.pos_span - 1) // 2
    return list(range(-half, half + 1))


def _embedding(table: torch.Tensor, delta: int) -> torch.Tensor:
    """Row of offset ``delta`` in a relative table (offset 0 at its centre row)."""
    return table[table_center(table) + delta]


def _batch_norm(m: torch.nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    if m.training:
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
    else:
        mean, var = m.running_mean.to(x.dtype), m.running_var.to(x.dtype)
    shape = (1, -1, 1, 1)
    y = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + m.eps)
    return y * m.weight.view(shape) + m.bias.view(shape)


def _axis_attention(
    m: GlobalSelfAttention, q: torch.Tensor, values: torch.Tensor, table: torch.Tensor | None, axis: int
) -> torch.Tensor:
    """One axial positional layer, pixel by pixel.

    Args:
        m: the module (for its switches).
        q: queries ``(B, h, dk, H, W)``.
        values: ``(B, h, dv, H, W)``.
        table: relative embeddings ``(n_rel, h * dk)`` or None.
        axis: 0 = column-only (neighbours along H), 1 = row-only (along W).
    """
    B, h, dk, H, W = q.shape
    out = torch.zeros_like(values)
    size = H if axis == 0 else W
    for a in range(H):
        for b in range(W):
            q_ab = q[:, :, :, a, b]  # (B, h, dk)
            logits, neighbours = [], []
            for delta in _offsets(m, size):
                pa, pb = (a + delta, b) if axis == 0 else (a, b + delta)
                if not (0 <= pa < H and 0 <= pb < W):
                    continue  # neighbours outside the image contribute nothing
                if table is None:
                    logits.append(torch.zeros(B, h, dtype=q.dtype))
                else:
                    r = _embedding(table, delta).view(h, dk)
                    logits.append((q_ab * r).sum(-1))  # (B, h): q_ab . r_delta
                neighbours.append(values[:, :, :, pa, pb])  # (B, h, dv)
            w = torch.stack(logits, dim=-1)  # (B, h, n)
            if m.pos_softmax or table is None:
                w = w.softmax(dim=-1)  # without embeddings: uniform average over the span
            out[:, :, :, a, b] = (w[:, :, None, :] * torch.stack(neighbours, dim=-1)).sum(-1)
    return out


def _attention_2d(m: GlobalSelfAttention, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Non-axial positional attention: one pass over the 2-D span, logit q . (r^col_da + r^row_db)."""
    B, h, dk, H, W = q.shape
    out = torch.zeros_like(v)
    for a in range(H):
        for b in range(W):
            q_ab = q[:, :, :, a, b]
            logits, neighbours = [], []
            for da in _offsets(m, H):
                for db in _offsets(m, W):
                    pa, pb = a + da, b + db
                    if not (0 <= pa < H and 0 <= pb < W):
                        continue
                    if m.rel_pos:
                        r = (_embedding(m.rel_col, da) + _embedding(m.rel_row, db)).view(h, dk)
                        logits.append((q_ab * r).sum(-1))
                    else:
                        logits.append(torch.zeros(B, h, dtype=q.dtype))
                    neighbours.append(v[:, :, :, pa, pb])
            w = torch.stack(logits, dim=-1)
            if m.pos_softmax or not m.rel_pos:
                w = w.softmax(dim=-1)
            out[:, :, :, a, b] = (w[:, :, None, :] * torch.stack(neighbours, dim=-1)).sum(-1)
    return out


def reference_forward(m: GlobalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """The module's output computed from the equations, with the module's parameters."""
    B, _, H, W = x.shape
    h = m.heads
    dk, dv = m.dim_key // h, m.dim_out // h
    weight = m.qkv.weight[:, :, 0, 0]  # (2 dk + dv, C)
    qkv = torch.einsum("oc,bcxy->boxy", weight, x)
    if m.qkv.bias is not None:
        qkv = qkv + m.qkv.bias.view(1, -1, 1, 1)
    q, k, v = qkv.split([m.dim_key, m.dim_key, m.dim_out], dim=1)
    q, k, v = q.reshape(B, h, dk, H, W), k.reshape(B, h, dk, H, W), v.reshape(B, h, dv, H, W)

    out = torch.zeros(B, h, dv, H, W, dtype=x.dtype)
    if m.content:
        Q = q.reshape(B, h, dk, H * W).transpose(-1, -2)  # (B, h, N, dk)
        if m.query_softmax:
            Q = Q.softmax(dim=-1)
        Kt = k.reshape(B, h, dk, H * W)  # (B, h, dk, N) = K^T
        V = v.reshape(B, h, dv, H * W).transpose(-1, -2)  # (B, h, N, dv)
        F_c = Q @ (Kt.softmax(dim=-1) @ V)  # (B, h, N, dv)
        out = out + F_c.transpose(-1, -2).reshape(B, h, dv, H, W)
    if m.positional:
        table_col = m.rel_col if m.rel_pos else None
        table_row = m.rel_row if m.rel_pos else None
        if m.axial:
            F_col = _axis_attention(m, q, v, table_col, axis=0)
            Z = _batch_norm(m.norm, F_col.reshape(B, m.dim_out, H, W)).reshape(B, h, dv, H, W)
            F_row = _axis_attention(m, q, Z, table_row, axis=1)
        else:
            F_row = _attention_2d(m, q, v)
        out = out + F_row
    out = out.reshape(B, m.dim_out, H, W)
    if m.stride == 2:
        out = F.avg_pool2d(out, 2, ceil_mode=True)
    return out


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


def axial_plain(q: torch.Tensor, v: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``AxialRelPosAttention`` written with plain autograd: ``out[x] = sum_x' (q_x . rows[x'-x+S-1]) v_x'``."""
    S = q.shape[-1]
    offsets = torch.arange(S)[None, :] - torch.arange(S)[:, None] + S - 1  # [x, x']
    keys = rows[:, :, offsets]  # (h, dk, x, x')
    weights = torch.einsum("bhclx,hcxy->bhlxy", q, keys)
    return torch.einsum("bhlxy,bhdly->bhdlx", weights, v)


def axial_gemm(q: torch.Tensor, v: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``AxialRelPosAttention`` on the absolute keys of ``rows (h, dk, 2S-1)``, as ``GlobalSelfAttention`` calls it."""
    h, dk, n = rows.shape
    keys = head_keys(rows.permute(2, 0, 1).reshape(n, h * dk), (n + 1) // 2, h, pos_span=None)  # (h, S, dk, S)
    return AxialRelPosAttention.apply(q, v, keys)


def random_lines(dtype: torch.dtype, transposed: bool, *shape: int) -> torch.Tensor:
    """Random ``(B, h, C, L, S)`` leaf; with ``transposed``, a view whose L axis is the faster one in memory (as the
    column pass reads the NCHW projection)."""
    if transposed:
        return torch.randn(*shape[:-2], shape[-1], shape[-2], dtype=dtype).transpose(-1, -2).requires_grad_()
    return torch.randn(*shape, dtype=dtype, requires_grad=True)
