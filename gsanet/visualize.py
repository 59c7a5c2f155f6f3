"""``gsanet visualize``: figures of what a GSA module attends to.

Usage::

    gsanet visualize --model gsa_resnet26_tiny --pretrained --fmnist-index 0 --pixel 14 14
    gsanet visualize --checkpoint runs/<run> --fmnist-index 7 --layer 3
    gsanet visualize --model gsa_resnet26 --skimage astronaut --pixel 100 120     # untrained, 224x224
    gsanet visualize --model gsa_resnet26_tiny --pretrained --list-layers

How the maps are obtained: a forward hook on the chosen ``GlobalSelfAttention`` module captures its input ``x`` during
one forward pass of the whole network (eval mode); the maps are then recomputed from ``x`` and the module's own
weights, following the module's equations (``gsanet/layers/gsa.py``); the positional weights are the module's own
(``axis_weights``, ``plane_weights``: the weights its forward pass applies):

* queries, keys and values are the module's 1x1 projection ``qkv(x)`` split ``[dim_key, dim_key, dim_out]``, each
  split into ``heads`` groups;
* content layer: for every key channel ``c``, ``rho(k_c)`` is the softmax of that channel over the N positions (the
  weights with which ``rho(K^T) V`` pools the values into one global context vector per key channel); the figure
  shows these maps for the first heads and channels, and for the chosen pixel ``p`` its effective content attention
  ``sum_c q_p[c] rho(k_c)`` (the weight of every position's value in ``F_c(p)``, per head);
* positional layer (axial, the paper's): for pixel ``p = (a, b)`` the column weights ``w_col[a'] = q_ab . r_(a'-a)``
  over its column and the row weights ``w_row[b'] = q_ab . r_(b'-b)`` over its row (softmaxed over the span when the
  module uses ``pos_softmax``; uniform over the span without relative embeddings; zero outside the span); their outer
  product ``w_col x w_row`` as a 2-D map; and the exact column-then-row weight of each pixel ``(a', b')`` on ``p``,
  ``w_row_p[b'] * w_col_(a,b')[a']``, in which the column weights are those of the queries of the intermediate
  pixels ``(a, b')`` (the batch norm between the two layers scales each channel and is left out: it does not change
  where a head looks). Modules with 2-D positional attention show their 2-D weights directly.

Pixels (``--pixel Y X``) are given in input-image coordinates and mapped to the module's feature map. Figures are PNGs
in ``--out`` (default ``results/figures``). An untrained model says "untrained" in its titles.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gsanet.commands import ArgumentParser, add_out_flag, bounded_int, check_out_dir, run
from gsanet.config import MAX_IMG_SIZE
from gsanet.errors import UserError
from gsanet.layers import GlobalSelfAttention

__all__ = [
    "AttentionMaps",
    "Subject",
    "build_parser",
    "capture_inputs",
    "compute_maps",
    "gsa_modules",
    "load_image",
    "load_subject",
    "main",
    "plot_content",
    "plot_positional",
]

_logger = logging.getLogger(__name__)

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee")


# --------------------------------------------------------------------------------------------------- the model
@dataclass
class Subject:
    """A model ready to be looked at, and how its inputs are prepared.

    Attributes:
        model: The network, in eval mode.
        name: Model name.
        in_chans: Input channels.
        img_size: Input height and width.
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation std.
        trained: Whether the weights were trained (else the titles say "untrained").
        description: Where the weights come from, for the titles.
        class_names: Class names of the classifier, when known.
    """

    model: nn.Module
    name: str
    in_chans: int
    img_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    trained: bool
    description: str
    class_names: tuple[str, ...] = ()


def load_subject(
    *, checkpoint: str | None = None, model: str | None = None, pretrained: bool = False, img_size: int | None = None
) -> Subject:
    """Build the model of a ``gsanet train`` checkpoint, a shipped pretrained model, or an untrained timm model.

    Args:
        checkpoint: A gsanet checkpoint (``.safetensors``) or run directory (its best checkpoint).
        model: A timm model name (when no checkpoint).
        pretrained: Load the shipped weights of ``model`` (``gsanet.models.pretrained``).
        img_size: Input size of an untrained model (default: its default config's).

    Raises:
        ValueError: Neither or both of checkpoint and model, or no shipped weights for ``model``.
        UserError: A missing, corrupt, malformed or non-finite checkpoint (``gsanet.errors``).
    """
    import timm

    import gsanet  # noqa: F401  (registers the models)

    if (checkpoint is None) == (model is None):
        raise ValueError("give either --checkpoint or --model")
    if checkpoint is not None:
        return _checkpoint_subject(checkpoint)
    if pretrained:
        return _pretrained_subject(model)
    cfg = timm.get_pretrained_cfg(model)
    size = img_size or (int(cfg.input_size[-1]) if cfg is not None else 224)
    in_chans = int(cfg.input_size[0]) if cfg is not None else 3
    kwargs: dict[str, Any] = {"img_size": size} if model.startswith(("gsa_", "conv_")) else {}
    net = timm.create_model(model, **kwargs)
    mean = tuple(cfg.mean) if cfg is not None else (0.5,) * in_chans
    std = tuple(cfg.std) if cfg is not None else (0.5,) * in_chans
    return Subject(net.eval(), model, in_chans, (size, size), mean, std, False, "untrained, random init")


def _checkpoint_subject(checkpoint: str) -> Subject:
    """The model of a ``gsanet train`` checkpoint or run directory (its best checkpoint), with the raw weights."""
    from gsanet.train.rundir import load_model

    loaded = load_model(checkpoint)
    meta = loaded.meta
    data = meta.data
    size = int(data["img_size"])
    top1 = meta.last_row.get("val_top1")
    desc = f"trained on {Path(data['name']).name}, epoch {meta.epoch}" + (
        f", test top-1 {top1:.1f}%" if top1 is not None else ""
    )
    return Subject(
        loaded.model, meta.model, int(data["in_chans"]), (size, size), tuple(data["mean"]), tuple(data["std"]),
        True, desc, tuple(data.get("class_names", ())),
    )  # fmt: skip


def _pretrained_subject(model: str) -> Subject:
    """A model with its shipped weights (its default timm pretrained tag)."""
    import timm

    from gsanet.models.pretrained import SHIPPED

    entry = SHIPPED.get(model)
    if entry is None or not entry.path.is_file():
        raise ValueError(
            f"no shipped weights for {model}; shipped: {', '.join(SHIPPED) or 'none'} (or drop --pretrained)"
        )
    net = timm.create_model(model, pretrained=True)
    cfg = net.pretrained_cfg  # the weights' tag: their input size, normalisation and classes
    desc = f"trained on {entry.dataset}, test top-1 {entry.test_top1:.1f}%"
    in_chans, h, w = cfg["input_size"]
    classes = tuple(cfg.get("label_names") or ())
    return Subject(net.eval(), model, in_chans, (h, w), tuple(cfg["mean"]), tuple(cfg["std"]), True, desc, classes)


def gsa_modules(model: nn.Module) -> list[tuple[str, GlobalSelfAttention]]:
    """The GSA modules of ``model`` with their names, in module order (= forward order in the GSA-ResNets)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, GlobalSelfAttention)]


