"""Global self-attention (GSA) module.

Shen, Bello, Vemulapalli, Jia, Chen, "Global Self-Attention Networks for Image Recognition",
https://arxiv.org/abs/2010.03019 (2020).

What is the paper's (Figure 1 and Sections 1-4):
    * keys, queries and values from 1x1 convolutions;
    * content attention ``F_c = Q (rho(K^T) V)``, ``rho`` a softmax over the N positions of each key channel;
    * axial positional attention: a column-only layer, batch norm, a row-only layer, with learned relative
      position embeddings as keys, ``f(a, b) = (q_ab . R^T) V_ab`` (no softmax in the equation);
    * output ``F_c + F_row``, with no output projection.

What is this project's choice (each is a constructor argument; ``docs/design.md`` gives the reasons):
    * ``heads`` (default 8): queries/keys split into ``dim_key / heads`` channels, values into ``dim_out / heads``;
      each head uses its own slice of the embedding columns;
    * ``pos_span=None``: global positional span (every offset of the axis); an odd int ``L`` is a centred window;
    * ``stride=2``: the module runs at full resolution, then a 2x2 average pool (ceil mode, so the output size
      equals that of a padded 3x3 stride-2 convolution);
    * ablation switches ``content``, ``positional``, ``pos_softmax``, ``query_softmax`` (content branch only),
      ``rel_pos`` (off = plain averaging over the span), ``axial`` (off = one 2-D positional attention whose
      logit for offset ``(da, db)`` is ``q . (r^col_da + r^row_db)``, no batch norm; dense O(N^2), for ablations);
    * beyond the size its global tables cover, ``rel_pos_extend="interp"`` (tables resampled to the axis) and
      ``pos_scale=True`` (the positional sum scaled by ``table axis / axis``), so a model trained at one size gives
      sensible values at larger ones (``docs/design.md``, "relative tables");
    * 1x1 projections without bias; embeddings initialised ``N(0, (dim_key/heads)^-1)``;
    * the content branch runs in the activations' dtype (under autocast bfloat16, with the key softmax's statistics
      in float32).

Beside it: ``rel_pos`` (relative tables, spans, the positional weights), ``axial_ops`` (the axial layer as batched
GEMMs) and ``axial_kernel`` (the same layer by a fused C++ CPU kernel, and when to use it). ``tests/gsa_reference.py``
checks the module against a plain per-pixel implementation of the equations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch import nn

from . import axial_kernel, axial_ops
from .axial_kernel import FusedAxialRelPosAttention
from .axial_ops import AxialRelPosAttention
from .helpers import check_int, to_pair
from .rel_pos import (
    DEFAULT_REL_POS_EXTEND,
    RelPosModule,
    axis_weights,
    check_rel_pos_extend,
    head_keys,
    head_rows,
    table_length,
    uniform_weights,
)

__all__ = ["GlobalSelfAttention", "auto_heads"]

_DEFAULT_MAX_SIZE = 64
_MAX_AUTO_HEADS, _MIN_AUTO_HEAD_DIM = 8, 8


def auto_heads(dim_out: int, dim_key: int | None = None) -> int:
    """The heads ``heads=None`` chooses: the largest count that divides both ``dim_out`` and ``dim_key`` (default
    ``dim_out``), at most 8 and at most ``dim_key // 8`` (at least 1), so each head keeps >= 8 key channels where the
    width allows. For multiples of 8 this is the GSA-ResNets' rule ``min(8, width // 8)`` (64 -> 8, 32 -> 4); other
    widths get a divisor: 100 -> 5, 36 -> 4, 20 -> 2, 3 -> 1.
    """
    dim_key = dim_out if dim_key is None else dim_key
    cap = min(_MAX_AUTO_HEADS, max(1, dim_key // _MIN_AUTO_HEAD_DIM))
    return next(h for h in range(cap, 0, -1) if dim_out % h == 0 and dim_key % h == 0)


@register_notrace_module  # a leaf for FX (timm's feature_cls="fx", create_feature_extractor): its shapes drive Python
class GlobalSelfAttention(RelPosModule):
    """GSA module: content attention plus axial positional attention, a drop-in for a 3x3 convolution.

    Under FX symbolic tracing the module is a leaf: timm registers it as one (``timm.layers.register_notrace_module``),
    so ``timm.create_model(..., features_only=True, feature_cls="fx")``, ``timm.layers.create_feature_extractor`` and
    ``timm.layers.get_graph_node_names`` work; with torchvision's functions directly, pass
    ``tracer_kwargs={"leaf_modules": [GlobalSelfAttention]}``.

    The positional weights it applies are given by ``axis_weights`` and ``plane_weights`` (from ``RelPosModule``).

    Args:
        dim: input channels.
        dim_out: output channels (default ``dim``).
        heads: attention heads; must divide ``dim_key`` and ``dim_out``. ``None`` chooses them (``auto_heads``: the
            largest count <= 8 that divides both and keeps >= 8 key channels a head), for any width.
        dim_key: query/key channels (default ``dim_out``).
        stride: 1, or 2 for a 2x2 average pool after the module.
        pos_span: ``None`` for a global positional span, or an odd window length L.
        feat_size: the input (height, width) the global relative tables are sized for (default 64x64), i.e. the
            offsets that get their own learned embedding; timm's ``ByobNet`` passes the stage's feature size here.
            Any input size runs: on a larger input the tables are extended at forward time (``rel_pos_extend``,
            ``pos_scale``), so the parameters never change shape. Windowed spans cover any size.
        content: use the content attention layer.
        positional: use the positional attention layer.
        pos_softmax: softmax over the neighbours' positional logits (the paper has none).
        query_softmax: softmax of each query over its channels in the content layer (the paper has none).
        rel_pos: relative embeddings as keys; off, positional attention averages the span uniformly.
        axial: column, batch norm, row (the paper); off, one 2-D positional attention over the same span.
        rel_pos_extend: how a global table serves an axis longer than it covers (``extend_rel_pos``): ``"interp"``
            (default) resamples it to the axis, ``"zero"`` attends only within its span, ``"edge"`` repeats the
            farthest embedding (the behaviour before this choice existed). No effect at or below ``feat_size``.
        pos_scale: on such an axis, scale the positional sum (without ``pos_softmax``) by ``table axis / axis``
            (``extension_scale``) so its size does not grow with the axis (default on). ``docs/design.md`` measures
            the combinations on a trained model.
        qkv_bias: bias in the 1x1 query/key/value projection.
        device: device of the parameters (timm's factory keyword).
        dtype: dtype of the parameters (timm's factory keyword).
    """

    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        *,
        heads: int | None = 8,
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
        rel_pos_extend: str = DEFAULT_REL_POS_EXTEND,
        pos_scale: bool = True,
        qkv_bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dim = check_int(dim, "dim")
        dim_out = dim if dim_out is None else check_int(dim_out, "dim_out")
        dim_key = dim_out if dim_key is None else check_int(dim_key, "dim_key")
        heads = auto_heads(dim_out, dim_key) if heads is None else check_int(heads, "heads")
        for name, width in (("dim_out", dim_out), ("dim_key", dim_key)):
            if width % heads:
                raise ValueError(
                    f"{name}={width} is not divisible by heads={heads}: choose heads among the divisors of {width}, "
                    f"or heads=None to let the module choose (auto_heads)"
                )
        if isinstance(stride, bool) or stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride!r}; for more downsampling stack modules or pool")
        if pos_span is not None:
            check_int(pos_span, "pos_span", minimum=-(2**62))
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
        self.rel_pos_extend, self.pos_scale = check_rel_pos_extend(rel_pos_extend), bool(pos_scale)
        self.max_size = to_pair(feat_size if feat_size is not None else _DEFAULT_MAX_SIZE, "feat_size")

        dd = dict(device=device, dtype=dtype)
        self.qkv = nn.Conv2d(dim, 2 * dim_key + dim_out, 1, bias=qkv_bias, **dd)
        if positional and rel_pos:
            n_col, n_row = (table_length(size, pos_span) for size in self.max_size)
            self.rel_col = nn.Parameter(torch.empty(n_col, dim_key, **dd))
            self.rel_row = nn.Parameter(torch.empty(n_row, dim_key, **dd))
        else:
            self.register_parameter("rel_col", None)
            self.register_parameter("rel_row", None)
        self.norm = nn.BatchNorm2d(dim_out, **dd) if positional and axial else None
        self.reset_parameters()

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
            ("rel_pos_extend", DEFAULT_REL_POS_EXTEND),
            ("pos_scale", True),
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
        if self.training and x.shape[2] == 1 and x.shape[3] == 1 and x.shape[0] == 1 and self.norm is not None:
            raise ValueError(
                "GlobalSelfAttention in training mode got a batch of one 1x1 map: the batch norm between its column "
                "and row layers has one value per channel, whose batch statistics are undefined (nn.BatchNorm2d "
                "refuses the same); train with a batch of at least 2 or a larger map, or call .eval()"
            )

    # ------------------------------------------------------------------ branches
    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """The 1x1 query/key/value projection, ``(B, 2 dk + dv, H, W)``.

        Where it was measured faster (:func:`_projection_as_bmm`), it runs as one batched matrix product over the
        pixels (``W @ x`` per image) instead of oneDNN's convolution, which reorders NCHW activations to a blocked
        layout and back and is slow at small widths; elsewhere as the convolution it is.
        """
        B, _, H, W = x.shape
        dtype = _projection_as_bmm(x, self.dim)
        if dtype is None:
            return self.qkv(x)
        weight = self.qkv.weight.flatten(1).to(dtype)  # (2 dk + dv, dim), cast once, then expanded as a view
        out = torch.bmm(weight.expand(B, -1, -1), x.reshape(B, self.dim, H * W).to(dtype))  # (B, 2 dk + dv, N)
        if self.qkv.bias is not None:
            out = out + self.qkv.bias.to(out.dtype)[:, None]
        return out.view(B, self.qkv.out_channels, H, W)

    def _context(self, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The content layer's global context ``rho(K^T) V`` per image and head, ``(B * h, dk, dv)``.

        The key softmax runs over the N positions in the keys' dtype; PyTorch's CPU and CUDA softmax keep their
        statistics (maximum and sum) in float32 for bfloat16 and float16, which is where overflow would come from.
        The product runs in the inputs' dtype (under autocast, bfloat16 with float32 accumulation).

        Args:
            k: ``(B, h, dk, N)``.
            v: ``(B, h, dv, N)``.
        """
        B, h, dk, N = k.shape
        p = k.softmax(dim=-1).reshape(B * h, dk, N)  # rho(K^T): each key channel over the positions
        return torch.bmm(p, v.reshape(B * h, v.shape[2], N).transpose(1, 2))

    @staticmethod
    def _add_content(out: torch.Tensor | None, context: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """``out + context^T q``: the content layer's output ``F_c`` added to the positional output in the same
        product (``baddbmm``), so ``F_c`` is never written on its own and no separate sum pass runs.

        Args:
            out: ``(B * h, dv, M)``, or None (no positional layer).
            context: ``(B * h, dk, dv)``.
            q: ``(B * h, dk, M)`` (with ``query_softmax``, already normalised).
        """
        context_t = context.transpose(1, 2)  # (B * h, dv, dk)
        if out is None:
            return torch.bmm(context_t, q)
        return torch.baddbmm(out, context_t.to(out.dtype), q.to(out.dtype))

    def _axis_pass(
        self,
        q: torch.Tensor,
        values: torch.Tensor,
        table: torch.Tensor | None,
        norm: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """One axial positional layer along the last spatial axis.

        Args:
            q: queries ``(B, h, dk, L, S)``, attending along S (L is the other axis).
            values: ``(B, h, dv, L, S)``.
            table: relative embeddings, or None for uniform averaging over the span.
            norm: a per-channel ``(scale, shift)`` (``_folded_norm``) the kernel applies to the values as it loads
                them; only where ``_folded_norm`` gave one, so the kernel takes the pass.

        Returns:
            ``(B, h, dv, L, S)``: ``out[..., x] = sum_x' w[x, x'] values[..., x']``.
        """
        S, span = q.shape[-1], self.pos_span
        if table is not None and not self.pos_softmax:  # the paper's layer, by the kernel or the GEMM path
            if axial_ops.plain_graph():  # export, trace, compile, torch.func: sizes symbolic
                keys = head_keys(table, S, self.heads, pos_span=span, dtype=q.dtype, gather=True, **self.size_policy())
                return axial_ops.axial_matmul(q, values, keys)
            if norm is not None or axial_kernel.usable(q, values):  # the table is cast to their dtype
                rows = head_rows(table, S, self.heads, pos_span=span, dtype=q.dtype, **self.size_policy())
                if norm is not None:  # the values normalised as the kernel loads them (inference)
                    return axial_kernel.forward_normalized(q, values, rows, *norm)
                return FusedAxialRelPosAttention.apply(q, values, rows)
            keys = head_keys(table, S, self.heads, pos_span=span, dtype=q.dtype, **self.size_policy())
            return AxialRelPosAttention.apply(q, values, keys)
        if table is None:
            weights = uniform_weights(S, span, values.dtype, q.device)  # (S, S)
            return torch.matmul(values, weights.t())
        q = q.transpose(2, 4).transpose(2, 3)  # (B, h, L, S, dk)
        gather = axial_ops.plain_graph()  # a graph over symbolic sizes: keys by an index, not a strided view
        policy = self.size_policy()
        weights = axis_weights(q, table, pos_span=span, softmax=True, gather=gather, **policy)  # (B, h, L, S, S)
        return torch.matmul(values.transpose(2, 3), weights.transpose(-1, -2)).transpose(2, 3)

    def _positional_axial(self, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        B, h, dv, H, W = v.shape
        # column-only layer: each column (fixed w) attends along H
        col = self._axis_pass(q.transpose(-1, -2), v.transpose(-1, -2), self.rel_col).transpose(-1, -2)
        folded = self._folded_norm(q, col)
        if folded is not None:  # inference: Z = BN(F_col) applied by the row pass's kernel as it loads F_col
            return self._axis_pass(q, col, self.rel_row, norm=folded)
        z = self.norm(col.reshape(B, h * dv, H, W)).view(B, h, dv, H, W)  # Z = BN(F_col)
        # row-only layer on Z with the same queries: each row (fixed h) attends along W
        return self._axis_pass(q, z, self.rel_row)  # (B, h, dv, H, W)

    def _folded_norm(self, q: torch.Tensor, col: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The batch norm between the passes as a per-channel ``(scale, shift)`` for the row pass to apply as it
        loads the column output (``axial_kernel.forward_normalized``), where that gives the same values: inference
        (eval mode, running statistics, no gradient), the paper's layer (relative keys, no softmax), float32 or
        bfloat16 activations (float64 keeps the unfolded path, whose rounding the float32 affine would exceed), and
        the kernel taking the row pass. Otherwise None.
        """
        norm = self.norm
        if self.training or torch.is_grad_enabled() or norm.running_mean is None or self.rel_row is None:
            return None
        if self.pos_softmax or q.dtype not in (torch.float32, torch.bfloat16) or axial_ops.plain_graph():
            return None
        if not axial_kernel.usable(q, col):
            return None
        scale = torch.rsqrt(norm.running_var.float() + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight.float()
        shift = -norm.running_mean.float() * scale
        if norm.bias is not None:
            shift = shift + norm.bias.float()
        return scale, shift

    def _positional_2d(self, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Non-axial ablation: one pass over the 2-D span, dense ``(N, N)`` weights per head."""
        B, h, dv, H, W = v.shape
        weights = self.plane_weights(q)  # (B, h, N, N)
        out = torch.matmul(weights, v.reshape(B, h, dv, H * W).transpose(-1, -2))  # (B, h, N, dv)
        return out.transpose(-1, -2).reshape(B, h, dv, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        B, _, H, W = x.shape
        h, dk, dv = self.heads, self.dim_key // self.heads, self.dim_out // self.heads
        q, k, v = self._project(x).split([self.dim_key, self.dim_key, self.dim_out], dim=1)
        q = q.reshape(B, h, dk, H, W)
        v = v.reshape(B, h, dv, H, W)
        out = None
        if self.positional:
            out = self._positional_axial(q, v) if self.axial else self._positional_2d(q, v)  # (B, h, dv, H, W)
        if self.content:
            context = self._context(k.reshape(B, h, dk, H * W), v.reshape(B, h, dv, H * W))  # (B * h, dk, dv)
            qc = q.softmax(dim=2) if self.query_softmax else q  # each query over its channels
            base = None if out is None else out.reshape(B * h, dv, H * W)
            out = self._add_content(base, context, qc.reshape(B * h, dk, H * W))  # F_c + F_row
        out = out.reshape(B, self.dim_out, H, W)
        if self.stride == 2:
            out = _pool2(out)
        return out


def _projection_as_bmm(x: torch.Tensor, dim: int) -> torch.dtype | None:
    """The dtype in which the projection runs as a batched matrix product (``GlobalSelfAttention._project``), or None
    for the convolution: only where that was measured faster, forward and forward+backward, side by side
    (``scripts/bench_projection.py``; ``docs/benchmarks.md``, "The projection"):

    * a contiguous NCHW CPU tensor in eager mode, with at most 64 input channels or at most as many as an image has
      pixels (beyond, e.g. 128 channels on 4x4 or 512 on 7x7, the weight gradient summed over the images costs
      more than the convolution);
    * float32 without autocast, PyTorch at AVX2 or AVX-512;
    * bfloat16, or float32 under bfloat16 CPU autocast, on a CPU with AMX's bfloat16 tiles, PyTorch at AVX-512.
    """
    if x.device.type != "cpu" or not x.is_contiguous() or axial_ops.plain_graph():
        return None
    if dim > max(64, x.shape[2] * x.shape[3]):
        return None
    capability = torch.backends.cpu.get_cpu_capability()
    autocast_bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    if x.dtype == torch.bfloat16 or (autocast_bf16 and x.dtype == torch.float32):
        amx = capability == "AVX512" and axial_kernel.cpu_has("amx_bf16", "amx_tile")
        return torch.bfloat16 if amx else None
    if x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu"):
        return torch.float32 if capability in ("AVX2", "AVX512") else None
    return None


def _pool2(x: torch.Tensor) -> torch.Tensor:
    """2x2 average pool in ceil mode (an odd last row or column is averaged on its own), ``(.., H, W)`` ->
    ``(.., ceil(H/2), ceil(W/2))``.

    Recorded as a graph (``axial_ops.plain_graph``), it pools the input padded by one replicated row and column
    instead: the same averages (up to rounding), and an output size of the form ``(H - 1) // 2 + 1``, that of the
    strided 1x1 convolution of a ResNet shortcut. Ceil mode's size makes ``torch.export`` guard on the parity of
    symbolic sizes, and one it cannot prove equal to the shortcut's where the two are added.
    """
    if axial_ops.plain_graph():
        return F.avg_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), 2)
    if axial_kernel.pool_usable(x):  # one pass each way, where ATen's pool is several times slower
        return axial_kernel.Pool2.apply(x)
    return F.avg_pool2d(x, 2, ceil_mode=True)
