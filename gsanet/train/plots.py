"""PNG figures of a run: loss and accuracy curves, and confusion matrices.

Drawn on matplotlib's Agg canvas directly: no pyplot state, no global backend switch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["plot_confusion_matrix", "plot_curves"]


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_curves(history: Sequence[Mapping[str, Any]], out_dir: str | Path, title: str = "") -> dict[str, Path]:
    """Write ``loss.png`` and ``accuracy.png`` (train and validation per epoch) into ``out_dir``.

    Args:
        history: One mapping per epoch with ``epoch``, ``train_loss``, ``train_top1``, ``val_loss``, ``val_top1`` and
            optionally ``val_top5``.
        out_dir: Destination folder.
        title: Figure title (e.g. model and dataset).

    Returns:
        ``{"loss": path, "accuracy": path}``.
    """
    out_dir = Path(out_dir)
    epochs = [row["epoch"] for row in history]
    series = {
        "loss": [("train_loss", "train"), ("val_loss", "validation")],
        "accuracy": [("train_top1", "train top-1"), ("val_top1", "validation top-1"), ("val_top5", "validation top-5")],
    }
    paths = {}
    for name, curves in series.items():
        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        for key, label in curves:
            values = [row.get(key) for row in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("cross-entropy" if name == "loss" else "accuracy (%)")
        ax.set_title(f"{title} {name}".strip())
        ax.grid(alpha=0.3)
        ax.legend()
        paths[name] = _save(fig, out_dir / f"{name}.png")
    return paths


def plot_confusion_matrix(
    confusion: torch.Tensor | np.ndarray, class_names: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """Write a confusion matrix (rows = true class, columns = prediction), row-normalised colours and counts.

    Args:
        confusion: ``C x C`` counts.
        class_names: ``C`` names.
        path: PNG file.
        title: Figure title.
    """
    counts = np.asarray(confusion, dtype=np.int64)
    n = counts.shape[0]
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = min(4 + 0.5 * n, 40)
    fig = Figure(figsize=(size, size * 0.85))
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= 30:
        labels = [str(c) for c in class_names]
        ax.set_xticks(range(n), labels, rotation=45, ha="right")
        ax.set_yticks(range(n), labels)
        for i in range(n):
            for j in range(n):
                color = "white" if rates[i, j] > 0.5 else "black"
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = 100.0 * np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(f"{title} (top-1 {accuracy:.2f}%)".strip())
    return _save(fig, Path(path))
