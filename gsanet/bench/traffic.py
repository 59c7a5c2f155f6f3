"""An analytic model of the memory traffic of the GSA module and of the 3x3 convolution it replaces.

For one module shape, :func:`module_traffic` lists the passes over memory a forward (and, in training, backward)
call makes, each with the bytes it reads and writes; :func:`network_traffic` sums them over the GSA modules of a
network. Four plans are modelled:

* ``conv``: the 3x3 convolution, ideally (oneDNN): forward reads x and writes y; backward a data-gradient pass
  (reads grad_y, writes grad_x) and a weight-gradient pass (reads x and grad_y).
* ``before``: the GSA module as it ran before issue 20's changes (the content branch in float32 under bf16
  autocast, a separate sum, the batch norm as its own pass in eval mode too).
* ``now``: the GSA module as ``gsanet.layers.gsa`` runs it with the fused axial kernel (traced op by op by the tests):
  ``before`` with (a) no float32 casts of q/k/v in the content branch under bf16 (it runs in the element dtype),
  (b) the content output added by the GEMM that produces it (``baddbmm`` into the row output, no separate sum),
  (c) in eval mode the batch norm applied on load by the row pass (no batch-norm pass).
* ``minimum``: the fewest passes the mathematics allows (see ``docs/traffic.md``).

Assumptions (``docs/traffic.md`` gives them with the reasons): activations and their gradients only (weights, the
relative tables, batch-norm statistics and the content ``dk x dv`` context matrices are under 1% and left out); each
pass streams its inputs and outputs once, so re-reads because a working set exceeds the cache are not modelled;
``dim_key = dim_out``, as in the GSA-ResNets. Bytes are exact integers; reports show MB = 10^6 bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from gsanet.tables import markdown_table, write_csv

__all__ = [
    "MODES",
    "NETWORKS",
    "PLANS",
    "Pass",
    "Shape",
    "module_traffic",
    "network_shapes",
    "network_traffic",
    "run_traffic",
    "total_bytes",
    "traffic_markdown",
]

PLANS = ("conv", "before", "now", "minimum")
MODES = ("train", "infer")  # train: forward + backward, batch norm on batch statistics; infer: eval-mode forward
ELEM_BYTES = {"fp32": 4, "bf16": 2}
NETWORKS = {"gsa_resnet26_tiny": 128, "gsa_resnet50": 8}
"""The networks of issue 20 and the batch sizes their training steps are measured at."""
_BREAKDOWN = {"gsa_resnet26_tiny": (1, 16, 28, 28), "gsa_resnet50": (1, 64, 56, 56)}  # (stage, width, H, W)
_MB = 1e6


@dataclass(frozen=True)
class Shape:
    """One GSA module (or the 3x3 convolution it replaces) at one input size.

    Attributes:
        stage: the network stage (1-based).
        dim: input channels.
        dim_out: output channels (= query/key channels).
        heads: attention heads (no effect on the traffic; kept to identify the module).
        stride: 1 or 2.
        height: input height.
        width: input width.
        batch: images per call.
        count: how many modules of this shape the network has.
    """

    stage: int
    dim: int
    dim_out: int
    heads: int
    stride: int
    height: int
    width: int
    batch: int
    count: int = 1

    def __post_init__(self) -> None:
        if self.stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {self.stride}")
        if min(self.dim, self.dim_out, self.height, self.width, self.batch) < 1:
            raise ValueError(f"every size of a Shape must be positive, got {self}")


@dataclass(frozen=True)
class Pass:
    """One pass over memory: its name, ``"fwd"`` or ``"bwd"``, and the bytes it reads and writes."""

    name: str
    phase: str
    read_bytes: int
    write_bytes: int

    @property
    def total(self) -> int:
        return self.read_bytes + self.write_bytes


@dataclass(frozen=True)
class _Sizes:
    """Element counts of the tensors the passes move."""

    x: int  # module input, B * dim * N
    q: int  # queries (= keys), B * dim_out * N
    v: int  # values, column/row outputs, the sum before the pool: B * dim_out * N
    o: int  # module output, B * dim_out * H_out * W_out (= v at stride 1)

    @classmethod
    def of(cls, s: Shape) -> _Sizes:
        n = s.height * s.width
        n_out = math.ceil(s.height / s.stride) * math.ceil(s.width / s.stride)  # ceil-mode pool / padded 3x3 conv
        return cls(s.batch * s.dim * n, s.batch * s.dim_out * n, s.batch * s.dim_out * n, s.batch * s.dim_out * n_out)


class _Passes:
    """Collects passes given in elements times bytes per element."""

    def __init__(self, phase: str) -> None:
        self.phase, self.items = phase, []

    def add(self, name: str, read: int, write: int = 0) -> None:
        self.items.append(Pass(name, self.phase, int(read), int(write)))


def _conv(z: _Sizes, mode: str, e: int) -> list[Pass]:
    f, b = _Passes("fwd"), _Passes("bwd")
    f.add("conv3x3", z.x * e, z.o * e)
    if mode == "train":
        b.add("conv3x3 data grad", z.o * e, z.x * e)
        b.add("conv3x3 weight grad", (z.x + z.o) * e)
    return f.items + b.items


def _content_forward(f: _Passes, z: _Sizes, plan: str, e: int, stride: int) -> int:
    """The content branch up to its context matrices; returns the bytes per element it computes in."""
    cast = plan == "before" and e < 4  # autocast: the branch runs in float32
    c = max(e, 4) if plan == "before" else e
    if cast:
        f.add("content: cast q,k,v to fp32", (2 * z.q + z.v) * e, (2 * z.q + z.v) * 4)
    else:  # torch.matmul folds (B, heads), which the strided q/v slices of the projection output do not allow
        f.add("content: v^T contiguous copy", z.v * e, z.v * e)
        f.add("content: q contiguous copy", z.q * e, z.q * e)
    f.add("content: key softmax", z.q * c, z.q * c)
    f.add("content: context p v^T", (z.q + z.v) * c)
    return c


def _gsa_forward(z: _Sizes, plan: str, mode: str, e: int, stride: int) -> list[Pass]:
    f = _Passes("fwd")
    f.add("qkv projection", z.x * e, (2 * z.q + z.v) * e)
    if plan == "minimum":
        f.add("content: context reduction (k, v)", (z.q + z.v) * e)
        f.add("column pass (+BN stats)" if mode == "train" else "column pass", (z.q + z.v) * e, z.v * e)
        name = "row pass (BN on load, +content, +pool)" if stride == 2 else "row pass (BN on load, +content)"
        f.add(name, (z.q + z.v) * e, z.o * e)
        return f.items
    c = _content_forward(f, z, plan, e, stride)
    f.add("column pass", (z.q + z.v) * e, z.v * e)
    if mode == "train":
        f.add("batch norm statistics", z.v * e)
    if plan == "before" or mode == "train":
        f.add("batch norm", z.v * e, z.v * e)
    f.add("row pass (BN on load)" if plan == "now" and mode == "infer" else "row pass", (z.q + z.v) * e, z.v * e)
    if plan == "before":
        f.add("content: output context^T q", z.q * c, z.v * c)
        if c != e:
            f.add("content: cast output back", z.v * c, z.v * e)
        f.add("sum content + row", 2 * z.v * e, z.v * e)
        if stride == 2:
            f.add("2x2 average pool", z.v * e, z.o * e)
    else:
        f.add("content: output + row (baddbmm)", (z.q + z.v) * e, z.v * e)
        if stride == 2:
            f.add("2x2 average pool", z.v * e, z.o * e)
    return f.items


def _content_backward(b: _Passes, z: _Sizes, plan: str, e: int, stride: int) -> None:
    cast = plan == "before" and e < 4
    c = max(e, 4) if plan == "before" else e
    g, q = z.v, z.q  # the content output's size
    if cast:
        b.add("content bwd: cast grad to fp32", g * e, g * 4)
    b.add("content bwd: grad_q = context grad", g * c, q * c)
    b.add("content bwd: grad_context = grad q^T", (g + q) * c)
    b.add("content bwd: grad_v = p^T grad_context", z.q * c, z.v * c)
    b.add("content bwd: grad_p = grad_context v", z.v * c, z.q * c)
    b.add("content bwd: softmax backward", 2 * z.q * c, z.q * c)
    if plan == "now":  # the gradient of the strided values' contiguous copy comes back transposed: autograd copies it
        b.add("content bwd: grad layout copy", z.v * e, z.v * e)
    if cast:
        b.add("content bwd: cast grad_q,k,v back", (2 * z.q + z.v) * 4, (2 * z.q + z.v) * e)


def _gsa_backward(z: _Sizes, plan: str, e: int, stride: int) -> list[Pass]:
    b = _Passes("bwd")
    qkv = 2 * z.q + z.v
    if plan == "minimum":
        name = "row bwd (+unpool, BN on load, content grad_q/grad_context, BN-bwd stats)"
        b.add(name, (z.q + z.v + z.o) * e, (z.q + z.v) * e)
        name = "column bwd (+BN bwd on load, content grad_k/grad_v, grad_q sum, into grad_qkv)"
        b.add(name, (3 * z.q + 3 * z.v) * e, qkv * e)
        b.add("qkv projection bwd (data + weight)", (qkv + z.x) * e, z.x * e)
        return b.items
    if stride == 2:
        b.add("2x2 average pool backward", z.o * e, z.v * e)
    b.add("row pass bwd", (z.q + 2 * z.v) * e, (z.q + z.v) * e)
    b.add("batch norm bwd", 2 * z.v * e, z.v * e)
    b.add("column pass bwd", (z.q + 2 * z.v) * e, (z.q + z.v) * e)
    b.add("add grad_q (row + column)", 2 * z.q * e, z.q * e)
    _content_backward(b, z, plan, e, stride)
    b.add("add grad_v (column + content)", 2 * z.v * e, z.v * e)
    b.add("add grad_q (+ content)", 2 * z.q * e, z.q * e)
    b.add("cat grad_q,k,v", qkv * e, qkv * e)
    b.add("qkv projection bwd data", qkv * e, z.x * e)
    b.add("qkv projection bwd weight", (qkv + z.x) * e)
    return b.items


def module_traffic(shape: Shape, *, mode: str, plan: str, elem_bytes: int) -> list[Pass]:
    """The passes one call makes (forward, then backward in training), with the bytes each reads and writes.

    Args:
        shape: the module shape.
        mode: ``"train"`` (forward + backward, batch statistics) or ``"infer"`` (eval-mode forward).
        plan: one of :data:`PLANS`.
        elem_bytes: bytes per activation element (4: float32; 2: bfloat16 autocast).

    Raises:
        ValueError: an unknown mode, plan or element size.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if plan not in PLANS:
        raise ValueError(f"plan must be one of {', '.join(PLANS)}, got {plan!r}")
    if elem_bytes not in (2, 4, 8):
        raise ValueError(f"elem_bytes must be 2 (bf16/fp16), 4 (fp32) or 8 (fp64), got {elem_bytes!r}")
    z = _Sizes.of(shape)
    if plan == "conv":
        return _conv(z, mode, elem_bytes)
    passes = _gsa_forward(z, plan, mode, elem_bytes, shape.stride)
    if mode == "train":
        passes += _gsa_backward(z, plan, elem_bytes, shape.stride)
    return passes