@torch.no_grad()
def capture_inputs(model: nn.Module, image: torch.Tensor, modules: Sequence[nn.Module]) -> tuple[list, torch.Tensor]:
    """Run ``model`` once on ``image`` and return the input of each of ``modules`` (forward hooks) and the logits."""
    captured: list[torch.Tensor | None] = [None] * len(modules)

    def hook(index: int):
        def fn(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            captured[index] = args[0].detach()

        return fn

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(modules)]
    try:
        logits = model(image)
    finally:
        for h in handles:
            h.remove()
    return captured, logits


# ---------------------------------------------------------------------------------------------------- the maps
@dataclass
class AttentionMaps:
    """What one GSA module attends to, for one image and one pixel (all numpy, head-major).

    Attributes:
        feat_size: ``(H, W)`` of the module's input.
        pixel: The chosen pixel in feature coordinates.
        key_maps: ``(heads, dk, H, W)``: softmax over positions of every key channel.
        content_pixel: ``(heads, H, W)``: effective content attention of the pixel, ``sum_c q[c] rho(k_c)``.
        col_weights: ``(heads, H)`` column weights of the pixel (None without positional attention or if 2-D).
        row_weights: ``(heads, W)`` row weights of the pixel.
        outer: ``(heads, H, W)``: ``col_weights x row_weights``.
        composed: ``(heads, H, W)``: exact column-then-row weights on the pixel (2-D weights for a 2-D module).
    """

    feat_size: tuple[int, int]
    pixel: tuple[int, int]
    key_maps: np.ndarray | None
    content_pixel: np.ndarray | None
    col_weights: np.ndarray | None
    row_weights: np.ndarray | None
    outer: np.ndarray | None
    composed: np.ndarray | None


