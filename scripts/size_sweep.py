"""Accuracy and largest logit of the shipped Fashion-MNIST models at other input sizes, per table-extension policy.

The shipped ``gsa_resnet26_tiny.fmnist`` (trained at 28x28) is evaluated at 0.75x-2x its training size under each
size policy of its GSA modules (``rel_pos_extend`` x ``pos_scale``, ``docs/design.md`` "relative tables"), the conv
twin ``conv_resnet26_tiny.fmnist`` beside it. Test images go through timm's eval transform (``create_transform``) at
each size, as ``validate.py --img-size`` would. Writes ``<out>/size_sweep.csv``, ``.md`` and ``.png`` and prints the
table::

    PYTHONPATH=$PWD python scripts/size_sweep.py --limit 10000 --threads 1
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

import gsanet  # noqa: F401  (registers the models)
from gsanet.train.data import find_fashion_mnist, idx_file, read_idx

POLICIES = (  # (label, gsa_kwargs); the first is the behaviour before the size policy existed
    ("edge", dict(rel_pos_extend="edge", pos_scale=False)),
    ("edge+scale", dict(rel_pos_extend="edge", pos_scale=True)),
    ("zero", dict(rel_pos_extend="zero", pos_scale=False)),
    ("zero+scale", dict(rel_pos_extend="zero", pos_scale=True)),
    ("interp", dict(rel_pos_extend="interp", pos_scale=False)),
    ("interp+scale", dict(rel_pos_extend="interp", pos_scale=True)),
)
GSA, CONV = "gsa_resnet26_tiny.fmnist", "conv_resnet26_tiny.fmnist"
OVERFLOW = 1e30  # where the plot draws an infinite or NaN largest logit
FIELDS = ("model", "policy", "img_size", "scale", "images", "top1", "max_abs_logit", "nonfinite", "loss")


def test_images(limit: int | None, data_dir: str | None) -> tuple[list[Image.Image], torch.Tensor]:
    folder = find_fashion_mnist(data_dir)
    if folder is None:
        raise SystemExit("Fashion-MNIST idx files not found (data/ or /usr/share/datasets/fashion-mnist)")
    images = read_idx(idx_file(folder, "t10k-images-idx3-ubyte"))[:limit]
    labels = read_idx(idx_file(folder, "t10k-labels-idx1-ubyte"))[:limit].long()
    return [Image.fromarray(img.numpy(), mode="L") for img in images], labels


def batch_at(model: torch.nn.Module, images: list[Image.Image], size: int) -> torch.Tensor:
    """The images through timm's eval transform for ``model`` at ``size`` x ``size``."""
    config = resolve_data_config({"input_size": (1, size, size)}, model=model)
    transform = create_transform(**config)
    return torch.stack([transform(img) for img in images])


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, batch: int) -> dict[str, float]:
    logits = torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)]).double()
    finite = torch.isfinite(logits).all(dim=1)
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    return dict(
        images=len(labels),
        top1=100.0 * (logits.argmax(1) == labels).double().mean().item(),
        max_abs_logit=logits.abs().nan_to_num(nan=math.inf).max().item(),
        nonfinite=int((~finite).sum()),
        loss=loss,
    )


