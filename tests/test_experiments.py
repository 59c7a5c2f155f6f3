"""``gsanet experiment``: plan expansion, the train commands it builds, aggregation, skip-if-done, resume, locks."""

from __future__ import annotations

import csv
import json
import math
import os
import stat
import statistics
import sys
from pathlib import Path

import pytest
import yaml

from gsanet.config import resolve_config
from gsanet.errors import ConfigError
from gsanet.experiments import cli as exp_cli
from gsanet.experiments import results, runner, tables
from gsanet.experiments.plans import (
    Group,
    Plan,
    RunSpec,
    Variant,
    ablations_plan,
    compare_plan,
    expand,
    format_kwarg,
    get_plan,
)
from gsanet.train.config import TrainConfig
from gsanet.train.train_cli import build_train_parser

from .test_data import write_fake_fashion_mnist

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "experiment_fmnist.yaml"
STUDY_RECIPE = REPO / "configs" / "study_fmnist.yaml"


def _tiny_recipe(tmp_path: Path, **overrides: object) -> Path:
    values = yaml.safe_load(RECIPE.read_text())
    values.update(overrides)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------------ the plans
def test_compare_plan_expands_to_three_seeds_per_model(tmp_path: Path) -> None:
    specs = expand([compare_plan()], ["fashion-mnist"], tmp_path)
    names = [s.name for s in specs]
    models = ["gsa_resnet26_tiny", "conv_resnet26_tiny", "lambda_resnet26t_w025", "botnet26t_w025"]
    assert names == [f"{m}-s{seed}" for m in models for seed in (0, 1, 2)]
    assert all(s.run_dir == tmp_path / "fashion-mnist" / s.name for s in specs)
    assert compare_plan().variant("halonet26t_w025").skip_reason  # skipped, with its reason


def test_ablations_cover_every_factor_and_share_the_baseline(tmp_path: Path) -> None:
    plan = ablations_plan()
    kwargs = {v.key: (v.model, v.model_kwargs.get("gsa_kwargs", {})) for v in plan.variants}
    assert kwargs["gsa_tiny_content"][0] == "gsa_resnet26_tiny_content"
    assert kwargs["gsa_tiny_positional"][0] == "gsa_resnet26_tiny_positional"
    assert kwargs["gsa_tiny_span3"][1] == {"pos_span": 3} and kwargs["gsa_tiny_span7"][1] == {"pos_span": 7}
    assert kwargs["gsa_tiny_norel"][1] == {"rel_pos": False}
    assert kwargs["gsa_tiny_possoftmax"][1] == {"pos_softmax": True}
    assert kwargs["gsa_tiny_querysoftmax"][1] == {"query_softmax": True}
    assert kwargs["gsa_tiny_last2_2d"] == ("gsa_resnet26_tiny_last2", {"axial": False})
    assert {kwargs["gsa_tiny_last1"][0], kwargs["gsa_tiny_last2"][0]} == {
        "gsa_resnet26_tiny_last1",
        "gsa_resnet26_tiny_last2",
    }
    ablations = expand([plan], ["fashion-mnist"], tmp_path)
    assert len(ablations) == 12 * 3 and {s.seed for s in ablations} == {0, 1, 2}  # the 2-D-everywhere row is skipped
    both = expand([compare_plan(), plan], ["fashion-mnist"], tmp_path)
    assert len(both) == 12 + 36 - 6  # gsa_resnet26_tiny and conv_resnet26_tiny (3 seeds each) are shared
    assert len({s.run_dir for s in both}) == len(both)
    three = expand([plan], ["fashion-mnist", "cifar10"], tmp_path, seeds=[0, 1, 2])
    assert len(three) == 2 * 12 * 3


def test_train_commands_parse_into_the_planned_config(tmp_path: Path) -> None:
    """Every planned command is valid for ``gsanet train`` and yields the config the run state check expects."""
    recipe = yaml.safe_load(RECIPE.read_text())
    for spec in expand([compare_plan(), ablations_plan()], ["fashion-mnist"], tmp_path):
        args = build_train_parser().parse_args(spec.train_args(RECIPE, epochs=2))
        explicit = {k: v for k, v in vars(args).items() if k not in ("config", "resume", "stop_after")}
        cfg = resolve_config(TrainConfig, explicit, args.config)
        resolved = yaml.safe_load(yaml.safe_dump(vars(cfg)))  # what config.yaml holds
        expected = spec.expected_config(recipe, 2)
        assert {k: resolved[k] for k in expected} == expected, spec.name
        assert cfg.out == str(spec.out) and cfg.name == spec.name


