"""``gsanet experiment study``: the held-out split, the sweep's choice, the final runs, statistics and the report."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from scipy import stats as scipy_stats

from gsanet.config import resolve_config
from gsanet.experiments import cli as exp_cli
from gsanet.experiments import plans
from gsanet.experiments import study as study_mod
from gsanet.experiments.plans import RunSpec, Study, Variant, study_plan
from gsanet.experiments.stats import welch
from gsanet.train.config import TrainConfig
from gsanet.train.data import DataError, create_datasets
from gsanet.train.train_cli import build_train_parser

from .test_data import write_fake_fashion_mnist

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "study_fmnist.yaml"


# ---------------------------------------------------------------------------------------------- held-out split
def test_holdout_is_fixed_disjoint_and_unaugmented(tmp_path: Path) -> None:
    data = write_fake_fashion_mnist(tmp_path / "data", n_train=60, n_val=10)
    a, _ = create_datasets("fashion-mnist", str(data), holdout=20, train_subset=25, augment=True, seed=1)
    b, _ = create_datasets("fashion-mnist", str(data), holdout=20, augment=True, seed=7)
    assert len(a["val"]) == 20 and len(a["train"]) == 25 and len(b["train"]) == 40
    a_val, a_train, b_val, b_train = (ds.ids.tolist() for ds in (a["val"], a["train"], b["val"], b["train"]))
    assert a_val == b_val  # the same held-out images for every seed
    assert not set(a_val) & set(b_train)
    assert set(a_train) <= set(b_train)  # the subset is taken from the rest
    plain, _ = create_datasets("fashion-mnist", str(data), splits=("train",), augment=False)
    for i, index in enumerate(a_val[:5]):  # held-out images are never augmented
        assert torch.equal(a["val"][i][0], plain["train"][index][0])
    with pytest.raises(DataError, match="leaves no training images"):
        create_datasets("fashion-mnist", str(data), holdout=60)


# -------------------------------------------------------------------------------------------------- statistics
def test_welch_matches_scipy_and_needs_two_values() -> None:
    a, b = [91.2, 91.5, 90.9, 91.0], [92.0, 91.8, 92.3]
    w = welch(a, b)
    ref = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert w.t == pytest.approx(ref.statistic) and w.p == pytest.approx(ref.pvalue) and w.dof == pytest.approx(ref.df)
    assert w.diff == pytest.approx(statistics.fmean(a) - statistics.fmean(b))
    ci = ref.confidence_interval(0.95)
    assert (w.low, w.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert w.significant == (w.p < 0.05)
    assert welch([1.0], [2.0, 3.0]) is None
    same = welch([1.0, 1.0], [1.0, 1.0])
    assert math.isnan(same.p) and not same.defined and not same.significant  # undefined, not p = 1


# ------------------------------------------------------------------------------------------------------ the plan
def test_study_plan_commands_parse_into_the_expected_config(tmp_path: Path) -> None:
    study = study_plan()
    assert [f.model for f in study.families] == [
        "gsa_resnet26_tiny", "gsa_resnet26_tiny_last2", "conv_resnet26_tiny",
    ]  # fmt: skip
    assert study.sizes[-1] == 60000 - study.holdout  # the largest size is the whole non-held-out training set
    recipe = yaml.safe_load(RECIPE.read_text())
    grown = study.extend(study.first_grid, [(6e-3, 0.1)])
    sweep = [s for specs in study_mod.sweep_specs(study, "fashion-mnist", tmp_path, grown).values() for s in specs]
    choice = study_mod.Choice(3e-3, 0.2, 0)
    finals = [s for f in study.families for s in study_mod.final_specs(study, f, choice, "fashion-mnist", tmp_path)]
    assert len(sweep) == 3 * 9 and len(finals) == 3 * len(study.sizes) * len(study.final_seeds)
    for spec in sweep + finals:
        args = build_train_parser().parse_args(spec.train_args(RECIPE))
        explicit = {k: v for k, v in vars(args).items() if k not in ("config", "resume", "stop_after")}
        cfg = resolve_config(TrainConfig, explicit, args.config)
        resolved = yaml.safe_load(yaml.safe_dump(vars(cfg)))
        expected = spec.expected_config(recipe, None)
        assert {k: resolved[k] for k in expected} == expected, spec.name
    for s in sweep:
        args = s.variant.train_args
        assert (args["holdout"], args["train_subset"], args["epochs"]) == (study.holdout, study.sweep_subset, 4)
        assert "final_test" not in args
    for s in finals:
        args = s.variant.train_args
        assert args["holdout"] == study.holdout and args["final_test"] is True and args["lr"] == 3e-3
        assert s.variant.key.endswith(f"_n{args['train_subset']}") and "epochs" not in args  # the recipe's schedule
    assert [s.variant.train_args["train_subset"] for s in finals[:9]] == [5000] * 3 + [20000] * 3 + [55000] * 3
    assert len({s.run_dir for s in sweep + finals}) == len(sweep + finals)


def test_the_grid_grows_beyond_every_edge_a_choice_lies_on() -> None:
    study = study_plan()
    first = study.first_grid
    assert first == ((2e-3, 6e-3), (0.01, 0.1))
    # the earlier study's choice, the largest lr and weight decay, grows both axes upwards
    assert study.extend(first, [(6e-3, 0.1)]) == ((2e-3, 6e-3, 1.8e-2), (0.01, 0.1, 1.0))
    # a choice at the smallest values grows them downwards; another family's interior choice does not stop it
    three = ((2e-3, 6e-3, 1.8e-2), (0.01, 0.1, 1.0))
    assert study.extend(three, [(6e-3, 0.1), (2e-3, 0.1)]) == ((6.7e-4, 2e-3, 6e-3, 1.8e-2), (0.01, 0.1, 1.0))
    assert study.extend(three, [(6e-3, 0.1)]) is None  # bracketed
    # at the ladder's end the grid cannot grow: the choice stays on the edge and the report says so
    top = ((5.4e-2, 0.16), (1.0, 10.0))
    assert study.extend(top, [(0.16, 10.0)]) is None
    with pytest.raises(ValueError, match="consecutive"):
        Study("s", "t", study.families, lrs=(2e-3, 1.8e-2), wds=(0.1,), holdout=1, sweep_epochs=1, sweep_subset=1,
              sweep_seed=0, final_seeds=(0,), sizes=(1,), reference="x", lr_ladder=study.lr_ladder)  # fmt: skip


def _finish(spec: RunSpec, top1: float, *, test: float | None = None) -> None:
    """A finished run directory of ``spec`` as ``gsanet train --config RECIPE`` leaves it."""
    args = build_train_parser().parse_args(spec.train_args(RECIPE))
    explicit = {k: v for k, v in vars(args).items() if k not in ("config", "resume", "stop_after")}
    cfg = resolve_config(TrainConfig, explicit, args.config)
    spec.run_dir.mkdir(parents=True)
    (spec.run_dir / "config.yaml").write_text(yaml.safe_dump(vars(cfg), sort_keys=False))
    (spec.run_dir / "command.txt").write_text(f"2026-01-01T00:00:00 gsanet train {' '.join(spec.train_args(RECIPE))}\n")
    summary = {"model": spec.variant.model, "epochs": cfg.epochs, "epochs_planned": cfg.epochs, "finished": True,
               "val_top1": top1, "val_top5": 99.0, "params": 1234, "train_seconds": 600.0, "images_per_s": 100.0,
               "eval_images_per_s": 500.0}  # fmt: skip
    if test is not None:
        summary.update(test_top1=test, test_top5=99.5)
    (spec.run_dir / "summary.json").write_text(json.dumps(summary))
    rows = [f"{e},{top1 - 3 + e},{10.0 * e}" for e in range(1, 4)]
    (spec.run_dir / "metrics.csv").write_text("epoch,val_top1,train_seconds\n" + "\n".join(rows) + "\n")


def test_sweep_state_replays_the_grid_from_the_run_directories(tmp_path: Path) -> None:
    """Round 1 chooses the corner, the grid grows, round 2 brackets; the finals follow; the report says it all."""
    study = study_plan()
    recipe = yaml.safe_load(RECIPE.read_text())
    runs = tmp_path / "runs"

    def score(lr: float, wd: float) -> float:  # peaks at lr 6e-3, weight decay 0.1: inside the grown grid
        return 90.0 - abs(math.log(lr / 6e-3)) - abs(math.log10(wd / 0.1))

    for specs in study_mod.sweep_specs(study, "fashion-mnist", runs).values():
        for spec in specs[:-1]:
            _finish(spec, score(spec.variant.train_args["lr"], spec.variant.train_args["weight_decay"]))
    state = study_mod.sweep_state(study, "fashion-mnist", runs, recipe)
    assert not state.complete and len(state.rounds) == 1 and all(c is None for c in state.choices.values())
    for specs in study_mod.sweep_specs(study, "fashion-mnist", runs).values():
        _finish(specs[-1], score(6e-3, 0.1))
    state = study_mod.sweep_state(study, "fashion-mnist", runs, recipe)
    assert not state.complete and state.rounds[-1] == ((2e-3, 6e-3, 1.8e-2), (0.01, 0.1, 1.0))
    todo = [s for states in state.states.values() for s, st in states if st.state == "todo"]
    assert len(todo) == 3 * 5  # the four points already swept are not run again
    for spec in todo:
        _finish(spec, score(spec.variant.train_args["lr"], spec.variant.train_args["weight_decay"]))
    state = study_mod.sweep_state(study, "fashion-mnist", runs, recipe)
    assert state.complete and len(state.rounds) == 2
    assert {(c.lr, c.weight_decay) for c in state.choices.values()} == {(6e-3, 0.1)}
    for family in study.families:
        for spec in study_mod.final_specs(study, family, state.choices[family.key], "fashion-mnist", runs):
            size = spec.variant.train_args["train_subset"]
            _finish(spec, 80.0, test=70.0 + size / 10000 + spec.seed / 10 + (family.key == study.reference))
    state, found = study_mod.collect(study, "fashion-mnist", runs, recipe, macs=False)
    assert all(r.final[size].top1 for r in found for size in study.sizes)  # the test evaluation, not the held-out
    assert found[0].final[5000].top1 == [70.5, 70.6, 70.7]
    out = tmp_path / "out"
    study_mod.write_report(study, state, found, out, data="fashion-mnist", recipe_path=RECIPE, recipe=recipe)
    report = (out / "study.md").read_text()
    assert "brackets each family's optimum" in report and "Grids swept, in order: 1. lr {0.002, 0.006}" in report
    assert "## The whole training set: 55,000 training images" in report
    assert "## Accuracy against training-set size" in report
    assert "-1.00 [" in report  # every GSA family is a point below the reference at every size
    assert "+2.00 points over the last two epochs" in report and "still rising" in report
    # the time plan: 10 epochs of 5,000 images at 100 img/s and of the 5,000 held out at 500, then 10,000 test images
    assert study_mod.estimated_minutes(study, 10, 5000, (100.0, 500.0), 10000) == pytest.approx(620 / 60)
    assert "| `gsa_resnet26_tiny` | 100 / 500 (final runs) | 10, measured 10 |" in report
    assert "need about 0.0 CPU-hours more" in report  # every final run is finished
    with open(out / "study_sizes.csv") as f:
        sizes = list(csv.DictReader(f))
    assert len(sizes) == 9 and {r["train_images"] for r in sizes} == {"5000", "20000", "55000"}
    assert (out / "study_data.png").stat().st_size > 0


def test_study_refuses_seeds_and_epochs(capsys: pytest.CaptureFixture[str]) -> None:
    assert exp_cli.main(["study", "--seeds", "0", "--dry-run"]) == 2
    assert "remove --seeds/--epochs" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- end to end (real)
def _tiny_study() -> Study:
    conv = Variant("conv_resnet26_tiny", "conv_resnet26_tiny", "conv", cost=0.5)
    last1 = Variant("gsa_resnet26_tiny_last1", "gsa_resnet26_tiny_last1", "GSA in stage 4", cost=0.6)
    return Study(
        "study", "Tiny study", (last1, conv), lrs=(1e-3, 5e-3), wds=(0.05,), holdout=16, sweep_epochs=1,
        sweep_subset=24, sweep_seed=0, final_seeds=(0, 1), sizes=(16, 32), reference="conv_resnet26_tiny",
    )  # fmt: skip


def test_study_end_to_end_on_fake_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real ``gsanet train`` runs: sweep, choice by held-out top-1, final seeds at two sizes with one test
    evaluation each, every finished run exported, then the report from the runs and, identically, from the copies."""
    data = write_fake_fashion_mnist(tmp_path / "data", n_train=48, n_val=16)
    values = yaml.safe_load(RECIPE.read_text())
    values.update(epochs=2, warmup_epochs=0, batch_size=16, data_dir=str(data))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(values, sort_keys=False))
    monkeypatch.setattr(plans, "study_plan", _tiny_study)
    runs, out, export = tmp_path / "runs", tmp_path / "out", tmp_path / "export"
    argv = ["study", "--config", str(recipe), "--runs", str(runs), "--out", str(out), "--jobs", "2", "--no-macs"]
    code = exp_cli.main([*argv, "--export", str(export)])
    assert code == 0, "\n".join(p.read_text()[-1500:] for p in runs.glob("*/logs/*.log"))
    study = _tiny_study()
    for family in study.families:
        sweep = study_mod.sweep_specs(study, "fashion-mnist", runs)[family.key]
        tops = [yaml.safe_load((s.run_dir / "summary.json").read_text())["val_top1"] for s in sweep]
        best = study_mod._points(study.first_grid)[tops.index(max(tops))]  # first maximum: the earlier point wins
        for size in study.sizes:
            for seed in study.final_seeds:
                run = runs / "fashion-mnist" / f"{family.key}_n{size}-s{seed}"
                cfg = yaml.safe_load((run / "config.yaml").read_text())
                assert (cfg["lr"], cfg["weight_decay"], cfg["holdout"], cfg["epochs"]) == (*best, 16, 2)
                assert (cfg["train_subset"], cfg["final_test"]) == (size, True)
                summary = json.loads((run / "summary.json").read_text())
                assert summary["test_images"] == 16 and 0 <= summary["test_top1"] <= 100  # the test split, once
        assert all(yaml.safe_load((s.run_dir / "config.yaml").read_text())["epochs"] == 1 for s in sweep)
    copies = sorted(p.name for p in (export / "fashion-mnist").iterdir() if p.is_dir() and p.name != "logs")
    assert copies == sorted(p.name for p in (runs / "fashion-mnist").iterdir() if p.is_dir() and p.name != "logs")
    assert not list(export.rglob("*.safetensors")) and not list(export.rglob("*.png"))
    with open(out / "study_runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {r["seed"] for r in rows} == {"0", "1"}
    assert {r["train_images"] for r in rows} == {"16", "32"}
    with open(out / "study_curves.csv") as f:
        assert len(list(csv.DictReader(f))) == 8 * 2  # two epochs per final run
    for kind in ("curves", "time", "data"):
        assert (out / f"study_{kind}.png").stat().st_size > 0
    report = (out / "study.md").read_text()
    assert "## Verdict" in report and "95% CI" in report and "**chosen**" in report
    assert "Choices on the edge of the grid, where the ladder ends" in report  # no ladder: two points, no growth
    # the report regenerates from the run directories alone, identically, and from the exported copies
    first = {p.name: p.read_text() for p in out.glob("*.csv")}
    assert exp_cli.main([*argv, "--table-only"]) == 0
    assert {p.name: p.read_text() for p in out.glob("*.csv")} == first
    assert (out / "study.md").read_text() == report
    copied = tmp_path / "from_copies"
    assert exp_cli.main(["study", "--config", str(recipe), "--runs", str(export), "--out", str(copied), "--no-macs",
                         "--table-only"]) == 0  # fmt: skip
    def same(text: str) -> str:  # the run directories' paths differ; the rest is identical
        return text.replace(str(export), "RUNS").replace(str(runs), "RUNS")

    assert same((copied / "study.md").read_text()) == same(report)
    # a new machine: an empty runs directory continues from the committed copies and trains nothing
    capsys.readouterr()
    fresh = tmp_path / "fresh"
    assert exp_cli.main(["study", "--config", str(recipe), "--runs", str(fresh), "--out", str(tmp_path / "again"),
                         "--no-macs", "--jobs", "2", "--export", str(export)]) == 0  # fmt: skip
    said = capsys.readouterr().out
    assert "start " not in said and said.count("found ") == len(copies)
    assert same((tmp_path / "again" / "study.md").read_text()).split("Commands that ran")[0] == same(report).split(
        "Commands that ran"
    )[0]


def test_choice_ignores_an_incomplete_sweep(tmp_path: Path) -> None:
    study = _tiny_study()
    family = study.families[1]
    choice, states = study_mod.choose(study, family, "fashion-mnist", tmp_path, {})
    assert choice is None and [s.state for _, s in states] == ["todo", "todo"]
    spec = RunSpec(family, 0, "fashion-mnist", tmp_path)
    assert not spec.run_dir.exists()
