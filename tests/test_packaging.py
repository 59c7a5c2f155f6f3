"""The wheel built from the repository: its dependencies build the kernel, and it works installed outside the tree.

Slow (a wheel build and a kernel compile), and offline: the wheel is built without build isolation and installed
without dependencies into a fresh target folder; the dependencies (torch, timm, ...) come from the running
environment, so nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

CHECK = """
import pathlib, sys, timm, torch
import gsanet
from gsanet.layers import axial_kernel
assert pathlib.Path(gsanet.__file__).resolve().is_relative_to(pathlib.Path(sys.argv[1]).resolve()), gsanet.__file__
model = timm.create_model("gsa_resnet26_tiny", pretrained=True).eval()  # the packaged weights
assert axial_kernel.available(), "the fused kernel did not build from the installed sources"
with torch.no_grad():
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
print("ok")
"""


def test_wheel_installs_and_builds_the_kernel(tmp_path: Path) -> None:
    dist, target, source = tmp_path / "dist", tmp_path / "site", tmp_path / "source"
    source.mkdir()  # a copy of the sources: the build writes its build/ folder beside them
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "gsanet", source / "gsanet", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip"]
    build = [*pip, "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(dist), "-q"]
    subprocess.run(build, check=True, cwd=tmp_path)
    (wheel,) = dist.glob("gsanet-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert {"gsanet/weights/gsa_resnet26_tiny_fmnist.safetensors", "gsanet/layers/csrc/axial_rel_pos.cpp"} <= names
    requires = {line.split(":", 1)[1].split()[0] for line in metadata.splitlines() if line.startswith("Requires-Dist:")}
    assert {"torch>=2.4", "timm>=1.0.15", "ninja"} <= requires
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel), "-q"], check=True)
    env = {
        **os.environ,
        "PYTHONPATH": str(target),  # the installed wheel only, not the repository
        "TORCH_EXTENSIONS_DIR": str(tmp_path / "extensions"),  # a fresh kernel build
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # the environment's ninja
    }
    result = subprocess.run(
        [sys.executable, "-c", CHECK, str(target)], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout + result.stderr
