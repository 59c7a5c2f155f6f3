"""Smoke tests of ``gsanet bench``: every benchmark runs at a tiny size with one repeat and writes its files.

No timing is ever asserted: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from gsanet.bench import cli
from gsanet.bench.config import BenchConfig
from gsanet.bench.environment import cpu_isa
from gsanet.bench.measure import MemoryTracker, count_flops, fit_power_law, time_interleaved
from gsanet.bench.model import COLUMNS as MODEL_COLUMNS
from gsanet.bench.model import run_model_bench
from gsanet.bench.module import COLUMNS as MODULE_COLUMNS
from gsanet.bench.module import parse_shape, profile_layer, run_module_bench
from gsanet.bench.peers import LAYERS, build_layer, halo_block_size, sdpa_kernel
from gsanet.bench.report import result_stem
from gsanet.bench.scaling import COLUMNS as SCALING_COLUMNS
from gsanet.bench.scaling import FIT_COLUMNS, run_scaling_bench


def _cfg(tmp_path: Path, **kwargs) -> BenchConfig:
    return BenchConfig(quick=True, repeats=1, warmup=0, batch_size=2, out=str(tmp_path), **kwargs)


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_module_bench_writes_csv_and_markdown(tmp_path: Path) -> None:
    table = run_module_bench(_cfg(tmp_path), shapes=[(8, 8, 16)])
    paths = table.save(tmp_path)
    stem = result_stem("module", "cpu", "fp32", cpu_isa())
    assert [p.name for p in paths] == [f"{stem}.csv", f"{stem}.md"]
    columns, rows = _read_csv(paths[0])
    assert columns == MODULE_COLUMNS
    assert [r["layer"] for r in rows] == list(LAYERS)
    for row in rows:
        assert row["status"] == "ok", row
        assert row["shape"] == "8x8x16"
        for key in ("fwd_bwd_ms", "fwd_bwd_min_ms", "fwd_ms", "peak_mem_mb", "ratio_vs_conv", "params", "macs"):
            assert float(row[key]) > 0, (row["layer"], key)
    by_layer = {r["layer"]: r for r in rows}
    assert float(by_layer["conv3x3"]["ratio_vs_conv"]) == pytest.approx(1.0)
    assert float(by_layer["conv3x3"]["macs"]) == 2 * 16 * 16 * 9 * 8 * 8  # batch 2, 16 -> 16 channels, 3x3, 8x8
    assert by_layer["gsa"]["ratio_vs_gsa_pytorch"] and by_layer["gsa"]["mem_ratio_vs_gsa_pytorch"]
    gemm_over_ours = float(by_layer["gsa_gemm"]["fwd_bwd_ms"]) / float(by_layer["gsa"]["fwd_bwd_ms"])
    assert float(by_layer["gsa"]["gemm_path_over_ours"]) == pytest.approx(gemm_over_ours, rel=1e-3)
    assert by_layer["gsa"]["isa"].startswith(cpu_isa())
    assert by_layer["conv3x3"]["ratio_vs_gsa_pytorch"] == ""
    markdown = paths[1].read_text()
    assert "| shape | layer | fwd_bwd_ms |" in markdown and "Peak memory:" in markdown


def test_module_bench_records_skip_reasons(tmp_path: Path) -> None:
    # 11x11 has no halo block size in 4..8; a tiny memory cap rules out the layers that store N x N attention.
    table = run_module_bench(
        _cfg(tmp_path, mem_cap_gb=1e-6), shapes=[(11, 11, 16)], layers=["conv3x3", "halo", "botnet", "nonlocal_math"]
    )
    status = {r["layer"]: r["status"] for r in table.rows}
    assert status["conv3x3"] == "ok"
    assert status["halo"].startswith("skipped:") and "not divisible" in status["halo"]
    for name in ("botnet", "nonlocal_math"):
        assert status[name].startswith("skipped: would need"), status[name]


def test_scaling_bench_writes_csv_fit_and_plot(tmp_path: Path) -> None:
    table = run_scaling_bench(_cfg(tmp_path), sizes=[4, 6, 8], channels=16)
    paths = table.save(tmp_path)
    stem = result_stem("scaling", "cpu", "fp32", cpu_isa())
    names = {p.name for p in paths}
    assert names == {f"{stem}.csv", f"{stem}_fit.csv", f"{stem}_fit.md", f"{stem}.png", f"{stem}.md"}
    assert (tmp_path / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    columns, rows = _read_csv(tmp_path / f"{stem}.csv")
    assert columns == SCALING_COLUMNS
    assert len(rows) == 3 * 3 and all(r["status"] == "ok" for r in rows)
    assert {r["layer"] for r in rows} == {"gsa", "nonlocal", "nonlocal_math"}
    fit_columns, fits = _read_csv(tmp_path / f"{stem}_fit.csv")
    assert fit_columns == FIT_COLUMNS and len(fits) == 3
    for fit in fits:
        assert math.isfinite(float(fit["time_exponent"])) and math.isfinite(float(fit["mem_exponent"]))
    assert "Growth exponents" in (tmp_path / f"{stem}.md").read_text()


def test_scaling_bench_stops_at_memory_cap(tmp_path: Path) -> None:
    table = run_scaling_bench(_cfg(tmp_path, mem_cap_gb=2e-3), sizes=[4, 8, 16], channels=16, layers=["nonlocal_math"])
    status = [r["status"] for r in table.rows]
    # 16x16, batch 2: 3.5 attention matrices of 2 x 8 x 256^2 floats = 14 MB > 2 MB.
    assert status[:2] == ["ok", "ok"] and status[2].startswith("skipped: would need"), status


def test_model_bench_measures_and_records_unregistered(tmp_path: Path) -> None:
    table = run_model_bench(_cfg(tmp_path), models=[("resnet18", 64, ""), ("no_such_model_xyz", 64, "")])
    paths = table.save(tmp_path)
    columns, rows = _read_csv(paths[0])
    assert columns == MODEL_COLUMNS
    ok, missing = rows
    assert ok["status"] == "ok"
    keys = ("train_img_s", "infer_b1_ms", "infer_batch_ms", "fwd_bwd_gflop", "achieved_gflops", "matmul_peak_gflops")
    for key in keys:
        assert float(ok[key]) > 0, key
    assert missing["status"].startswith("skipped:") and "not registered" in missing["status"]


def test_model_bench_pairs_gsa_with_its_conv_twin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pair table: the tiny pair timed side by side (training, then inference), GSA over conv images/s for both,
    each from the model table's own columns, beside its target and the FLOP ceiling; also written as markdown."""
    from gsanet.bench import model
    from gsanet.bench.model import MODELS, PAIR_COLUMNS, PAIRS

    timed: list[list[str]] = []

    def recording(fns, **kwargs):  # noqa: ANN001, ANN202 (the wrapped function's signature)
        timed.append(list(fns))
        return time_interleaved(fns, **kwargs)

    monkeypatch.setattr(model, "time_interleaved", recording)
    cases = [m for m in MODELS if m.name.endswith("resnet26_tiny")][::-1]  # conv first: GSA is still timed first
    table = model.run_model_bench(_cfg(tmp_path, time_budget_s=1.0), models=cases)
    paths = table.save(tmp_path)
    assert timed == [["gsa_resnet26_tiny@28", "conv_resnet26_tiny@28"]] * 3  # training, batch 1, inference batch
    conv, gsa = table.rows
    assert [r["status"] for r in table.rows] == ["ok", "ok"]
    assert all(r["batch"] == 2 and r["infer_batch"] == 2 for r in table.rows)  # --quick's batch applies to both
    stem = result_stem("model", "cpu", "fp32", cpu_isa())
    assert [p.name for p in paths] == [f"{stem}.csv", f"{stem}_pairs.csv", f"{stem}_pairs.md", f"{stem}.md"]
    columns, (pair,) = _read_csv(tmp_path / f"{stem}_pairs.csv")
    assert columns == PAIR_COLUMNS
    assert (pair["gsa"], pair["precision"], pair["isa"]) == ("gsa_resnet26_tiny", "fp32", cpu_isa())
    assert (pair["train_batch"], pair["infer_batch"]) == ("2", "2")
    train, infer = float(pair["train_ratio"]), float(pair["infer_ratio"])
    assert train == pytest.approx(gsa["train_img_s"] / conv["train_img_s"], rel=1e-6)
    assert train == pytest.approx(conv["train_step_ms"] / gsa["train_step_ms"], rel=1e-6)
    assert infer == pytest.approx(gsa["infer_batch_img_s"] / conv["infer_batch_img_s"], rel=1e-6)
    assert infer == pytest.approx(conv["infer_batch_ms"] / gsa["infer_batch_ms"], rel=1e-6)
    targets = next(p for p in PAIRS if p.gsa == "gsa_resnet26_tiny")
    assert pair["train_target"] == ">= 0.8" and pair["infer_target"] == ">= 0.9"
    assert pair["train_met"] == ("met" if train >= targets.train_target.value else "missed")
    assert pair["infer_met"] == ("met" if infer >= targets.infer_target.value else "missed")
    assert float(pair["flop_ceiling"]) == pytest.approx(conv["fwd_bwd_gflop"] / gsa["fwd_bwd_gflop"], rel=1e-6)
    assert 0.5 < float(pair["flop_ceiling"]) < 1.5  # near-equal multiply-adds by design
    markdown = (tmp_path / f"{stem}_pairs.md").read_text()
    assert "| gsa | conv | img_size | precision | isa | train_batch |" in markdown
    assert "| gsa_resnet26_tiny | conv_resnet26_tiny | 28 | fp32 |" in markdown and "Pairs:" in markdown
    assert "| model |" not in markdown and "| model |" in (tmp_path / f"{stem}.md").read_text()