@torch.no_grad()
def compute_maps(module: GlobalSelfAttention, x: torch.Tensor, pixel: tuple[int, int]) -> AttentionMaps:
    """Recompute the attention maps of ``module`` from its captured input ``x`` (first image of the batch).

    Args:
        module: The GSA module.
        x: Its input ``(B, dim, H, W)``.
        pixel: ``(a, b)`` in the module's feature coordinates.
    """
    x = x[:1].float()
    _, _, H, W = x.shape
    a, b = min(max(pixel[0], 0), H - 1), min(max(pixel[1], 0), W - 1)
    h = module.heads
    dk = module.dim_key // h
    bias = module.qkv.bias.float() if module.qkv.bias is not None else None
    qkv = F.conv2d(x, module.qkv.weight.float(), bias)  # the module's 1x1 projection, in float32
    q, k, _v = qkv.split([module.dim_key, module.dim_key, module.dim_out], dim=1)
    q = q.reshape(h, dk, H, W)
    k = k.reshape(h, dk, H * W)
    key_maps = content_pixel = col = row = outer = composed = None
    if module.content:
        rho = k.softmax(-1)  # (h, dk, N): each key channel over the positions
        qp = q[:, :, a, b]
        if module.query_softmax:
            qp = qp.softmax(1)
        key_maps = rho.view(h, dk, H, W).numpy()
        content_pixel = torch.einsum("hc,hcn->hn", qp, rho).view(h, H, W).numpy()
    if module.positional:
        q = q[None]  # (1, h, dk, H, W)
        w_cols = module.axis_weights(q, 0)[0]  # (h, W, H, H): [b', a, a'], the column weights of every pixel
        w_rows = module.axis_weights(q, 1)[0]  # (h, H, W, W): [a', b, b']
        w_col, w_row = w_cols[:, b, a], w_rows[:, a, b]  # the pixel's own column (h, H) and row (h, W) weights
        col, row = w_col.numpy(), w_row.numpy()
        if module.axial:
            # column weights of the intermediate pixels (a, b') of the row: their own queries
            w_col_row = w_cols[:, :, a]  # (h, W, H): [b', a']
            outer = np.einsum("ha,hb->hab", col, row)
            composed = (w_row[:, None, :] * w_col_row.transpose(1, 2)).numpy()  # (h, H, W): [a', b']
        else:
            composed = module.plane_weights(q)[0, :, a * W + b].reshape(h, H, W).numpy()  # the pixel's 2-D weights
            outer = composed
    return AttentionMaps((H, W), (a, b), key_maps, content_pixel, col, row, outer, composed)


