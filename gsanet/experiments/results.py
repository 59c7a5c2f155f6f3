"""The results of an experiment: its finished runs gathered into one row per variant, with parameters and MACs.

Only checked runs are counted (:func:`gsanet.experiments.runner.run_status`): a damaged run directory (no or an
invalid ``config.yaml``, an accuracy outside [0, 100] or not finite, a broken ``metrics.csv`` or ``command.txt``)
refuses the table with one line naming the run (:class:`DamagedRunError`), rather than being averaged or silently
left out. Each row says what its accuracies measured (:func:`measured_split`, from the runs' ``config.yaml``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gsanet.datasets import DATASETS, dataset_spec
from gsanet.errors import UserError
from gsanet.train.rundir import RunDir

from .plans import Plan, RunSpec, Variant
from .runner import run_status

__all__ = ["DamagedRunError", "Row", "aggregate", "measured_split", "run_command"]


class DamagedRunError(UserError):
    """A finished run directory a table would count is damaged; the message names it and what is wrong."""


def measured_split(config: Mapping[str, Any]) -> str:
    """What a run's accuracies measured, from its ``config.yaml``: the held-out split, a ``val_subset`` of the
    test set, or the full test set (with its size for a built-in dataset)."""
    holdout, subset, data = config.get("holdout"), config.get("val_subset"), str(config.get("data", ""))
    if holdout and config.get("final_test"):
        size = f" ({DATASETS[data].test_images:,} images)" if data in DATASETS else ""
        return f"the full test set{size}, once after the last epoch"
    if holdout:
        held = f"a held-out split of {holdout:,} training images"
        return f"a fixed {subset:,}-image subset of {held}" if subset and subset < holdout else held
    if subset:
        return f"a fixed {subset:,}-image subset of the test set"
    if data in DATASETS:
        return f"the full test set ({DATASETS[data].test_images:,} images)"
    return f"the full validation split of {data}"


@dataclass
class Row:
    """One variant of a table, aggregated over its seeds.

    Attributes:
        variant: The plan entry.
        data: Dataset.
        seeds: Seeds planned.
        top1: Final test top-1 (%) of each finished seed, in seed order (the validation split's after the last epoch;
            with ``final_test``, the one test evaluation after it).
        top5: Final test top-5 (%) of each finished seed.
        train_seconds: Training time (train + per-epoch evaluation) of each finished seed.
        params: Parameters (from the runs' summaries, else counted).
        macs: Multiply-adds of one image at the run's input size, as computed.
        algorithmic_macs: The same with GSA modules at the cost of their equations.
        input_size: ``(C, H, W)`` of the runs.
        run_dirs: The finished runs.
        commands: The ``gsanet train`` command of each finished run.
        missing: Seeds without a finished run.
        measured: What the finished runs' accuracies measured (:func:`measured_split`), each once.
    """

    variant: Variant
    data: str
    seeds: tuple[int, ...]
    top1: list[float] = field(default_factory=list)
    top5: list[float] = field(default_factory=list)
    train_seconds: list[float] = field(default_factory=list)
    params: int | None = None
    macs: int | None = None
    algorithmic_macs: int | None = None
    input_size: tuple[int, int, int] | None = None
    run_dirs: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    measured: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        """Finished seeds."""
        return len(self.top1)

    @property
    def mean(self) -> float | None:
        """Mean test top-1 over the finished seeds."""
        return statistics.fmean(self.top1) if self.top1 else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n - 1) of the test top-1; None below two seeds."""
        return statistics.stdev(self.top1) if len(self.top1) > 1 else None

    @property
    def mean_top5(self) -> float | None:
        """Mean test top-5."""
        return statistics.fmean(self.top5) if self.top5 else None

    @property
    def mean_seconds(self) -> float | None:
        """Mean training time."""
        return statistics.fmean(self.train_seconds) if self.train_seconds else None


def run_command(run_dir: Path) -> str:
    """The ``gsanet train`` command recorded in a run's ``command.txt`` (without its time stamp; "" if none)."""
    path = RunDir(run_dir).command
    if not path.is_file():
        return ""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[0].split(" ", 1)[-1] if lines else ""  # "<timestamp> gsanet train ..."


def aggregate(
    plan: Plan,
    data: str,
    runs: str | Path,
    seeds: Sequence[int] | None = None,
    recipe: Mapping[str, Any] | None = None,
    epochs: int | None = None,
    macs: bool = True,
) -> list[Row]:
    """Collect the finished runs of ``plan`` on ``data`` into one :class:`Row` per variant.

    Args:
        plan: The plan.
        data: Dataset.
        runs: Parent directory of the run directories.
        seeds: Seeds of every variant (None: the plan's / variant's defaults).
        recipe: When given, runs whose ``config.yaml`` disagrees with it are left out (see :func:`run_status`).
        epochs: The ``--epochs`` override the runs were asked for.
        macs: Count parameters and multiply-adds by building each model (else only the runs' parameter counts).

    Raises:
        DamagedRunError: A run directory of the plan is damaged (see :func:`run_status`).
    """
    rows = []
    for variant in plan.variants:
        variant_seeds = tuple(seeds if seeds is not None else (variant.seeds or plan.default_seeds))
        row = Row(variant, data, variant_seeds)
        if not variant.skip_reason:
            for seed in variant_seeds:
                spec = RunSpec(variant, seed, data, Path(runs))
                status = run_status(spec, spec.expected_config(recipe, epochs) if recipe is not None else {})
                if status.state == "damaged":
                    raise DamagedRunError(f"{status.detail}, then write the tables again")
                if status.state != "done":
                    row.missing.append(seed)
                    continue
                s = status.summary
                tested = bool(status.config.get("final_test"))  # the test evaluation, not the held-out split's
                top1, top5 = (s.test_top1, s.test_top5) if tested else (s.val_top1, s.val_top5)
                row.top1.append(float(top1))
                row.top5.append(float(top5) if top5 is not None else math.nan)
                row.train_seconds.append(float(s.train_seconds))
                row.params = int(s.params) if s.params is not None else row.params
                row.run_dirs.append(str(spec.run_dir))
                row.commands.append(run_command(spec.run_dir))
                split = measured_split(dict(status.config, data=data))
                row.measured += [split] if split not in row.measured else []
        spec = dataset_spec(data)
        num_classes, in_chans, size = (spec.num_classes, spec.in_chans, spec.img_size) if spec else (None, 3, 224)
        size = variant.train_args.get("img_size") or (recipe or {}).get("img_size") or size
        row.input_size = (in_chans, size, size)
        if macs and num_classes is not None:
            _count(row, num_classes)
        rows.append(row)
    return rows


def _count(row: Row, num_classes: int) -> None:
    """Fill in the parameters and MACs of a row by building its model (the GSA models register on import)."""
    import logging

    from gsanet.models.flops import count_macs, count_params
    from gsanet.train.engine import create_model

    in_chans, size, _ = row.input_size
    logging.getLogger("timm").setLevel(logging.ERROR)
    try:
        model = create_model(
            row.variant.model,
            num_classes=num_classes,
            in_chans=in_chans,
            img_size=size,
            model_kwargs=dict(row.variant.model_kwargs),
        )
        count = count_macs(model, row.input_size)
    except Exception as e:  # noqa: BLE001  (a model that cannot be built at this size: the table says so)
        row.variant = Variant(**{**row.variant.__dict__, "note": f"{row.variant.note}; not buildable: {e}".strip("; ")})
        return
    row.params = row.params or count_params(model)
    row.macs, row.algorithmic_macs = count.macs, count.algorithmic_macs
