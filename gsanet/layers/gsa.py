"""Global self-attention (GSA) module.

Shen, Bello, Vemulapalli, Jia, Chen, "Global Self-Attention Networks for Image Recognition",
https://arxiv.org/abs/2010.03019 (2020).

What is the paper's (Figure 1 and Sections 1-4):
    * keys, queries and values from 1x1 convolutions;
    * content attention ``F_c = Q (rho(K^T) V)``, ``rho`` a softmax over the N positions of each key channel;
    * axial positional attention: a column-only layer, batch norm, a row-only layer, with learned relative
      position embeddings as keys, ``f(a, b) = (q_ab . R^T) V_ab`` (no softmax in the equation);
    * output ``F_c + F_row``, with no output projection.

What is this project's choice (see ``shared/spec/gsa.md``; each is a constructor argument):
    * ``heads`` (default 8): queries/keys split into ``dim_key / heads`` channels, values into ``dim_out / heads``;
      each head uses its own slice of the embedding columns;
    * ``pos_span=None``: global positional span (every offset of the axis); an odd int ``L`` is a centred window;
    * ``stride=2``: the module runs at full resolution, then a 2x2 average pool (ceil mode, so the output size
      equals that of a padded 3x3 stride-2 convolution);
    * ablation switches ``content``, ``positional``, ``pos_softmax``, ``query_softmax`` (content branch only),
      ``rel_pos`` (off = plain averaging over the span), ``axial`` (off = one 2-D positional attention whose
      logit for offset ``(da, db)`` is ``q . (r^col_da + r^row_db)``, no batch norm; dense O(N^2), for ablations);
    * 1x1 projections without bias; embeddings initialised ``N(0, (dim_key/heads)^-1)``;
    * the content branch (key softmax and ``K^T V``) always runs in float32 under autocast.

The fast paths here (the axial layer as batched GEMMs, ``AxialRelPosAttention``, or on CPU by a fused C++ kernel,
``FusedAxialRelPosAttention``) are checked against a plain per-pixel implementation in ``tests/gsa_reference.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch import nn

from . import axial_kernel

__all__ = [
    "AxialRelPosAttention",
    "FusedAxialRelPosAttention",
    "GlobalSelfAttention",
    "extend_rel_pos",
    "fit_rel_pos_state",
    "relative_to_absolute",
    "resize_rel_pos",
    "skew",
]

_DEFAULT_MAX_SIZE = 64


def _pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        value = (value, value)
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value)):
        raise TypeError(f"{name} must be an int or a pair of ints (height, width), got {value!r}")
    if min(value) < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return int(value[0]), int(value[1])


def _check_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _offset_rows(table: torch.Tensor, center: int, size: int) -> torch.Tensor:
    """The ``2S-1`` rows of offsets ``-(S-1) .. S-1`` of a relative table (row ``center + d`` = offset d), zero rows
    for offsets the table does not cover."""
    lo = (size - 1) - center  # rows to add (>0) or drop (<0) below offset -(S-1)
    hi = (size - 1) - (table.shape[0] - 1 - center)
    table = F.pad(table, (0, 0, max(lo, 0), max(hi, 0)))
    return table[max(-lo, 0) : table.shape[0] - max(-hi, 0)]


def relative_to_absolute(table: torch.Tensor, center: int, size: int) -> torch.Tensor:
    """Expands a relative embedding table to absolute pairs without an index tensor.

    Args:
        table: ``(n_rel, C)`` embeddings; row ``center + d`` holds offset ``d``.
        center: row of offset 0.
        size: axis length S.

    Returns:
        ``(S, S, C)`` tensor ``E[a, a'] = table[center + a' - a]``, zero where the offset has no row.
    """
    table = _offset_rows(table, center, size)  # (2S-1, C), offset d at row S-1+d
    windows = table.unfold(0, size, 1)  # (S, C, S): windows[s, :, j] = table[s + j]
    return windows.flip(0).permute(0, 2, 1)  # (S, S, C): [a, a'] = table[S-1-a + a']


def skew(rel: torch.Tensor, size: int) -> torch.Tensor:
    """Relative to absolute positions as a strided view (no index, no copy).

    Args:
        rel: ``(..., S, 2S-1)`` contiguous in its last two dims; ``rel[..., x, S-1+d]`` belongs to offset ``d``.
        size: S.

    Returns:
        ``(..., S, S)`` view: ``out[..., x, x'] = rel[..., x, x' - x + S - 1]``, at flat offset ``x(2S-2) + x' + S-1``.
    """
    st = rel.stride()
    return rel.as_strided((*rel.shape[:-1], size), (*st[:-2], st[-2] - 1, 1), rel.storage_offset() + size - 1)


_CHUNK_ELEMENTS = {"cpu": 1 << 20}  # per device type: weight elements per chunk (CPU: 4 MB in float32, L3-sized)
_DEFAULT_CHUNK_ELEMENTS = 1 << 28

_Block = tuple[int, int, int, int, int, int]  # heads h0:h1, images b0:b1, lines l0:l1


def _split(n: int, step: int) -> list[tuple[int, int]]:
    """``0:n`` in ranges of equal length at most ``step`` (448 in steps of 334: 224 + 224, not 334 + 114)."""
    step = -(-n // -(-n // step))
    return [(i, min(n, i + step)) for i in range(0, n, step)]


def _chunks(device: torch.device, heads: int, images: int, lines: int, per_line: int) -> list[_Block]:
    """Splits ``heads x images x lines`` into blocks of about ``_CHUNK_ELEMENTS`` weights.

    A block is a group of heads (when a whole head fits), or a group of whole images of one head, or a range of the
    lines of one image and head.
    """
    if heads * images * lines == 0:
        return []  # an empty batch (or map): nothing to compute
    fit = max(1, _CHUNK_ELEMENTS.get(device.type, _DEFAULT_CHUNK_ELEMENTS) // per_line)  # lines per block
    if fit >= images * lines:
        return [(h0, h1, 0, images, 0, lines) for h0, h1 in _split(heads, fit // (images * lines))]
    if fit >= lines:
        return [(hh, hh + 1, b0, b1, 0, lines) for hh in range(heads) for b0, b1 in _split(images, fit // lines)]
    return [
        (hh, hh + 1, b, b + 1, l0, l1) for hh in range(heads) for b in range(images) for l0, l1 in _split(lines, fit)
    ]


class _Buffer:
    """One scratch allocation reused by every block.

    Fresh megabyte-sized tensors per block make the C allocator map and unmap memory (page faults on every block).
    """

    def __init__(self, like: torch.Tensor, numel: int) -> None:
        self.data = like.new_empty(numel)

    def __call__(self, *shape: int) -> torch.Tensor:
        return self.data[: math.prod(shape)].view(shape)


def _part(t: torch.Tensor, block: _Block) -> torch.Tensor:
    """A block's part of a ``(B, h, C, L, S)`` tensor, ``(images, heads, C, lines, S)`` (a view)."""
    h0, h1, b0, b1, l0, l1 = block
    return t[b0:b1, h0:h1, :, l0:l1]


