"""The memory-traffic model (``gsanet.bench.traffic``): hand-counted bytes, plan ordering, the networks' shapes."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import timm
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from gsanet.bench import cli
from gsanet.bench.traffic import (
    MODES,
    PLANS,
    Shape,
    module_traffic,
    network_shapes,
    run_traffic,
    total_bytes,
)
from gsanet.layers import GlobalSelfAttention, axial_kernel, gsa
from gsanet.layers.axial_ops import oriented_empty

# B=2, C=4, 2x2: every full-size tensor (x, q, k, v, col, z, row, out) has u = 32 elements.
_S1 = Shape(1, 4, 4, 2, 1, 2, 2, batch=2)
# B=1, C=1, 4x4 at stride 2: full size u = 16 elements, pooled output and pooled queries 4 elements.
_S2 = Shape(1, 1, 1, 1, 2, 4, 4, batch=1)

# Each expected value is a sum, pass by pass, of elements read + written, times bytes per element.
HAND_COUNTS = [
    (_S1, "infer", "conv", 4, 4 * (32 + 32)),
    (_S1, "train", "conv", 4, 4 * (64 + 64 + 64)),  # forward, data grad, weight grad
    # proj 1+3, v copy 2, q copy 2, softmax 2, context 2, column 3, BN 2, row 3, content out 2, sum 3 (x32)
    (_S1, "infer", "before", 4, 4 * 32 * (4 + 2 + 2 + 2 + 2 + 3 + 2 + 3 + 2 + 3)),
    # + BN statistics 1; backward: row 5, BN 3, column 5, add 3, content 2+2+2+2+3, add 3, add 3, cat 6, proj 4+4
    (_S1, "train", "before", 4, 4 * 32 * (26 + 5 + 3 + 5 + 3 + 11 + 3 + 3 + 6 + 8)),
    # bf16 (x32 elements, bytes per element): proj 4*2, casts 3*2+3*4, softmax 4+4, context 4+4, column 3*2, BN 2*2,
    # row 3*2, content out 4+4, cast back 4+2, sum 3*2
    (_S1, "infer", "before", 2, 32 * (8 + 18 + 8 + 8 + 6 + 4 + 6 + 8 + 6 + 6)),
    # no BN pass; content output added by baddbmm (read q, row; write out) instead of the output GEMM and the sum
    (_S1, "infer", "now", 4, 4 * 32 * (4 + 2 + 2 + 2 + 2 + 3 + 3 + 3)),
    (_S1, "train", "now", 4, 4 * 32 * (4 + 2 + 2 + 2 + 2 + 3 + 1 + 2 + 3 + 3 + 49)),
    # bf16 now: the content branch in bf16, so the same elements as fp32 at 2 bytes
    (_S1, "infer", "now", 2, 2 * 32 * (4 + 2 + 2 + 2 + 2 + 3 + 3 + 3)),
    # proj 4, context reduction 2, column 3, row 3; backward row 5, column (q v k grad_z col grad_q) 6 + 3, proj 5
    (_S1, "infer", "minimum", 4, 4 * 32 * (4 + 2 + 3 + 3)),
    (_S1, "train", "minimum", 4, 4 * 32 * (12 + 5 + 9 + 5)),
    (_S2, "train", "conv", 4, 4 * (16 + 4) * 3),
    # proj 16+48, v copy 32, q copy 32, softmax 32, context 32, column 48, BN 32, row 48, content out 32, sum 48,
    # pool 16+4
    (_S2, "infer", "before", 4, 4 * (64 + 32 + 32 + 32 + 32 + 48 + 32 + 48 + 32 + 48 + 20)),
    # no BN pass, content output added by baddbmm (read q, row; write out), then the pool 16+4
    (_S2, "infer", "now", 4, 4 * (64 + 32 + 32 + 32 + 32 + 48 + 48 + 48 + 20)),
    # forward proj 64, context 32, column 48, row 16+16+4; backward row 16+16+4+32, column 96+48, proj 64+16
    (_S2, "train", "minimum", 4, 4 * (64 + 32 + 48 + 36 + 68 + 144 + 80)),
]


@pytest.mark.parametrize(("shape", "mode", "plan", "elem_bytes", "expected"), HAND_COUNTS)
def test_module_traffic_matches_hand_count(shape: Shape, mode: str, plan: str, elem_bytes: int, expected: int) -> None:
    assert total_bytes(module_traffic(shape, mode=mode, plan=plan, elem_bytes=elem_bytes)) == expected


def test_inference_has_no_backward_and_training_has_both_phases() -> None:
    for plan in PLANS:
        assert {p.phase for p in module_traffic(_S1, mode="infer", plan=plan, elem_bytes=4)} == {"fwd"}
        assert {p.phase for p in module_traffic(_S1, mode="train", plan=plan, elem_bytes=4)} == {"fwd", "bwd"}


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize(("height", "width"), [(7, 7), (28, 28), (5, 9)])
def test_plans_are_ordered_minimum_now_before(stride: int, height: int, width: int) -> None:
    shape = Shape(1, 24, 48, 8, stride, height, width, batch=3)
    for mode in MODES:
        for elem_bytes in (2, 4):
            before, now, minimum = (
                total_bytes(module_traffic(shape, mode=mode, plan=p, elem_bytes=elem_bytes))
                for p in ("before", "now", "minimum")
            )
            assert minimum <= now <= before, (mode, elem_bytes)
            if mode == "infer" or elem_bytes == 2:  # fp32 training: the saved sum equals the added layout copy
                assert now < before, (mode, elem_bytes)


def test_module_traffic_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="plan"):
        module_traffic(_S1, mode="train", plan="best", elem_bytes=4)
    with pytest.raises(ValueError, match="mode"):
        module_traffic(_S1, mode="eval", plan="before", elem_bytes=4)
    with pytest.raises(ValueError, match="elem_bytes"):
        module_traffic(_S1, mode="train", plan="before", elem_bytes=3)
    with pytest.raises(ValueError, match="stride"):
        Shape(1, 4, 4, 2, 3, 2, 2, batch=2)


def test_network_shapes_match_the_tiny_models_gsa_modules() -> None:
    shapes = network_shapes("gsa_resnet26_tiny")
    fields = [(s.stage, s.dim, s.dim_out, s.heads, s.stride, s.height, s.width, s.batch, s.count) for s in shapes]
    assert fields == [
        (1, 16, 16, 2, 1, 28, 28, 128, 1),
        (2, 32, 32, 4, 2, 28, 28, 128, 1),
        (2, 32, 32, 4, 1, 14, 14, 128, 1),
        (3, 64, 64, 8, 2, 14, 14, 128, 1),
        (3, 64, 64, 8, 1, 7, 7, 128, 3),
        (4, 128, 128, 8, 2, 7, 7, 128, 1),
    ]
    modules = [m for m in timm.create_model("gsa_resnet26_tiny").modules() if isinstance(m, GlobalSelfAttention)]
    assert sum(s.count for s in shapes) == len(modules)


@pytest.mark.slow
def test_network_shapes_of_gsa_resnet50() -> None:
    shapes = network_shapes("gsa_resnet50")
    fields = [(s.stage, s.dim, s.stride, s.height, s.count) for s in shapes]
    assert fields == [(1, 64, 1, 56, 3), (2, 128, 2, 56, 1), (2, 128, 1, 28, 3), (3, 256, 2, 28, 1),
                      (3, 256, 1, 14, 5), (4, 512, 2, 14, 1), (4, 512, 1, 7, 2)]


def test_run_traffic_writes_tables(tmp_path: Path) -> None:
    paths = run_traffic(tmp_path, "bf16", ["gsa_resnet26_tiny"])
    assert sorted(p.name for p in paths) == ["traffic_gsa_resnet26_tiny_bf16.csv", "traffic_gsa_resnet26_tiny_bf16.md"]
    rows = list(csv.DictReader(open(tmp_path / "traffic_gsa_resnet26_tiny_bf16.csv")))
    assert [r["mode"] for r in rows] == ["train"] * 6 + ["infer"] * 6
    first = Shape(1, 16, 16, 2, 1, 28, 28, batch=128)
    assert int(rows[0]["before"]) == total_bytes(module_traffic(first, mode="train", plan="before", elem_bytes=2))
    text = (tmp_path / "traffic_gsa_resnet26_tiny_bf16.md").read_text()
    assert "Per pass, 28x28x16, stride 1, batch 128, train" in text and "content: cast q,k,v to fp32" in text


def test_cli_traffic_and_its_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["traffic", "--models", "gsa_resnet26_tiny", "--out", str(tmp_path)]) == 0
    assert "training step (forward + backward)" in capsys.readouterr().out
    assert (tmp_path / "traffic_gsa_resnet26_tiny_fp32.csv").exists()
    assert cli.main(["traffic", "--models", "conv_resnet26_tiny", "--out", str(tmp_path)]) == 2
    assert "no GlobalSelfAttention modules" in capsys.readouterr().err
    assert cli.main(["traffic", "--models", "no_such_model", "--out", str(tmp_path)]) == 2
    assert "unknown model" in capsys.readouterr().err


class _ByteCounter(TorchDispatchMode):
    """Counts, per ATen operator call, the bytes of its distinct tensor inputs (read) and outputs (written), views
    excluded, tensors under ``threshold`` elements (weights, statistics, context matrices) ignored."""

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold, self.total, self.paused = threshold, 0, False

    def record(self, tensors: list[torch.Tensor]) -> None:
        self.total += sum(t.numel() * t.element_size() for t in tensors if t.numel() >= self.threshold)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (torch's signature)
        out = func(*args, **(kwargs or {}))
        schema = func._schema
        alias = schema.returns[0].alias_info if schema.returns else None
        if self.paused or (alias is not None and not alias.is_write):  # a view
            return out
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        ins = {(t.data_ptr(), t.shape, t.stride()): t for t in tensors}  # a tensor passed twice is read once
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if not schema.is_mutable and {t.data_ptr() for t in outs} & {k[0] for k in ins}:
            return out  # a view its schema does not mark (_unsafe_view)
        if func is torch.ops.aten.avg_pool2d_backward.default:
            ins = {0: args[0]}  # its input ``self`` gives only the shape; the pass reads the gradient
        self.record([*ins.values(), *outs])
        return out


class _KernelStandIn(torch.autograd.Function):
    """Stands in for the fused axial kernel, counted as the model counts it: forward reads q and v and writes the
    output; backward reads q, v and the gradient and writes grad_q and grad_v."""

    counter: _ByteCounter

    @staticmethod
    def forward(ctx, q: torch.Tensor, v: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        counter = _KernelStandIn.counter
        counter.paused = True
        out = oriented_empty(v, v.shape[2]).copy_(v)
        counter.paused = False
        counter.record([q, v, out])
        ctx.save_for_backward(q, v)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:  # noqa: ANN001
        q, v = ctx.saved_tensors
        counter = _KernelStandIn.counter
        counter.paused = True
        grad_q, grad_v = oriented_empty(q, q.shape[2]).copy_(q), oriented_empty(v, v.shape[2]).copy_(v)
        counter.paused = False
        counter.record([q, v, grad, grad_q, grad_v])
        return grad_q, grad_v, None


def _normalized_stand_in(q: torch.Tensor, v: torch.Tensor, *args: object) -> torch.Tensor:
    """Stands in for ``axial_kernel.forward_normalized``: reads q and v, writes the output."""
    counter = _KernelStandIn.counter
    counter.paused = True
    out = oriented_empty(v, v.shape[2]).copy_(v)
    counter.paused = False
    counter.record([q, v, out])
    return out


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_now_plan_matches_the_layers_traced_operators(
    stride: int, mode: str, precision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``now`` plan against the ATen operators ``GlobalSelfAttention`` actually calls, forward and backward
    (fp32, or bf16 autocast), each counted as reading its inputs and writing its outputs once; the axial kernel by a
    stand-in with the kernel's inputs and outputs."""
    shape = Shape(1, 8, 8, 2, stride, 16, 16, batch=2)
    e = 2 if precision == "bf16" else 4
    act = shape.batch * shape.dim_out * shape.height * shape.width
    counter = _KernelStandIn.counter = _ByteCounter(act // 8)
    monkeypatch.setattr(gsa, "FusedAxialRelPosAttention", _KernelStandIn)
    monkeypatch.setattr(axial_kernel, "usable", lambda *tensors: True)
    monkeypatch.setattr(axial_kernel, "forward_normalized", _normalized_stand_in)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    monkeypatch.setattr(gsa, "_projection_as_bmm", lambda x, dim: dtype)  # as on a CPU where it was measured faster
    module = GlobalSelfAttention(8, 8, heads=2, stride=stride, feat_size=16).train(mode == "train")
    x = torch.randn(2, 8, 16, 16, dtype=dtype, requires_grad=mode == "train")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"), counter:
        with torch.set_grad_enabled(mode == "train"):  # inference without autograd: the batch norm folded
            y = module(x)
    if mode == "train":
        grad = torch.randn_like(y)
        with counter:
            y.backward(grad)
    # Where the model splits one operator in two passes: native_batch_norm's statistics read of its input.
    split = act * e if mode == "train" else 0
    assert total_bytes(module_traffic(shape, mode=mode, plan="now", elem_bytes=e)) == counter.total + split