# ------------------------------------------------------------------------------------------------------ images
def load_image(
    *,
    image: str | None = None,
    fmnist_index: int | None = None,
    skimage_name: str | None = None,
    data_dir: str | None = None,
) -> tuple[np.ndarray, str]:
    """An image as a float array in [0, 1] (``H x W`` grey or ``H x W x 3``) and a caption.

    Args:
        image: Path of an image file.
        fmnist_index: Index into the Fashion-MNIST test set (idx files).
        skimage_name: ``astronaut``, ``chelsea`` or ``coffee`` from ``skimage.data``.
        data_dir: Where to look for the Fashion-MNIST idx files first.
    """
    if fmnist_index is not None:
        from gsanet.datasets import DATASETS
        from gsanet.train.data import find_fashion_mnist, idx_file, read_idx

        folder = find_fashion_mnist(data_dir)
        if folder is None:
            raise ValueError("Fashion-MNIST idx files not found; pass --data-dir or use --image")
        images = read_idx(idx_file(folder, "t10k-images-idx3-ubyte"))
        labels = read_idx(idx_file(folder, "t10k-labels-idx1-ubyte"))
        if not 0 <= fmnist_index < len(images):
            raise ValueError(f"--fmnist-index must be in 0..{len(images) - 1}")
        label = DATASETS["fashion-mnist"].class_names[int(labels[fmnist_index])]
        return images[fmnist_index].numpy().astype(np.float32) / 255.0, f"Fashion-MNIST test #{fmnist_index} ({label})"
    if skimage_name is not None:
        import skimage.data

        if skimage_name not in SKIMAGE_PHOTOS:
            raise ValueError(f"--skimage must be one of {', '.join(SKIMAGE_PHOTOS)}")
        array = getattr(skimage.data, skimage_name)()
        return array.astype(np.float32) / 255.0, f"skimage.data.{skimage_name}()"
    if image is not None:
        from PIL import Image

        from gsanet.train.data import upright_8bit

        try:
            with Image.open(image) as img:
                array = np.asarray(upright_8bit(img).convert("RGB"), dtype=np.float32) / 255.0
        except Image.DecompressionBombError as e:
            raise ValueError(f"image {image} is too large to decode safely ({e}); use a smaller image") from e
        return array, Path(image).name
    raise ValueError("give --image, --fmnist-index or --skimage")