def total_bytes(passes: list[Pass]) -> int:
    """Bytes read plus bytes written by all the passes."""
    return sum(p.total for p in passes)


def network_shapes(model_name: str, batch: int | None = None) -> list[Shape]:
    """The GSA modules of a timm model at its default input size, grouped by shape (in network order).

    Instantiates the model and runs one eval-mode image through it (GEMM path: no kernel build) to record each
    module's input size; the batch of the returned shapes is ``batch`` (default :data:`NETWORKS`, else 8).
    """
    import timm
    import torch

    from gsanet.layers import GlobalSelfAttention, axial_kernel

    if not timm.is_model(model_name):
        raise ValueError(f"unknown model {model_name!r}; name a GSA model of timm's registry, e.g. gsa_resnet50")
    model = timm.create_model(model_name, pretrained=False).eval()
    found: list[tuple[str, GlobalSelfAttention, tuple[int, int]]] = []
    for name, module in model.named_modules():
        if isinstance(module, GlobalSelfAttention):
            module.register_forward_pre_hook(lambda m, a, name=name: found.append((name, m, tuple(a[0].shape[2:]))))
    if not any(isinstance(m, GlobalSelfAttention) for m in model.modules()):
        raise ValueError(f"{model_name} has no GlobalSelfAttention modules; name a GSA model, e.g. gsa_resnet50")
    channels, height, width = model.pretrained_cfg["input_size"]
    with torch.no_grad(), axial_kernel.kernel_enabled(False):
        model(torch.randn(1, channels, height, width))
    batch = NETWORKS.get(model_name, 8) if batch is None else batch
    counts: dict[Shape, int] = {}  # insertion-ordered: network order
    for name, m, (h, w) in found:
        stage = int(name.split(".")[1]) + 1 if name.startswith("stages.") else 0
        shape = Shape(stage, m.dim, m.dim_out, m.heads, m.stride, h, w, batch)
        counts[shape] = counts.get(shape, 0) + 1
    shapes = [replace(s, count=n) for s, n in counts.items()]
    return shapes