def test_format_kwarg_is_yaml_flow() -> None:
    assert format_kwarg({"pos_span": 3, "axial": False}) == "{axial: false, pos_span: 3}"
    assert format_kwarg(0.25) == "0.25"
    assert format_kwarg((3, 4)) == "[3, 4]"
    assert yaml.safe_load(format_kwarg({"gsa_stages": (3, 4)})) == {"gsa_stages": [3, 4]}


def test_bad_plans_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="plain file name"):
        Variant("a/b", "m", "l")
    with pytest.raises(ValueError, match="runner sets"):
        Variant("a", "m", "l", train_args={"seed": 1})
    with pytest.raises(KeyError):
        get_plan("nope")
    plan = compare_plan()
    clash = plan.__class__("x", "x", (Variant("gsa_resnet26_tiny", "conv_resnet26_tiny", "l"),), (0,), "x")
    with pytest.raises(ValueError, match="two different runs"):
        expand([plan, clash], ["fashion-mnist"], tmp_path)
    one = (Variant("a", "m", "l", factor="f", setting="x"), Variant("b", "m", "l", factor="g"))
    with pytest.raises(ValueError, match="unknown variants"):
        Plan("x", "x", one, (0,), "a", groups=(Group("f", ("a", "c")),))
    with pytest.raises(ValueError, match="needs the setting of 'b'"):
        Plan("x", "x", one, (0,), "a", groups=(Group("f", ("a", "b")),))
    assert Plan("x", "x", one, (0,), "a", groups=(Group("f", ("a", "b"), {"b": "y"}),)).groups[0].setting(one[0]) == "x"


