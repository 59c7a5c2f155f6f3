"""``gsanet bench``: speed and memory benchmarks; writes CSV + markdown (+ PNG) into ``--out`` and prints the tables.

Usage::

    gsanet bench {module,scaling,model,axial,all,profile,traffic} [--device cpu|cuda] [--precision fp32|bf16]
                 [--batch-size 8] [--repeats N] [--warmup N] [--out results/] [--quick]
                 [--isa native|avx512|avx2|generic] ...
    gsanet bench summary [--out results/]


Files are named ``bench_<kind>_torch<version>_<device>_<precision>[_<isa>].{csv,md,png}`` (the instruction set
PyTorch ran at, on CPU). ``--isa avx2`` re-runs the command with PyTorch, oneDNN, MKL and the fused kernel capped at
AVX2 (:data:`gsanet.bench.environment.ISA_ENV`), so an AVX-512 machine reproduces an AVX2 machine's ratios. Options come
from the defaults, then ``--config`` (a YAML mapping of :class:`gsanet.bench.config.BenchConfig` fields), then the
explicit flags (:func:`gsanet.commands.resolve`); a bad flag or value is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from gsanet.commands import (
    ArgumentParser,
    add_batch_size_flag,
    add_config_flag,
    add_out_flag,
    resolve,
    run,
    setup_logging,
)
from gsanet.errors import UserError

from .config import BenchConfig
from .environment import ISA_ENV, cpu_isa
from .report import BenchTable, result_stem

__all__ = ["KINDS", "build_parser", "main", "resolve_config"]

KINDS = ("module", "scaling", "model", "axial", "all", "profile", "summary", "traffic")


def build_parser() -> argparse.ArgumentParser:
    """The ``gsanet bench`` argument parser; unset flags stay absent so ``--config`` values can fill them."""
    p = ArgumentParser(
        prog="gsanet bench",
        description="Speed and memory of the GSA module and GSA networks against convolution and attention peers.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument(
        "kind",
        choices=KINDS,
        help="module | scaling | model | axial (fused kernel vs GEMM path) | all (the four) | profile (one layer) | "
        "summary (measures nothing: reads the model pair and module tables of every precision and instruction set in "
        "--out and writes one table of the ratios beside their targets, bench_summary_torch<version>_<device>.md) | "
        "traffic (modelled bytes per pass, no timing)",
    )
    p.add_argument(
        "--isa",
        choices=["native", *ISA_ENV],
        help="CPU instruction set to run at (default native): avx2 caps PyTorch, oneDNN, MKL and the kernel at AVX2",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], help="default cpu")
    p.add_argument("--precision", choices=["fp32", "bf16"], help="bf16 = torch.autocast bfloat16; default fp32")
    add_batch_size_flag(
        p,
        "batch size (default 8; 2 with --quick); model: the training and inference batch of every model (default each "
        "model's own: training 8 and inference 16 for the ResNet-50 pair, 128 and 256 for the tiny pair)",
    )
    p.add_argument(
        "--repeats", type=int, help="timed repeats (default: module 20, scaling 10, model 10; within --time-budget-s)"
    )
    p.add_argument("--warmup", type=int, help="untimed calls after the memory/FLOP pass (default 1; scaling 0)")
    add_out_flag(p, "output directory (default results)")
    p.add_argument("--quick", action="store_true", help="small sizes, 1 repeat: a smoke run")
    p.add_argument("--seed", type=int, help="torch.manual_seed (default 0)")
    p.add_argument(
        "--mem-cap-gb", dest="mem_cap_gb", type=float, help="module, scaling: skip predicted peaks above (8)"
    )
    p.add_argument(
        "--time-budget-s", dest="time_budget_s", type=float, help="stop repeating a measurement after this (60)"
    )
    p.add_argument(
        "--max-step-s", dest="max_step_s", type=float, help="scaling: skip sizes where a step would take longer (400)"
    )
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    add_config_flag(p, "YAML file of options (flags override it)")
    p.add_argument(
        "--layers",
        nargs="+",
        help="module, scaling: layers among gsa conv3x3 gsa_pytorch nonlocal nonlocal_math halo botnet lambda",
    )
    p.add_argument("--shapes", nargs="+", help="module: HxWxC shapes (default ResNet-50 stages)")
    p.add_argument("--sizes", nargs="+", type=int, help="scaling: square sizes (default 16 ... 128)")
    p.add_argument(
        "--models", nargs="+", help="model, traffic: timm names (the default list at its sizes; others at 224)"
    )
    p.add_argument("--layer", help="profile: the layer (default gsa)")
    p.add_argument("--shape", help="profile: HxWxC (default 56x56x64)")
    return p


def resolve_config(args: argparse.Namespace) -> BenchConfig:
    """Defaults, then the ``--config`` YAML, then explicit flags; unknown keys and wrong types are errors.

    Raises:
        ConfigError: An unknown key or a value of the wrong type in the file.
        UserError: A value :class:`BenchConfig` refuses.
    """
    return resolve(BenchConfig, args)


def _run(kind: str, cfg: BenchConfig, args: argparse.Namespace) -> BenchTable:
    if kind == "module":
        from .module import parse_shape, run_module_bench

        shapes = [parse_shape(s) for s in args.shapes] if hasattr(args, "shapes") else None
        return run_module_bench(cfg, shapes=shapes, layers=getattr(args, "layers", None))
    if kind == "axial":
        from .axial import run_axial_bench

        return run_axial_bench(cfg)
    if kind == "scaling":
        from .scaling import run_scaling_bench

        return run_scaling_bench(cfg, sizes=getattr(args, "sizes", None), layers=getattr(args, "layers", None))
    from .model import MODELS, run_model_bench

    models = None
    if hasattr(args, "models"):
        models = [m for name in args.models for m in ([m for m in MODELS if m.name == name] or [(name, 224, "")])]
    return run_model_bench(cfg, models=models)


def _reexec_at(isa: str, argv: list[str]) -> None:
    """Replaces this process by the same ``gsanet bench`` command with the environment of ``--isa``."""
    from gsanet.layers import axial_kernel

    if isa not in axial_kernel.host_variants():  # "generic" always is
        raise UserError(f"--isa {isa}: this CPU cannot execute {isa} code")
    env = {**os.environ, **ISA_ENV[isa]}
    print(f"gsanet bench: re-running at {isa}: " + " ".join(f"{k}={v}" for k, v in ISA_ENV[isa].items()), flush=True)
    os.execve(sys.executable, [sys.executable, "-m", "gsanet.cli", "bench", *argv], env)


def main(argv: list[str] | None = None) -> int:
    """Runs ``gsanet bench``; returns the exit status (2: a bad flag or value, reported in one line)."""
    return run("bench", _main, argv)


def _summary(args: argparse.Namespace, command: str) -> int:
    """``gsanet bench summary``: reads the tables in ``--out``, prints and writes the summary."""
    from .summary import summarize

    for flag in ("isa", "precision"):
        if hasattr(args, flag):
            raise UserError(f"--{flag} does not apply to summary: it reads the tables of every precision and isa")
    cfg = resolve_config(args)
    out = Path(cfg.out)
    try:
        summary = summarize(out, cfg.device)
    except ValueError as e:
        raise UserError(str(e)) from e
    paths = summary.save(out, cfg.device, command)
    print(summary.markdown(command))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.kind == "summary":
        return _summary(args, "gsanet bench " + " ".join(argv))
    isa = getattr(args, "isa", "native")
    if isa != "native" and any(os.environ.get(k) != v for k, v in ISA_ENV[isa].items()):
        _reexec_at(isa, argv)  # the caps are read when PyTorch, oneDNN and MKL load: a fresh process
    cfg = resolve_config(args)
    setup_logging()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    command = "gsanet bench " + " ".join(argv)

    if args.kind == "profile":
        from .module import parse_shape, profile_layer

        layer, shape = getattr(args, "layer", "gsa"), parse_shape(getattr(args, "shape", "56x56x64"))
        text = profile_layer(cfg, layer=layer, shape=shape)
        out.mkdir(parents=True, exist_ok=True)
        stem = result_stem("profile", cfg.device, cfg.precision, cpu_isa()).replace("bench_profile", f"profile_{layer}")
        path = out / f"{stem}_{'x'.join(map(str, shape))}.txt"
        path.write_text(f"Command: {command}\n{text}\n")
        print(text)
        print(f"\nwrote {path}")
        return 0

    if args.kind == "traffic":
        from .traffic import run_traffic

        try:
            paths = run_traffic(out, cfg.precision, getattr(args, "models", None), echo=print)
        except ValueError as e:  # an unknown model, or one without GSA modules
            raise UserError(str(e)) from e
        print("wrote " + ", ".join(str(p) for p in paths))
        return 0

    kinds = ["module", "scaling", "model", "axial"] if args.kind == "all" else [args.kind]
    for kind in kinds:
        start = time.perf_counter()
        table = _run(kind, cfg, args)
        paths = table.save(out, command)
        print(table.markdown(command))
        print(f"({kind}: {time.perf_counter() - start:.0f} s) wrote " + ", ".join(str(p) for p in paths) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