def _gather_lines(t: torch.Tensor, block: _Block, buffer: _Buffer) -> torch.Tensor:
    """A block of ``(B, h, C, L, S)`` copied line-major, ``(heads * images * lines, C, S)``."""
    src = _part(t, block).permute(1, 0, 3, 2, 4)  # (heads, images, lines, C, S)
    return buffer(*src.shape).copy_(src).view(-1, *src.shape[-2:])


def _scatter_lines(src: torch.Tensor, t: torch.Tensor, block: _Block) -> None:
    """Inverse of ``_gather_lines``: writes ``(heads * images * lines, C, S)`` into the block of ``t``."""
    dst = _part(t, block)  # (images, heads, C, lines, S)
    nb, g, c, m, S = dst.shape
    dst.copy_(src.view(g, nb, m, c, S).permute(1, 0, 3, 2, 4))


def _gather_positions(q: torch.Tensor, block: _Block, buffer: _Buffer) -> torch.Tensor:
    """A block of ``(B, h, dk, L, S)`` copied position-major, ``(heads * S, images * lines, dk)``: the queries of all
    its lines at each position x."""
    src = _part(q, block).permute(1, 4, 0, 3, 2)  # (heads, S, images, lines, dk)
    g, S, nb, m, dk = src.shape
    return buffer(*src.shape).copy_(src).view(g * S, nb * m, dk)


def _scatter_positions(src: torch.Tensor, t: torch.Tensor, block: _Block) -> None:
    """Writes a block's position-major ``(heads * S, C, images * lines)`` (channels before lines, as the transposed
    query-gradient GEMM produces it) into the block of a ``(B, h, C, L, S)`` tensor."""
    dst = _part(t, block)  # (images, heads, C, lines, S)
    nb, g, c, m, S = dst.shape
    dst.copy_(src.view(g, S, c, nb, m).permute(3, 0, 2, 4, 1))


def _oriented_empty(t: torch.Tensor, channels: int) -> torch.Tensor:
    """An empty ``(B, h, channels, L, S)`` tensor whose last two axes have the same order in memory as ``t``'s."""
    B, h, _, L, S = t.shape
    if t.stride(-1) > t.stride(-2):  # L is the faster axis in memory (a transposed view)
        return t.new_empty(B, h, channels, S, L).transpose(-1, -2)
    return t.new_empty(B, h, channels, L, S)


def _lines_per_block(blocks: list[_Block]) -> int:
    """The most (head, line) pairs in one block: the scratch size."""
    return max(((h1 - h0) * (b1 - b0) * (l1 - l0) for h0, h1, b0, b1, l0, l1 in blocks), default=0)


