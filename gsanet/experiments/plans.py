"""Declarative experiment plans: which models, with which arguments and seeds, ``gsanet experiment`` trains.

A :class:`Plan` is a list of :class:`Variant` entries (a model name, its ``timm.create_model`` arguments, extra
``gsanet train`` settings, a label, and for ablations the factor and setting it varies). Expanding a plan for a
dataset and a list of seeds gives :class:`RunSpec` entries, each one ``gsanet train`` invocation with a fixed run
directory ``<runs>/<data>/<variant>-s<seed>``. Two plans that contain the same variant (the GSA baseline appears in
both the comparison and the ablations) share its runs.

Everything about the recipe itself (epochs, training subset, optimiser, ...) lives in a ``gsanet train --config``
YAML file (``configs/experiment_fmnist.yaml``, ``configs/experiment_cifar.yaml``), so a run of the experiment is
exactly reproducible with the ``gsanet train`` command stored in its run directory.

Choices recorded here (the paper has no experiment at this scale):
    * the GSA network is ``gsa_resnet26_tiny`` (quarter width, 0.55M parameters), compared with
      ``conv_resnet26_tiny``, its 3x3-convolution counterpart (same stem, depths, widths and recipe);
    * timm's attention peers (``lambda_resnet26t``, ``botnet26t_256``, ``halonet26t``) are scaled to a comparable
      parameter count with timm's own ``width_factor=0.25`` (ByobNet config overlay); their ImageNet stems and
      stride-32 layout are kept, so on 28x28 inputs their attention stages see 2x2 and 1x1 maps and they cost far
      fewer multiply-adds than the stride-8 tiny ResNets; the tables say so;
    * ``botnet26t_256`` needs a fixed input size divisible by 32: its runs resize Fashion-MNIST to 32x32;
      ``halonet26t`` cannot tile the 2x2/1x1 maps of its attention stages with its 8x8 blocks and is skipped;
    * the 2-D (non-axial) positional attention ablation is dense ``O(N^2)`` per head: everywhere, at 28x28, it
      trains at ~8 images/s on one CPU thread (7x slower than axial), beyond the budget, so the plan compares axial
      and 2-D with GSA in stages 3-4 only (``gsa_resnet26_tiny_last2``), where the maps are 14x14 and smaller.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gsanet.datasets import DATASETS

__all__ = [
    "PLANS",
    "Group",
    "Plan",
    "RunSpec",
    "Study",
    "Variant",
    "ablations_plan",
    "compare_plan",
    "data_slug",
    "expand",
    "format_kwarg",
    "get_plan",
    "study_plan",
]


@dataclass(frozen=True)
class Variant:
    """One row of an experiment table: a model, its arguments, and what it stands for.

    Attributes:
        key: Run name stem and table key, unique across all plans (the same key must mean the same run).
        model: timm model name.
        label: Row label of the tables.
        model_kwargs: Extra ``timm.create_model`` arguments (``gsanet train --model-kwargs``).
        train_args: Extra ``gsanet train`` settings for this variant only, e.g. ``{"img_size": 32}``.
        factor: The ablation factor this row varies (``""`` outside the ablations).
        setting: The factor's value in this row.
        note: What the reader must know about the row (recorded in the tables).
        skip_reason: When set, the variant is not trained and the tables give this reason.
        cost: Training time relative to ``gsa_resnet26_tiny`` (measured on one CPU thread); the runner starts the
            most expensive runs first so that parallel workers finish together.
        seeds: The seeds of this variant, overriding the plan's default (``None``: the plan's).
    """

    key: str
    model: str
    label: str
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    train_args: Mapping[str, Any] = field(default_factory=dict)
    factor: str = ""
    setting: str = ""
    note: str = ""
    skip_reason: str | None = None
    cost: float = 1.0
    seeds: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.key):
            raise ValueError(f"variant key {self.key!r} must be a plain file name ([A-Za-z0-9_.-]+)")
        reserved = {"model", "model_kwargs", "seed", "out", "name", "data", "data_dir", "config"}
        clash = reserved & set(self.train_args)
        if clash:
            raise ValueError(f"variant {self.key}: train_args cannot set {sorted(clash)}; the runner sets them")


@dataclass(frozen=True)
class Group:
    """One factor of an ablation table: the variants that differ only in it, the baseline included.

    Attributes:
        factor: The factor's name (a variant's ``factor`` when the group is its own).
        keys: The variants' keys, in table order.
        settings: The factor's value in rows whose own factor is another one (the baseline's, or a variant that
            appears in two groups); every other row shows its variant's ``setting``.
    """

    factor: str
    keys: tuple[str, ...]
    settings: Mapping[str, str] = field(default_factory=dict)

    def setting(self, variant: Variant) -> str:
        """The factor's value in ``variant``'s row of this group."""
        return self.settings.get(variant.key, variant.setting)


@dataclass(frozen=True)
class Plan:
    """A named list of variants and the seeds they run with by default.

    Attributes:
        name: ``compare`` or ``ablations``.
        title: Title of the tables.
        variants: The rows, in table order.
        default_seeds: Seeds used when ``--seeds`` is not given.
        baseline: Key of the row the others are compared with.
        subject: Key of the row the tables' reading is about (the GSA network of the comparison), if any.
        groups: The factor groups of an ablation table, in table order (empty: one row per variant).
    """

    name: str
    title: str
    variants: tuple[Variant, ...]
    default_seeds: tuple[int, ...]
    baseline: str
    subject: str | None = None
    groups: tuple[Group, ...] = ()

    def __post_init__(self) -> None:
        keys = {v.key for v in self.variants}
        for group in self.groups:
            unknown = set(group.keys) - keys
            if unknown:
                raise ValueError(f"plan {self.name}: group {group.factor!r} names unknown variants {sorted(unknown)}")
            for key in group.keys:
                if self.variant(key).factor != group.factor and key not in group.settings:
                    raise ValueError(f"plan {self.name}: group {group.factor!r} needs the setting of {key!r}")

    def variant(self, key: str) -> Variant:
        """The variant with this key."""
        for v in self.variants:
            if v.key == key:
                return v
        raise KeyError(f"plan {self.name} has no variant {key!r}")


@dataclass(frozen=True)
class RunSpec:
    """One ``gsanet train`` run of an experiment.

    Attributes:
        variant: What is trained.
        seed: Its seed.
        data: Dataset name (``fashion-mnist``, ``cifar10``, ``cifar100``).
        runs: Parent directory of every experiment run (``--runs``).
    """

    variant: Variant
    seed: int
    data: str
    runs: Path

    @property
    def name(self) -> str:
        """Run directory name: ``<variant key>-s<seed>``."""
        return f"{self.variant.key}-s{self.seed}"

    @property
    def out(self) -> Path:
        """Parent of the run directory (``gsanet train --out``): one folder per dataset."""
        return self.runs / data_slug(self.data)

    @property
    def run_dir(self) -> Path:
        """The run directory."""
        return self.out / self.name

    def expected_config(self, recipe: Mapping[str, Any], epochs: int | None) -> dict[str, Any]:
        """The ``config.yaml`` values this run must have (recipe file values, variant settings, model, seed)."""
        expected = dict(recipe)
        expected.update(self.variant.train_args)
        expected.update(model=self.variant.model, model_kwargs=_plain(self.variant.model_kwargs), seed=self.seed)
        expected["data"] = self.data
        if epochs is not None:
            expected["epochs"] = epochs
        return expected

    def train_args(self, config: str | Path, *, epochs: int | None = None, data_dir: str | None = None) -> list[str]:
        """The ``gsanet train`` arguments of this run (without the program name).

        Args:
            config: The recipe YAML (``--config``).
            epochs: Override of the recipe's epochs.
            data_dir: Override of the recipe's ``data_dir``.
        """
        args = ["--config", str(config), "--model", self.variant.model, "--seed", str(self.seed), "--data", self.data]
        if data_dir is not None:
            args += ["--data-dir", str(data_dir)]
        if epochs is not None:
            args += ["--epochs", str(epochs)]
        for key, value in self.variant.train_args.items():
            flag = "--" + key.replace("_", "-")
            if isinstance(value, bool):
                args.append(flag if value else "--no-" + key.replace("_", "-"))
            else:
                args += [flag, "none" if value is None else str(value)]
        if self.variant.model_kwargs:
            args.append("--model-kwargs")
            args += [f"{k}={format_kwarg(v)}" for k, v in self.variant.model_kwargs.items()]
        args += ["--out", str(self.out), "--name", self.name, "--no-progress"]
        return args


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively: the form a value takes after a YAML round trip."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def format_kwarg(value: Any) -> str:
    """A ``--model-kwargs key=VALUE`` value in the YAML flow syntax ``gsanet train`` parses (``{pos_span: 3}``)."""
    text = yaml.safe_dump(_plain(value), default_flow_style=True, width=1 << 16).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text  # scalars end with a document marker


def data_slug(data: str) -> str:
    """Folder name of a dataset (an image-folder path becomes its last component)."""
    return data if data in DATASETS else Path(data).name


# ------------------------------------------------------------------------------------------------------- plans
_GSA = Variant(
    "gsa_resnet26_tiny",
    "gsa_resnet26_tiny",
    "GSA-ResNet-26 tiny (GSA in every bottleneck)",
    factor="baseline",
    setting="content + axial positional, global span, relative embeddings, no softmaxes, all stages",
)
_CONV = Variant(
    "conv_resnet26_tiny",
    "conv_resnet26_tiny",
    "ResNet-26 tiny (3x3 conv)",
    factor="stages",
    setting="none (3x3 convolutions)",
    cost=0.45,
)
_PEER_WIDTH = {"width_factor": 0.25}
_PEER_NOTE = (
    "timm ImageNet config at width_factor 0.25 (stem 16 ch); stride-32 layout kept: its attention stages see "
    "{maps} maps on {size}x{size} inputs, hence far fewer MACs than the stride-8 tiny ResNets"
)


def compare_plan() -> Plan:
    """GSA-ResNet-26 tiny against its convolutional ResNet and timm's attention peers, 3 seeds each."""
    variants = (
        _GSA,
        _CONV,
        Variant(
            "lambda_resnet26t_w025",
            "lambda_resnet26t",
            "LambdaResNet-26t (timm), width 0.25",
            model_kwargs=_PEER_WIDTH,
            note=_PEER_NOTE.format(maps="2x2 and 1x1", size=28) + "; lambda layers with a 9x9 local position lambda",
            cost=0.35,
        ),
        Variant(
            "botnet26t_w025",
            "botnet26t_256",
            "BoTNet-26t (timm), width 0.25, 32x32",
            model_kwargs=_PEER_WIDTH,
            train_args={"img_size": 32},
            note=_PEER_NOTE.format(maps="2x2 and 1x1", size=32)
            + "; fixed input size: Fashion-MNIST resized to 32x32 (bilinear), so not the same input as the others",
            cost=0.1,
        ),
        Variant(
            "halonet26t_w025",
            "halonet26t",
            "HaloNet-26t (timm), width 0.25",
            model_kwargs=_PEER_WIDTH,
            skip_reason=(
                "not run: halo attention tiles each map into block_size x block_size blocks (8 in halonet26t; timm "
                "asserts H % block_size == 0); on 28x28 or 32x32 inputs its stride-32 attention stages see 2x2 and "
                "1x1 maps (timm's min_input_size is 256x256)"
            ),
        ),
    )
    return Plan(
        "compare",
        "GSA-ResNet vs. convolutional ResNet vs. timm attention peers",
        variants,
        default_seeds=(0, 1, 2),
        baseline=_CONV.key,
        subject=_GSA.key,
    )


