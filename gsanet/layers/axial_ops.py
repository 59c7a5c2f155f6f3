"""The GEMM path of the axial positional layer: ``out[x] = sum_x' (q_x . r_(x'-x)) v_x'`` as batched matrix products.

``AxialRelPosAttention`` is the autograd function ``GlobalSelfAttention`` runs wherever the fused CPU kernel
(``axial_kernel``) does not: CUDA, axis lengths outside the kernel's dispatch rule, dtypes it does not take, FLOP
counting. It works in cache-sized blocks through one reused scratch buffer and recomputes the weights in the backward
pass, so memory stays linear in the number of pixels. ``axial_matmul`` is the same product as two whole-tensor
matmuls, loop-free, for exporters, tracers, ``torch.compile`` and ``torch.func`` transforms (``plain_graph``).

Gradients of any order: called with ``create_graph=True`` (grad mode on inside ``backward``), the backward pass of
``AxialRelPosAttention`` (and of the fused kernel's function) returns the gradients written in plain tensor
operations (``axial_vjp``), which autograd can differentiate again; otherwise it runs its own blocked products.

Tensors are ``(B, h, C, L, S)``: batch, heads, channels, the L lines of the other axis, the S positions attended
along. The keys are the relative table laid out per query position (``rel_pos.head_keys``).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "CHUNK_ELEMENTS",
    "AxialRelPosAttention",
    "axial_matmul",
    "axial_vjp",
    "exporting",
    "keys_to_rows",
    "oriented_empty",
    "plain_graph",
    "relative_offsets",
    "rows_to_keys",
]

CHUNK_ELEMENTS = {"cpu": 1 << 20}
"""Weight elements per block of ``AxialRelPosAttention``, per device type (CPU: 4 MB in float32, about an L3 cache);
other device types use 2^28."""
_DEFAULT_CHUNK_ELEMENTS = 1 << 28

_Block = tuple[int, int, int, int, int, int]  # heads h0:h1, images b0:b1, lines l0:l1


def _split(n: int, step: int) -> list[tuple[int, int]]:
    """``0:n`` in ranges of equal length at most ``step`` (448 in steps of 334: 224 + 224, not 334 + 114)."""
    step = -(-n // -(-n // step))
    return [(i, min(n, i + step)) for i in range(0, n, step)]


def _chunks(device: torch.device, heads: int, images: int, lines: int, per_line: int) -> list[_Block]:
    """Splits ``heads x images x lines`` into blocks of about ``CHUNK_ELEMENTS`` weights.

    A block is a group of heads (when a whole head fits), or a group of whole images of one head, or a range of the
    lines of one image and head.
    """
    if heads * images * lines == 0:
        return []  # an empty batch (or map): nothing to compute
    fit = max(1, CHUNK_ELEMENTS.get(device.type, _DEFAULT_CHUNK_ELEMENTS) // per_line)  # lines per block
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


def oriented_empty(t: torch.Tensor, channels: int) -> torch.Tensor:
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


def exporting() -> bool:
    """Whether the code runs under an exporter or tracer (``torch.export``, ONNX, ``torch.jit.trace``).

    Such graphs must hold for any batch size, where the blocks of ``AxialRelPosAttention`` depend on its value (a
    symbolic batch becomes a division by it in the graph, and a loop unrolled for the example's size).
    """
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()


def plain_graph() -> bool:
    """Whether the axial layer must be recorded as plain tensor operations (``axial_matmul``), not as an autograd
    function: under an exporter or tracer (``exporting``), ``torch.compile`` (a graph over symbolic sizes, not loops
    over their values: dynamo cannot tell a symbolic size from a static one in user code, so this holds for every
    compiled graph) or a ``torch.func`` transform (``grad``, ``vmap``, ``jvp``: these see through plain operations
    only). Five O(1) flag reads in eager mode.
    """
    return exporting() or torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()


def relative_offsets(size: int, device: torch.device) -> torch.Tensor:
    """``(S, S)`` ``[x, x'] = S-1 + x'-x``: the row of each query/key pair's offset in a ``2S-1``-row layout."""
    pos = torch.arange(size, device=device)
    return pos[None, :] - pos[:, None] + (size - 1)


def rows_to_keys(rows: torch.Tensor) -> torch.Tensor:
    """The relative rows ``(h, dk, 2S-1)`` (offsets ``-(S-1) .. S-1``) laid out as absolute keys ``(h, S, dk, S)``,
    ``keys[:, x, :, x'] = rows[:, :, S-1 + x'-x]``, by a differentiable gather."""
    S = (rows.shape[-1] + 1) // 2
    return rows[:, :, relative_offsets(S, rows.device)].transpose(1, 2)  # (h, dk, x, x') -> (h, x, dk, x')


def keys_to_rows(keys: torch.Tensor) -> torch.Tensor:
    """The adjoint of ``rows_to_keys``: a gradient of the keys ``(h, S, dk, S)`` summed into rows ``(h, dk, 2S-1)``."""
    h, S, dk, _ = keys.shape
    index = relative_offsets(S, keys.device).reshape(-1)  # [x * S + x']
    summands = keys.transpose(1, 2).reshape(h, dk, S * S)
    return summands.new_zeros(h, dk, 2 * S - 1).index_add(-1, index, summands)


def axial_vjp(
    q: torch.Tensor, v: torch.Tensor, keys: torch.Tensor, grad: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of ``axial_matmul(q, v, keys)`` for an output gradient ``grad``, in plain differentiable
    operations: what the axial autograd functions' backward passes return when autograd asks for a graph
    (``create_graph=True``), so that gradients of any order are exact.

    With ``w[l, x, x'] = q_x . keys[x, :, x']`` (per image and head): ``dv[x'] = sum_x w[x, x'] g[x]``,
    ``dw[x, x'] = g[x] . v[x']``, ``dq[x] = sum_x' dw[x, x'] keys[x, :, x']``, ``dkeys[x, :, x'] = sum_(b, l)
    q_x dw[x, x']``.

    Args:
        q: ``(B, h, dk, L, S)``.
        v: ``(B, h, dv, L, S)``.
        keys: ``(h, S, dk, S)``.
        grad: ``(B, h, dv, L, S)``.

    Returns:
        the gradients of ``q``, ``v`` and ``keys``.
    """
    weights = torch.einsum("bhklx,hxky->bhlxy", q, keys)
    grad_w = torch.einsum("bhdlx,bhdly->bhlxy", grad, v)
    grad_v = torch.einsum("bhlxy,bhdlx->bhdly", weights, grad)
    grad_q = torch.einsum("bhlxy,hxky->bhklx", grad_w, keys)
    grad_keys = torch.einsum("bhklx,bhlxy->hxky", q, grad_w)
    return grad_q, grad_v, grad_keys


def axial_matmul(q: torch.Tensor, v: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
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

    The GEMM path of ``GlobalSelfAttention``. The relative embeddings arrive laid out as absolute keys
    ``E[x] = (r_(x'-x))_x'`` (``dk x S`` per query position x and head, shared by every image and line), so the
    weights of all lines at position x are one GEMM ``Q_x E_x`` (batched over x), computing exactly the ``S^2``
    logits the equation needs (a relative-logits-then-skew formulation computes 2S-1 per position). The weights,
    stored position-major ``[x, line, x']``, are then applied to the values with one GEMM per line (batched over
    lines). Asked for a differentiable gradient (``create_graph=True``), the backward pass returns that of
    ``axial_matmul`` written in plain operations instead (``axial_vjp``), so gradients of every order are exact.

    Work runs in cache-sized blocks (lines of one head, or whole heads for small maps). Each block gathers its queries
    and values from the caller's tensors, in whatever layout they are (views of the 1x1 projection's NCHW output),
    into reused scratch, and writes its output into a tensor with the values' memory order: no full-size layout
    copies, and sums with other NCHW tensors stay contiguous. GEMMs of one head read the position-major weights
    through strided views; head groups copy them to line-major order. The backward pass recomputes each block's
    weights instead of storing them: memory stays O(N * (dk + dv)) per head, plus one block of scratch. The query
    gradient is computed transposed, ``E_x G_x^T``, with the ``dk``-wide dimension on the rows (the orientation the
    CPU GEMM handles best).

    Inputs: ``q (B, h, dk, L, S)``, ``v (B, h, dv, L, S)`` (any strides), ``keys (h, S, dk, S)``
    (``keys[:, x, :, x'] = r_(x'-x)``, from ``rel_pos.head_keys``; autograd carries their gradient back to the
    relative table); output ``(B, h, dv, L, S)``.
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, v: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        B, h, dk, L, S = q.shape
        dv = v.shape[2]
        out = oriented_empty(v, dv)
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
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if torch.is_grad_enabled():  # create_graph=True: gradients autograd can differentiate again
            return axial_vjp(*ctx.saved_tensors, grad)
        q, v, keys = ctx.saved_tensors
        B, h, dk, L, S = q.shape
        dv = v.shape[2]
        grad_q, grad_v = oriented_empty(q, dk), oriented_empty(v, dv)
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
