"""``gsanet experiment study``: the held-out split, the sweep's choice, the final runs, statistics and the report."""

from __future__ import annotations

import csv
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
    recipe = yaml.safe_load(RECIPE.read_text())
    sweep = [s for specs in study_mod.sweep_specs(study, "fashion-mnist", tmp_path).values() for s in specs]
    choice = study_mod.Choice(3e-3, 0.2, 0)
    finals = [s for f in study.families for s in study_mod.final_specs(study, f, choice, "fashion-mnist", tmp_path)]
    assert len(sweep) == 3 * len(study.grid) and len(finals) == 3 * len(study.final_seeds)
    for spec in sweep + finals:
        args = build_train_parser().parse_args(spec.train_args(RECIPE))
        explicit = {k: v for k, v in vars(args).items() if k not in ("config", "resume", "stop_after")}
        cfg = resolve_config(TrainConfig, explicit, args.config)
        resolved = yaml.safe_load(yaml.safe_dump(vars(cfg)))
        expected = spec.expected_config(recipe, None)
        assert {k: resolved[k] for k in expected} == expected, spec.name
    assert all(s.variant.train_args["holdout"] == study.holdout for s in sweep)
    assert all("holdout" not in s.variant.train_args and s.variant.train_args["lr"] == 3e-3 for s in finals)
    assert len({s.run_dir for s in sweep + finals}) == len(sweep + finals)


def test_study_refuses_seeds_and_epochs(capsys: pytest.CaptureFixture[str]) -> None:
    assert exp_cli.main(["study", "--seeds", "0", "--dry-run"]) == 2
    assert "remove --seeds/--epochs" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- end to end (real)
def _tiny_study() -> Study:
    conv = Variant("conv_resnet26_tiny", "conv_resnet26_tiny", "conv", cost=0.5)
    last1 = Variant("gsa_resnet26_tiny_last1", "gsa_resnet26_tiny_last1", "GSA in stage 4", cost=0.6)
    return Study(
        "study", "Tiny study", (last1, conv), grid=((1e-3, 0.0), (5e-3, 0.05)), holdout=16, sweep_epochs=1,
        sweep_seed=0, final_seeds=(0, 1), reference="conv_resnet26_tiny",
    )  # fmt: skip


def test_study_end_to_end_on_fake_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real ``gsanet train`` runs: sweep, choice by held-out top-1, final seeds, then the report from the runs."""
    data = write_fake_fashion_mnist(tmp_path / "data", n_train=48, n_val=16)
    values = yaml.safe_load(RECIPE.read_text())
    values.update(train_subset=None, epochs=2, warmup_epochs=0, batch_size=16, data_dir=str(data))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(values, sort_keys=False))
    monkeypatch.setattr(plans, "study_plan", _tiny_study)
    runs, out = tmp_path / "runs", tmp_path / "out"
    argv = ["study", "--config", str(recipe), "--runs", str(runs), "--out", str(out), "--jobs", "2", "--no-macs"]
    assert exp_cli.main(argv) == 0, "\n".join(p.read_text()[-1500:] for p in runs.glob("*/logs/*.log"))
    study = _tiny_study()
    for family in study.families:
        sweep = study_mod.sweep_specs(study, "fashion-mnist", runs)[family.key]
        tops = [yaml.safe_load((s.run_dir / "summary.json").read_text())["val_top1"] for s in sweep]
        best = study.grid[tops.index(max(tops))]  # first maximum: the earlier grid point wins a tie
        for seed in study.final_seeds:
            cfg = yaml.safe_load((runs / "fashion-mnist" / f"{family.key}-s{seed}" / "config.yaml").read_text())
            assert (cfg["lr"], cfg["weight_decay"], cfg["holdout"], cfg["epochs"]) == (*best, None, 2)
        assert all(yaml.safe_load((s.run_dir / "config.yaml").read_text())["epochs"] == 1 for s in sweep)
    with open(out / "study_runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["seed"] for r in rows} == {"0", "1"}
    with open(out / "study_curves.csv") as f:
        assert len(list(csv.DictReader(f))) == 4 * 2  # two epochs per final run
    assert (out / "study_curves.png").stat().st_size > 0 and (out / "study_time.png").stat().st_size > 0
    report = (out / "study.md").read_text()
    assert "## Verdict" in report and "95% CI" in report and "**chosen**" in report
    assert "Choices on the edge of the grid" in report  # with two points, every choice is on an edge
    # the report regenerates from the run directories alone, identically
    first = {p.name: p.read_text() for p in out.glob("*.csv")}
    assert exp_cli.main([*argv, "--table-only"]) == 0
    assert {p.name: p.read_text() for p in out.glob("*.csv")} == first
    assert (out / "study.md").read_text() == report


def test_choice_ignores_an_incomplete_sweep(tmp_path: Path) -> None:
    study = _tiny_study()
    family = study.families[1]
    choice, states = study_mod.choose(study, family, "fashion-mnist", tmp_path, {})
    assert choice is None and [s.state for _, s in states] == ["todo", "todo"]
    spec = RunSpec(family, 0, "fashion-mnist", tmp_path)
    assert not spec.run_dir.exists()
