"""Second audit of the ONNX export and the embedding cache: mask-only prompts in the decoder
graph, bfloat16 embeddings in the disk tier, and the disk tier reading a file that another
process replaces."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from composer.embedding import EmbeddingCache
from composer.predictor import SamPredictor
from composer.sam.build import build_sam_from_config
from composer.sam.configs import CONFIGS

pytest.importorskip("onnxruntime")


def tiny_sam(dtype: torch.dtype = torch.float32) -> SamPredictor:
    model = build_sam_from_config(CONFIGS["vit_tiny_test"], seed=0)
    with torch.no_grad():  # random init leaves norms trivial: perturb every tensor
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return SamPredictor(model.to(dtype))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = (rng.random((50, 70, 3)) * 80).astype(np.uint8)
    img[10:35, 20:50] = (200, 60, 40)
    return img


def _mask_only_agrees(ref, ours, image: np.ndarray) -> None:
    er, eo = ref.embed(image), ours.embed(image)
    rng = np.random.default_rng(3)
    mask = (rng.normal(size=(2, 1, *ref.low_res_size)) * 4).astype(np.float32)
    for multimask in (True, False):
        kw = dict(mask_input=mask, multimask=multimask, refine="off", tta="off", rank="off")
        dr, do = ref.predict(er, **kw), ours.predict(eo, **kw)
        assert np.isfinite(do.extras["low_res_logits"]).all()
        np.testing.assert_allclose(do.scores, dr.scores, atol=1e-4, rtol=0)
        np.testing.assert_allclose(do.extras["low_res_logits"], dr.extras["low_res_logits"],
                                   atol=1e-3, rtol=0)


def test_mask_only_prompt_matches_torch_sam(tmp_path, image):
    """A prompt of a mask input alone: PromptEncoder gives no sparse token, and the feed
    added a padding point's token (scores off by ~0.1)."""
    from composer.export import export_onnx
    from composer.export.onnx import decoder_inputs
    from composer.segmenters.onnx import OnnxSegmenter

    feed = decoder_inputs(np.zeros((2, 0, 2)), np.zeros((2, 0)), np.zeros((2, 1, 8, 8)), (8, 8))
    assert feed["point_coords"].shape == (2, 0, 2) and feed["point_labels"].shape == (2, 0)
    # points without a box still end with the padding point
    feed = decoder_inputs(np.ones((1, 1, 2)), np.ones((1, 1)), None, (8, 8))
    assert feed["point_labels"].tolist() == [[1.0, -1.0]]
    ref = tiny_sam()
    out = export_onnx(ref, tmp_path)
    _mask_only_agrees(ref, OnnxSegmenter(out.directory), image)


def test_mask_only_prompt_matches_torch_click_maps(tmp_path, image):
    """composer_tiny's click maps: the maximum over no point was -inf in the graph (NaN
    masks) where PromptEncoder leaves zero maps."""
    from composer.export import export_onnx
    from composer.segmenters import load_segmenter
    from composer.segmenters.onnx import OnnxSegmenter

    try:
        ref = load_segmenter("composer_tiny", device="cpu")
    except ValueError as exc:  # the packaged weights are missing
        pytest.skip(str(exc))
    out = export_onnx(ref, tmp_path)
    _mask_only_agrees(ref, OnnxSegmenter(out.directory, settings=False), image)


def test_disk_tier_keeps_bfloat16_embeddings(tmp_path, image):
    """numpy has no bfloat16: writing the disk entry raised TypeError out of ``get``."""
    pred = tiny_sam(torch.bfloat16)
    first = EmbeddingCache(disk_dir=tmp_path).get(image, pred)
    assert first.features.dtype == torch.bfloat16
    again = EmbeddingCache(disk_dir=tmp_path)
    emb = again.get(image, pred)
    assert again.disk_hits == 1 and again.encoder_calls == 0
    assert emb.features.dtype == torch.bfloat16
    assert torch.equal(emb.features, first.features.cpu())
    pred.predict(emb, points=[[30, 20]], labels=[1])


def test_disk_tier_loads_the_bytes_it_verified(tmp_path, image, monkeypatch):
    """The checksum was computed over one read of the file and the arrays taken from a second
    read: a file replaced in between (another process writing the entry) was loaded unchecked."""
    pred = tiny_sam()
    first = EmbeddingCache(disk_dir=tmp_path).get(image, pred)
    npz = next(tmp_path.glob("*.npz"))
    buf = io.BytesIO()
    np.savez(buf, features=np.zeros(tuple(first.features.shape), np.float32))
    other = buf.getvalue()
    read_bytes = Path.read_bytes

    def read_then_replace(self: Path) -> bytes:
        data = read_bytes(self)
        if self == npz:
            npz.write_bytes(other)  # a concurrent writer's complete file lands right after
        return data

    monkeypatch.setattr(Path, "read_bytes", read_then_replace)
    cache = EmbeddingCache(disk_dir=tmp_path)
    emb = cache.get(image, pred)
    assert cache.disk_hits == 1
    assert torch.equal(emb.features, first.features)


def test_max_batch_is_the_prompt_chunk(tmp_path, image, monkeypatch):
    """The graph holds one prompt chunk of the CPU decoder; the upscaler's smaller sub-chunks
    are not in a trace of 2 prompts. ``max_batch`` was their size (2 for SAM's ViTs at 64x64x256,
    where the docs promise 4), halving the prompts per ONNX Runtime call."""
    import composer.sam.mask_decoder as mask_decoder
    from composer.export import export_onnx
    from composer.segmenters.onnx import OnnxSegmenter

    ref = tiny_sam()
    per_prompt = 4 * 8 * 8 * 32  # float32 image tokens of one prompt (vit_tiny_test: 8x8x32)
    assert ref.model.image_encoder(torch.zeros(1, 3, 128, 128)).shape == (1, 32, 8, 8)
    # SAM's ratio: a chunk of 4 prompts, upscaled in sub-chunks of 2
    monkeypatch.setattr(mask_decoder, "CHUNK_BYTES", 4 * per_prompt)
    out = export_onnx(ref, tmp_path)  # its parity check decodes max_batch prompts at once
    assert out.meta["max_batch"] == 4
    ours = OnnxSegmenter(out.directory)
    calls = []
    run = ours._decoder.run
    ours._decoder = type("Spy", (), {"run": lambda self, *a: calls.append(1) or run(*a)})()
    pts = np.array([[[10.0, 10.0]], [[30.0, 20.0]], [[60.0, 40.0]], [[5.0, 45.0]]], np.float32)
    kw = dict(points=pts, labels=np.ones((4, 1)), refine="off", tta="off", rank="off")
    do, dr = ours.predict(ours.embed(image), **kw), ref.predict(ref.embed(image), **kw)
    assert len(calls) == 1
    np.testing.assert_allclose(do.scores, dr.scores, atol=1e-4, rtol=0)
