"""ONNX export on a torch whose exporter cannot translate an explicit attention scale.

torch 2.1 to 2.3 fail inside ``torch.onnx.export`` on ``scaled_dot_product_attention(...,
scale=s)`` (AttributeError on 2.1.0, ``TypeError: z_(): incompatible function arguments`` on
2.1.2 to 2.3.1), which the ViT and TinyViT
attention modules call. ``export_onnx`` then lets them pass ``scale=None`` (the same value) for
the export. These tests force that path on any torch.
"""

from __future__ import annotations

import pytest
import torch

if __import__("os").environ.get("CI"):
    import onnxruntime  # noqa: F401  (the test extra installs it: under CI its absence fails)
else:
    pytest.importorskip("onnxruntime")

from test_onnx import assert_vit_parity, small_vit_sam  # noqa: E402  (same folder)

from composer.export import export_onnx  # noqa: E402
from composer.export import onnx as onnx_export  # noqa: E402
from composer.sam.image_encoder import Attention as VitAttention  # noqa: E402
from composer.sam.tiny_vit import Attention as TinyVitAttention  # noqa: E402


@pytest.fixture
def old_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_export, "sdpa_scale_exports", lambda: False)


def test_sdpa_scale_probe_answers_once() -> None:
    first = onnx_export.sdpa_scale_exports()
    assert isinstance(first, bool)
    assert onnx_export.sdpa_scale_exports.cache_info().currsize == 1
    if _torch_at_least(2, 14):
        assert first  # the torch the suite pins exports the scale itself


def test_a_probe_that_cannot_write_its_graph_is_not_remembered(monkeypatch) -> None:
    """A full disk during the process's first export made the probe answer False for good
    (and, in a test process, a test that patches the exporter to fail did the same to every
    later test that reads the answer)."""
    real = torch.onnx.export

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    onnx_export.sdpa_scale_exports.cache_clear()
    monkeypatch.setattr(torch.onnx, "export", full_disk)
    with pytest.raises(OSError, match="No space left"):
        onnx_export.sdpa_scale_exports()
    assert onnx_export.sdpa_scale_exports.cache_info().currsize == 0
    monkeypatch.setattr(torch.onnx, "export", real)
    answer = onnx_export.sdpa_scale_exports()  # probed again, with a working exporter
    assert onnx_export.sdpa_scale_exports.cache_info().currsize == 1
    assert answer or not _torch_at_least(2, 14)


def _torch_at_least(major: int, minor: int) -> bool:
    return tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (major, minor)


def test_vit_exports_with_default_scales_and_keeps_its_own(tmp_path, old_exporter) -> None:
    ref = small_vit_sam()
    scales = [m.scale for m in ref.model.modules() if isinstance(m, VitAttention)]
    assert scales and all(s == 24**-0.5 for s in scales)
    out = export_onnx(ref, tmp_path)
    assert_vit_parity(out.meta["parity"])
    assert [m.scale for m in ref.model.modules() if isinstance(m, VitAttention)] == scales


@pytest.mark.parametrize(
    "module",
    [
        VitAttention(dim=48, num_heads=2),
        TinyVitAttention(dim=32, key_dim=16, num_heads=2, resolution=(3, 3)),
        TinyVitAttention(dim=64, key_dim=32, num_heads=2, resolution=(3, 3)),
    ],
)
def test_default_scale_gives_the_same_attention(module, old_exporter) -> None:
    """What the export relies on: ``scale=None`` is the modules' own ``head_dim ** -0.5``."""
    module.eval()
    shape = (1, 3, 3, 48) if isinstance(module, VitAttention) else (1, 9, module.norm.normalized_shape[0])
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    before = module(x)
    with onnx_export._exportable_attention(torch.nn.Sequential(module)):
        assert module.scale is None
        during = module(x)
    assert module.scale is not None
    torch.testing.assert_close(during, before, atol=1e-6, rtol=0)


def test_other_scale_is_a_clear_error_and_nothing_changes(old_exporter) -> None:
    a, b = VitAttention(dim=48, num_heads=2), VitAttention(dim=48, num_heads=2)
    b.scale = 0.5
    net = torch.nn.Sequential(a, b)
    with pytest.raises(ValueError, match=r"cannot export attention with a scale \(0.5\)"):
        with onnx_export._exportable_attention(net):
            pass
    assert a.scale == 24**-0.5 and b.scale == 0.5


def test_exporter_with_scale_support_changes_nothing(monkeypatch) -> None:
    monkeypatch.setattr(onnx_export, "sdpa_scale_exports", lambda: True)
    a = VitAttention(dim=48, num_heads=2)
    a.scale = 0.5  # not the default: exported as it is
    with onnx_export._exportable_attention(torch.nn.Sequential(a)):
        assert a.scale == 0.5


def test_model_without_vit_attention_skips_the_probe(monkeypatch) -> None:
    def probe() -> bool:
        raise AssertionError("probed the exporter for a model without ViT/TinyViT attention")

    monkeypatch.setattr(onnx_export, "sdpa_scale_exports", probe)
    with onnx_export._exportable_attention(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1))):
        pass