def test_model_cases_use_the_issue_batches(tmp_path: Path) -> None:
    """Without ``--batch-size`` a case's own batches hold: training 128 / inference 256 for the tiny pair, 8 / 16 for
    the ResNet-50 pair; an explicit batch applies to both."""
    from gsanet.bench.model import MODELS, ModelCase, run_model_bench

    batches = {m.name: (m.batch or 8, m.infer_batch) for m in MODELS}
    assert batches["gsa_resnet26_tiny"] == batches["conv_resnet26_tiny"] == (128, 256)
    assert batches["gsa_resnet50"] == batches["conv_resnet50"] == (8, 16)
    unregistered = [ModelCase("no_such_model_xyz", 28, "", 1, 10, 3, 5)]  # rows without building or timing anything
    (row,) = run_model_bench(BenchConfig(out=str(tmp_path)), models=unregistered).rows
    assert (row["batch"], row["infer_batch"]) == (3, 5) and row["status"].startswith("skipped:")
    (row,) = run_model_bench(BenchConfig(batch_size=4, out=str(tmp_path)), models=unregistered).rows
    assert (row["batch"], row["infer_batch"]) == (4, 4)


def test_pairs_are_timed_together_gsa_first() -> None:
    from gsanet.bench.model import ModelCase, timed_together

    cases = [
        ModelCase("conv_resnet26_tiny", 28),
        ModelCase("resnet18", 224),
        ModelCase("gsa_resnet26_tiny", 28),
        ModelCase("gsa_resnet50", 224),  # its twin is not listed: alone
        ModelCase("conv_resnet50", 256),  # a twin at another input size: alone
    ]
    assert timed_together(cases) == [[2, 0], [1], [3], [4]]