def _gsa(
    key: str, label: str, factor: str, setting: str, cost: float, model: str = "gsa_resnet26_tiny", **kw: Any
) -> Variant:
    return Variant(key, model, label, factor=factor, setting=setting, cost=cost, **kw)


def ablations_plan() -> Plan:
    """The GSA module's design choices, one factor at a time against ``gsa_resnet26_tiny``, 3 seeds each."""
    variants = (
        _GSA,
        _gsa("gsa_tiny_content", "content only", "layers", "content only", 0.55, model="gsa_resnet26_tiny_content"),
        _gsa(
            "gsa_tiny_positional", "positional only", "layers", "positional only", 0.85,
            model="gsa_resnet26_tiny_positional",
        ),
        _gsa(
            "gsa_tiny_span3", "span 3", "positional span", "window 3", 1.0,
            model_kwargs={"gsa_kwargs": {"pos_span": 3}},
        ),
        _gsa(
            "gsa_tiny_span7", "span 7", "positional span", "window 7", 1.05,
            model_kwargs={"gsa_kwargs": {"pos_span": 7}},
        ),
        _gsa(
            "gsa_tiny_norel", "no relative embeddings", "relative embeddings", "off (uniform average over the span)",
            0.8, model_kwargs={"gsa_kwargs": {"rel_pos": False}},
        ),
        _gsa(
            "gsa_tiny_possoftmax", "positional softmax", "positional softmax", "on", 1.65,
            model_kwargs={"gsa_kwargs": {"pos_softmax": True}},
        ),
        _gsa(
            "gsa_tiny_querysoftmax", "query softmax", "query softmax", "on", 1.0,
            model_kwargs={"gsa_kwargs": {"query_softmax": True}},
        ),
        _gsa("gsa_tiny_last2", "GSA in stages 3-4", "stages", "stages 3-4", 0.7, model="gsa_resnet26_tiny_last2"),
        _gsa("gsa_tiny_last1", "GSA in stage 4", "stages", "stage 4", 0.5, model="gsa_resnet26_tiny_last1"),
        _CONV,
        _gsa(
            "gsa_tiny_last2_2d", "GSA in stages 3-4, 2-D positional", "axial vs 2-D (stages 3-4)", "2-D", 0.9,
            model="gsa_resnet26_tiny_last2", model_kwargs={"gsa_kwargs": {"axial": False}},
            note="one 2-D positional pass over the global span (dense N x N weights per head), no batch norm",
        ),
        _gsa(
            "gsa_tiny_2d", "2-D positional everywhere", "axial vs 2-D (all stages)", "2-D", 7.0,
            model_kwargs={"gsa_kwargs": {"axial": False}},
            skip_reason=(
                "not run: dense O(N^2) per head at 28x28 trains at ~8 images/s on one CPU thread (7x slower than "
                "axial, ~80 min at this recipe); compared in stages 3-4 instead (gsa_tiny_last2_2d vs gsa_tiny_last2)"
            ),
        ),
    )  # fmt: skip
    base = _GSA.key
    groups = (
        Group("layers", ("gsa_tiny_content", "gsa_tiny_positional", base), {base: "content + positional"}),
        Group("positional span", ("gsa_tiny_span3", "gsa_tiny_span7", base), {base: "global"}),
        Group("relative embeddings", ("gsa_tiny_norel", base), {base: "on"}),
        Group("axial vs 2-D (stages 3-4)", ("gsa_tiny_last2", "gsa_tiny_last2_2d"), {"gsa_tiny_last2": "axial"}),
        Group("axial vs 2-D (all stages)", (base, "gsa_tiny_2d"), {base: "axial"}),
        Group("positional softmax", (base, "gsa_tiny_possoftmax"), {base: "off (paper)"}),
        Group("query softmax", (base, "gsa_tiny_querysoftmax"), {base: "off (paper)"}),
        Group("stages", (base, "gsa_tiny_last2", "gsa_tiny_last1", _CONV.key), {base: "all (1-4)"}),
    )
    return Plan(
        "ablations",
        f"GSA ablations ({base}, one factor at a time)",
        variants,
        default_seeds=(0, 1, 2),
        baseline=base,
        groups=groups,
    )


