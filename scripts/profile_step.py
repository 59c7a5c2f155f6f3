"""Profile of one training step of a model, by operator: where the time of a GSA network goes beside its conv twin.

Runs against whatever ``gsanet`` is first on the path, so the same script profiles an older checkout too
(``PYTHONPATH=<old checkout> python scripts/profile_step.py ...``). It applies the ``gsanet`` command's memory-reuse
policy when the checkout has one (``GSANET_MALLOC=default`` turns it off).

Usage::

    python scripts/profile_step.py gsa_resnet26_tiny conv_resnet26_tiny --batch-size 128 --img-size 28 --in-chans 1 \\
        --num-classes 10 --threads 2 --out results/profile_step_avx512.txt
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

import gsanet  # noqa: F401  (registers the models)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--img-size", type=int, default=28)
    p.add_argument("--in-chans", type=int, default=1)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed steps (median), then 3 profiled ones")
    p.add_argument("--rows", type=int, default=15)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    try:
        from gsanet.runtime import allocator_policy, keep_freed_memory

        keep_freed_memory()
        policy = allocator_policy()
    except ImportError:
        policy = "default (this checkout has no gsanet.runtime)"
    torch.set_num_threads(args.threads)
    lines = [
        f"torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}, threads {args.threads}, "
        f"malloc {policy}, ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', '')}, "
        f"gsanet from {Path(gsanet.__file__).parent}",
        f"batch {args.batch_size}, {args.in_chans}x{args.img_size}x{args.img_size}, {args.num_classes} classes, "
        "AdamW step",
        "",
    ]
    for name in args.models:
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=args.num_classes, in_chans=args.in_chans).train()
        x = torch.randn(args.batch_size, args.in_chans, args.img_size, args.img_size)
        y = torch.randint(0, args.num_classes, (args.batch_size,))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step(model=model, opt=opt, x=x, y=y) -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

        for _ in range(2):
            step()
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        with torch.profiler.profile() as prof:
            for _ in range(3):
                step()
        events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in events)
        rate = args.batch_size / median
        lines.append(f"{name}: {rate:.1f} images/s (median step {median * 1e3:.0f} ms of {args.steps})")
        lines.append(f"  profiled (3 steps, profiler overhead included): {total / 3e3:.0f} ms/step")
        for e in events[: args.rows]:
            share = 100 * e.self_cpu_time_total / total
            lines.append(f"  {e.self_cpu_time_total / 3e3:8.1f} ms  {share:5.1f}%  {e.key}")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"Command: {' '.join(sys.argv)}\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