def test_cli_prints_table_and_names_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "module", "--quick", "--shapes", "8x8x16", "--layers", "gsa", "conv3x3", "--out", str(tmp_path)]
    from gsanet.cli import main

    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| shape | layer |" in out and "| 8x8x16 | gsa |" in out
    version = torch.__version__.split("+")[0]
    assert (tmp_path / f"bench_module_torch{version}_cpu_fp32_{cpu_isa()}.csv").exists()


def test_axial_bench_compares_kernel_and_gemm_path(tmp_path: Path) -> None:
    from gsanet.bench.axial import COLUMNS, run_axial_bench
    from gsanet.layers import axial_kernel

    table = run_axial_bench(_cfg(tmp_path), shapes=[("t", 2, 2, 3, 5, 6)])
    paths = table.save(tmp_path)
    assert paths[0].name == f"{result_stem('axial', 'cpu', 'fp32', cpu_isa())}.csv"
    columns, rows = _read_csv(paths[0])
    assert columns == COLUMNS and [(r["pass"], r["S"], r["lines"]) for r in rows] == [
        ("row", "6", "20"),
        ("column", "5", "24"),
    ]
    for row in rows:
        assert row["variant"] == axial_kernel.selected_variant() and row["isa"].startswith(cpu_isa())
        ratio = float(row["gemm_ms"]) / float(row["fused_ms"])
        assert float(row["gemm_over_fused"]) == pytest.approx(ratio, rel=1e-3)