def network_traffic(
    model_name: str, *, mode: str, elem_bytes: int, shapes: list[Shape] | None = None
) -> list[dict[str, object]]:
    """One row per GSA module shape of a network: the shape and each plan's bytes for one module.

    Args:
        model_name: a timm GSA model (its shapes from :func:`network_shapes` unless ``shapes`` is given).
        mode: ``"train"`` or ``"infer"``.
        elem_bytes: bytes per activation element.
        shapes: the module shapes, to skip instantiating the model.
    """
    shapes = network_shapes(model_name) if shapes is None else shapes
    rows = []
    for s in shapes:
        row: dict[str, object] = dict(s.__dict__)
        for plan in PLANS:
            row[plan] = total_bytes(module_traffic(s, mode=mode, plan=plan, elem_bytes=elem_bytes))
        rows.append(row)
    return rows


def _mb(n: float) -> str:
    return f"{n / _MB:.1f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def _shape_table(rows: list[dict[str, object]]) -> str:
    columns = ["stage", "c_in", "C", "H x W", "stride", "count", "conv MB", "before MB", "now MB", "minimum MB"]
    columns += ["before/conv", "now/conv", "minimum/conv"]
    cells, totals = [], dict.fromkeys(PLANS, 0)
    for r in rows:
        for plan in PLANS:
            totals[plan] += r[plan] * r["count"]
        mb = [_mb(r[plan]) for plan in PLANS]
        ratios = [_ratio(r[plan], r["conv"]) for plan in PLANS[1:]]
        cells.append([r["stage"], r["dim"], r["dim_out"], f"{r['height']}x{r['width']}", r["stride"], r["count"]]
                     + mb + ratios)
    network = [_mb(totals[p]) for p in PLANS] + [_ratio(totals[p], totals["conv"]) for p in PLANS[1:]]
    cells.append(["**network**", "", "", "", "", sum(r["count"] for r in rows)] + [f"**{c}**" for c in network])
    return markdown_table(columns, cells)


