"""Fine-tune a torchvision or timm ResNet whose 3x3 convolutions ``gsanet.convert_to_gsa`` replaced with GSA modules.

The example of README's "GSA in a model you already have": it converts the model (``--stages``, ``--img-size``),
fine-tunes it on Fashion-MNIST (grey images resized to ``--img-size`` and repeated to 3 channels, so ImageNet models
take them unchanged) with AdamW, and prints the training loss and the top-1 accuracy on the first test images.
``--no-convert`` runs the same recipe on the unconverted model, for the comparison.

Usage::

    python scripts/finetune_converted.py --model resnet18 --stages 3 4 --img-size 32 --steps 300
    python scripts/finetune_converted.py --model timm:resnet26d --stages 4 --img-size 64 --steps 300
    python scripts/finetune_converted.py --model resnet18 --weights IMAGENET1K_V1  # torchvision weights, if cached
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import gsanet
from gsanet.datasets import DATASETS
from gsanet.train.data import find_fashion_mnist, idx_file, read_idx

FMNIST = DATASETS["fashion-mnist"]


def build_model(name: str, weights: str | None, num_classes: int) -> nn.Module:
    """``timm:<name>`` builds a timm model, any other name a torchvision one (with ``weights`` if given)."""
    if name.startswith("timm:"):
        return timm.create_model(name[len("timm:") :], pretrained=weights is not None, num_classes=num_classes)
    if weights is None:
        return torchvision.models.get_model(name, num_classes=num_classes)
    model = torchvision.models.get_model(name, weights=weights)
    model.fc = nn.Linear(model.fc.in_features, num_classes)  # a new classifier for Fashion-MNIST's classes
    return model


def load_split(folder: Path, prefix: str, limit: int | None, img_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST images as normalised 3-channel ``img_size`` squares, and their labels."""
    images = read_idx(idx_file(folder, f"{prefix}-images-idx3-ubyte"))[:limit].float().unsqueeze(1) / 255.0
    labels = read_idx(idx_file(folder, f"{prefix}-labels-idx1-ubyte"))[:limit].long()
    images = F.interpolate((images - FMNIST.mean[0]) / FMNIST.std[0], size=(img_size, img_size), mode="bilinear")
    return images.expand(-1, 3, -1, -1).contiguous(), labels


def finetune(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], args: argparse.Namespace) -> list[float]:
    """``args.steps`` AdamW steps on random batches of ``data``; the losses."""
    images, labels = data
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    generator = torch.Generator().manual_seed(args.seed)
    losses = []
    model.train()
    for step in range(args.steps):
        batch = torch.randint(len(images), (args.batch_size,), generator=generator)
        loss = F.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            recent = losses[-args.log_every :]
            print(f"step {step + 1}/{args.steps}  loss {sum(recent) / len(recent):.4f}")
    return losses


@torch.no_grad()
def accuracy(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], batch_size: int) -> float:
    images, labels = data
    model.eval()
    correct = sum(
        int((model(images[i : i + batch_size]).argmax(-1) == labels[i : i + batch_size]).sum())
        for i in range(0, len(images), batch_size)
    )
    return 100.0 * correct / len(images)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18", help="a torchvision model name, or timm:<name> (default resnet18)")
    p.add_argument("--weights", default=None, help="pretrained weights (torchvision's name, or any value for timm)")
    p.add_argument("--stages", type=int, nargs="+", default=None, help="stages to convert (default: all)")
    p.add_argument("--no-convert", action="store_true", help="fine-tune the unconverted model (the baseline)")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--train-images", type=int, default=None, help="use the first N training images (default all)")
    p.add_argument("--eval-images", type=int, default=1000)
    p.add_argument("--data-dir", default="data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=20)
    args = p.parse_args(argv)
    folder = find_fashion_mnist(args.data_dir)
    if folder is None:
        p.error(f"Fashion-MNIST idx files not found in {args.data_dir} (or /usr/share/datasets/fashion-mnist)")
    torch.manual_seed(args.seed)
    model = build_model(args.model, args.weights, num_classes=10)
    if not args.no_convert:
        gsanet.convert_to_gsa(model, stages=args.stages, img_size=args.img_size)
        print(f"converted {sum(isinstance(m, gsanet.GlobalSelfAttention) for m in model.modules())} convolutions")
    finetune(model, load_split(folder, "train", args.train_images, args.img_size), args)
    top1 = accuracy(model, load_split(folder, "t10k", args.eval_images, args.img_size), args.batch_size)
    print(f"top-1 on the first {args.eval_images} test images: {top1:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