def test_dry_run_lists_runs_and_skips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = exp_cli.main(["all", "--dry-run", "--no-macs", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("\ntodo ") + out.startswith("todo ") == 12 + 36 - 6  # compare + ablations, 3 seeds, shared
    assert "gsanet.cli train --config" in out and "'gsa_kwargs={pos_span: 3}'" in out
    assert "skipped  compare/halonet26t_w025" in out and "skipped  ablations/gsa_tiny_2d" in out
    assert not (tmp_path / "runs").exists()  # a dry run creates nothing


# -------------------------------------------------------------------------------- fake runs and aggregation
def _fake_run(spec: RunSpec, top1: float, recipe: Path, *, epochs: int | None = None, finished: bool = True) -> None:
    """A run directory as ``gsanet train`` leaves it (config.yaml, summary.json, command.txt)."""
    args = build_train_parser().parse_args(spec.train_args(recipe, epochs=epochs))
    explicit = {k: v for k, v in vars(args).items() if k not in ("config", "resume", "stop_after")}
    cfg = resolve_config(TrainConfig, explicit, args.config)
    spec.run_dir.mkdir(parents=True)
    (spec.run_dir / "config.yaml").write_text(yaml.safe_dump(vars(cfg), sort_keys=False))
    (spec.run_dir / "command.txt").write_text(f"2026-01-01T00:00:00 gsanet train {' '.join(spec.train_args(recipe))}\n")
    summary = {
        "model": spec.variant.model,
        "epochs": cfg.epochs if finished else 1,
        "epochs_planned": cfg.epochs,
        "finished": finished,
        "val_top1": top1,
        "val_top5": 99.0,
        "params": 1234,
        "train_seconds": 10.0 + spec.seed,
    }
    (spec.run_dir / "summary.json").write_text(json.dumps(summary))


def test_aggregate_mean_std_and_tables(tmp_path: Path) -> None:
    plan = compare_plan()
    recipe = yaml.safe_load(RECIPE.read_text())
    accs = {"gsa_resnet26_tiny": [80.0, 82.0, 84.5], "conv_resnet26_tiny": [85.0, 86.0, 87.0]}
    for key, values in accs.items():
        for seed, acc in enumerate(values):
            _fake_run(RunSpec(plan.variant(key), seed, "fashion-mnist", tmp_path), acc, RECIPE)
    _fake_run(RunSpec(plan.variant("lambda_resnet26t_w025"), 0, "fashion-mnist", tmp_path), 70.0, RECIPE)
    rows = results.aggregate(plan, "fashion-mnist", tmp_path, recipe=recipe, macs=False)
    by_key = {r.variant.key: r for r in rows}
    gsa = by_key["gsa_resnet26_tiny"]
    assert gsa.n == 3 and gsa.mean == pytest.approx(statistics.fmean(accs["gsa_resnet26_tiny"]))
    assert gsa.std == pytest.approx(statistics.stdev(accs["gsa_resnet26_tiny"]))  # sample std (n - 1)
    assert gsa.mean_seconds == pytest.approx(11.0)
    lam = by_key["lambda_resnet26t_w025"]
    assert lam.n == 1 and lam.std is None and lam.missing == [1, 2]
    assert by_key["botnet26t_w025"].n == 0 and by_key["halonet26t_w025"].variant.skip_reason

    csv_path, md_path = tables.write_tables(
        plan, rows, tmp_path / "out", data="fashion-mnist", recipe_path=RECIPE, recipe=recipe, runs=tmp_path
    )
    import csv

    table = {r["key"]: r for r in csv.DictReader(csv_path.open())}
    assert float(table["gsa_resnet26_tiny"]["top1_mean"]) == pytest.approx(82.1667, abs=1e-3)
    assert float(table["gsa_resnet26_tiny"]["top1_std"]) == pytest.approx(2.2546, abs=1e-3)
    assert float(table["gsa_resnet26_tiny"]["delta_vs_baseline"]) == pytest.approx(82.1667 - 86.0, abs=1e-3)
    assert table["halonet26t_w025"]["status"] == "skipped" and table["lambda_resnet26t_w025"]["status"] == "incomplete"
    md = md_path.read_text()
    assert "82.17 ± 2.25 (n=3)" in md and "86.00 ± 1.00 (n=3)" in md and "-3.83" in md
    assert "missing seeds [1, 2]" in md and "not run" in md
    assert "gsanet train --config" in md  # the exact commands


def test_ablation_table_follows_the_plan_groups(tmp_path: Path) -> None:
    plan = ablations_plan()
    recipe = yaml.safe_load(RECIPE.read_text())
    for i, spec in enumerate(expand([plan], ["fashion-mnist"], tmp_path)):
        _fake_run(spec, 50.0 + i, RECIPE)
    rows = results.aggregate(plan, "fashion-mnist", tmp_path, recipe=recipe, macs=False)
    _, md_path = tables.write_tables(
        plan, rows, tmp_path / "out", data="fashion-mnist", recipe_path=RECIPE, recipe=recipe, runs=tmp_path
    )
    md = md_path.read_text()
    assert f"Baseline: `{plan.baseline}` = {plan.variant(plan.baseline).setting}." in md
    # fake accuracies: the i-th run gets 50 + i, so every variant is 3 points above the one before it
    assert "| layers | content + positional (baseline) | `gsa_resnet26_tiny` | 51.00 ± 1.00 (n=3) |  |  |" in md
    content = next(line for line in md.splitlines() if "`gsa_tiny_content`" in line and line.startswith("| layers"))
    assert "| +3.00 | [+0.73, +5.27], p=0.021 * |" in content  # Welch: se 0.816 with 4 degrees of freedom
    table = {r["key"]: r for r in csv.DictReader((tmp_path / "out" / "experiment_ablations.csv").open())}
    assert table["gsa_tiny_content"]["significant"] == "yes" and table["gsa_resnet26_tiny"]["significant"] == ""
    assert float(table["gsa_tiny_content"]["welch_p"]) == pytest.approx(0.0213, abs=1e-3)
    assert "| axial vs 2-D (stages 3-4) | axial | `gsa_tiny_last2` |" in md  # the same run in two groups
    assert "| stages | stages 3-4 | `gsa_tiny_last2` |" in md
    assert "| axial vs 2-D (all stages) | 2-D | `gsa_tiny_2d` | not run |" in md
    results_table = md.split("## Results")[1].split("## Variants")[0]
    assert results_table.count("\n| ") - 1 == sum(len(g.keys) for g in plan.groups)  # one row per group member


def test_run_status_done_conflict_partial(tmp_path: Path) -> None:
    recipe = yaml.safe_load(RECIPE.read_text())
    variant = compare_plan().variant("conv_resnet26_tiny")
    done, other, partial = (RunSpec(variant, s, "fashion-mnist", tmp_path) for s in (0, 1, 2))
    _fake_run(done, 85.0, RECIPE)
    _fake_run(other, 85.0, RECIPE, epochs=1)  # another --epochs than planned
    _fake_run(partial, 50.0, RECIPE, finished=False)
    assert runner.run_status(done, done.expected_config(recipe, None)).state == "done"
    conflict = runner.run_status(other, other.expected_config(recipe, None))
    assert conflict.state == "conflict" and "epochs: 1 != 3" in conflict.detail
    assert runner.run_status(partial, partial.expected_config(recipe, None)).state == "partial"
    assert runner.run_status(RunSpec(variant, 9, "fashion-mnist", tmp_path), {}).state == "todo"


# ------------------------------------------------------------------------------------- the runner (no training)
FAKE_TRAIN = """#!{python}
# Stand-in for `python -m gsanet.cli train` (yaml only, so it starts fast): writes what a finished run leaves.
import json, os, sys, yaml
from pathlib import Path
args = sys.argv[sys.argv.index("train") + 1:]
with open({calls!r}, "a") as f:
    f.write(" ".join(args) + "\\n")
if args[0] == "--resume":
    run = Path(args[1])
    summary = json.loads((run / "summary.json").read_text())
    summary.update(finished=True, epochs=summary["epochs_planned"])
    (run / "summary.json").write_text(json.dumps(summary))
    sys.exit(0)
flags, key = {{}}, None
for a in args:
    if a.startswith("--"):
        key = a[2:].replace("-", "_")
        flags[key] = []
    else:
        flags[key].append(a)
cfg = yaml.safe_load(open(flags.pop("config")[0]))
cfg["model_kwargs"] = {{k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in flags.pop("model_kwargs", []))}}
for k, v in flags.items():  # every other flag: its value as YAML, a bare --flag True, --no-flag False
    if not v:
        cfg[k.removeprefix("no_")] = not k.startswith("no_")
    else:
        cfg[k] = v[0] if k in ("data", "name", "out", "model") else yaml.safe_load(v[0])
run = Path(flags["out"][0]) / cfg["name"]
run.mkdir(parents=True)
(run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
(run / "command.txt").write_text("2026-01-01T00:00:00 gsanet train " + " ".join(args) + "\\n")
summary = dict(model=cfg["model"], epochs=cfg["epochs"], epochs_planned=cfg["epochs"], finished=True, params=1,
               val_top1=80.0 + cfg["seed"], val_top5=99.0, train_seconds=1.0)
if cfg.get("final_test"):
    summary.update(test_top1=70.0 + cfg["seed"], test_top5=98.0, test_images=10)
(run / "summary.json").write_text(json.dumps(summary))
sys.exit(1 if cfg["name"] == os.environ.get("FAKE_FAIL") else 0)
"""


@pytest.fixture
def fake_python(tmp_path: Path) -> tuple[Path, Path]:
    calls = tmp_path / "calls.txt"
    script = tmp_path / "fake_python"
    script.write_text(FAKE_TRAIN.format(python=sys.executable, calls=str(calls)))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script, calls


def test_runner_trains_once_then_skips_finished_runs(
    tmp_path: Path, fake_python: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    script, calls = fake_python
    runs, out = tmp_path / "runs", tmp_path / "results"
    argv = ["compare", "--runs", str(runs), "--out", str(out), "--python", str(script), "--no-macs", "--jobs", "2"]
    assert exp_cli.main(argv) == 0
    assert len(calls.read_text().splitlines()) == 12
    first = (out / "experiment_compare.csv").read_text()
    assert "81.0000" in first  # mean of 80, 81, 82
    assert (runs / "fashion-mnist" / "experiment_commands.txt").read_text().startswith("OMP_NUM_THREADS=1 gsanet")
    summary = runs / "fashion-mnist" / "gsa_resnet26_tiny-s0" / "summary.json"
    before = summary.stat().st_mtime_ns
    assert exp_cli.main(argv) == 0  # everything done: nothing is started, nothing overwritten
    assert len(calls.read_text().splitlines()) == 12
    assert summary.stat().st_mtime_ns == before
    assert "start" not in capsys.readouterr().out.split("tables:")[-1]


def test_runner_resumes_only_with_resume(tmp_path: Path, fake_python: tuple[Path, Path]) -> None:
    script, calls = fake_python
    runs, out = tmp_path / "runs", tmp_path / "results"
    variant = compare_plan().variant("conv_resnet26_tiny")
    partial = RunSpec(variant, 0, "fashion-mnist", runs)
    _fake_run(partial, 50.0, RECIPE, finished=False)
    (partial.run_dir / "checkpoints").mkdir()
    (partial.run_dir / "checkpoints" / "last.safetensors").write_bytes(b"x")
    fresh = RunSpec(variant, 1, "fashion-mnist", runs)
    fresh.run_dir.mkdir(parents=True)  # died before its first checkpoint
    base = ["compare", "--seeds", "0", "1", "--runs", str(runs), "--out", str(out), "--python", str(script)]
    base += ["--no-macs"]
    assert exp_cli.main(base) == 1  # the interrupted runs are reported, not touched
    lines = calls.read_text().splitlines()
    assert not any("conv_resnet26_tiny" in line for line in lines)
    assert exp_cli.main([*base, "--resume"]) == 0
    lines = calls.read_text().splitlines()
    assert any(line.startswith(f"--resume {partial.run_dir}") for line in lines)
    assert any("--name conv_resnet26_tiny-s1" in line for line in lines)
    assert list(runs.glob("fashion-mnist/conv_resnet26_tiny-s1.incomplete-*"))  # moved aside, not deleted


def test_locked_run_is_skipped(tmp_path: Path, fake_python: tuple[Path, Path]) -> None:
    script, calls = fake_python
    spec = RunSpec(compare_plan().variant("conv_resnet26_tiny"), 0, "fashion-mnist", tmp_path / "runs")
    args = exp_cli.build_parser().parse_args(["compare", "--python", str(script), "--runs", str(tmp_path / "runs")])
    ctx = runner.RunnerContext(args, {"fashion-mnist": (RECIPE, yaml.safe_load(RECIPE.read_text()))}, dict(os.environ))
    with runner.run_lock(spec) as taken:
        assert taken
        status = runner.execute_run(spec, ctx)
    assert status.state == "todo" and "locked" in status.detail
    assert not calls.exists()


def test_one_real_training_batch(tmp_path: Path) -> None:
    """Smoke: the runner drives the real ``gsanet train`` for one batch of one epoch on fake data."""
    data = write_fake_fashion_mnist(tmp_path / "data", n_train=16, n_val=16)
    recipe = _tiny_recipe(tmp_path, train_subset=None, batch_size=16, epochs=1, warmup_epochs=0, data_dir=str(data))
    spec = RunSpec(compare_plan().variant("conv_resnet26_tiny"), 0, "fashion-mnist", tmp_path / "runs")
    args = exp_cli.build_parser().parse_args(["compare", "--runs", str(tmp_path / "runs"), "--threads", "1"])
    ctx = runner.RunnerContext(args, {"fashion-mnist": (recipe, exp_cli.load_recipe(recipe))}, runner.child_env(args))
    status = runner.execute_run(spec, ctx)
    assert status.state == "done", (spec.out / "logs" / f"{spec.name}.log").read_text()[-2000:]
    assert status.summary.epochs == 1 and 0 <= status.summary.val_top1 <= 100
    record = json.loads((spec.run_dir / "experiment.json").read_text().splitlines()[0])
    assert record["threads"] == "1"
    assert runner.execute_run(spec, ctx).state == "done"  # a second call finds it finished


def test_recipe_validation(tmp_path: Path) -> None:
    assert exp_cli.load_recipe(RECIPE)["train_subset"] == 10000
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\nmodel: gsa_resnet26_tiny\n")
    with pytest.raises(ValueError, match="plan sets"):
        exp_cli.load_recipe(bad)
    bad.write_text("epochz: 3\n")
    with pytest.raises(ValueError, match="unknown key"):
        exp_cli.load_recipe(bad)
    assert exp_cli.resolve_datasets(["auto"], tmp_path) == ["fashion-mnist"]
    (tmp_path / "cifar-100-python").mkdir()
    assert exp_cli.resolve_datasets(["auto"], tmp_path) == ["fashion-mnist", "cifar100"]


# ------------------------------------------------------------------------------ issue 23: runs meeting each other
SLEEPER = """#!{python}
# Stand-in for `python -m gsanet.cli train` that never ends: records its pid, then sleeps.
import os, sys, time
from pathlib import Path
Path({pids!r}, str(os.getpid())).write_text("")
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie waiting to be reaped counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _wait(condition: object, timeout: float) -> bool:
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def _experiment_with_sleeping_children(tmp_path: Path) -> tuple[object, Path]:
    """``gsanet experiment`` in its own process with two never-ending train children; returns it and their pids."""
    import subprocess

    pids = tmp_path / "pids"
    pids.mkdir()
    script = tmp_path / "sleeper"
    script.write_text(SLEEPER.format(python=sys.executable, pids=str(pids)))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    argv = ["compare", "--seeds", "0", "--jobs", "2", "--no-macs", "--python", str(script)]
    argv += ["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "gsanet.cli", "experiment", *argv], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    assert _wait(lambda: len(list(pids.iterdir())) == 2, 60), proc.communicate(timeout=5)
    return proc, pids


@pytest.mark.slow
@pytest.mark.parametrize("signum", ["SIGTERM", "SIGKILL"])
def test_killed_experiment_leaves_no_train_children(tmp_path: Path, signum: str) -> None:
    """SIGTERM or SIGKILL to ``gsanet experiment`` ends its ``gsanet train`` children too (issue 23, item 3)."""
    import signal

    proc, pids = _experiment_with_sleeping_children(tmp_path)
    children = [int(p.name) for p in pids.iterdir()]
    try:
        proc.send_signal(getattr(signal, signum))
        output, _ = proc.communicate(timeout=30)
        assert _wait(lambda: not any(_alive(pid) for pid in children), 5), f"children survive: {output}"
    finally:
        for pid in children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    if signum == "SIGTERM":  # the runs were stopped, not counted: 128 + SIGTERM, nothing said done
        assert proc.returncode == 143, output
        assert "done " not in output


def _sleepers(tmp_path: Path, count: int) -> tuple[list[str], Path]:
    """A command that records its pid in the returned folder and sleeps (``count`` of them are expected)."""
    pids = tmp_path / "pids"
    pids.mkdir()
    code = f"import os, time; open(os.path.join({str(pids)!r}, str(os.getpid())), 'w').close(); time.sleep(120)"
    return [sys.executable, "-c", code], pids


def test_sigterm_stops_owned_children(tmp_path: Path, fake_python: tuple[Path, Path]) -> None:
    """Fast variant of the SIGTERM case: SIGTERM within :func:`runner.owned_children` ends the spawned children."""
    import signal
    import subprocess

    command, pids = _sleepers(tmp_path, 2)
    args = exp_cli.build_parser().parse_args(["compare", "--runs", str(tmp_path / "runs")])
    ctx = runner.RunnerContext(args, {}, dict(os.environ))
    procs, before = [], signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt) as raised, runner.owned_children(ctx):
        procs = [runner.spawn(command, ctx, stdout=subprocess.DEVNULL) for _ in range(2)]
        assert _wait(lambda: len(list(pids.iterdir())) == 2, 20)
        assert all(os.getpgid(p.pid) == p.pid != os.getpgid(0) for p in procs)  # each in its own process group
        os.kill(os.getpid(), signal.SIGTERM)
        _wait(lambda: False, 5)  # the handler raises here
    assert type(raised.value).__name__ == "Terminated" and ctx.stop.is_set()
    assert [p.wait(timeout=5) for p in procs] == [-signal.SIGTERM] * 2
    assert signal.getsignal(signal.SIGTERM) == before and runner.interrupted(raised.value) == 143  # restored


def test_children_die_with_a_sigkilled_parent(tmp_path: Path) -> None:
    """Fast variant of the SIGKILL case: a child started through the launcher ends when its parent is SIGKILLed."""
    import signal
    import subprocess

    command, pids = _sleepers(tmp_path, 1)
    parent_code = (
        "import os, subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', sys.argv[1], str(os.getpid()), *sys.argv[2:]])\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code, runner.CHILD_LAUNCHER, *command])
    try:
        assert _wait(lambda: len(list(pids.iterdir())) == 1, 20)
        child = int(next(pids.iterdir()).name)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=5)
        assert _wait(lambda: not _alive(child), 5)
    finally:
        parent.kill()
        if pids.exists() and any(pids.iterdir()) and _alive(int(next(pids.iterdir()).name)):
            os.kill(int(next(pids.iterdir()).name), signal.SIGKILL)


def test_resume_leaves_a_run_another_process_writes_alone(
    tmp_path: Path, fake_python: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """``--resume`` neither moves aside nor restarts a run whose lock ``gsanet train`` holds (its own ``RunLock``)."""
    from gsanet.train.rundir import RunLock

    script, calls = fake_python
    runs, out = tmp_path / "runs", tmp_path / "results"
    spec = RunSpec(compare_plan().variant("conv_resnet26_tiny"), 0, "fashion-mnist", runs)
    spec.run_dir.mkdir(parents=True)  # a live run before its first checkpoint
    held = RunLock.acquire(spec.run_dir)
    try:
        code = exp_cli.main(["compare", "--seeds", "0", "--resume", "--runs", str(runs), "--out", str(out),
                             "--python", str(script), "--no-macs"])  # fmt: skip
    finally:
        held.release()
    assert code == 1 and f"busy: {spec.run_dir}: another process holds" in capsys.readouterr().err
    assert spec.run_dir.is_dir() and not list(runs.glob("fashion-mnist/conv_resnet26_tiny-s0.incomplete-*"))
    assert not any("conv_resnet26_tiny" in line for line in calls.read_text().splitlines())


def test_study_exits_nonzero_when_a_run_fails(
    tmp_path: Path, fake_python: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A train command that fails is not counted, even if its run directory says it finished."""
    from gsanet.experiments import plans

    script, _ = fake_python
    conv = Variant("conv_resnet26_tiny", "conv_resnet26_tiny", "conv")
    gsa = Variant("gsa_resnet26_tiny", "gsa_resnet26_tiny", "gsa")
    tiny = plans.Study("study", "Tiny", (gsa, conv), lrs=(1e-3,), wds=(0.0,), holdout=16, sweep_epochs=1,
                       sweep_subset=16, sweep_seed=0, final_seeds=(0, 1), sizes=(16,),
                       reference="conv_resnet26_tiny")  # fmt: skip
    monkeypatch.setattr(plans, "study_plan", lambda: tiny)
    monkeypatch.setenv("FAKE_FAIL", "gsa_resnet26_tiny_n16-s1")  # writes a finished run, then exits 1
    argv = ["study", "--config", str(RECIPE), "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    assert exp_cli.main([*argv, "--python", str(script), "--no-macs"]) == 1


# ------------------------------------------------------------------------------ issue 23: what the tables say
def _compare_runs(tmp_path: Path, accs: dict[str, list[float]], **config: object) -> Path:
    """Finished fake runs of the comparison (``config`` overrides written into each ``config.yaml``)."""
    plan = compare_plan()
    runs = tmp_path / "runs"
    for key, values in accs.items():
        for seed, acc in enumerate(values):
            spec = RunSpec(plan.variant(key), seed, "fashion-mnist", runs)
            _fake_run(spec, acc, RECIPE)
            if config:
                path = spec.run_dir / "config.yaml"
                path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **config}, sort_keys=False))
    return runs


def _table_only(tmp_path: Path, runs: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = exp_cli.main(["compare", "--table-only", "--no-macs", "--runs", str(runs), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("config", "said"),
    [({"holdout": 5000}, "a held-out split of 5,000 training images"),
     ({"val_subset": 2000}, "a fixed 2,000-image subset of the test set"),
     ({}, "the full test set (10,000 images)")],
)  # fmt: skip
def test_table_says_which_split_it_measured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: dict[str, int], said: str
) -> None:
    """Held-out or ``val_subset`` numbers are not called the full 10,000-image test set."""
    runs = _compare_runs(tmp_path, {"conv_resnet26_tiny": [85.0, 86.5]}, **config)
    md = tables.write_tables(
        compare_plan(), results.aggregate(compare_plan(), "fashion-mnist", runs, macs=False), tmp_path / "out",
        data="fashion-mnist", recipe_path=RECIPE, recipe={}, runs=runs,
    )[1].read_text()  # fmt: skip
    assert said in md
    assert ("10,000" in md) == (not config)
    csv_rows = list(csv.DictReader((tmp_path / "out" / "experiment_compare.csv").open()))
    assert {r["measured_on"] for r in csv_rows if r["n"] != "0"} == {said}


@pytest.mark.parametrize("value", [-500.0, 100.5, float("nan"), float("inf"), 1e300])
def test_impossible_accuracy_is_refused_not_averaged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: float
) -> None:
    runs = _compare_runs(tmp_path, {"conv_resnet26_tiny": [85.0, value, 86.0]})
    code, out, err = _table_only(tmp_path, runs, capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "conv_resnet26_tiny-s1" in err and "val_top1" in err
    assert not (tmp_path / "out" / "experiment_compare.md").exists()


def test_zero_variance_difference_is_not_significant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Welch's test is undefined when neither group varies: p is n/a, nothing is marked significant."""
    w = tables.welch([80.0, 80.0, 80.0], [80.01, 80.01, 80.01])
    assert not w.defined and not w.significant and math.isnan(w.p)
    runs = _compare_runs(tmp_path, {"gsa_resnet26_tiny": [80.0] * 3, "conv_resnet26_tiny": [80.01] * 3})
    assert _table_only(tmp_path, runs, capsys)[0] == 0
    md = (tmp_path / "out" / "experiment_compare.md").read_text()
    gsa = next(line for line in md.splitlines() if line.startswith("| `gsa_resnet26_tiny`"))
    assert "p=n/a" in gsa and "*" not in gsa and "p=0" not in md
    assert "significant at 5%" not in md.split("## Reading")[1].replace("no significant", "")
    table = {r["key"]: r for r in csv.DictReader((tmp_path / "out" / "experiment_compare.csv").open())}
    assert table["gsa_resnet26_tiny"]["welch_p"] == "n/a" and table["gsa_resnet26_tiny"]["significant"] == "n/a"


def _damage(run: Path, what: str) -> None:
    """Damage a finished run directory the way the issue lists."""
    summary = json.loads((run / "summary.json").read_text())
    if what in ("nan", "huge"):
        summary["val_top1"] = float("nan") if what == "nan" else 1e300
        (run / "summary.json").write_text(json.dumps(summary))
    elif what == "empty cell":
        (run / "metrics.csv").write_text("epoch,val_top1,train_seconds\n1,80.0,5.0\n2,,9.0\n")
    elif what == "missing column":
        (run / "metrics.csv").write_text("epoch,train_seconds\n1,5.0\n")
    elif what == "invalid config":
        (run / "config.yaml").write_text("model: [unclosed\n")
    elif what == "list config":
        (run / "config.yaml").write_text("- a\n- b\n")
    elif what == "holdout of text":
        config = yaml.safe_load((run / "config.yaml").read_text())
        (run / "config.yaml").write_text(yaml.safe_dump({**config, "holdout": "five thousand"}))
    elif what == "one-word command":
        (run / "command.txt").write_text("oops\n")
    elif what == "no config":
        (run / "config.yaml").unlink()


@pytest.mark.parametrize(
    "what",
    ["nan", "huge", "empty cell", "missing column", "invalid config", "list config", "holdout of text",
     "one-word command", "no config"],
)
def test_table_only_names_a_damaged_run_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str
) -> None:
    """``--table-only`` on a damaged run directory: one line naming the run, exit code 2, no traceback."""
    runs = _compare_runs(tmp_path, {"conv_resnet26_tiny": [85.0, 86.0]})
    good = runs / "fashion-mnist" / "conv_resnet26_tiny-s0"
    (good / "metrics.csv").write_text("epoch,val_top1,train_seconds\n1,80.0,5.0\n2,85.0,9.0\n")
    _damage(runs / "fashion-mnist" / "conv_resnet26_tiny-s1", what)
    code, _, err = _table_only(tmp_path, runs, capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("gsanet experiment: error:") and "conv_resnet26_tiny-s1" in err


def test_study_table_only_names_a_damaged_sweep_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gsanet.experiments import study as study_mod
    from gsanet.experiments.plans import study_plan

    study = study_plan()
    spec = study_mod.sweep_specs(study, "fashion-mnist", tmp_path / "runs")[study.families[0].key][0]
    _fake_run(spec, -500.0, RECIPE)
    argv = ["study", "--table-only", "--no-macs", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    assert exp_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and spec.name in err and "not an accuracy in [0, 100]" in err


@pytest.mark.parametrize("bad", ["file", "below a file"])
def test_bad_out_is_refused_before_any_training(
    tmp_path: Path, fake_python: tuple[Path, Path], capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    script, calls = fake_python
    (tmp_path / "taken").write_text("")
    out = tmp_path / "taken" if bad == "file" else tmp_path / "taken" / "tables"
    argv = ["compare", "--seeds", "0", "--runs", str(tmp_path / "runs"), "--out", str(out), "--python", str(script)]
    assert exp_cli.main([*argv, "--no-macs"]) == 2
    assert "--out" in capsys.readouterr().err
    assert not calls.exists() and not (tmp_path / "runs").exists()


def test_export_copies_a_finished_run_once_and_never_overwrites(tmp_path: Path) -> None:
    spec = RunSpec(compare_plan().variants[0], 0, "fashion-mnist", tmp_path / "runs")
    _fake_run(spec, 80.0, RECIPE)
    (spec.run_dir / "checkpoints").mkdir()
    (spec.run_dir / "checkpoints" / "last.safetensors").write_bytes(b"weights")
    (spec.run_dir / "loss.png").write_bytes(b"png")
    copy = runner.export_run(spec, tmp_path / "results")
    assert copy == tmp_path / "results" / "fashion-mnist" / spec.name
    assert sorted(p.name for p in copy.iterdir()) == ["command.txt", "config.yaml", "summary.json"]
    assert runner.export_run(spec, tmp_path / "results") is None  # already there, identical
    (spec.run_dir / "summary.json").write_text((spec.run_dir / "summary.json").read_text().replace("80.0", "81.0"))
    with pytest.raises(ConfigError, match="already holds another copy"):
        runner.export_run(spec, tmp_path / "results")
    assert '"val_top1": 80.0' in (copy / "summary.json").read_text()  # the first copy is left alone
    assert not list((tmp_path / "results" / "fashion-mnist").glob(".*partial"))


def test_a_diverged_run_is_an_outcome_the_sweep_never_chooses(tmp_path: Path) -> None:
    """A run whose summary says the training diverged is neither done nor resumed: the runner leaves it, and the
    study's sweep never chooses it but can still choose among the other points."""
    from gsanet.experiments import study as study_mod
    from gsanet.experiments.plans import study_plan

    study = study_plan()
    runs = tmp_path / "runs"
    specs = study_mod.sweep_specs(study, "fashion-mnist", runs)[study.families[0].key]
    for i, spec in enumerate(specs):
        _fake_run(spec, 70.0 + i, STUDY_RECIPE)
    last = specs[-1]
    summary = json.loads((last.run_dir / "summary.json").read_text())
    summary.update(finished=False, epochs=1, val_top1=99.0, diverged="the training loss is nan at epoch 2, step 1")
    (last.run_dir / "summary.json").write_text(json.dumps(summary))
    recipe = yaml.safe_load(STUDY_RECIPE.read_text())
    status = runner.run_status(last, last.expected_config(recipe, None))
    assert status.state == "diverged" and "loss is nan" in status.detail
    choice, _ = study_mod.choose(study, study.families[0], "fashion-mnist", runs, recipe)
    assert choice is not None and (choice.lr, choice.weight_decay) == tuple(
        specs[-2].variant.train_args[k] for k in ("lr", "weight_decay")
    )  # the best finished point, not the diverged one whose last epoch looked best