def test_cli_isa_reruns_capped_at_avx2(tmp_path: Path) -> None:
    """``--isa avx2`` re-runs the command with PyTorch, oneDNN, MKL and the kernel at AVX2; the table says so."""
    import subprocess
    import sys

    from gsanet.layers import axial_kernel

    if "avx2" not in axial_kernel.host_variants():
        pytest.skip("this CPU has no AVX2")
    argv = ["bench", "axial", "--quick", "--repeats", "1", "--isa", "avx2", "--out", str(tmp_path)]
    done = subprocess.run([sys.executable, "-m", "gsanet.cli", *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    _, rows = _read_csv(tmp_path / f"{result_stem('axial', 'cpu', 'fp32', 'avx2')}.csv")
    assert rows and all(r["variant"] == "avx2" and r["isa"].startswith("avx2") for r in rows)
    assert "MKL_ENABLE_INSTRUCTIONS=AVX2" in rows[0]["isa"]


def test_cli_config_file_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("precision: bf16\nrepeats: 3\nmem_cap_gb: 2\nbatch_size: 4\n")
    args = cli.build_parser().parse_args(["module", "--config", str(good), "--repeats", "5"])
    cfg = cli.resolve_config(args)
    assert (cfg.precision, cfg.repeats, cfg.mem_cap_gb, cfg.batch_size) == ("bf16", 5, 2.0, 4)  # flag beats file
    for text, problem in (("not_an_option: 1\n", "unknown key(s) not_an_option"), ("repeats: three\n", "repeats must")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        assert cli.main(["module", "--config", str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("gsanet bench: error: ") and problem in err and err.count("\n") == 1
    assert cli.main(["module", "--precision", "fp16"]) == 2
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


def test_cli_batch_size_and_out_flags() -> None:
    args = cli.build_parser().parse_args(["model", "--batch-size", "4", "--out", "a"])
    assert (args.batch_size, args.out) == (4, "a")


def test_profile_names_operators(tmp_path: Path) -> None:
    text = profile_layer(_cfg(tmp_path), layer="gsa", shape=(8, 8, 16), row_limit=5)
    assert "aten::" in text and "Self CPU" in text


def test_bf16_autocast_runs(tmp_path: Path) -> None:
    table = run_module_bench(_cfg(tmp_path, precision="bf16"), shapes=[(8, 8, 16)], layers=["gsa", "conv3x3"])
    assert [r["status"] for r in table.rows] == ["ok", "ok"]
    assert table.env["precision"] == "bf16"


def test_memory_tracker_counts_new_storage_once() -> None:
    x = torch.randn(1000)  # 4000 bytes, exists before: not counted

    def fn() -> None:
        y = x * 2  # 4000 live
        z = y + 1  # 8000 live: the peak
        _ = z.view(10, 100)  # a view: no new storage
        del y  # 4000 live
        _w = z * 3  # 8000 live again

    tracker = MemoryTracker(ignore=[x])
    with tracker:
        fn()
    assert tracker.peak == 8000
    assert tracker.live == 0  # everything freed


def test_flop_count_includes_cpu_flash_attention() -> None:
    layer = build_layer("nonlocal", 16, 8, 8).module
    x = torch.randn(2, 16, 8, 8)
    assert "flash" in sdpa_kernel(layer, 16, "cpu") or "math" in sdpa_kernel(layer, 16, "cpu")
    flops = count_flops(lambda: layer(x))
    qkv = 2 * 2 * 64 * 16 * 48  # 1x1 conv 16 -> 48 channels
    attention = 2 * (2 * 2 * 8 * 64 * 64 * 2)  # q k^T and p v: batch 2, 8 heads, N = 64, head dim 2
    assert flops == qkv + attention


def test_helpers() -> None:
    assert fit_power_law([1, 2, 4, 8], [3, 12, 48, 192]) == pytest.approx(2.0)
    assert fit_power_law([1], [1]) is None
    assert (halo_block_size(56, 56), halo_block_size(28, 28), halo_block_size(7, 7), halo_block_size(11, 11)) == (
        8,
        7,
        7,
        None,
    )
    assert parse_shape("56x56x64") == (56, 56, 64)
    with pytest.raises(ValueError):
        parse_shape("56x56")
    with pytest.raises(ValueError):
        BenchConfig(precision="fp16")


def test_markdown_columns_are_chosen_by_name() -> None:
    from gsanet.bench import axial, model, module, scaling
    from gsanet.bench.report import markdown_columns

    for mod in (axial, model, module, scaling):
        assert mod.MD_COLUMNS == [c for c in mod.COLUMNS if c not in mod.CSV_ONLY] and "torch" not in mod.MD_COLUMNS
    with pytest.raises(ValueError, match="not columns"):
        markdown_columns(["a", "b"], ["c"])