PLANS = {"compare": compare_plan, "ablations": ablations_plan}


@dataclass(frozen=True)
class Study:
    """The converged comparison: hyper-parameters chosen per model family on a held-out split, then seeds at several
    training-set sizes.

    Protocol: ``holdout`` images of the training set are held out (fixed, :func:`gsanet.train.data.create_datasets`);
    every family trains once per grid point (learning rate, weight decay) on ``sweep_subset`` of the rest for
    ``sweep_epochs`` epochs, and is scored by its final held-out top-1. The grid starts as ``lrs`` x ``wds`` and is
    extended along ``lr_ladder`` / ``wd_ladder`` (:meth:`extend`) for every family alike while any family's choice
    lies on its edge. The best point is then trained with ``final_seeds`` on ``sizes`` images of the non-held-out
    training set (the recipe's schedule), validated on the held-out split after every epoch (the curves) and
    evaluated on the test set once, after the last epoch. The test set is never used for a choice. Every family gets
    the same grid, the same sweep budget and the same final schedules.

    Attributes:
        name: Table stem (``study``).
        title: Title of the report.
        families: The compared models.
        lrs: Learning rates of the first grid (consecutive values of ``lr_ladder``).
        wds: Weight decays of the first grid (consecutive values of ``wd_ladder``).
        holdout: Size of the held-out validation split.
        sweep_epochs: Epochs of a sweep run (shorter than the final schedule: the sweep ranks, it does not converge).
        sweep_subset: Training images of a sweep run (from the non-held-out images).
        sweep_seed: Seed of the sweep runs.
        final_seeds: Seeds of the final runs.
        sizes: Training-set sizes of the final runs (images of the non-held-out training set; the largest is the
            whole of it).
        reference: Key of the family the others are compared with.
        lr_ladder: Learning rates the grid may grow to, ascending (``lrs`` when empty: no extension).
        wd_ladder: Weight decays the grid may grow to, ascending (``wds`` when empty).
    """

    name: str
    title: str
    families: tuple[Variant, ...]
    lrs: tuple[float, ...]
    wds: tuple[float, ...]
    holdout: int
    sweep_epochs: int
    sweep_subset: int
    sweep_seed: int
    final_seeds: tuple[int, ...]
    sizes: tuple[int, ...]
    reference: str
    lr_ladder: tuple[float, ...] = ()
    wd_ladder: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for axis, ladder in ((self.lrs, self.ladder("lr")), (self.wds, self.ladder("wd"))):
            if list(ladder) != sorted(set(ladder)) or not axis:
                raise ValueError(f"a study's ladder must ascend without repeats and its grid be non-empty: {ladder}")
            start = ladder.index(axis[0]) if axis[0] in ladder else -1
            if start < 0 or tuple(ladder[start : start + len(axis)]) != tuple(axis):
                raise ValueError(f"the first grid {axis} is not a run of consecutive values of the ladder {ladder}")
        if not self.sizes or list(self.sizes) != sorted(set(self.sizes)):
            raise ValueError(f"a study's sizes must ascend without repeats: {self.sizes}")

    def ladder(self, axis: str) -> tuple[float, ...]:
        """The values axis ``lr`` or ``wd`` may take."""
        if axis == "lr":
            return self.lr_ladder or self.lrs
        return self.wd_ladder or self.wds

    @property
    def first_grid(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The grid's axes before any extension."""
        return tuple(self.lrs), tuple(self.wds)

    def extend(
        self, axes: tuple[tuple[float, ...], tuple[float, ...]], chosen: Sequence[tuple[float, float]]
    ) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """The grid grown by one ladder step beyond every edge a chosen ``(lr, weight decay)`` lies on; None when no
        choice lies on an edge the ladders can extend (the grid brackets every choice, or the ladders end there)."""
        grown = []
        for values, ladder, picked in ((axes[0], self.ladder("lr"), [c[0] for c in chosen]),
                                       (axes[1], self.ladder("wd"), [c[1] for c in chosen])):  # fmt: skip
            lo, hi = ladder.index(values[0]), ladder.index(values[-1])
            if values[0] in picked and lo > 0:
                lo -= 1
            if values[-1] in picked and hi < len(ladder) - 1:
                hi += 1
            grown.append(tuple(ladder[lo : hi + 1]))
        new = (grown[0], grown[1])
        return None if new == tuple(axes) else new

    def family(self, key: str) -> Variant:
        """The family with this key."""
        for v in self.families:
            if v.key == key:
                return v
        raise KeyError(f"study has no family {key!r}")

    def sweep_variant(self, family: Variant, lr: float, weight_decay: float) -> Variant:
        """The sweep run of ``family`` at one grid point (held-out validation, sweep epochs and images)."""
        return Variant(
            f"sweep_{family.key}_lr{lr:g}_wd{weight_decay:g}",
            family.model,
            f"{family.label}, lr {lr:g}, weight decay {weight_decay:g}",
            model_kwargs=family.model_kwargs,
            train_args={
                **family.train_args, "lr": lr, "weight_decay": weight_decay, "holdout": self.holdout,
                "epochs": self.sweep_epochs, "train_subset": self.sweep_subset,
            },
            factor=family.key,
            setting=f"lr={lr:g} wd={weight_decay:g}",
            cost=family.cost * self.sweep_epochs * self.sweep_subset / 5000,
            seeds=(self.sweep_seed,),
        )  # fmt: skip

    def final_variant(self, family: Variant, lr: float, weight_decay: float, size: int) -> Variant:
        """The final runs of ``family`` on ``size`` training images with the chosen hyper-parameters (held-out curve
        per epoch, one test evaluation at the end, the recipe's schedule)."""
        return Variant(
            f"{family.key}_n{size}",
            family.model,
            f"{family.label}, {size:,} training images",
            model_kwargs=family.model_kwargs,
            train_args={
                **family.train_args, "lr": lr, "weight_decay": weight_decay, "holdout": self.holdout,
                "train_subset": size, "final_test": True,
            },
            factor=family.factor,
            setting=family.setting,
            note=family.note,
            cost=family.cost * 2.5 * size / 1000,  # the recipe's epochs over size images, plus the held-out curve
            seeds=self.final_seeds,
        )  # fmt: skip


def study_plan() -> Study:
    """GSA-ResNet-26 tiny, the hybrid with GSA in stages 3-4, and the conv ResNet-26 tiny, tuned and seeded at 5,000,
    20,000 and all 55,000 non-held-out Fashion-MNIST training images.

    The grid starts at the earlier study's 2 x 2 (lr {2e-3, 6e-3} x weight decay {0.01, 0.1}) and grows by a factor 3
    in learning rate and 10 in weight decay wherever a choice lies on its edge. timm's attention peers are left out:
    at 28x28 their stride-32 layouts leave 2x2 and 1x1 maps to attend over (and HaloNet cannot tile them), so they
    would test their stems, not attention (see :func:`compare_plan`).
    """
    hybrid = Variant(
        "gsa_resnet26_tiny_last2",
        "gsa_resnet26_tiny_last2",
        "GSA-ResNet-26 tiny, GSA in stages 3-4 (3x3 conv in 1-2)",
        factor="stages",
        setting="stages 3-4",
        cost=0.7,
    )
    return Study(
        "study",
        "Converged comparison: GSA-ResNet vs. its convolutional ResNet, tuned per family",
        (_GSA, hybrid, _CONV),
        lrs=(2e-3, 6e-3),
        wds=(0.01, 0.1),
        lr_ladder=(2.2e-4, 6.7e-4, 2e-3, 6e-3, 1.8e-2, 5.4e-2, 0.16),
        wd_ladder=(1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0),
        holdout=5000,
        sweep_epochs=4,
        sweep_subset=5000,
        sweep_seed=0,
        final_seeds=(0, 1, 2),
        sizes=(5000, 20000, 55000),
        reference="conv_resnet26_tiny",
    )


def get_plan(name: str) -> Plan:
    """The plan called ``name`` (``compare`` or ``ablations``)."""
    if name not in PLANS:
        raise KeyError(f"unknown plan {name!r}; choose from {', '.join(PLANS)}")
    return PLANS[name]()


def expand(
    plans: Sequence[Plan], data: Sequence[str], runs: str | Path, seeds: Sequence[int] | None = None
) -> list[RunSpec]:
    """The runs of ``plans`` on each dataset, without duplicates, skipped variants excluded, in plan order.

    Args:
        plans: The plans.
        data: Dataset names.
        runs: Parent directory of the run directories.
        seeds: Seeds for every variant; ``None`` = each variant's or plan's default.

    Raises:
        ValueError: Two variants share a key but differ (the key must identify one run configuration).
    """
    runs = Path(runs)
    seen: dict[str, Variant] = {}
    specs: list[RunSpec] = []
    for dataset in data:
        for plan in plans:
            for variant in plan.variants:
                other = seen.setdefault(variant.key, variant)
                if other != variant and (other.model, other.model_kwargs, other.train_args) != (
                    variant.model,
                    variant.model_kwargs,
                    variant.train_args,
                ):
                    raise ValueError(f"variant key {variant.key!r} is used for two different runs")
                if variant.skip_reason:
                    continue
                for seed in seeds if seeds is not None else (variant.seeds or plan.default_seeds):
                    spec = RunSpec(variant, int(seed), dataset, runs)
                    if all(s.run_dir != spec.run_dir for s in specs):
                        specs.append(spec)
    return specs
