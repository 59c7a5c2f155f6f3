"""``gsanet visualize``: the recomputed maps reproduce the GSA module's outputs; the command writes PNG figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gsanet import visualize
from gsanet.layers import GlobalSelfAttention


def _module(**kwargs: object) -> GlobalSelfAttention:
    torch.manual_seed(0)
    module = GlobalSelfAttention(16, heads=2, feat_size=(9, 11), **kwargs).eval()
    if module.norm is not None:  # a non-trivial batch norm: the maps leave it out, the check puts it back
        module.norm.running_var.uniform_(0.5, 2.0)
    return module


def _values(module: GlobalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    h = module.heads
    _, _, v = module.qkv(x).split([module.dim_key, module.dim_key, module.dim_out], dim=1)
    return v.reshape(h, module.dim_out // h, *x.shape[-2:])  # (h, dv, H, W)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"pos_span": 5}, {"pos_softmax": True}, {"rel_pos": False}, {"pos_span": 3, "pos_softmax": True}],
)
def test_axial_maps_reproduce_the_positional_output(kwargs: dict) -> None:
    """``sum_(a',b') composed[a', b'] v(a', b')`` is the module's positional output at the pixel (BN scale put back)."""
    module = _module(content=False, **kwargs)
    x = torch.randn(1, 16, 9, 11)
    pixel = (3, 7)
    maps = visualize.compute_maps(module, x, pixel)
    out = module(x)[0].view(2, 8, 9, 11)[:, :, 3, 7]  # (h, dv)
    v = _values(module, x)
    bn = module.norm
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(2, 8)
    shift = (bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(2, 8)
    composed = torch.from_numpy(maps.composed)  # (h, H, W)
    row = torch.from_numpy(maps.row_weights)  # (h, W)
    expected = scale * torch.einsum("hab,hdab->hd", composed, v) + shift * row.sum(-1, keepdim=True)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    # the column weights of the pixel are those of its own column layer (whose output is the batch norm's input)
    col_out = torch.einsum("ha,hda->hd", torch.from_numpy(maps.col_weights), v[:, :, :, 7])
    captured = []
    handle = bn.register_forward_hook(lambda mod, args, output: captured.append(args[0]))
    try:
        module(x)
    finally:
        handle.remove()
    ref = captured[0][0].view(2, 8, 9, 11)  # (h, dv, H, W): F_col
    torch.testing.assert_close(col_out, ref[:, :, 3, 7], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kwargs", [{}, {"pos_softmax": True}, {"rel_pos": False}, {"pos_span": 5}])
def test_two_d_maps_reproduce_the_positional_output(kwargs: dict) -> None:
    module = _module(content=False, axial=False, **kwargs)
    x = torch.randn(1, 16, 9, 11)
    maps = visualize.compute_maps(module, x, (4, 2))
    out = module(x)[0].view(2, 8, 9, 11)[:, :, 4, 2]
    expected = torch.einsum("hab,hdab->hd", torch.from_numpy(maps.composed), _values(module, x))
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("query_softmax", [False, True])
def test_content_maps_reproduce_the_content_output(query_softmax: bool) -> None:
    module = _module(positional=False, query_softmax=query_softmax)
    x = torch.randn(1, 16, 9, 11)
    maps = visualize.compute_maps(module, x, (8, 0))
    assert maps.composed is None and maps.key_maps.shape == (2, 8, 9, 11)
    np.testing.assert_allclose(maps.key_maps.sum(axis=(2, 3)), 1.0, rtol=1e-5)  # a softmax over positions
    out = module(x)[0].view(2, 8, 9, 11)[:, :, 8, 0]
    expected = torch.einsum("hab,hdab->hd", torch.from_numpy(maps.content_pixel), _values(module, x))
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_hooks_capture_module_inputs() -> None:
    import timm

    import gsanet  # noqa: F401

    model = timm.create_model("gsa_resnet26_tiny", num_classes=10, in_chans=1, img_size=28).eval()
    modules = visualize.gsa_modules(model)
    inputs, logits = visualize.capture_inputs(model, torch.randn(1, 1, 28, 28), [m for _, m in modules])
    assert logits.shape == (1, 10)
    assert [tuple(t.shape[-2:]) for t in inputs] == [
        (28, 28),
        (28, 28),
        (14, 14),
        (14, 14),
        (7, 7),
        (7, 7),
        (7, 7),
        (7, 7),
    ]
    assert [t.shape[1] for t in inputs] == [m.dim for _, m in modules]
    assert not any(m._forward_hooks for _, m in modules)  # hooks removed


def test_command_writes_pngs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "figs"
    argv = ["--model", "gsa_resnet26_tiny", "--image", str(image), "--pixel", "5", "20", "--layer", "2"]
    assert visualize.main([*argv, "--out", str(out)]) == 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [
        "gsa_resnet26_tiny_untrained_photo_layer2_content.png",
        "gsa_resnet26_tiny_untrained_photo_layer2_positional.png",
    ]
    for name in pngs:
        with Image.open(out / name) as img:
            assert img.size[0] > 300 and img.size[1] > 200
    assert "figure:" in capsys.readouterr().out
    assert visualize.main([*argv, "--layer", "99", "--out", str(out)]) == 2
    assert visualize.main(["--model", "gsa_resnet26_tiny", "--list-layers", "--image", str(image)]) == 0
    assert "stages.0.0.self_attn" in capsys.readouterr().out
    assert visualize.main(["--model", "conv_resnet26_tiny", "--image", str(image)]) == 2  # no GSA module


def test_skimage_photo_is_prepared_at_model_size() -> None:
    pytest.importorskip("skimage")
    array, caption = visualize.load_image(skimage_name="chelsea")
    subject = visualize.Subject(torch.nn.Identity(), "m", 3, (64, 64), (0.5,) * 3, (0.25,) * 3, False, "untrained")
    x, shown = visualize.prepare(array, subject)
    assert x.shape == (1, 3, 64, 64) and shown.shape == (64, 64, 3) and "chelsea" in caption
    grey = visualize.Subject(torch.nn.Identity(), "m", 1, (28, 28), (0.5,), (0.25,), False, "untrained")
    x, shown = visualize.prepare(array, grey)
    assert x.shape == (1, 1, 28, 28) and shown.shape == (28, 28)


def test_unwritable_out_is_a_one_line_error_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An --out that cannot hold files (here: below a regular file) fails at once with exit 2, no traceback."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    loaded = []
    monkeypatch.setattr(visualize, "load_subject", lambda **kwargs: loaded.append(kwargs))
    assert visualize.main(["--model", "gsa_resnet26_tiny", "--out", str(blocker / "figs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gsanet visualize: error: cannot write figures to") and "--out" in err
    assert len(err.strip().splitlines()) == 1 and not loaded  # nothing loaded before the check
