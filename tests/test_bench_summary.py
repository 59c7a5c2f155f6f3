"""``gsanet bench summary`` and the pair table's arithmetic, on tables the tests write: no model is built or timed,
except by the bf16 module smoke run at the end (a tiny shape, one repeat)."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

from gsanet.bench.cli import main as bench_main
from gsanet.bench.environment import cpu_isa
from gsanet.bench.model import PAIR_COLUMNS, PAIRS, pair_rows
from gsanet.bench.module import COLUMNS as MODULE_COLUMNS
from gsanet.bench.module import STAGE_TARGETS
from gsanet.bench.report import Target, result_prefix, result_stem
from gsanet.bench.summary import SUMMARY_COLUMNS, ratios, summarize
from gsanet.tables import write_csv


def _model_row(name: str, size: int, *, batch: int, infer_batch: int, train_ms: float, infer_ms: float, gflop: float):
    return dict(model=name, img_size=size, status="ok", batch=batch, infer_batch=infer_batch, precision="fp32",
                train_step_ms=train_ms, train_img_s=batch / train_ms * 1e3, infer_batch_ms=infer_ms,
                infer_batch_img_s=infer_batch / infer_ms * 1e3, fwd_bwd_gflop=gflop)  # fmt: skip


def _pair_table(train: dict[str, float], infer: dict[str, float], *, tiny_batch: int = 128) -> list[dict]:
    """Model rows whose GSA/conv ratios are the given ones (keyed by the GSA network), through :func:`pair_rows`."""
    rows = []
    for pair in PAIRS:
        tiny = pair.gsa == "gsa_resnet26_tiny"
        size, batch, infer_batch = (28, tiny_batch, 256) if tiny else (224, 8, 16)
        conv_train, conv_infer = random.uniform(50, 500), random.uniform(50, 500)
        rows.append(_model_row(pair.conv, size, batch=batch, infer_batch=infer_batch, train_ms=conv_train,
                               infer_ms=conv_infer, gflop=4.0))  # fmt: skip
        rows.append(_model_row(pair.gsa, size, batch=batch, infer_batch=infer_batch,
                               train_ms=conv_train / train[pair.gsa], infer_ms=conv_infer / infer[pair.gsa],
                               gflop=3.5))  # fmt: skip
    return pair_rows(rows, isa="avx512")


def test_target_verdicts() -> None:
    at_least, at_most = Target(">=", 0.8), Target("<=", 1.5)
    assert [at_least.verdict(v) for v in (0.8, 0.95, 0.7999, None)] == ["met", "met", "missed", ""]
    assert [at_most.verdict(v) for v in (1.5, 0.5, 1.5001, float("nan"))] == ["met", "met", "missed", ""]
    assert (str(at_least), str(Target(">=", 1)), str(at_most)) == (">= 0.8", ">= 1.0", "<= 1.5")
    with pytest.raises(ValueError, match="'>=' or '<='"):
        Target(">", 1.0)


def test_pair_rows_compute_both_ratios_and_verdicts_from_their_columns() -> None:
    train = {"gsa_resnet26_tiny": 0.81, "gsa_resnet50": 0.97}
    infer = {"gsa_resnet26_tiny": 0.62, "gsa_resnet50": 1.13}
    pairs = {p["gsa"]: p for p in _pair_table(train, infer)}
    assert set(pairs) == set(train) and all(set(p) == set(PAIR_COLUMNS) for p in pairs.values())
    for name, p in pairs.items():
        assert p["train_ratio"] == pytest.approx(p["gsa_train_img_s"] / p["conv_train_img_s"])
        assert p["train_ratio"] == pytest.approx(train[name])
        assert p["infer_ratio"] == pytest.approx(p["gsa_infer_img_s"] / p["conv_infer_img_s"])
        assert p["infer_ratio"] == pytest.approx(infer[name])
        assert p["flop_ceiling"] == pytest.approx(4.0 / 3.5)
        assert p["train_of_ceiling"] == pytest.approx(train[name] / (4.0 / 3.5))
        assert (p["precision"], p["isa"]) == ("fp32", "avx512")
    tiny, r50 = pairs["gsa_resnet26_tiny"], pairs["gsa_resnet50"]
    assert (tiny["train_batch"], tiny["infer_batch"], r50["train_batch"], r50["infer_batch"]) == (128, 256, 8, 16)
    assert (tiny["train_target"], tiny["infer_target"], r50["train_target"], r50["infer_target"]) == (
        ">= 0.8", ">= 0.9", ">= 1.0", ">= 1.1")  # fmt: skip
    verdicts = (tiny["train_met"], tiny["infer_met"], r50["train_met"], r50["infer_met"])
    assert verdicts == ("met", "missed", "missed", "met")


def test_pair_rows_skip_a_pair_with_a_failed_network() -> None:
    rows = [
        _model_row("gsa_resnet50", 224, batch=8, infer_batch=16, train_ms=10.0, infer_ms=5.0, gflop=3.5),
        {"model": "conv_resnet50", "img_size": 224, "status": "failed: out of memory"},
    ]
    assert pair_rows(rows, isa="avx2") == []


def _write_results(tmp_path: Path) -> None:
    """Pair tables for fp32 at avx512 and avx2 and bf16 at avx512 (its tiny pair at a smaller batch), module tables for
    fp32 avx512 (every stage shape) and bf16 avx512 (one shape, the GSA row failed at another)."""
    columns = {
        ("fp32", "avx512"): ({"gsa_resnet26_tiny": 0.61, "gsa_resnet50": 1.02}, {"gsa_resnet26_tiny": 0.91,
                                                                                  "gsa_resnet50": 0.75}, 128),
        ("fp32", "avx2"): ({"gsa_resnet26_tiny": 0.85, "gsa_resnet50": 0.79}, {"gsa_resnet26_tiny": 0.57,
                                                                                "gsa_resnet50": 1.2}, 128),
        ("bf16", "avx512"): ({"gsa_resnet26_tiny": 0.53, "gsa_resnet50": 0.61}, {"gsa_resnet26_tiny": 0.43,
                                                                                  "gsa_resnet50": 0.18}, 64),
    }  # fmt: skip
    for (precision, isa), (train, infer, tiny_batch) in columns.items():
        write_csv(tmp_path / f"{result_stem('model', 'cpu', precision, isa)}_pairs.csv", PAIR_COLUMNS,
                  _pair_table(train, infer, tiny_batch=tiny_batch))  # fmt: skip
    module = [("56x56x64", "gsa", 1.4), ("56x56x64", "conv3x3", 1.0), ("28x28x128", "gsa", 1.7),
              ("14x14x256", "gsa", 0.71), ("7x7x512", "gsa", 0.59), ("7x7x512", "gsa_pytorch", 0.81)]  # fmt: skip
    rows = [dict(shape=s, layer=layer, ratio_vs_conv=r, batch=8, status="ok") for s, layer, r in module]
    write_csv(tmp_path / f"{result_stem('module', 'cpu', 'fp32', 'avx512')}.csv", MODULE_COLUMNS, rows)
    write_csv(tmp_path / f"{result_stem('module', 'cpu', 'bf16', 'avx512')}.csv", MODULE_COLUMNS,
              [dict(shape="56x56x64", layer="gsa", ratio_vs_conv=2.2, batch=8, status="ok"),
               dict(shape="28x28x128", layer="gsa", batch=8, status="failed: a kernel refused")])  # fmt: skip
    (tmp_path / "bench_module_torch0.0.1_cpu_fp32_avx512.csv").write_text("another torch version: not read\n")


def _markdown_cells(markdown: str) -> dict[str, list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    split = [[c.strip() for c in line.split("|")[1:-1]] for line in lines]
    return {cells[0]: cells[1:] for cells in split}


def test_summary_reads_every_precision_and_isa_and_places_each_ratio(tmp_path: Path) -> None:
    _write_results(tmp_path)
    summary = summarize(tmp_path)
    assert summary.columns == [("fp32", "avx512"), ("fp32", "avx2"), ("bf16", "avx512")]
    cells = _markdown_cells(summary.markdown("gsanet bench summary"))
    assert cells["ratio"] == ["target", "fp32 avx512", "fp32 avx2", "bf16 avx512"]
    what = [r.what for r in ratios()]
    assert len(what) == 2 * len(PAIRS) + len(STAGE_TARGETS) and list(cells)[1:] == what
    expected = {
        "training step, gsa_resnet26_tiny / conv_resnet26_tiny, batch 128": [
            ">= 0.8", "0.61 missed", "0.85 met", "0.53 missed (batch 64)"],
        "training step, gsa_resnet50 / conv_resnet50, batch 8": [">= 1.0", "1.02 met", "0.79 missed", "0.61 missed"],
        "inference, gsa_resnet26_tiny / conv_resnet26_tiny, batch 256": [
            ">= 0.9", "0.91 met", "0.57 missed", "0.43 missed"],
        "inference, gsa_resnet50 / conv_resnet50, batch 16": [">= 1.1", "0.75 missed", "1.20 met", "0.18 missed"],
        "module fwd+bwd, ours / 3x3 conv, 56x56x64, batch 8": ["<= 1.5", "1.40 met", "", "2.20 missed"],
        "module fwd+bwd, ours / 3x3 conv, 28x28x128, batch 8": ["<= 1.0", "1.70 missed", "", ""],
        "module fwd+bwd, ours / 3x3 conv, 14x14x256, batch 8": ["<= 1.0", "0.71 met", "", ""],
        "module fwd+bwd, ours / 3x3 conv, 7x7x512, batch 8": ["<= 1.0", "0.59 met", "", ""],
    }  # fmt: skip
    for row, cell in expected.items():
        assert cells[row] == cell, row
    paths = summary.save(tmp_path, "cpu")
    assert [p.name for p in paths] == [result_prefix("summary", "cpu") + suffix for suffix in (".csv", ".md")]
    with open(paths[0], newline="") as f:
        reader = csv.DictReader(f)
        records = list(reader)
    assert reader.fieldnames == SUMMARY_COLUMNS and len(records) == 4 * 3 + 4 + 1
    tiny_bf16 = next(r for r in records if r["precision"] == "bf16" and r["what"] == what[0])
    assert (tiny_bf16["batch"], tiny_bf16["met"], tiny_bf16["target"]) == ("64", "missed", ">= 0.8")
    assert tiny_bf16["source"] == f"{result_stem('model', 'cpu', 'bf16', 'avx512')}_pairs.csv"


def test_summary_refuses_an_empty_directory_and_an_older_table(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="run `gsanet bench model` and `gsanet bench module` first"):
        summarize(tmp_path)
    old = tmp_path / f"{result_stem('model', 'cpu', 'fp32', 'avx2')}_pairs.csv"
    old.write_text("gsa,conv,img_size,batch,speed_ratio\ngsa_resnet50,conv_resnet50,224,8,0.8\n")
    with pytest.raises(ValueError, match="no column.*train_ratio.*older gsanet bench"):
        summarize(tmp_path)


def test_cli_summary_prints_and_writes_and_refuses_isa(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["summary", "--out", str(tmp_path)]) == 2
    assert "gsanet bench model" in capsys.readouterr().err
    _write_results(tmp_path)
    assert bench_main(["summary", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| ratio | target | fp32 avx512 | fp32 avx2 | bf16 avx512 |" in out and "bench_summary_torch" in out
    assert bench_main(["summary", "--out", str(tmp_path), "--isa", "avx2"]) == 2
    assert "--isa does not apply to summary" in capsys.readouterr().err


def test_cli_module_bench_runs_in_bf16(tmp_path: Path) -> None:
    """``--precision bf16`` on the module bench: its table names bf16 and holds the GSA / conv time ratio."""
    argv = ["module", "--quick", "--precision", "bf16", "--shapes", "8x8x16", "--layers", "gsa", "conv3x3"]
    assert bench_main([*argv, "--out", str(tmp_path)]) == 0
    with open(tmp_path / f"{result_stem('module', 'cpu', 'bf16', cpu_isa())}.csv", newline="") as f:
        rows = {r["layer"]: r for r in csv.DictReader(f)}
    assert [r["status"] for r in rows.values()] == ["ok", "ok"]
    assert all(r["precision"] == "bf16" for r in rows.values())
    ratio = float(rows["gsa"]["fwd_bwd_ms"]) / float(rows["conv3x3"]["fwd_bwd_ms"])
    assert float(rows["gsa"]["ratio_vs_conv"]) == pytest.approx(ratio, rel=1e-6)