def sweep(sizes: list[int], limit: int | None, batch: int, data_dir: str | None) -> list[dict]:
    images, labels = test_images(limit, data_dir)
    models = {("conv", "-"): timm.create_model(CONV, pretrained=True).eval()}
    for label, kwargs in POLICIES:
        models[("gsa", label)] = timm.create_model(GSA, pretrained=True, gsa_kwargs=kwargs).eval()
    rows = []
    for size in sizes:
        x = batch_at(models[("conv", "-")], images, size)
        for (name, policy), model in models.items():
            t0 = time.perf_counter()
            row = dict(model=name, policy=policy, img_size=size, scale=size / 28, **evaluate(model, x, labels, batch))
            rows.append(row)
            print(
                f"{name:4s} {policy:13s} {size:3d}px  top1 {row['top1']:6.2f}  max|logit| {row['max_abs_logit']:10.4g}"
                f"  loss {row['loss']:10.4g}  ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    return rows


def write_md(rows: list[dict], path: Path, command: str) -> None:
    sizes = sorted({r["img_size"] for r in rows})
    columns = [("conv", "-")] + [("gsa", label) for label, _ in POLICIES]
    cell = {(r["model"], r["policy"], r["img_size"]): r for r in rows}
    n = rows[0]["images"]
    lines = [
        "# Shipped Fashion-MNIST models at other input sizes",
        "",
        f"`{command}`",
        "",
        f"Top-1 (%) on the first {n:,} test images and, in brackets, the largest |logit|, at each input size (timm's "
        "eval transform resizes the 28x28 images). `gsa <policy>`: the shipped `gsa_resnet26_tiny.fmnist` with its GSA "
        "modules' size policy (`rel_pos_extend`, `+scale` = `pos_scale=True`); `edge` is the behaviour before the "
        "policy existed, `interp+scale` the default since; `conv`: the conv twin `conv_resnet26_tiny.fmnist`. "
        "Trained at 28 px; every policy computes the same at 21 and 28 px (the tables are sized for 32).",
        "",
        "| size | " + " | ".join("conv" if m == "conv" else f"gsa {p}" for m, p in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for size in sizes:
        cells = []
        for m, p in columns:
            r = cell[(m, p, size)]
            cells.append(f"{r['top1']:.2f} ({r['max_abs_logit']:.3g})")
        lines.append(f"| {size} px ({size / 28:.2f}x) | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_logit) = plt.subplots(1, 2, figsize=(11, 4))
    series = [("conv", "-")] + [("gsa", label) for label, _ in POLICIES]
    for m, p in series:
        rs = sorted((r for r in rows if r["model"] == m and r["policy"] == p), key=lambda r: r["img_size"])
        sizes = [r["img_size"] for r in rs]
        name = "conv twin" if m == "conv" else f"gsa {p}"
        style = dict(marker="o", linestyle="--" if m == "conv" else "-", label=name)
        ax_acc.plot(sizes, [r["top1"] for r in rs], **style)
        logits = [min(float(r["max_abs_logit"]), OVERFLOW) for r in rs]  # inf and NaN drawn at OVERFLOW
        ax_logit.plot(sizes, logits, **style)
    ax_acc.set(xlabel="input size (px), trained at 28", ylabel="test top-1 (%)", ylim=(0, 100))
    ax_logit.set(xlabel="input size (px), trained at 28", ylabel="largest |logit| (log; inf/NaN at 1e30)", yscale="log")
    for ax in (ax_acc, ax_logit):
        ax.axvline(28, color="grey", lw=0.8)
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[21, 28, 35, 42, 56, 64])
    parser.add_argument("--limit", type=int, default=10000, help="first N test images")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="results")
    parser.add_argument("--replot", action="store_true", help="only redraw <out>/size_sweep.png from its CSV")
    args = parser.parse_args()
    out = Path(args.out)
    if args.replot:
        with open(out / "size_sweep.csv", newline="") as f:
            rows = [{k: v if k in ("model", "policy") else float(v) for k, v in r.items()} for r in csv.DictReader(f)]
        plot(rows, out / "size_sweep.png")
        return
    torch.set_num_threads(args.threads)
    rows = sweep(args.sizes, args.limit, args.batch, args.data_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "size_sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    command = f"python scripts/size_sweep.py --sizes {' '.join(map(str, args.sizes))} --limit {args.limit}"
    write_md(rows, out / "size_sweep.md", command)
    plot(rows, out / "size_sweep.png")
    print(f"wrote {out / 'size_sweep.csv'}, .md, .png")


if __name__ == "__main__":
    main()
