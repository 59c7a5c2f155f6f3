"""The ``gsanet`` command line: one entry point, one module per command.

Each command module exposes ``main(argv: list[str] | None) -> int``; this file only dispatches, after setting the
process's memory-reuse policy (:mod:`gsanet.runtime`). The commands share one convention for flags, config files,
logging and errors (:mod:`gsanet.commands`).
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["COMMANDS", "main"]

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("gsanet.train.train_cli", "train a model (Fashion-MNIST by default)"),
    "eval": ("gsanet.train.eval_cli", "evaluate a checkpoint: top-1/top-5, loss, images/s, confusion matrix"),
    "summary": ("gsanet.models.summary", "parameters and FLOPs of every model, beside the paper's figures"),
    "bench": ("gsanet.bench.cli", "speed and memory benchmarks against convolution and the attention peers"),
    "experiment": ("gsanet.experiments.cli", "GSA vs conv vs attention peers, and the ablations, over seeds"),
    "visualize": ("gsanet.visualize", "figures of what the GSA modules attend to"),
}


def _usage() -> str:
    lines = ["usage: gsanet <command> [options]   (gsanet <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"gsanet: error: unknown command {name!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    from .runtime import check_environment, keep_freed_memory

    try:
        check_environment()  # a mistyped GSANET_* switch is an error, not silently the default
    except ValueError as e:
        print(f"gsanet {name}: error: {e}", file=sys.stderr)
        return 2
    keep_freed_memory()  # before the command allocates anything (GSANET_MALLOC=default opts out)
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
