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

The fast path here is checked against a plain per-pixel implementation in ``tests/gsa_reference.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GlobalSelfAttention", "resize_rel_pos"]

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


def relative_to_absolute(table: torch.Tensor, center: int, size: int) -> torch.Tensor:
    """Expands a relative embedding table to absolute pairs without an index tensor.

    Args:
        table: ``(n_rel, C)`` embeddings; row ``center + d`` holds offset ``d``.
        center: row of offset 0.
        size: axis length S.

    Returns:
        ``(S, S, C)`` tensor ``E[a, a'] = table[center + a' - a]``, zero where the offset has no row.
    """
    n_rel = table.shape[0]
    lo = (size - 1) - center  # rows to add (>0) or drop (<0) below offset -(S-1)
    hi = (size - 1) - (n_rel - 1 - center)
    table = F.pad(table, (0, 0, max(lo, 0), max(hi, 0)))  # zero rows for offsets without an embedding
    table = table[max(-lo, 0) : table.shape[0] - max(-hi, 0)]  # (2S-1, C), offset d at row S-1+d
    windows = table.unfold(0, size, 1)  # (S, C, S): windows[s, :, j] = table[s + j]
    return windows.flip(0).permute(0, 2, 1)  # (S, S, C): [a, a'] = table[S-1-a + a']


class GlobalSelfAttention(nn.Module):
    """GSA module: content attention plus axial positional attention, a drop-in for a 3x3 convolution.

    Args:
        dim: input channels.
        dim_out: output channels (default ``dim``).
        heads: attention heads; must divide ``dim_key`` and ``dim_out``.
        dim_key: query/key channels (default ``dim_out``).
        stride: 1, or 2 for a 2x2 average pool after the module.
        pos_span: ``None`` for a global positional span, or an odd window length L.
        feat_size: the largest input (height, width) the global relative tables cover (default 64x64);
            timm's ``ByobNet`` passes the stage's feature size here. Windowed spans cover any size.
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

    # ------------------------------------------------------------------ checks
    def _check_input(self, x: torch.Tensor) -> None:
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
        H, W = x.shape[-2:]
        if self.rel_col is not None and self.pos_span is None and (H > self.max_size[0] or W > self.max_size[1]):
            raise ValueError(
                f"input {H}x{W} is larger than the relative position tables cover ({self.max_size[0]}x"
                f"{self.max_size[1]}); build the module with feat_size=({H}, {W}) or larger, or enlarge a built "
                f"model with gsanet.resize_rel_pos(model, ({H}, {W}))"
            )

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

    def _axis_weights(self, q: torch.Tensor, table: torch.Tensor | None, size: int, axis: int) -> torch.Tensor:
        """Positional weights along one axis.

        Args:
            q: queries ``(B, h, dk, H, W)``.
            table: relative embeddings ``(n_rel, heads * dk)`` or None (uniform averaging).
            size: length of the attended axis.
            axis: 0 for columns (attend along H), 1 for rows (attend along W).

        Returns:
            ``(B, h, H, W, size)`` weights of each pixel over the positions of its column (or row).
        """
        B, h, dk, H, W = q.shape
        half = (size - 1) if self.pos_span is None else (self.pos_span - 1) // 2
        pos = torch.arange(size, device=q.device)
        inside = (pos[None, :] - pos[:, None]).abs() <= half  # (S, S): [a, a'] a' within the span of a
        if table is None:
            w = inside.to(q.dtype) / inside.sum(dim=1, keepdim=True).to(q.dtype)  # uniform over the span
            w = w[:, None, :] if axis == 0 else w[None, :, :]  # (H, 1, S) or (1, W, S)
            return w.expand(H, W, size)[None, None].expand(B, h, H, W, size)
        logits = self._axis_logits(q, table, size, axis)  # (B, h, H, W, S): q_ab . r_(a'-a), zero off the span
        if self.pos_softmax:
            mask = inside[:, None, :] if axis == 0 else inside[None, :, :]
            return logits.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        return logits

    def _axis_logits(self, q: torch.Tensor, table: torch.Tensor, size: int, axis: int) -> torch.Tensor:
        h, dk = q.shape[1], q.shape[2]
        rel = relative_to_absolute(table, self._center(table), size).to(q.dtype).view(size, size, h, dk)
        if axis == 0:
            return torch.einsum("bhcxy,xzhc->bhxyz", q, rel)  # (B, h, H, W, H)
        return torch.einsum("bhcxy,yzhc->bhxyz", q, rel)  # (B, h, H, W, W)

    def _positional_axial(self, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        B, h, dv, H, W = v.shape
        w_col = self._axis_weights(q, self.rel_col, H, axis=0)  # (B, h, H, W, H)
        out = torch.einsum("bhxyz,bhdzy->bhdxy", w_col, v)  # (B, h, dv, H, W): column-only attention
        out = self.norm(out.reshape(B, h * dv, H, W)).view(B, h, dv, H, W)  # Z = BN(F_col)
        w_row = self._axis_weights(q, self.rel_row, W, axis=1)  # (B, h, H, W, W)
        return torch.einsum("bhxyz,bhdxz->bhdxy", w_row, out)  # row-only attention on Z

    def _positional_2d(self, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        B, h, dv, H, W = v.shape
        if self.rel_pos:
            logits = (
                self._axis_logits(q, self.rel_col, H, 0)[..., :, None]
                + self._axis_logits(q, self.rel_row, W, 1)[..., None, :]
            )  # (B, h, H, W, H, W)
        else:
            logits = q.new_zeros(B, h, H, W, H, W)
        half_h = (H - 1) if self.pos_span is None else (self.pos_span - 1) // 2
        half_w = (W - 1) if self.pos_span is None else (self.pos_span - 1) // 2
        ph, pw = torch.arange(H, device=q.device), torch.arange(W, device=q.device)
        in_h = (ph[None, :] - ph[:, None]).abs() <= half_h
        in_w = (pw[None, :] - pw[:, None]).abs() <= half_w
        mask = (in_h[:, None, :, None] & in_w[None, :, None, :]).reshape(H * W, H * W)
        logits = logits.reshape(B, h, H * W, H * W)
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


@torch.no_grad()
def resize_rel_pos(module: nn.Module, size: int | tuple[int, int]) -> nn.Module:
    """Enlarges the global relative tables of every GSA module in ``module`` in place.

    Offsets the old tables cover keep their learned embeddings; the new, farther offsets copy the embedding of the
    farthest learned offset (edge replication). Modules with a windowed span, or tables already large enough, are
    unchanged. In a strided network the inner modules grow by the same factor as the outermost one.

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
            grown = F.pad(table.t()[None], (new - old, new - old), mode="replicate")[0].t()  # (2 * new - 1, C)
            setattr(m, name, nn.Parameter(grown.contiguous(), requires_grad=table.requires_grad))
        m.max_size = target
    return module
