"""The layers the benchmarks compare: our GSA module, a 3x3 convolution, and the attention peers at the same width.

Every builder takes ``(channels, height, width)`` and returns a :class:`Built` (the module and a note on how it was
configured) or raises :class:`SkipLayer` with the reason it cannot run at that shape. All layers map
``B x C x H x W`` to ``B x C x H x W``; attention layers use 8 heads unless their own model family says otherwise.

``gsa-pytorch`` 0.2.2 (``gsa_pytorch.GSA``), read from its source, differs from our module in ways that cost time:
    * ``dim_key`` is per head and the value width per head is tied to it, so ``dim_key = C / 8`` with 8 heads gives
      the same total query/key/value width ``C`` as ours;
    * one ``rel_pos_length`` L for both axes (we pass ``max(H, W)``); on every forward it builds a dense one-hot
      re-indexing tensor ``S x S x (2L - 1)`` per axis and multiplies it with the embeddings, and it keeps the
      ``B heads N (H + W)`` positional weights for backward;
    * it adds a 1x1 output convolution with bias (``C^2 + C`` parameters, ``N C^2`` multiply-adds; the paper's
      Figure 1 and our module have none), applies one batch norm of ``dim_key`` channels shared by all heads
      (ours normalises all ``C`` channels), and initialises the embeddings with std 1;
    * no stride support; einops rearranges (not scriptable).

The non-local block is full softmax attention over all ``N = H W`` pixels, computed by
``F.scaled_dot_product_attention`` (1x1 query/key/value projection, 8 heads, no output projection, like our module),
in two forms, because the kernel decides its memory: ``nonlocal`` lets SDPA pick its fastest kernel (on CPU the fused
flash kernel, which never stores the ``N x N`` attention matrix: memory O(N), time O(N^2); it needs unit stride along
the head dimension, hence the copy after the projection); ``nonlocal_math`` forces the ``math`` backend, which stores
it (memory O(N^2)) as the original non-local block does. :func:`sdpa_kernel` reports the kernel in use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend
from torch.nn.attention import sdpa_kernel as sdpa_kernel_context
from torch.utils._python_dispatch import TorchDispatchMode

from gsanet.layers import GlobalSelfAttention, axial_kernel

from .measure import autocast

__all__ = [
    "HEADS",
    "LAYERS",
    "Built",
    "GemmPathGSA",
    "NonLocalAttention",
    "SkipLayer",
    "build_layer",
    "dense_attention_bytes",
    "halo_block_size",
    "sdpa_kernel",
]

HEADS = 8


class SkipLayer(Exception):
    """A layer cannot run at the requested shape; the message is the reason recorded in the results."""


@dataclass
class Built:
    """A benchmark layer and how it was configured."""

    module: nn.Module
    note: str = ""
    dense_heads: int | None = None
    """Heads of the ``N x N`` attention matrices the layer stores, if it stores any."""


class NonLocalAttention(nn.Module):
    """Non-local block as a drop-in for a 3x3 convolution: softmax attention of every pixel over all pixels.

    Args:
        dim: input channels.
        dim_out: output channels (default ``dim``); also the query/key width.
        heads: attention heads.
        fused: let ``F.scaled_dot_product_attention`` pick its fastest kernel (queries, keys and values are laid
            out contiguously so that the fused kernels accept them); False restricts it to the ``math`` backend,
            which stores the ``N x N`` attention matrix like the original non-local block.
    """

    def __init__(self, dim: int, dim_out: int | None = None, *, heads: int = HEADS, fused: bool = True) -> None:
        super().__init__()
        dim_out = dim_out or dim
        if dim_out % heads:
            raise ValueError(f"dim_out={dim_out} is not divisible by heads={heads}")
        self.dim_out, self.heads, self.fused = dim_out, heads, fused
        self.qkv = nn.Conv2d(dim, 3 * dim_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        d = self.dim_out // self.heads
        qkv = self.qkv(x).reshape(B, 3, self.heads, d, H * W).permute(1, 0, 2, 4, 3)  # (3, B, h, N, d)
        q, k, v = qkv.contiguous().unbind(0)  # unit stride along d, as the fused kernels require
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d)
        else:
            with sdpa_kernel_context(SDPBackend.MATH):
                out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(-1, -2).reshape(B, self.dim_out, H, W)


class _OpRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (dispatch protocol)
        self.ops.append(str(func.overloadpacket.__name__))
        return func(*args, **(kwargs or {}))


def sdpa_kernel(module: nn.Module, dim: int, device: str, precision: str = "fp32") -> str:
    """The attention kernel a module's ``F.scaled_dot_product_attention`` dispatches to (e.g. the CPU flash kernel).

    Args:
        module: the layer; run once on a ``1 x dim x 4 x 4`` input.
        dim: its input channels.
        device: where it runs.
        precision: ``fp32`` or ``bf16`` (autocast).
    """
    x = torch.randn(1, dim, 4, 4, device=device, requires_grad=True)
    recorder = _OpRecorder()
    with recorder, autocast(device, precision):
        module.to(device)(x)
    fused = [op for op in recorder.ops if "attention" in op and op != "scaled_dot_product_attention"]
    return fused[0] if fused else "math (matmul + softmax, stores N x N)"


def dense_attention_bytes(built: Built, batch: int, height: int, width: int, itemsize: int = 4) -> int:
    """Predicted peak of a layer that stores ``N x N`` attention matrices (0 for the others).

    About 3.5 matrices are alive at the peak of forward+backward (scores, probabilities, their gradients), as
    measured on timm's ``BottleneckAttn`` and the math-backend non-local block at small sizes.
    """
    if not built.dense_heads:
        return 0
    n = height * width
    return int(3.5 * batch * built.dense_heads * n * n * itemsize)


def halo_block_size(height: int, width: int, largest: int = 8, smallest: int = 4) -> int | None:
    """The largest block size in ``[smallest, largest]`` dividing both sides, or None."""
    for block in range(min(largest, height, width), smallest - 1, -1):
        if height % block == 0 and width % block == 0:
            return block
    return None


def _gsa(c: int, h: int, w: int) -> Built:
    return Built(GlobalSelfAttention(c, heads=HEADS, feat_size=(h, w)), f"heads {HEADS}, global span")


class GemmPathGSA(nn.Module):
    """Our GSA module held to the batched-GEMM axial path (``axial_kernel.kernel_enabled(False)``): the reference the
    default dispatch must never lose to."""

    def __init__(self, module: GlobalSelfAttention) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with axial_kernel.kernel_enabled(False):
            return self.module(x)


def _gsa_gemm(c: int, h: int, w: int) -> Built:
    return Built(GemmPathGSA(GlobalSelfAttention(c, heads=HEADS, feat_size=(h, w))), "gsa on the batched-GEMM path")


def _conv(c: int, h: int, w: int) -> Built:
    return Built(nn.Conv2d(c, c, 3, padding=1, bias=False), "3x3, no bias")


def _gsa_pytorch(c: int, h: int, w: int) -> Built:
    try:
        from gsa_pytorch import GSA
    except ImportError as e:  # the dev extra
        raise SkipLayer(f"gsa-pytorch not installed ({e}); pip install gsa-pytorch==0.2.2") from e
    module = GSA(c, rel_pos_length=max(h, w), dim_out=c, heads=HEADS, dim_key=c // HEADS)
    return Built(module, f"heads {HEADS}, dim_key {c // HEADS}/head, rel_pos_length {max(h, w)}, +1x1 out conv")


def _nonlocal(c: int, h: int, w: int) -> Built:
    return Built(NonLocalAttention(c, heads=HEADS), f"heads {HEADS}, SDPA (fastest kernel) over N={h * w}")


def _nonlocal_math(c: int, h: int, w: int) -> Built:
    module = NonLocalAttention(c, heads=HEADS, fused=False)
    return Built(module, f"heads {HEADS}, SDPA math backend over N={h * w}", dense_heads=HEADS)


def _halo(c: int, h: int, w: int) -> Built:
    from timm.layers.halo_attn import HaloAttn

    block = halo_block_size(h, w)
    if block is None:
        raise SkipLayer(f"{h}x{w} is not divisible by any block size 4..8")
    note = f"heads {HEADS}, block {block}, halo 3"
    if block == h == w:
        note += " (one block: the whole image)"
    return Built(HaloAttn(c, c, num_heads=HEADS, block_size=block, halo_size=3), note)


def _botnet(c: int, h: int, w: int) -> Built:
    from timm.layers.bottleneck_attn import BottleneckAttn

    module = BottleneckAttn(c, c, feat_size=(h, w), num_heads=HEADS)
    return Built(module, f"heads {HEADS}, feat_size ({h}, {w})", dense_heads=HEADS)


def _lambda(c: int, h: int, w: int) -> Built:
    from timm.layers.lambda_layer import LambdaLayer

    if c % 4:
        raise SkipLayer(f"{c} channels not divisible by 4 heads")
    # The lambda layer's heads are query heads sharing one lambda; 4 heads, |k| = 16 and a 9x9 local positional lambda
    # are LambdaResNet's (and timm's lambda_resnet50ts) configuration.
    return Built(LambdaLayer(c, c, num_heads=4, dim_head=16, r=9), "heads 4, dim_head 16, r 9 (timm defaults)")


LAYERS: dict[str, Callable[[int, int, int], Built]] = {
    "gsa": _gsa,
    "gsa_gemm": _gsa_gemm,
    "conv3x3": _conv,
    "gsa_pytorch": _gsa_pytorch,
    "nonlocal": _nonlocal,
    "nonlocal_math": _nonlocal_math,
    "halo": _halo,
    "botnet": _botnet,
    "lambda": _lambda,
}


def build_layer(name: str, channels: int, height: int, width: int) -> Built:
    """Builds layer ``name`` (a key of :data:`LAYERS`) for ``channels x height x width`` inputs.

    Raises:
        SkipLayer: the layer cannot run at this shape.
        KeyError: unknown name.
    """
    if name not in LAYERS:
        raise KeyError(f"unknown layer {name!r}; choose from {', '.join(LAYERS)}")
    try:
        return LAYERS[name](channels, height, width)
    except (AssertionError, ValueError) as e:
        raise SkipLayer(f"cannot build at {channels}x{height}x{width}: {e}") from e