def prepare(array: np.ndarray, subject: Subject) -> tuple[torch.Tensor, np.ndarray]:
    """The model input ``(1, C, H, W)`` (centre square crop, resize, channels, normalisation) and the shown image."""
    t = torch.from_numpy(array)
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]  # (1, c, h, w)
    h, w = t.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    t = t[..., top : top + side, left : left + side]
    if (side, side) != subject.img_size:
        t = F.interpolate(t, size=subject.img_size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    if t.shape[1] != subject.in_chans:
        t = t.mean(1, keepdim=True).expand(-1, subject.in_chans, -1, -1) if subject.in_chans != 1 else t.mean(1, True)
    shown = t[0].permute(1, 2, 0).numpy()
    shown = shown[..., 0] if shown.shape[-1] == 1 else shown
    mean = torch.tensor(subject.mean).view(1, -1, 1, 1)
    std = torch.tensor(subject.std).view(1, -1, 1, 1)
    return (t - mean) / std, shown


# ----------------------------------------------------------------------------------------------------- figures
def _upsample(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
    return F.interpolate(t, size=size, mode="nearest")[0, 0].numpy()


def _overlay(ax: Any, shown: np.ndarray, m: np.ndarray, cmap: str = "inferno", signed: bool = False) -> Any:
    ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1)
    up = _upsample(m, shown.shape[:2])
    if signed:
        lim = float(np.abs(up).max()) or 1.0
        im = ax.imshow(up, cmap="RdBu_r", vmin=-lim, vmax=lim, alpha=0.6)
    else:
        im = ax.imshow(up, cmap=cmap, alpha=0.6)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def _mark(ax: Any, yx: tuple[float, float]) -> None:
    ax.plot([yx[1]], [yx[0]], marker="+", color="cyan", markersize=10, markeredgewidth=2)


def _pixel_in_image(maps: AttentionMaps, shown_size: tuple[int, int]) -> tuple[float, float]:
    H, W = maps.feat_size
    return ((maps.pixel[0] + 0.5) * shown_size[0] / H - 0.5, (maps.pixel[1] + 0.5) * shown_size[1] / W - 0.5)


def plot_content(
    maps: AttentionMaps, shown: np.ndarray, path: Path, title: str, heads: int = 4, channels: int = 6
) -> Path | None:
    """Grid of key-channel softmax maps (rows: heads, columns: channels) and the pixel's content attention."""
    if maps.key_maps is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nh = min(heads, maps.key_maps.shape[0])
    nc = min(channels, maps.key_maps.shape[1])
    fig, axes = plt.subplots(nh, nc + 2, figsize=(1.9 * (nc + 2), 2.0 * nh + 0.9), squeeze=False)
    pix = _pixel_in_image(maps, shown.shape[:2])
    for i in range(nh):
        ax = axes[i, 0]
        ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        if i == 0:
            ax.set_title("input", fontsize=8)
        ax.set_ylabel(f"head {i}", fontsize=8)
        for j in range(nc):
            _overlay(axes[i, j + 1], shown, maps.key_maps[i, j])
            if i == 0:
                axes[i, j + 1].set_title(f"key ch {j}: softmax over N", fontsize=7)
        _overlay(axes[i, nc + 1], shown, maps.content_pixel[i], signed=True)
        _mark(axes[i, nc + 1], pix)
        if i == 0:
            axes[i, nc + 1].set_title("pixel: sum_c q_c rho(k_c)", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_positional(maps: AttentionMaps, shown: np.ndarray, path: Path, title: str, heads: int = 4) -> Path | None:
    """Per head: column weights, row weights, their outer product, and the exact column-then-row map, overlaid."""
    if maps.composed is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nh = min(heads, maps.composed.shape[0])
    fig, axes = plt.subplots(nh, 5, figsize=(11.5, 2.2 * nh + 0.9), squeeze=False)
    pix = _pixel_in_image(maps, shown.shape[:2])
    H, W = maps.feat_size
    a, b = maps.pixel
    for i in range(nh):
        ax = axes[i, 0]
        ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1)
        _mark(ax, pix)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(f"head {i}", fontsize=8)
        if maps.col_weights is not None:
            axes[i, 1].bar(np.arange(H), maps.col_weights[i], color="tab:blue")
            axes[i, 1].axvline(a, color="k", lw=0.8, ls=":")
            axes[i, 2].bar(np.arange(W), maps.row_weights[i], color="tab:orange")
            axes[i, 2].axvline(b, color="k", lw=0.8, ls=":")
        for j, (m, label) in enumerate(((maps.outer, "col x row (outer product)"), (maps.composed, "column then row"))):
            ax = axes[i, 3 + j]
            _overlay(ax, shown, m[i], signed=bool((m[i] < 0).any()))
            _mark(ax, pix)
            if i == 0:
                ax.set_title(label, fontsize=8)
        if i == 0:
            axes[i, 0].set_title(f"input, pixel ({a},{b}) of {H}x{W}", fontsize=8)
            axes[i, 1].set_title("column weights (over rows a')", fontsize=8)
            axes[i, 2].set_title("row weights (over columns b')", fontsize=8)
        for ax in axes[i, 1:3]:
            ax.tick_params(labelsize=6)
            ax.axhline(0, color="k", lw=0.5)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -------------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    """The ``gsanet visualize`` parser."""
    p = ArgumentParser(
        prog="gsanet visualize",
        description="PNG figures of a GSA module's content (key) attention maps and positional weights for a pixel.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="gsanet train checkpoint (.safetensors) or run directory")
    src.add_argument("--model", help="timm model name (untrained unless --pretrained)")
    p.add_argument("--pretrained", action="store_true", help="with --model: the shipped Fashion-MNIST weights")
    img = p.add_mutually_exclusive_group()
    img.add_argument("--image", help="an image file")
    img.add_argument("--fmnist-index", type=int, help="a Fashion-MNIST test image (default: 0)")
    img.add_argument("--skimage", choices=SKIMAGE_PHOTOS, help="a photograph shipped with scikit-image")
    p.add_argument("--data-dir", default="data", help="where to look for the Fashion-MNIST idx files first")
    p.add_argument(
        "--pixel", type=int, nargs=2, metavar=("Y", "X"), help="pixel in input coordinates (default: centre)"
    )
    p.add_argument("--layer", type=int, default=0, help="index of the GSA module (see --list-layers; default 0)")
    p.add_argument("--heads", type=bounded_int(1), default=4, help="heads shown (default 4)")
    p.add_argument("--channels", type=bounded_int(1), default=6, help="key channels shown per head (default 6)")
    p.add_argument(
        "--img-size",
        type=bounded_int(1, MAX_IMG_SIZE, "larger inputs need more memory than a machine has"),
        help=f"input size of an untrained model, at most {MAX_IMG_SIZE} (default: its config's)",
    )
    add_out_flag(p, "output directory (default: results/figures)", default="results/figures")
    p.add_argument("--prefix", help="file name prefix (default: derived from model, image, layer)")
    p.add_argument("--list-layers", action="store_true", help="list the GSA modules and their input sizes, then exit")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gsanet visualize``; returns the exit code (2: bad input, one line on stderr)."""
    return run("visualize", _main, argv)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if not args.list_layers:
        check_out_dir(out, "figures")
    try:
        subject = load_subject(
            checkpoint=args.checkpoint, model=args.model, pretrained=args.pretrained, img_size=args.img_size
        )
        if args.image is None and args.skimage is None and args.fmnist_index is None:
            args.fmnist_index = 0
        array, caption = load_image(
            image=args.image, fmnist_index=args.fmnist_index, skimage_name=args.skimage, data_dir=args.data_dir
        )
    except (ValueError, OSError, RuntimeError) as e:
        raise UserError(str(e)) from e
    modules = gsa_modules(subject.model)
    if not modules:
        raise UserError(f"{subject.name} has no GSA module")
    x, shown = prepare(array, subject)
    inputs, logits = capture_inputs(subject.model, x, [m for _, m in modules])
    if args.list_layers:
        for i, ((name, m), inp) in enumerate(zip(modules, inputs, strict=True)):
            print(f"{i:3d}  {name:28s} input {tuple(inp.shape[1:])}  {m.extra_repr()}")
        return 0
    if not 0 <= args.layer < len(modules):
        raise UserError(f"--layer must be in 0..{len(modules) - 1}")
    name, module = modules[args.layer]
    feat = inputs[args.layer]
    H, W = feat.shape[-2:]
    py, px = args.pixel if args.pixel is not None else (subject.img_size[0] // 2, subject.img_size[1] // 2)
    pixel = (int(py * H / subject.img_size[0]), int(px * W / subject.img_size[1]))
    maps = compute_maps(module, feat, pixel)

    pred = ""
    if subject.class_names and logits.shape[-1] == len(subject.class_names):
        prob = logits.softmax(-1)[0]
        pred = f"; predicted {subject.class_names[int(prob.argmax())]} ({100 * float(prob.max()):.0f}%)"
    title = (
        f"{subject.name} ({subject.description}) - GSA module {args.layer} `{name}`, input {H}x{W}, "
        f"{module.heads} heads\n{caption}{pred}"
    )
    source = (
        f"fmnist{args.fmnist_index}"
        if args.fmnist_index is not None
        else (args.skimage or Path(args.image).stem if args.image or args.skimage else "image")
    )
    state = "" if subject.trained else "_untrained"
    prefix = args.prefix or f"{subject.name}{state}_{source}_layer{args.layer}"
    written = [
        plot_content(
            maps, shown, out / f"{prefix}_content.png", "Content attention: " + title, args.heads, args.channels
        ),
        plot_positional(
            maps, shown, out / f"{prefix}_positional.png", f"Positional attention of pixel {maps.pixel}: " + title,
            args.heads,
        ),
    ]  # fmt: skip
    for path in written:
        if path is not None:
            print(f"figure: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
