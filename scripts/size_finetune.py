"""Fine-tune a shipped Fashion-MNIST model at another input size, starting from its 28x28 weights.

The model is built at the new size (``img_size``; ``fit_rel_pos_state`` keeps the loaded GSA tables whole, and the
modules extend them at forward time by their size policy, so gradients reach the learned rows), loads the shipped
weights, is evaluated at that size before any step, trains a few epochs on a fixed subset of the training
images resized to the new size (bilinear, antialiased, as ``gsanet train --img-size`` resizes them), and is evaluated
on the first ``--test`` test images. Prints one CSV row and appends it to ``--csv``; no checkpoint is written::

    PYTHONPATH=$PWD python scripts/size_finetune.py --model gsa_resnet26_tiny.fmnist --img-size 56
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

import gsanet  # noqa: F401  (registers the models)
from gsanet.train.data import create_datasets

FIELDS = (
    "model", "img_size", "gsa_kwargs", "train_images", "epochs", "lr", "batch", "test_images",
    "top1_before", "loss_before", "top1_after", "loss_after", "train_loss_first", "train_loss_last",
    "finite", "seconds",
)  # fmt: skip


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> tuple[float, float]:
    """Top-1 (%) and mean cross-entropy of ``model`` on ``(x, y)``."""
    model.eval()
    logits = torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)]).double()
    return 100.0 * (logits.argmax(1) == y).double().mean().item(), F.cross_entropy(logits, y).item()


def stacked(dataset: torch.utils.data.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([x for x, _ in items]), torch.tensor([t for _, t in items])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gsa_resnet26_tiny.fmnist", help="a shipped tag")
    parser.add_argument("--img-size", type=int, default=56)
    parser.add_argument("--gsa-kwargs", default="", help="KEY=VALUE,... GlobalSelfAttention overrides (gsa only)")
    parser.add_argument("--train-subset", type=int, default=10000)
    parser.add_argument("--test", type=int, default=2000, help="first N test images")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--csv", default="results/size_finetune.csv")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    kwargs = {}
    for item in filter(None, args.gsa_kwargs.split(",")):
        key, value = item.split("=")
        kwargs[key] = {"True": True, "False": False}.get(value, value)
    extra = dict(gsa_kwargs=kwargs) if kwargs else {}
    model = timm.create_model(args.model, pretrained=True, img_size=args.img_size, **extra)
    datasets, _ = create_datasets(
        "fashion-mnist", args.data_dir, download=False, img_size=args.img_size, augment=False,
        seed=args.seed, train_subset=args.train_subset,
    )  # fmt: skip
    x_test, y_test = stacked(datasets["val"])
    x_test, y_test = x_test[: args.test], y_test[: args.test]
    start = time.perf_counter()
    top1_before, loss_before = evaluate(model, x_test, y_test, 500)
    loader = torch.utils.data.DataLoader(datasets["train"], batch_size=args.batch, shuffle=True, drop_last=True)
    steps = args.epochs * len(loader)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    losses = []
    for _ in range(args.epochs):
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
    top1_after, loss_after = evaluate(model, x_test, y_test, 500)
    row = dict(
        model=args.model, img_size=args.img_size, gsa_kwargs=args.gsa_kwargs or "-",
        train_images=len(datasets["train"]), epochs=args.epochs, lr=args.lr, batch=args.batch, test_images=len(y_test),
        top1_before=round(top1_before, 2), loss_before=f"{loss_before:.4g}", top1_after=round(top1_after, 2),
        loss_after=f"{loss_after:.4g}", train_loss_first=f"{losses[0]:.4g}", train_loss_last=f"{losses[-1]:.4g}",
        finite=all(math.isfinite(v) for v in (*losses, loss_after)), seconds=round(time.perf_counter() - start),
    )  # fmt: skip
    print(",".join(FIELDS))
    print(",".join(str(row[k]) for k in FIELDS))
    path = Path(args.csv)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


if __name__ == "__main__":
    main()