def _breakdown_table(shape: Shape, mode: str, elem_bytes: int) -> str:
    cells = []
    for plan in PLANS:
        passes = module_traffic(shape, mode=mode, plan=plan, elem_bytes=elem_bytes)
        cells += [[plan, p.phase, p.name, _mb(p.read_bytes), _mb(p.write_bytes), _mb(p.total)] for p in passes]
        cells.append([plan, "", f"**total ({len(passes)} passes)**", "", "", f"**{_mb(total_bytes(passes))}**"])
    return markdown_table(["plan", "phase", "pass", "read MB", "write MB", "MB"], cells)


def traffic_markdown(model_name: str, precision: str, shapes: list[Shape]) -> tuple[str, list[dict[str, object]]]:
    """The markdown report of one network at one precision, and its CSV rows (one per mode and shape).

    Raises:
        ValueError: an unknown precision.
    """
    if precision not in ELEM_BYTES:
        raise ValueError(f"precision must be one of {', '.join(ELEM_BYTES)}, got {precision!r}")
    e = ELEM_BYTES[precision]
    batch = shapes[0].batch if shapes else 0
    parts, csv_rows = [f"## Memory traffic model: `{model_name}`, batch {batch}, {precision} ({e} bytes/element)"], []
    for mode, title in (("train", "training step (forward + backward)"), ("infer", "inference (eval forward)")):
        rows = network_traffic(model_name, mode=mode, elem_bytes=e, shapes=shapes)
        csv_rows += [{"network": model_name, "precision": precision, "mode": mode, **r} for r in rows]
        parts += [f"### {title}: MB moved per module", _shape_table(rows)]
    key = _BREAKDOWN.get(model_name)
    pick = [s for s in shapes if key and (s.stage, s.dim, s.height, s.width) == key] or shapes[:1]
    for s in pick[:1]:
        name = f"{s.height}x{s.width}x{s.dim}, stride {s.stride}, batch {s.batch}"
        for mode in MODES:
            parts += [f"### Per pass, {name}, {mode}", _breakdown_table(s, mode, e)]
    return "\n\n".join(parts) + "\n", csv_rows


_CSV_COLUMNS = ["network", "precision", "mode", "stage", "dim", "dim_out", "heads", "stride", "height", "width"]
_CSV_COLUMNS += ["batch", "count", *PLANS]


def run_traffic(
    out: str | Path, precision: str, networks: list[str] | None = None, echo: Callable[[str], None] | None = None
) -> list[Path]:
    """Writes ``traffic_<net>_<precision>.{md,csv}`` into ``out`` for each network (default :data:`NETWORKS`);
    returns the paths. ``echo`` receives each markdown report (the command line prints it)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in networks or list(NETWORKS):
        text, rows = traffic_markdown(name, precision, network_shapes(name))
        md = out / f"traffic_{name}_{precision}.md"
        md.write_text(text)
        paths += [md, write_csv(out / f"traffic_{name}_{precision}.csv", _CSV_COLUMNS, rows)]
        if echo is not None:
            echo(text)
    return paths