def _block_weights(
    q: torch.Tensor, keys: torch.Tensor, block: _Block, q_buf: _Buffer, w_buf: _Buffer
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A block's gathered queries ``(heads * x, lines, dk)``, keys ``(heads * x, dk, x')`` and positional weights
    ``[head * line, x, x'] = q_x . r_(x'-x)``.

    One GEMM batched over (head, x) computes the weights position-major; for one head the line-major result is a
    strided view of them, for several a copy.
    """
    g, (_, _, dk, _, S) = block[1] - block[0], q.shape
    q_blk = _gather_positions(q, block, q_buf)
    keys_blk = keys[block[0] : block[1]].reshape(g * S, dk, S)
    m = q_blk.shape[1]
    weights = torch.bmm(q_blk, keys_blk, out=w_buf(g * S, m, S)).view(g, S, m, S)  # [head, x, line, x']
    return q_blk, keys_blk, weights.transpose(1, 2).reshape(g * m, S, S)


def _exporting() -> bool:
    """Whether the module runs under an exporter or tracer (``torch.export``, ONNX, ``torch.jit.trace``).

    Such graphs must hold for any batch size, where the blocks of ``AxialRelPosAttention`` depend on its value (a
    symbolic batch becomes a division by it in the graph, and a loop unrolled for the example's size).
    """
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()


def _axial_matmul(q: torch.Tensor, v: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``AxialRelPosAttention`` as two batched matmuls over the whole tensors: one block, no loop, no scratch.

    The same products as the blocked function (weights ``Q_x E_x`` per position x, then applied to the values of each
    line), with all ``B x h x L`` lines' ``S x S`` weights in memory at once: what exporters and tracers record.

    Args:
        q: ``(B, h, dk, L, S)``.
        v: ``(B, h, dv, L, S)``.
        keys: ``(h, S, dk, S)``, ``keys[:, x, :, x'] = r_(x'-x)``.

    Returns:
        ``(B, h, dv, L, S)``.
    """
    weights = torch.matmul(q.permute(0, 1, 4, 3, 2), keys.unsqueeze(0))  # (B, h, x, L, x')
    out = torch.matmul(weights.transpose(2, 3), v.permute(0, 1, 3, 4, 2))  # (B, h, L, x, dv)
    return out.permute(0, 1, 4, 2, 3)


class AxialRelPosAttention(torch.autograd.Function):
    """One axial positional layer without softmax: ``out[x] = sum_x' (q_x . r_(x'-x)) v_x'``.

    Fast path of ``GlobalSelfAttention``. The relative embeddings arrive laid out as absolute keys
    ``E[x] = (r_(x'-x))_x'`` (``dk x S`` per query position x and head, shared by every image and line), so the
    weights of all lines at position x are one GEMM ``Q_x E_x`` (batched over x), computing exactly the ``S^2``
    logits the equation needs (a relative-logits-then-skew formulation computes 2S-1 per position). The weights,
    stored position-major ``[x, line, x']``, are then applied to the values with one GEMM per line (batched over
    lines).

    Work runs in cache-sized blocks (lines of one head, or whole heads for small maps). Each block gathers its queries
    and values from the caller's tensors, in whatever layout they are (views of the 1x1 projection's NCHW output),
    into reused scratch, and writes its output into a tensor with the values' memory order: no full-size layout
    copies, and sums with other NCHW tensors stay contiguous. GEMMs of one head read the position-major weights
    through strided views; head groups copy them to line-major order. The backward pass recomputes each block's
    weights instead of storing them: memory stays O(N * (dk + dv)) per head, plus one block of scratch. The query
    gradient is computed transposed, ``E_x G_x^T``: with the ``dk``-wide dimension on the rows the CPU GEMM runs
    twice as fast.

    Inputs: ``q (B, h, dk, L, S)``, ``v (B, h, dv, L, S)`` (any strides), ``keys (h, S, dk, S)``
    (``keys[:, x, :, x'] = r_(x'-x)``, from ``relative_to_absolute``; autograd carries their gradient back to the
    relative table); output ``(B, h, dv, L, S)``.
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, v: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        B, h, dk, L, S = q.shape
        dv = v.shape[2]
        out = _oriented_empty(v, dv)
        blocks = _chunks(q.device, h, B, L, S * S)
        n = _lines_per_block(blocks)
        q_buf, w_buf = _Buffer(q, n * S * dk), _Buffer(q, n * S * S)
        v_buf, o_buf = _Buffer(v, n * dv * S), _Buffer(v, n * dv * S)
        for block in blocks:
            _, _, weights = _block_weights(q, keys, block, q_buf, w_buf)  # (head * line, x, x')
            v_blk = _gather_lines(v, block, v_buf)  # (head * line, dv, x')
            out_blk = torch.bmm(v_blk, weights.transpose(1, 2), out=o_buf(*v_blk.shape))  # (head * line, dv, x)
            _scatter_lines(out_blk, out, block)
        ctx.save_for_backward(q, v, keys)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, v, keys = ctx.saved_tensors
        B, h, dk, L, S = q.shape
        dv = v.shape[2]
        grad_q, grad_v = _oriented_empty(q, dk), _oriented_empty(v, dv)
        grad_keys = torch.zeros_like(keys, dtype=torch.promote_types(keys.dtype, torch.float32))  # summed over blocks
        blocks = _chunks(q.device, h, B, L, S * S)
        n = _lines_per_block(blocks)
        q_buf, w_buf, gq_buf = _Buffer(q, n * S * dk), _Buffer(q, n * S * S), _Buffer(q, n * S * dk)
        v_buf, g_buf, gv_buf = _Buffer(v, n * dv * S), _Buffer(v, n * dv * S), _Buffer(v, n * dv * S)
        gw_buf = _Buffer(v, n * S * S)
        low_precision = grad_keys.dtype != keys.dtype  # products in it, the sum over blocks in float32
        k_buf = _Buffer(keys, keys.numel()) if low_precision else None
        for block in blocks:
            h0, h1 = block[:2]
            g, m = h1 - h0, (block[3] - block[2]) * (block[5] - block[4])
            q_blk, keys_blk, weights = _block_weights(q, keys, block, q_buf, w_buf)  # weights recomputed
            grad_blk = _gather_lines(grad, block, g_buf)  # (head * line, dv, x)
            _scatter_lines(torch.bmm(grad_blk, weights, out=gv_buf(g * m, dv, S)), grad_v, block)  # (.., dv, x')
            v_blk = _gather_lines(v, block, v_buf)
            grad_w = torch.bmm(grad_blk.transpose(1, 2), v_blk, out=gw_buf(g * m, S, S))  # (head * line, x, x')
            grad_w = grad_w.view(g, m, S, S).transpose(1, 2).reshape(g * S, m, S)  # (head * x, line, x')
            grad_qt = torch.bmm(keys_blk, grad_w.transpose(1, 2), out=gq_buf(g * S, dk, m))  # (head * x, dk, line)
            _scatter_positions(grad_qt, grad_q, block)
            grad_keys_blk = grad_keys[h0:h1].view(g * S, dk, S)
            if low_precision:
                grad_keys_blk.add_(torch.bmm(q_blk.transpose(1, 2), grad_w, out=k_buf(g * S, dk, S)))
            else:
                grad_keys_blk.baddbmm_(q_blk.transpose(1, 2), grad_w)
        return grad_q, grad_v, grad_keys.to(keys.dtype)


class FusedAxialRelPosAttention(torch.autograd.Function):
    """``AxialRelPosAttention`` by the fused CPU kernel (``axial_kernel``, ``csrc/axial_rel_pos.cpp``).

    The kernel gives each vector lane one line (16 lines of one head per group in float32) and computes and applies
    each line's weights from registers and cache, never writing them to memory whole; the backward pass recomputes
    them. It takes the relative rows instead of absolute keys. bfloat16/float16 tensors are widened to float32 as the
    kernel copies each line group into its scratch, and the results rounded once on the way out; the embedding
    gradient is summed in float32.

    Inputs: ``q (B, h, dk, L, S)``, ``v (B, h, dv, L, S)`` (any strides), ``rows (h, dk, 2S-1)`` (the embeddings of
    offsets ``-(S-1) .. S-1``, zero where the table has none; autograd carries their gradient back to the table),
    and optionally the kernel variant (``axial_kernel.VARIANTS``; default the host's); output ``(B, h, dv, L, S)``
    in the values' memory order.
    """

    @staticmethod
    def forward(
        ctx, q: torch.Tensor, v: torch.Tensor, rows: torch.Tensor, variant: str | None = None
    ) -> torch.Tensor:
        ops = axial_kernel.ops(variant)  # the host's build unless a variant is named (the tests run each one)
        out = _oriented_empty(v, v.shape[2])
        ops.forward(q, v, rows, out)
        ctx.save_for_backward(q, v, rows)
        ctx.ops = ops
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        q, v, rows = ctx.saved_tensors
        grad_q, grad_v = _oriented_empty(q, q.shape[2]), _oriented_empty(v, v.shape[2])
        grad_rows = ctx.ops.backward(q, v, rows, grad, grad_q, grad_v)  # float32 for bf16/fp16
        return grad_q, grad_v, grad_rows.to(rows.dtype), None


@register_notrace_module  # a leaf for FX (timm's feature_cls="fx", create_feature_extractor): its shapes drive Python
class GlobalSelfAttention(nn.Module):
    """GSA module: content attention plus axial positional attention, a drop-in for a 3x3 convolution.

    Under FX symbolic tracing the module is a leaf: timm registers it as one (``timm.layers.register_notrace_module``),
    so ``timm.create_model(..., features_only=True, feature_cls="fx")``, ``timm.layers.create_feature_extractor`` and
    ``timm.layers.get_graph_node_names`` work; with torchvision's functions directly, pass
    ``tracer_kwargs={"leaf_modules": [GlobalSelfAttention]}``.

    Args:
        dim: input channels.
        dim_out: output channels (default ``dim``).
        heads: attention heads; must divide ``dim_key`` and ``dim_out``.
        dim_key: query/key channels (default ``dim_out``).
        stride: 1, or 2 for a 2x2 average pool after the module.
        pos_span: ``None`` for a global positional span, or an odd window length L.
        feat_size: the input (height, width) the global relative tables are sized for (default 64x64), i.e. the
            offsets that get their own learned embedding; timm's ``ByobNet`` passes the stage's feature size here.
            Any input size runs: on a larger input the tables are extended at forward time by edge replication
            (``extend_rel_pos``, what ``resize_rel_pos`` stores), so the parameters never change shape. Windowed
            spans cover any size.
        content: use the content attention layer.
        positional: use the positional attention layer.
        pos_softmax: softmax over the neighbours' positional logits (the paper has none).
        query_softmax: softmax of each query over its channels in the content layer (the paper has none).
        rel_pos: relative embeddings as keys; off, positional attention averages the span uniformly.
        axial: column, batch norm, row (the paper); off, one 2-D positional attention over the same span.
        qkv_bias: bias in the 1x1 query/key/value projection.
        device: device of the parameters (timm's factory keyword).
        dtype: dtype of the parameters (timm's factory keyword).
    """

    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        *,
        heads: int = 8,
        dim_key: int | None = None,
        stride: int = 1,
        pos_span: int | None = None,
        feat_size: int | tuple[int, int] | None = None,
        content: bool = True,
        positional: bool = True,
        pos_softmax: bool = False,
        query_softmax: bool = False,
        rel_pos: bool = True,
        axial: bool = True,
        qkv_bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dim = _check_int(dim, "dim")
        dim_out = dim if dim_out is None else _check_int(dim_out, "dim_out")
        dim_key = dim_out if dim_key is None else _check_int(dim_key, "dim_key")
        heads = _check_int(heads, "heads")
        for name, width in (("dim_out", dim_out), ("dim_key", dim_key)):
            if width % heads:
                raise ValueError(
                    f"{name}={width} is not divisible by heads={heads}: choose heads among the divisors of {width}"
                )
        if isinstance(stride, bool) or stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride!r}; for more downsampling stack modules or pool")
        if pos_span is not None:
            _check_int(pos_span, "pos_span", minimum=-(2**62))
            if pos_span < 1 or pos_span % 2 == 0:
                raise ValueError(
                    f"pos_span must be None (global) or a positive odd window length, got {pos_span}; "
                    f"use {max(1, pos_span + 1 if pos_span > 0 else 1)} for a centred window"
                )
        if not (content or positional):
            raise ValueError("content and positional are both off: the module would output nothing; enable one")
        self.dim, self.dim_out, self.dim_key, self.heads = dim, dim_out, dim_key, heads
        self.stride, self.pos_span = stride, pos_span
        self.content, self.positional = bool(content), bool(positional)
        self.pos_softmax, self.query_softmax = bool(pos_softmax), bool(query_softmax)
        self.rel_pos, self.axial = bool(rel_pos), bool(axial)
        self.max_size = _pair(feat_size if feat_size is not None else _DEFAULT_MAX_SIZE, "feat_size")

        dd = dict(device=device, dtype=dtype)
        self.qkv = nn.Conv2d(dim, 2 * dim_key + dim_out, 1, bias=qkv_bias, **dd)
        if positional and rel_pos:
            n_col, n_row = self._n_rel(self.max_size[0]), self._n_rel(self.max_size[1])
            self.rel_col = nn.Parameter(torch.empty(n_col, dim_key, **dd))
            self.rel_row = nn.Parameter(torch.empty(n_row, dim_key, **dd))
        else:
            self.register_parameter("rel_col", None)
            self.register_parameter("rel_row", None)
        self.norm = nn.BatchNorm2d(dim_out, **dd) if positional and axial else None
        self.reset_parameters()

    def _n_rel(self, size: int) -> int:
        return 2 * size - 1 if self.pos_span is None else self.pos_span

    def _center(self, table: torch.Tensor) -> int:
        return (table.shape[0] - 1) // 2

    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.qkv.weight, mode="fan_in", nonlinearity="linear")
        if self.qkv.bias is not None:
            nn.init.zeros_(self.qkv.bias)
        if self.rel_col is not None:
            std = (self.dim_key // self.heads) ** -0.5
            nn.init.normal_(self.rel_col, std=std)
            nn.init.normal_(self.rel_row, std=std)
        if self.norm is not None:
            self.norm.reset_parameters()

    def extra_repr(self) -> str:
        span = "global" if self.pos_span is None else self.pos_span
        s = f"{self.dim}, {self.dim_out}, heads={self.heads}, dim_key={self.dim_key}, stride={self.stride}"
        s += f", pos_span={span}, max_size={self.max_size}"
        for flag, default in (
            ("content", True),
            ("positional", True),
            ("pos_softmax", False),
            ("query_softmax", False),
            ("rel_pos", True),
            ("axial", True),
        ):
            if getattr(self, flag) != default:
                s += f", {flag}={getattr(self, flag)}"
        return s

    def __prepare_scriptable__(self) -> GlobalSelfAttention:
        """``torch.jit.script`` calls this on every submodule first: refuse with the reason and the alternatives.

        TorchScript is deprecated upstream, and the module's forward is Python that scripting cannot compile (custom
        autograd functions, the fused kernel's dispatch, shape-dependent blocking); ``torch.jit.trace``,
        ``torch.export`` / ``torch.onnx.export(..., dynamo=True)`` and ``torch.compile`` all work.
        """
        raise RuntimeError(
            "GlobalSelfAttention does not support torch.jit.script (TorchScript is deprecated in PyTorch and cannot "
            "compile its custom autograd functions and kernel dispatch); use torch.jit.trace, torch.export, "
            "torch.onnx.export(..., dynamo=True) or torch.compile instead"
        )

    # ------------------------------------------------------------------ checks
    def _check_input(self, x: torch.Tensor) -> None:
        if isinstance(x, torch.fx.Proxy):
            raise TypeError(
                "GlobalSelfAttention cannot be traced through by FX (its computation depends on the input's shape): "
                "trace it as a leaf module, as timm.layers.create_feature_extractor does, or pass "
                "tracer_kwargs={'leaf_modules': [GlobalSelfAttention]} to torchvision's create_feature_extractor"
            )
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"GlobalSelfAttention expects a tensor, got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(
                f"GlobalSelfAttention expects a 4-D input (batch, channels, height, width), got shape "
                f"{tuple(x.shape)}; add a batch dimension with x.unsqueeze(0) for a single image"
            )
        if x.shape[1] != self.dim:
            raise ValueError(
                f"input has {x.shape[1]} channels but the module was built for dim={self.dim}; "
                f"construct GlobalSelfAttention({x.shape[1]}, ...) or fix the preceding layer"
            )
        if not x.is_floating_point():
            raise TypeError(f"GlobalSelfAttention expects a floating-point input, got {x.dtype}")

    # ------------------------------------------------------------------ branches
    def _content(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q, k: (B, h, dk, N); v: (B, h, dv, N)
        with torch.autocast(device_type=q.device.type, enabled=False):
            dtype = torch.promote_types(q.dtype, torch.float32)
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
            if self.query_softmax:
                q = q.softmax(dim=2)  # each query over its channels
            context = torch.matmul(k.softmax(dim=-1), v.transpose(-1, -2))  # (B, h, dk, dv): rho(K^T) V
            return torch.matmul(context.transpose(-1, -2), q)  # (B, h, dv, N)

    def _span_mask(self, size: int, device: torch.device) -> torch.Tensor:
        """``(S, S)`` boolean: ``[a, a']`` is True when ``a'`` lies in the span of ``a``."""
        half = (size - 1) if self.pos_span is None else (self.pos_span - 1) // 2
        pos = torch.arange(size, device=device)
        return (pos[None, :] - pos[:, None]).abs() <= half

    def _axis_logits(self, q: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Positional logits along the last spatial axis, relative offsets turned absolute without an index.

        Args:
            q: queries ``(B, h, L, S, dk)``, attending along the S axis (L is the other axis).
            table: relative embeddings ``(n_rel, h * dk)``.

        Returns:
            ``(B, h, L, S, S)`` logits ``q_x . r_(x'-x)``, zero for offsets outside the span (a strided view).
        """
        B, h, L, S, dk = q.shape
        rel = torch.matmul(q.reshape(B, h, L * S, dk), self._head_rows(table, S, q.dtype))  # (B, h, L*S, 2S-1)
        return skew(rel.view(B, h, L, S, 2 * S - 1), S)

    def _covering(self, table: torch.Tensor, size: int) -> torch.Tensor:
        """The table, extended to every offset of an axis of ``size`` when it is global and smaller."""
        return extend_rel_pos(table, size) if self.pos_span is None else table

    def _head_rows(self, table: torch.Tensor, size: int, dtype: torch.dtype) -> torch.Tensor:
        """``(h, dk, 2S-1)``: each head's slice of the span's embedding rows."""
        table = self._covering(table, size)
        rows = _offset_rows(table.to(dtype), self._center(table), size)  # (2S-1, h*dk)
        return rows.view(2 * size - 1, self.heads, -1).permute(1, 2, 0)

    def _head_keys(self, table: torch.Tensor, size: int, dtype: torch.dtype) -> torch.Tensor:
        """``(h, S, dk, S)``: each head's absolute keys ``[x, :, x'] = r_(x'-x)``, zero outside the span."""
        table = self._covering(table, size)
        keys = relative_to_absolute(table.to(dtype), self._center(table), size)  # (S, S, h*dk)
        return keys.view(size, size, self.heads, -1).permute(2, 0, 3, 1).contiguous()

    def _axis_pass(self, q: torch.Tensor, values: torch.Tensor, table: torch.Tensor | None) -> torch.Tensor:
        """One axial positional layer along the last spatial axis.

        Args:
            q: queries ``(B, h, dk, L, S)``, attending along S (L is the other axis).
            values: ``(B, h, dv, L, S)``.
            table: relative embeddings, or None for uniform averaging over the span.

        Returns:
            ``(B, h, dv, L, S)``: ``out[..., x] = sum_x' w[x, x'] values[..., x']``.
        """
        S = q.shape[-1]
        if table is not None and not self.pos_softmax:
            if axial_kernel.usable(q, values):  # the table is cast to their dtype
                return FusedAxialRelPosAttention.apply(q, values, self._head_rows(table, S, q.dtype))
            keys = self._head_keys(table, S, q.dtype)
            if _exporting():  # one loop-free graph for any (symbolic) batch size
                return _axial_matmul(q, values, keys)
            return AxialRelPosAttention.apply(q, values, keys)
        inside = self._span_mask(S, q.device)
        if table is None:
            weights = inside.to(values.dtype)
            weights = weights / weights.sum(dim=1, keepdim=True)  # (S, S) uniform over the span
            return torch.matmul(values, weights.t())
        logits = self._axis_logits(q.transpose(2, 4).transpose(2, 3), table)  # (B, h, L, S, S)
        weights = logits.masked_fill(~inside, float("-inf")).softmax(dim=-1)
        return torch.matmul(values.transpose(2, 3), weights.transpose(-1, -2)).transpose(2, 3)

    def _positional_axial(self, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        B, h, dv, H, W = v.shape
        # column-only layer: each column (fixed w) attends along H
        out = self._axis_pass(q.transpose(-1, -2), v.transpose(-1, -2), self.rel_col)  # (B, h, dv, W, H)
        z = self.norm(out.transpose(-1, -2).reshape(B, h * dv, H, W)).view(B, h, dv, H, W)  # Z = BN(F_col)
        # row-only layer on Z with the same queries: each row (fixed h) attends along W
        return self._axis_pass(q, z, self.rel_row)  # (B, h, dv, H, W)

    def _positional_2d(self, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Non-axial ablation: one pass over the 2-D span, dense ``(N, N)`` weights per head."""
        B, h, dv, H, W = v.shape
        if self.rel_pos:
            col = self._axis_logits(q.permute(0, 1, 4, 3, 2), self.rel_col).transpose(2, 3)  # (B, h, H, W, H)
            row = self._axis_logits(q.permute(0, 1, 3, 4, 2), self.rel_row)  # (B, h, H, W, W)
            logits = (col[..., :, None] + row[..., None, :]).reshape(B, h, H * W, H * W)
        else:
            logits = q.new_zeros(B, h, H * W, H * W)
        mask = self._span_mask(H, q.device)[:, None, :, None] & self._span_mask(W, q.device)[None, :, None, :]
        mask = mask.reshape(H * W, H * W)
        if self.pos_softmax or not self.rel_pos:
            weights = logits.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        else:
            weights = logits * mask.to(logits.dtype)
        out = torch.matmul(weights, v.reshape(B, h, dv, H * W).transpose(-1, -2))  # (B, h, N, dv)
        return out.transpose(-1, -2).reshape(B, h, dv, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        B, _, H, W = x.shape
        h, dk, dv = self.heads, self.dim_key // self.heads, self.dim_out // self.heads
        q, k, v = self.qkv(x).split([self.dim_key, self.dim_key, self.dim_out], dim=1)
        q = q.reshape(B, h, dk, H, W)
        v = v.reshape(B, h, dv, H, W)
        out = None
        if self.content:
            out = self._content(q.reshape(B, h, dk, H * W), k.reshape(B, h, dk, H * W), v.reshape(B, h, dv, H * W))
            out = out.reshape(B, h, dv, H, W).to(v.dtype)
        if self.positional:
            pos = self._positional_axial(q, v) if self.axial else self._positional_2d(q, v)
            out = pos if out is None else out + pos  # F_c + F_row
        out = out.reshape(B, self.dim_out, H, W)
        if self.stride == 2:
            out = F.avg_pool2d(out, 2, ceil_mode=True)
        return out


def extend_rel_pos(table: torch.Tensor, size: int) -> torch.Tensor:
    """A global relative table extended by edge replication to cover an axis of ``size``.

    Offsets the table covers keep their embeddings; each farther offset gets the embedding of the farthest learned
    offset on its side, the choice of ``resize_rel_pos`` (which stores the result) and the one that keeps every
    learned embedding unchanged: an attention learned at one size sees at a larger size the same embeddings for the
    offsets it knows and a constant one beyond. Differentiable (the extra rows' gradients flow to the edge rows).

    Args:
        table: ``(2M-1, C)`` embeddings of offsets ``-(M-1) .. M-1``.
        size: axis length S.

    Returns:
        ``table`` itself when ``S <= M``, else ``(2S-1, C)``.
    """
    extra = size - (table.shape[0] + 1) // 2
    if extra <= 0:
        return table
    return F.pad(table.t()[None], (extra, extra), mode="replicate")[0].t()


@torch.no_grad()
def resize_rel_pos(module: nn.Module, size: int | tuple[int, int]) -> nn.Module:
    """Enlarges the global relative tables of every GSA module in ``module`` in place.

    Offsets the old tables cover keep their learned embeddings; the new, farther offsets copy the embedding of the
    farthest learned offset (edge replication, ``extend_rel_pos``). The modules compute exactly that at forward time
    on larger inputs, so this changes no output: it is for giving the farther offsets trainable embeddings of their
    own (fine-tuning at a larger size). Modules with a windowed span, or tables already large enough, are unchanged.
    In a strided network the inner modules grow by the same factor as the outermost one.

    Args:
        module: a ``GlobalSelfAttention`` or any model containing them.
        size: the new largest input (height, width) of the outermost (largest) modules.

    Returns:
        ``module``, for chaining.
    """
    new_h, new_w = _pair(size, "size")
    layers = [m for m in module.modules() if isinstance(m, GlobalSelfAttention) and m.rel_col is not None]
    layers = [m for m in layers if m.pos_span is None]
    if not layers:
        return module
    ref_h, ref_w = max(m.max_size[0] for m in layers), max(m.max_size[1] for m in layers)
    for m in layers:
        target = (math.ceil(m.max_size[0] * new_h / ref_h), math.ceil(m.max_size[1] * new_w / ref_w))
        target = (max(target[0], m.max_size[0]), max(target[1], m.max_size[1]))
        for name, old, new in (("rel_col", m.max_size[0], target[0]), ("rel_row", m.max_size[1], target[1])):
            if new == old:
                continue
            table = getattr(m, name)  # (2 * old - 1, C)
            grown = extend_rel_pos(table, new)  # (2 * new - 1, C)
            setattr(m, name, nn.Parameter(grown.contiguous(), requires_grad=table.requires_grad))
        m.max_size = target
    return module


def fit_rel_pos_state(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Fits the global relative tables of a state dict to the GSA modules of ``model`` before loading it.

    A model built for another input size (``img_size``) has tables of another length. A loaded table shorter than the
    module's is extended by edge replication (``extend_rel_pos``, exactly what the module computes at forward time);
    a longer one is kept whole: the module's table grows to its length (``max_size`` with it), so no learned
    embedding is dropped. Either way the loaded model computes on any input what the saved model computed. Used as
    timm's ``pretrained_filter_fn``; other shape mismatches are left for ``load_state_dict`` to report.

    Args:
        state_dict: the weights to load (not modified; a new dict is returned).
        model: the model about to load them (its longer-than-built tables are enlarged in place).

    Returns:
        the state dict, with fitted tables.
    """
    state_dict = dict(state_dict)
    for name, m in model.named_modules():
        if not isinstance(m, GlobalSelfAttention) or m.rel_col is None or m.pos_span is not None:
            continue
        for axis, attr in enumerate(("rel_col", "rel_row")):
            key = f"{name}.{attr}" if name else attr
            param, loaded = getattr(m, attr), state_dict.get(key)
            if loaded is None or loaded.ndim != 2 or loaded.shape[1:] != param.shape[1:] or loaded.shape[0] % 2 == 0:
                continue
            if loaded.shape[0] < param.shape[0]:
                state_dict[key] = extend_rel_pos(loaded, (param.shape[0] + 1) // 2)
            elif loaded.shape[0] > param.shape[0]:
                grown = torch.empty(loaded.shape, device=param.device, dtype=param.dtype)
                setattr(m, attr, nn.Parameter(grown, requires_grad=param.requires_grad))
                size = list(m.max_size)
                size[axis] = (loaded.shape[0] + 1) // 2
                m.max_size = (size[0], size[1])
    return state_dict
