"""The wheel built from the repository: what it carries, and that it works installed outside the tree.

Offline: the wheel is built without build isolation and installed without dependencies into a fresh target folder;
the dependencies (torch, timm, ...) come from the running environment, so nothing is downloaded. Building the wheel
takes seconds (its contents are checked in the default suite); installing it and compiling the kernel is slow.
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
PIP = [sys.executable, "-m", "pip"]

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


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the sources (the build writes its build/ folder beside them)."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    dist, source = tmp_path / "dist", tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "gsanet", source / "gsanet", ignore=shutil.ignore_patterns("__pycache__"))
    build = [*PIP, "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(dist), "-q"]
    subprocess.run(build, check=True, cwd=tmp_path)
    (built,) = dist.glob("gsanet-*.whl")
    return built


def test_wheel_carries_data_license_and_dependencies(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        (license_file,) = (n for n in names if n.endswith(".dist-info/licenses/LICENSE"))
        license_text = zf.read(license_file).decode()
    assert {"gsanet/weights/gsa_resnet26_tiny_fmnist.safetensors", "gsanet/layers/csrc/axial_rel_pos.cpp"} <= names
    assert "gsanet/__main__.py" in names
    assert license_text == (ROOT / "LICENSE").read_text() and "Apache License" in license_text
    assert "Version 2.0, January 2004" in license_text and "END OF TERMS AND CONDITIONS" in license_text
    fields = [tuple(part.strip() for part in line.split(":", 1)) for line in metadata.splitlines() if ": " in line]
    assert ("License-Expression", "Apache-2.0") in fields and ("License-File", "LICENSE") in fields
    requires = {value.split()[0] for key, value in fields if key == "Requires-Dist"}
    assert {"torch>=2.4", "timm>=1.0.15", "ninja"} <= requires


@pytest.mark.slow
def test_wheel_installs_and_builds_the_kernel(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([*PIP, "install", "--no-deps", "--target", str(target), str(wheel), "-q"], check=True)
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
