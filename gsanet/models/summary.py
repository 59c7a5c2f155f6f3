"""``gsanet summary``: parameters and multiply-adds of the registered models, beside the paper's reference figures.

For each model: parameters, multiply-adds (MACs) and FLOPs (= 2 x MACs) of one image at the chosen input size,
counted by ``gsanet.models.flops.count_macs`` (PyTorch's ``FlopCounterMode``: convolutions and matrix products only),
and the ratio of each GSA model to its convolutional counterpart. At 224x224 the published ImageNet figures
(:data:`REFERENCES`) are printed beside ours. Writes ``summary_<size>.md`` and ``summary_<size>.csv``.

Example::

    gsanet summary                       # the ImageNet-stem models at 224x224, into results/
    gsanet summary --img-size 28 --in-chans 1 --num-classes 10 --models 'gsa_resnet26_tiny*' conv_resnet26_tiny
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import logging
from collections.abc import Sequence
from pathlib import Path

import timm

from gsanet.commands import ArgumentParser, add_out_flag, bounded_int, check_out_dir, run, setup_logging
from gsanet.errors import UserError
from gsanet.tables import fixed, markdown_table, si, write_csv

from .flops import count_macs, count_params
from .gsa_resnet import conv_counterpart, model_archs

__all__ = [
    "REFERENCES",
    "Reference",
    "SummaryRow",
    "default_models",
    "main",
    "select_models",
    "summarize",
    "to_csv_rows",
    "to_markdown",
]

_logger = logging.getLogger(__name__)

SMALL_INPUT_MAX = 64  # inputs up to this size default to the small-input (3x3/1 stem) models


@dataclasses.dataclass(frozen=True)
class Reference:
    """A published ImageNet figure at 224x224.

    Attributes:
        model: the published model.
        params: parameters.
        macs: multiply-adds, or None when not published.
        source: where the figure comes from.
        ours: the gsanet model that corresponds to it, if any.
    """

    model: str
    params: float
    macs: float | None
    source: str
    ours: str | None = None


REFERENCES: tuple[Reference, ...] = (
    Reference("ResNet-50", 25.6e6, 4.1e9, "Axial-DeepLab paper, Table 1", ours="conv_resnet50"),
    Reference("SASA ResNet-50, conv stem", 18.0e6, 3.5e9, "Axial-DeepLab paper, Table 1"),
    Reference("SASA ResNet-50, full attention", 18.0e6, 3.6e9, "Axial-DeepLab paper, Table 1"),
    Reference("Axial-ResNet-50, conv stem", 12.4e6, 2.8e9, "Axial-DeepLab paper, Table 1"),
    Reference("Axial-ResNet-50 (S), full", 12.5e6, 3.3e9, "Axial-DeepLab paper, Table 1"),
    Reference("LambdaResNet-50", 15.0e6, None, "LambdaNetworks paper"),
    Reference("GSA-ResNet-50 (reconstructed)", 18.1e6, 3.6e9, "docs/design.md (ours)", ours="gsa_resnet50"),
)
REFERENCE_SIZE = (224, 224)


@dataclasses.dataclass(frozen=True)
class SummaryRow:
    """Figures of one model at one input size.

    Attributes:
        model: registered model name.
        input_size: ``(C, H, W)``.
        params: parameters (the GSA relative tables grow with the input size).
        macs: multiply-adds of one image, as computed.
        algorithmic_macs: the same with the GSA modules at the cost of their equations.
        counterpart: the matching convolutional model, for GSA models.
        params_ratio: params / counterpart params.
        macs_ratio: MACs / counterpart MACs.
        algorithmic_ratio: algorithmic MACs / counterpart MACs.
    """

    model: str
    input_size: tuple[int, int, int]
    params: int
    macs: int
    algorithmic_macs: int
    counterpart: str | None = None
    params_ratio: float | None = None
    macs_ratio: float | None = None
    algorithmic_ratio: float | None = None

    @property
    def flops(self) -> int:
        """FLOPs = 2 x MACs."""
        return 2 * self.macs


def default_models(img_size: tuple[int, int] | None) -> list[str]:
    """The ImageNet-stem models for inputs above ``SMALL_INPUT_MAX`` pixels or None (default sizes), else the small."""
    small = img_size is not None and max(img_size) <= SMALL_INPUT_MAX
    return [name for name, arch in model_archs.items() if arch.small_input == small]


def select_models(patterns: Sequence[str]) -> list[str]:
    """Registered gsanet models matching names or shell patterns (``'gsa_resnet26_tiny*'``), in registry order."""
    selected = []
    for pattern in patterns:
        matches = [name for name in model_archs if fnmatch.fnmatchcase(name, pattern)]
        if not matches:
            raise ValueError(f"no gsanet model matches {pattern!r}; models: {', '.join(model_archs)}")
        selected += [name for name in matches if name not in selected]
    return selected


def _measure(name: str, img_size: tuple[int, int] | None, in_chans: int | None, num_classes: int | None) -> SummaryRow:
    kwargs = dict(img_size=img_size, in_chans=in_chans, num_classes=num_classes)
    model = timm.create_model(name, **{k: v for k, v in kwargs.items() if v is not None})
    input_size = (model.in_chans, *(img_size or model.pretrained_cfg["input_size"][-2:]))
    count = count_macs(model, input_size)
    row = SummaryRow(name, input_size, count_params(model), count.macs, count.algorithmic_macs)
    _logger.info("%s at %s: %d params, %d MACs", name, "x".join(map(str, input_size)), row.params, row.macs)
    return row


def summarize(
    models: Sequence[str],
    img_size: tuple[int, int] | None = None,
    in_chans: int | None = None,
    num_classes: int | None = None,
) -> list[SummaryRow]:
    """Parameters and MACs of each model, with the ratios of GSA models to their convolutional counterparts.

    Args:
        models: registered gsanet model names.
        img_size: input (height, width); each model is built for it (``img_size`` sizes the GSA tables). None = each
            model at its default input size.
        in_chans: input channels (default: the model's).
        num_classes: classifier classes (default: the model's).

    Returns:
        One row per model, in the order given.
    """
    cache: dict[str, SummaryRow] = {}

    def measure(name: str) -> SummaryRow:
        if name not in cache:
            cache[name] = _measure(name, img_size, in_chans, num_classes)
        return cache[name]

    rows = []
    for name in models:
        row, conv = measure(name), conv_counterpart(name)
        if conv is not None:
            ref = measure(conv)
            row = dataclasses.replace(
                row,
                counterpart=conv,
                params_ratio=row.params / ref.params,
                macs_ratio=row.macs / ref.macs,
                algorithmic_ratio=row.algorithmic_macs / ref.macs,
            )
        rows.append(row)
    return rows


def _size_text(img_size: tuple[int, int] | None) -> str:
    if img_size is None:
        return "default"
    return str(img_size[0]) if img_size[0] == img_size[1] else f"{img_size[0]}x{img_size[1]}"


def to_markdown(rows: Sequence[SummaryRow], img_size: tuple[int, int] | None) -> str:
    """The summary as markdown: our table, and at 224x224 the published figures beside ours."""
    lines = [
        f"# Parameters and multiply-adds at input size {_size_text(img_size)}",
        "",
        "Counted with `torch.utils.flop_counter.FlopCounterMode`: convolutions and matrix products, the attention "
        "products included; norms, softmax, pooling and activations are free. MACs = multiply-adds of one image as "
        "computed, FLOPs = 2 x MACs. *Algorithmic MACs* count each GSA module at the cost of its equations (S "
        "positional logits per pixel and axis; the axial fast path computes exactly those, the positional-softmax "
        "and 2-D ablation paths compute 2S-1). Ratios are to "
        "the convolutional counterpart (same stem, depths and widths).",
        "",
    ]
    columns = ["model", "input", "params", "MACs", "FLOPs", "algorithmic MACs", "conv counterpart", "params / conv"]
    columns += ["MACs / conv", "algorithmic MACs / conv"]
    table = [
        [r.model, "x".join(map(str, r.input_size)), si(r.params), si(r.macs), si(r.flops), si(r.algorithmic_macs)]
        + [
            r.counterpart or "-",
            *(fixed(v, 3, missing="-") for v in (r.params_ratio, r.macs_ratio, r.algorithmic_ratio)),
        ]
        for r in rows
    ]
    lines.append(markdown_table(columns, table))
    if img_size == REFERENCE_SIZE:
        lines += ["", "## Published ImageNet figures at 224x224, beside ours", "", _references_table(rows)]
    return "\n".join(lines) + "\n"


def _references_table(rows: Sequence[SummaryRow]) -> str:
    """The published figures of :data:`REFERENCES` beside ours (relative differences in percent)."""
    ours = {r.model: r for r in rows}
    table = []
    for ref in REFERENCES:
        mine = ours.get(ref.ours) if ref.ours else None
        if mine is None:
            table.append([ref.model, si(ref.params), si(ref.macs), ref.source, "-", "-", "-", "-", "-"])
            continue
        diff_m = "-"
        if ref.macs:
            diff_m = f"{mine.macs / ref.macs - 1:+.1%} ({mine.algorithmic_macs / ref.macs - 1:+.1%})"
        table.append(
            [ref.model, si(ref.params), si(ref.macs), ref.source, mine.model, si(mine.params)]
            + [f"{si(mine.macs)} ({si(mine.algorithmic_macs)})", f"{mine.params / ref.params - 1:+.1%}", diff_m]
        )
    columns = ["published model", "params", "MACs", "source", "ours", "our params", "our MACs (algorithmic)"]
    return markdown_table(columns + ["params diff", "MACs diff (algorithmic)"], table)


CSV_FIELDS = (
    "model",
    "source",
    "input",
    "params",
    "macs",
    "flops",
    "algorithmic_macs",
    "counterpart",
    "params_ratio",
    "macs_ratio",
    "algorithmic_macs_ratio",
)


def to_csv_rows(rows: Sequence[SummaryRow], img_size: tuple[int, int] | None) -> list[dict[str, object]]:
    """Our rows (source ``gsanet``), then at 224x224 the published figures (their source; ``counterpart`` = ours)."""
    out: list[dict[str, object]] = [
        dict(
            model=r.model,
            source="gsanet",
            input="x".join(map(str, r.input_size)),
            params=r.params,
            macs=r.macs,
            flops=r.flops,
            algorithmic_macs=r.algorithmic_macs,
            counterpart=r.counterpart or "",
            params_ratio=fixed(r.params_ratio, 4),
            macs_ratio=fixed(r.macs_ratio, 4),
            algorithmic_macs_ratio=fixed(r.algorithmic_ratio, 4),
        )
        for r in rows
    ]
    if img_size == REFERENCE_SIZE:
        for ref in REFERENCES:
            macs = "" if ref.macs is None else int(ref.macs)
            out.append(
                dict(
                    model=ref.model,
                    source=ref.source,
                    input="3x224x224",
                    params=int(ref.params),
                    macs=macs,
                    flops="" if ref.macs is None else int(2 * ref.macs),
                    algorithmic_macs=macs,
                    counterpart=ref.ours or "",
                    params_ratio="",
                    macs_ratio="",
                    algorithmic_macs_ratio="",
                )
            )
    return out


def _parse_size(text: str) -> tuple[int, int] | None:
    from gsanet.config import MAX_IMG_SIZE

    if text == "default":
        return None
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected a size like 224, 224x256 or 'default', got {text!r}")
    if max(parts) > MAX_IMG_SIZE:
        raise argparse.ArgumentTypeError(
            f"sizes above {MAX_IMG_SIZE} are refused, got {text!r}: every model is built and run on one such image, "
            f"which takes minutes at {MAX_IMG_SIZE} and more memory than a machine has well before 100000"
        )
    return (parts[0], parts[-1])


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="gsanet summary",
        description="Parameters, multiply-adds and FLOPs of the gsanet models, beside the paper's reference figures.",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        metavar="NAME",
        help="model names or shell patterns (default: the ImageNet-stem models for inputs above "
        f"{SMALL_INPUT_MAX} pixels, the small-input models otherwise)",
    )
    parser.add_argument(
        "--img-size",
        type=_parse_size,
        default=(224, 224),
        metavar="SIZE",
        help="input size: 224, HxW, or 'default' for each model's default input size (default: 224)",
    )
    parser.add_argument("--in-chans", type=bounded_int(1), help="input channels (default: the model's, 3)")
    parser.add_argument(
        "--num-classes", type=bounded_int(0), help="classifier classes (default: the model's; 0: no classifier)"
    )
    add_out_flag(parser, "directory for summary_<size>.md/.csv; '' to only print", default="results")
    parser.add_argument(
        "--meta",
        action="store_true",
        help="print the model_meta entries of gsanet/models/gsa_resnet.py (default configs) instead of the table",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs ``gsanet summary``; returns the exit code (2: a bad flag or model name, reported in one line)."""
    return run("summary", _main, argv)


def _main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    setup_logging(level=logging.WARNING)
    try:
        models = select_models(args.models) if args.models else default_models(args.img_size)
    except ValueError as e:
        raise UserError(str(e)) from e
    if args.out and not args.meta:
        check_out_dir(args.out, "the summary")  # before the work: a file, /proc or a read-only folder is refused now
    if args.meta:
        for row in summarize(select_models(args.models or ["*"])):
            fields = f"params={row.params:_}, macs={row.macs:_}, algorithmic_macs={row.algorithmic_macs:_}"
            print(f'    "{row.model}": ModelMeta({fields}),')
        return 0
    rows = summarize(models, args.img_size, args.in_chans, args.num_classes)
    text = to_markdown(rows, args.img_size)
    print(text, end="")
    if args.out:
        out = Path(args.out)
        stem = out / f"summary_{_size_text(args.img_size)}"
        stem.with_suffix(".md").write_text(text)
        write_csv(stem.with_suffix(".csv"), CSV_FIELDS, to_csv_rows(rows, args.img_size))
        print(f"\nwrote {stem}.md and {stem}.csv")
    return 0
