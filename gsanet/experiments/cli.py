"""``gsanet experiment``: train the plans of :mod:`gsanet.experiments.plans` over seeds and tabulate the results.

Usage::

    gsanet experiment compare --dry-run                  # the runs and their gsanet train commands
    gsanet experiment all --jobs 2                       # compare + ablations, two single-thread runs at a time
    gsanet experiment compare --seeds 0 1 2 --epochs 3   # override the recipe's seeds / epochs
    gsanet experiment ablations --resume                 # continue interrupted runs from their last checkpoint
    gsanet experiment all --table-only                   # only (re)write the tables from the finished runs

Every run is one ``python -m gsanet.cli train --config <recipe> ...`` subprocess writing
``<runs>/<data>/<variant>-s<seed>/``; a finished run is never started again nor overwritten, one whose ``config.yaml``
differs from what the plan asks (another recipe, another ``--epochs``) is reported as a conflict and left alone (use
another ``--runs``), an interrupted one is continued only with ``--resume`` and never while another process writes
it; the train children end with the experiment, even when it is killed (:mod:`.runner`). A damaged run directory or
a ``--out`` that cannot be written is reported in one line with exit code 2 (``--out`` before any training).

The tables (``<out>/experiment_<plan>[_<data>].{csv,md}``, :mod:`.tables`) give, per model, the mean and standard
deviation over the seeds of the final top-1 accuracy on what the runs measured (the test set, a ``val_subset`` of
it or a held-out split, and how many images, from the runs' ``config.yaml``), the parameters and multiply-adds at
the run's input size, and the training time; every skipped variant with its reason, and the exact commands. This
module parses the command line, loads the recipes and puts the two together.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gsanet.commands import ArgumentParser, add_config_flag, add_out_flag, run, setup_logging
from gsanet.datasets import DATASETS
from gsanet.errors import UserError

from .plans import Plan, RunSpec, expand, get_plan
from .results import aggregate
from .runner import (
    RunnerContext,
    child_env,
    expected_config,
    interrupted,
    record_invocation,
    run_all,
    run_status,
    train_command,
)
from .tables import write_tables

__all__ = ["build_parser", "load_recipe", "main", "recipe_path", "resolve_datasets"]

REPO_ROOT = Path(__file__).resolve().parents[2]
STUDY_CONFIG = "configs/study_fmnist.yaml"
PLAN_CHOICES = ("compare", "ablations", "all", "study")


def build_parser() -> argparse.ArgumentParser:
    """The ``gsanet experiment`` parser."""
    p = ArgumentParser(
        prog="gsanet experiment",
        description="Train GSA-ResNet, its convolutional ResNet, timm's attention peers and the GSA ablations over "
        "seeds with one shared recipe, then write mean +- std tables.",
    )
    p.add_argument(
        "plan",
        choices=PLAN_CHOICES,
        help="compare, ablations, all (both; shared runs run once), or study (the converged comparison: "
        "hyper-parameters chosen per family on a held-out split, then seeds; gsanet/experiments/study.py)",
    )
    p.add_argument("--seeds", type=int, nargs="+", help="seeds of every variant (default: 0 1 2)")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    per_data = ", ".join(f"{k}: {v.recipe}" for k, v in DATASETS.items())
    add_config_flag(
        p,
        f"recipe (gsanet train --config YAML) for every dataset (default: per dataset, {per_data}; the study: "
        f"{STUDY_CONFIG})",
    )
    p.add_argument(
        "--data",
        nargs="+",
        default=["auto"],
        help=f"datasets: {', '.join(DATASETS)}, or auto = every one found in --data-dir (fashion-mnist always: it has "
        "system copies and a download) (default: auto)",
    )
    p.add_argument("--data-dir", help="dataset root (default: the recipe's data_dir)")
    add_out_flag(p, "directory of the tables (default: results)", default="results")
    p.add_argument(
        "--runs", help="parent of the run directories (default: runs/study for the study, else runs/experiments)"
    )
    p.add_argument("--jobs", type=int, default=1, help="runs trained at the same time (default: 1)")
    p.add_argument(
        "--threads",
        type=int,
        help="compute threads per run (OMP_NUM_THREADS); default: 1 when --jobs > 1, else torch's choice",
    )
    p.add_argument(
        "--export",
        metavar="DIR",
        help="copy each run once it is finished (or found finished) to DIR/<data>/<name>, without checkpoints, "
        "plots or event files: what the tables need (--table-only --runs DIR writes them from the copies), e.g. to "
        "commit each finished run of a long experiment; a run missing from --runs but finished in DIR is taken from "
        "DIR instead of trained again (a new machine continues from the committed runs)",
    )
    p.add_argument("--dry-run", action="store_true", help="list the runs, their state and commands; train nothing")
    p.add_argument("--resume", action="store_true", help="continue interrupted runs (default: report them)")
    p.add_argument("--table-only", action="store_true", help="only write the tables from the finished runs")
    p.add_argument("--no-macs", action="store_true", help="leave the MAC column empty (no model is built)")
    p.add_argument("--python", default=sys.executable, help="interpreter of the train subprocesses")
    return p


# ---------------------------------------------------------------------------------------------------- recipes
def load_recipe(path: str | Path) -> dict[str, Any]:
    """The values of a recipe YAML (a ``gsanet train --config`` file), validated against ``TrainConfig``.

    Raises:
        ValueError: Unknown keys, wrong types, or a key the runner sets itself.
    """
    from gsanet.config import load_yaml, resolve_config
    from gsanet.errors import ConfigError
    from gsanet.train.config import TrainConfig

    values = load_yaml(path)
    try:
        resolve_config(TrainConfig, {}, path)
    except ConfigError as e:
        raise ValueError(f"recipe {path}: {e}") from e
    clash = {"model", "model_kwargs", "seed", "out", "output", "name"} & set(values)
    if clash:
        raise ValueError(f"recipe {path} sets {sorted(clash)}; the experiment plan sets them, remove them")
    return values


def resolve_datasets(requested: Sequence[str], data_dir: str | Path) -> list[str]:
    """Expand ``auto`` into every built-in dataset that needs no folder (Fashion-MNIST) or whose torchvision folder is
    in ``data_dir``."""
    datasets: list[str] = []
    for item in requested:
        names = [n for n, spec in DATASETS.items() if spec.folder is None or (Path(data_dir) / spec.folder).is_dir()]
        for name in names if item == "auto" else [item]:
            if name not in datasets:
                datasets.append(name)
    return datasets


def recipe_path(data: str, config: str | None, study: bool = False) -> Path:
    """The recipe of a dataset: ``--config``, else the study's or the dataset's default (relative to the repository)."""
    if config is not None:
        return Path(config)
    if study:
        if data != "fashion-mnist":
            raise ValueError(f"the study has a default recipe for fashion-mnist only; pass --config for {data}")
        path = Path(STUDY_CONFIG)
        return path if path.exists() else REPO_ROOT / path
    if data not in DATASETS:
        raise ValueError(f"no default recipe for --data {data}; pass --config")
    path = Path(DATASETS[data].recipe)
    return path if path.exists() else REPO_ROOT / path


# -------------------------------------------------------------------------------------------------------- main
def _plans(name: str) -> list[Plan]:
    return [get_plan("compare"), get_plan("ablations")] if name == "all" else [get_plan(name)]


def _parse(argv: list[str]) -> argparse.Namespace:
    """The checked arguments (``--runs`` defaulted).

    Raises:
        UserError: A bad flag or value.
    """
    args = build_parser().parse_args(argv)
    if (
        args.jobs < 1
        or (args.threads is not None and args.threads < 1)
        or (args.epochs is not None and args.epochs < 1)
    ):
        raise UserError("--jobs, --threads and --epochs must be >= 1")
    if args.plan == "study" and (args.seeds is not None or args.epochs is not None):
        protocol = f"plans.study_plan and {STUDY_CONFIG}"
        raise UserError(f"the study's seeds and epochs are its protocol's ({protocol}); remove --seeds/--epochs")
    if args.runs is None:
        args.runs = "runs/study" if args.plan == "study" else "runs/experiments"
    return args


def _resolve(args: argparse.Namespace) -> tuple[list[Plan], list[str], dict[str, tuple[Path, dict[str, Any]]]]:
    """The plans, the datasets and each dataset's recipe ``(path, values)``.

    Raises:
        ValueError, KeyError: An unknown plan, dataset or recipe key.
    """
    study = args.plan == "study"
    plans = [] if study else _plans(args.plan)
    first_recipe = load_recipe(recipe_path("fashion-mnist", args.config, study))
    data_dir = args.data_dir or first_recipe.get("data_dir", "data")
    datasets = ["fashion-mnist"] if study and args.data == ["auto"] else resolve_datasets(args.data, data_dir)
    recipes = {}
    for data in datasets:
        path = recipe_path(data, args.config, study)
        recipes[data] = (path, load_recipe(path))
    return plans, datasets, recipes


def _dry_run(plans: Sequence[Plan], specs: Sequence[RunSpec], datasets: Sequence[str], ctx: RunnerContext) -> None:
    """Print every run's state and command, the skipped variants and the count of each state."""
    counts: dict[str, int] = {}
    print(f"{len(specs)} runs ({', '.join(datasets)}); threads per run: {ctx.env.get('OMP_NUM_THREADS', 'default')}")
    for spec in specs:
        status = run_status(spec, expected_config(spec, ctx))
        counts[status.state] = counts.get(status.state, 0) + 1
        print(f"{status.state:8s} {spec.run_dir}  {status.detail}".rstrip())
        print(f"         {shlex.join(train_command(spec, ctx, False))}")
    for plan in plans:
        for variant in plan.variants:
            if variant.skip_reason:
                print(f"skipped  {plan.name}/{variant.key}: {variant.skip_reason}")
    print("states: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


def _train(specs: Sequence[RunSpec], datasets: Sequence[str], ctx: RunnerContext, argv: Sequence[str]) -> int | None:
    """Train the runs; return 130 (Ctrl-C) or 143 (SIGTERM) when interrupted, 1 when a run is not done (each
    reported), else None."""
    for data in datasets:
        record_invocation(ctx, argv, data)
    try:
        results = run_all(specs, ctx)
    except KeyboardInterrupt as e:
        return interrupted(e)
    bad = [(s, r) for s, r in results if r.state != "done"]
    for spec, status in bad:
        print(f"{status.state}: {spec.run_dir}: {status.detail}", file=sys.stderr)
    return 1 if bad else None


def _write_all_tables(plans: Sequence[Plan], datasets: Sequence[str], ctx: RunnerContext) -> None:
    """Aggregate the finished runs of every plan and dataset and write their tables."""
    args = ctx.args
    for data in datasets:
        path, recipe = ctx.recipes[data]
        expected = ctx.expected_recipe(data)
        for plan in plans:
            rows = aggregate(plan, data, args.runs, args.seeds, expected, args.epochs, macs=not args.no_macs)
            spread = None
            if plan.groups:  # the ablations: the baseline's seed-to-seed spread from the comparison
                compare = get_plan("compare")
                reference = dataclasses.replace(compare, variants=(compare.variant(plan.baseline),))
                spread = aggregate(reference, data, args.runs, None, expected, args.epochs, macs=False)[0]
            csv_path, md_path = write_tables(
                plan, rows, args.out, data=data, recipe_path=path, recipe=recipe, epochs=args.epochs, runs=args.runs,
                spread=spread,
            )  # fmt: skip
            print(f"tables: {csv_path}  {md_path}")


def _check_out(out: str) -> None:
    """Create ``--out`` and check a file can be written in it.

    Raises:
        UserError: It is a file, or cannot be created or written.
    """
    from gsanet.errors import CheckpointError
    from gsanet.files import ensure_writable

    if Path(out).exists() and not Path(out).is_dir():
        raise UserError(f"--out {out} is a file, not a directory; give the directory for the tables")
    try:
        ensure_writable(out)
    except CheckpointError as e:
        raise UserError(f"--out {out}: {e}") from e


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gsanet experiment``; returns 0 when every requested run is finished (or a dry run), 1 when
    one is not, 2 for a bad flag, value, recipe, ``--out`` or damaged run directory (reported in one line), 130
    (Ctrl-C) or 143 (SIGTERM) when interrupted."""
    return run("experiment", _main, argv)


def _main(argv: list[str]) -> int:
    args = _parse(argv)
    setup_logging()
    try:
        plans, datasets, recipes = _resolve(args)
        specs = expand(plans, datasets, args.runs, args.seeds)
    except (ValueError, KeyError) as e:
        raise UserError(str(e)) from e
    if not args.dry_run:
        _check_out(args.out)  # before any training, not after it
    ctx = RunnerContext(args, recipes, child_env(args))
    if args.plan == "study":
        from . import study

        return study.study_command(args, argv, datasets, ctx)
    if args.dry_run:
        _dry_run(plans, specs, datasets, ctx)
        return 0
    code = None if args.table_only else _train(specs, datasets, ctx, argv)
    if code is not None and code > 1:
        return code
    _write_all_tables(plans, datasets, ctx)
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
