"""Flip test-time augmentation (``PromptableSegmenter.flip_tta`` / ``predict(tta=...)``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from composer.embedding import ImageEmbedding
from composer.segmenters.base import (
    MaskLogits,
    PromptableSegmenter,
    mirror_low_res,
    mirror_prompts,
)
from composer.structures import Prompts


class _Cones(PromptableSegmenter):
    """A mirror-equivariant toy backend: cones of three radii around the first point, in a
    128x128 low-res frame over a 512 padded square, with a predicted IoU that depends on which
    side of the image the point is. Points are placed as SAM's prompt encoder places them: an
    original x at ``x * s + 0.5`` of the input frame (s = input width / original width)."""

    model_id = "cones"
    low_res_size = (128, 128)

    def __init__(self) -> None:
        self.embeds = 0

    def embed(self, image):
        self.embeds += 1
        h, w = image.shape[:2]
        s = 512 / max(h, w)
        return ImageEmbedding(
            torch.zeros(1, 1, 2, 2),
            (h, w),
            (int(h * s + 0.5), int(w * s + 0.5)),
            512,
            self.model_id,
            extras=self.image_extras(image),
        )

    def decode(self, embedding, prompts, multimask=True):
        oh, ow = embedding.original_size
        ih, iw = embedding.input_size
        p = torch.as_tensor(prompts.points[:, 0], dtype=torch.float32)
        x = (p[:, 0] * iw / ow + 0.5) / 4
        y = (p[:, 1] * ih / oh + 0.5) / 4
        yy, xx = torch.meshgrid(torch.arange(128) + 0.5, torch.arange(128) + 0.5, indexing="ij")
        d = torch.sqrt((xx - x[:, None, None]) ** 2 + (yy - y[:, None, None]) ** 2)
        radii = torch.tensor([3.0, 6.0, 12.0] if multimask else [6.0])
        logits = (radii[None, :, None, None] - d[:, None]) / 2
        if prompts.mask_input is not None:
            logits = logits + 0.0 * torch.as_tensor(prompts.mask_input)
        left = (p[:, 0] < ow / 2).float()[:, None]
        iou = 0.5 + 0.4 * left * torch.ones(1, len(radii))
        return MaskLogits(logits.float(), iou.float())


def _image(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (h, w, 3), np.uint8)


def test_mirror_low_res_flips_the_valid_region_and_interpolates_fractional_widths() -> None:
    logits = torch.arange(2 * 8, dtype=torch.float32).reshape(1, 2, 8)
    mirrored, valid = mirror_low_res(logits, 6.0)
    assert valid.tolist() == [True] * 6 + [False] * 2
    np.testing.assert_array_equal(mirrored[..., :6], logits[..., :6].flip(-1))
    mirrored, valid = mirror_low_res(logits, 5.5)  # column c takes the value at 4.5 - c
    assert valid.tolist() == [True] * 6 + [False] * 2
    np.testing.assert_allclose(mirrored[0, 0, :5], [4.5, 3.5, 2.5, 1.5, 0.5])
    assert float(mirrored[0, 0, 5]) == 0.0  # clamped at the first column


def test_mirror_low_res_makes_no_float64_off_the_cpu() -> None:
    """Apple's MPS has no float64: with the logits on another device than the CPU (the meta
    device here), no float64 tensor may be made there. The sampling positions were computed
    on the logits' device in float64, so flip TTA failed on MPS."""
    from torch.utils._python_dispatch import TorchDispatchMode

    made: list[tuple[str, torch.dtype]] = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.device.type != "cpu":
                    made.append((str(func), t.dtype))
            return out

    logits = torch.zeros(2, 3, 16, 16, device="meta")
    with Spy():
        mirrored, valid = mirror_low_res(logits, 12.5)
    assert made and torch.float64 not in {dtype for _, dtype in made}
    assert mirrored.device.type == "meta" and valid.device.type == "meta"
    assert mirrored.shape == logits.shape and valid.shape == (16,)


def test_mirror_prompts_maps_pixel_columns_and_boxes() -> None:
    prompts = Prompts.create(
        points=[[[0, 5], [9, 7]]], labels=[[1, 0]], boxes=[[1, 2, 4, 6]], image_size=(20, 10)
    )
    m = mirror_prompts(prompts, 10, 1.0)  # pixel indices: column x -> 9 - x
    np.testing.assert_array_equal(m.points, [[[9, 5], [0, 7]]])
    np.testing.assert_array_equal(m.boxes, [[5, 2, 8, 6]])
    np.testing.assert_array_equal(m.labels, prompts.labels)
    np.testing.assert_array_equal(prompts.points, [[[0, 5], [9, 7]]])  # not modified
    c = mirror_prompts(prompts, 10, 0.0)  # continuous coordinates: x -> 10 - x
    np.testing.assert_array_equal(c.points, [[[10, 5], [1, 7]]])
    np.testing.assert_array_equal(c.boxes, [[6, 2, 9, 6]])


@pytest.mark.parametrize("shift", [0.0, 0.5])
@pytest.mark.parametrize("size", [(480, 640), (640, 427), (37, 37), (300, 200)])
def test_segmenter_mirror_marks_the_mirrored_place(size, shift) -> None:
    """SAM's prompt encoder puts an original x at ``x * s + 0.5`` of the input frame, and a
    model trained with ``prompt_shift`` d reads it as marking ``x * s + 0.5 - d``: the mirrored
    prompt must mark the mirror of that place in the ``iw``-wide resized image. For SAM (d = 0)
    the pixel mirror ``W - 1 - x`` was off by ``1 - 1/s`` px (-0.25 px at a 640-px side,
    s = 0.8); for composer_tiny (d = 0.5) the mirror is ``W - x``."""
    seg = _Cones()
    seg.prompt_shift = shift
    h, w = size
    emb = seg.embed(_image(h, w))
    s = emb.input_size[1] / w
    xs = np.array([0.0, 0.4, w / 3, w - 1.0], np.float32)
    prompts = Prompts.create(
        points=np.stack([xs, np.full_like(xs, h / 2)], -1)[:, None],
        labels=np.ones((4, 1), int),
        boxes=np.stack([xs * 0.5, np.zeros_like(xs), xs, np.full_like(xs, h - 1)], -1),
        image_size=emb.original_size,
    )
    m = seg.mirror_prompts(prompts, emb)

    def marked(x):  # the input-frame place the model reads an original x as
        return x * s + 0.5 - shift

    iw = emb.input_size[1]
    np.testing.assert_allclose(marked(m.points[:, 0, 0]), iw - marked(xs), atol=1e-3)
    np.testing.assert_allclose(marked(m.boxes[:, [2, 0]]), iw - marked(prompts.boxes[:, [0, 2]]),
                               atol=1e-3)
    np.testing.assert_array_equal(m.points[..., 1], prompts.points[..., 1])
    if shift == 0.5:
        np.testing.assert_allclose(m.points[:, 0, 0], w - xs, atol=1e-3)


def test_classic_mirror_lands_in_the_mirrored_work_cell() -> None:
    """classic reads a point's work column as ``floor(x * sx)`` and a box as
    ``[floor(x0 * sx), ceil(x1 * sx))``: its mirrored prompts fall in the mirrored column and
    span the mirrored box of its work image."""
    from composer.segmenters.classic import ClassicSegmenter

    seg = ClassicSegmenter()
    emb = seg.embed(_image(150, 333))
    wh, ww = emb.input_size
    rng = np.random.default_rng(1)
    xs = rng.uniform(0, 332, 40).astype(np.float32)
    ys = rng.uniform(0, 149, 40).astype(np.float32)
    x0 = rng.uniform(0, 160, 40).astype(np.float32)
    boxes = np.stack([x0, ys * 0.5, x0 + rng.uniform(5, 170, 40).astype(np.float32), ys], -1)
    prompts = Prompts.create(points=np.stack([xs, ys], -1)[:, None], labels=np.ones((40, 1), int),
                             boxes=boxes, image_size=emb.original_size)
    m = seg.mirror_prompts(prompts, emb)
    for i in range(40):
        a = seg._prompt(emb, prompts, i, (wh, ww))
        b = seg._prompt(emb, m, i, (wh, ww))
        np.testing.assert_array_equal(b.pos[:, 0], ww - 1 - a.pos[:, 0])
        np.testing.assert_array_equal(b.pos[:, 1], a.pos[:, 1])
        assert a.box is not None and b.box is not None
        assert b.box == (ww - a.box[2], a.box[1], ww - a.box[0], a.box[3])


@pytest.mark.parametrize("size", [(90, 140), (200, 61), (200, 85), (37, 37), (64, 640)])
def test_flip_tta_of_a_mirror_equivariant_model_changes_no_mask(size) -> None:
    """Averaging with the mirrored image's output is geometrically consistent: for a
    mirror-equivariant backend the logits agree (exactly when the unpadded width is a whole
    number of low-res pixels, else up to interpolation) and the predicted IoU is the mean of
    both sides."""
    seg = _Cones()
    seg.flip_tta = True
    h, w = size
    emb = seg.embed(_image(h, w))
    pts, lbl = np.array([[[w * 0.3, h * 0.6]]], np.float32), np.array([[1]])
    plain = seg.predict(emb, pts, lbl, tta="off")
    tta = seg.predict(emb, pts, lbl)
    assert plain.meta["tta"] is None and tta.meta["tta"] == "flip"
    prompts = Prompts.create(pts, lbl, image_size=emb.original_size)
    direct = seg.decode(emb, prompts)
    averaged = seg.decode_tta(emb, prompts)
    whole = emb.input_size[1] // 4  # a last, partly padded column is clamped, not compared
    diff = (averaged.logits - direct.logits).abs()[..., :whole]
    # the pixel mirror W - 1 - x was off by 0.012 (640 px) to 0.80 (37 px, upscaled) here
    assert float(diff.max()) < (1e-4 if emb.input_size[1] % 4 == 0 else 0.1)
    assert averaged.feedback is not None and torch.equal(averaged.feedback, direct.logits)
    # the returned low-res logits (a later prompt's mask_input) stay the direct decoder's
    np.testing.assert_array_equal(tta.extras["low_res_logits"], plain.extras["low_res_logits"])
    # the mirrored point is on the right half: its IoU 0.5 averages with the direct 0.9
    np.testing.assert_allclose(tta.scores, 0.7, atol=1e-6)
    np.testing.assert_allclose(plain.scores, 0.9, atol=1e-6)
    mismatch = (plain.masks.to_dense() ^ tta.masks.to_dense()).sum(axis=(1, 2))
    assert mismatch.max() <= 0.01 * h * w
    # one more encoder run for the mirrored image, memoised for later prompts
    assert seg.embeds == 2 and seg.mirror_encoder_calls == 1
    seg.predict(emb, pts, lbl)
    assert seg.embeds == 2 and seg.mirror_encoder_calls == 1


def test_flip_tta_skips_mask_inputs_and_needs_the_image() -> None:
    seg = _Cones()
    emb = seg.embed(_image(60, 80))  # flip_tta off: no image kept
    assert "image" not in emb.extras
    pts, lbl = np.array([[[20, 30]]], np.float32), np.array([[1]])
    seg.flip_tta = True
    # "auto" with an embedding that has no image (an older cache) falls back quietly
    assert seg.predict(emb, pts, lbl).meta["tta"] is None
    with pytest.raises(ValueError, match="carries none"):
        seg.predict(emb, pts, lbl, tta="flip")
    with pytest.raises(ValueError, match="tta must be"):
        seg.predict(emb, pts, lbl, tta="mirror")
    emb = seg.embed(_image(60, 80))
    calls = seg.embeds
    later = seg.predict(emb, pts, lbl, mask_input=np.zeros((1, 1, 128, 128), np.float32))
    np.testing.assert_allclose(later.scores, 0.9)  # a later click (mask input): not mirrored
    assert seg.embeds == calls
    # the same first click without a mask input is mirrored ("auto" follows flip_tta)
    tta = seg.predict(emb, pts, lbl)
    np.testing.assert_allclose(tta.scores, 0.7, atol=1e-6)


def test_packaged_composer_tiny_mirrors_first_prompts() -> None:
    """composer_tiny ships with flip TTA on (``FLIP_TTA``); both APIs agree, later clicks of a
    click session are not mirrored, and the CLI's ``--tta off`` turns it off."""
    import argparse

    from composer import load_segmenter
    from composer.commands.common import add_model_args, describe, load_model
    from composer.sam.composer_tiny import FLIP_TTA

    seg = load_segmenter("composer_tiny")
    assert seg.flip_tta is FLIP_TTA is True
    rng = np.random.default_rng(0)
    image = (200 + rng.integers(0, 20, (120, 170, 3))).astype(np.uint8)
    image[30:90, 60:130] = (30, 60, 160)
    emb = seg.embed(image)
    pts, lbl = np.array([[[95, 60]]]), np.array([[1]])
    tta = seg.predict(emb, points=pts, labels=lbl, refine="off")
    plain = seg.predict(emb, points=pts, labels=lbl, refine="off", tta="off")
    assert tta.meta["tta"] == "flip"
    assert not np.allclose(tta.extras["predicted_iou"], plain.extras["predicted_iou"])
    seg.set_image(image)
    logits, scores, low = seg.predict(point_coords=[[95, 60]], point_labels=[1], return_logits=True)
    # logits are not ranked (no binary masks): their scores are the predicted IoUs
    np.testing.assert_allclose(scores, tta.extras["predicted_iou"], atol=1e-6)
    np.testing.assert_allclose(low, tta.extras["low_res_logits"], atol=1e-5)
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    args = parser.parse_args(["--model", "composer_tiny", "--tta", "off"])
    off = load_model(args)
    assert off.flip_tta is False and "flip TTA" not in describe(off)
    assert "flip TTA" in describe(seg)


def test_composer_tiny_prompt_shift_follows_its_training_frame() -> None:
    """composer.training hands the prompt encoder a low-res pixel's centre in input pixels,
    ``(j + 0.5) * img_size / low_res``, and the encoder adds 0.5 more: the model learned to read
    a point at p as marking p - 0.5, which ``PROMPT_SHIFT`` (the loaded model's
    ``prompt_shift``) records for flip TTA. Changing either frame must change the other."""
    from composer import load_segmenter
    from composer.sam.composer_tiny import PROMPT_SHIFT
    from composer.training.prompts import to_input_frame

    np.testing.assert_allclose(to_input_frame(np.array([[0, 3]]), 64, 512), [[4.0, 28.0]])
    assert PROMPT_SHIFT == 0.5
    assert load_segmenter("composer_tiny").prompt_shift == PROMPT_SHIFT
    assert load_segmenter("classic").prompt_shift == 0.0


def test_copies_of_one_cached_embedding_share_one_mirrored_pass() -> None:
    """The cache hands out a copy per ``get``; the mirror memo knew embeddings by identity
    only, so every task sharing one cached image paid a mirrored encoder pass of its own."""
    from composer.embedding import EmbeddingCache

    seg = _Cones()
    seg.flip_tta = True
    cache = EmbeddingCache()
    image = _image(60, 90)
    pts, lbl = np.array([[[20.0, 30.0]]], np.float32), np.array([[1]])
    a = seg.predict(cache.get(image, seg), pts, lbl)
    b = seg.predict(cache.get(image, seg), pts, lbl)
    assert seg.embeds == 2 and seg.mirror_encoder_calls == 1
    np.testing.assert_array_equal(a.masks.to_dense(), b.masks.to_dense())
    # other pixels are another image: their own mirrored pass, not the memoised one
    seg.predict(cache.get(image[:, ::-1].copy(), seg), pts, lbl)
    assert seg.embeds == 4 and seg.mirror_encoder_calls == 2
    assert len(seg._mirror_memo) == 2


def test_the_mirror_memo_keeps_no_embedding_alive() -> None:
    """Each cache get is a copy (with the image's pixels): a memo holding it would keep it."""
    import gc
    import weakref

    seg = _Cones()
    seg.flip_tta = True
    emb = seg.embed(_image(60, 90))
    seg.predict(emb, np.array([[[20.0, 30.0]]], np.float32), np.array([[1]]))
    assert seg.mirror_encoder_calls == 1
    ref = weakref.ref(emb)
    del emb
    gc.collect()
    assert ref() is None and len(seg._mirror_memo) == 1


def test_a_reused_id_does_not_overwrite_a_dead_embeddings_mirror() -> None:
    """The memo holds weak references and knew entries by the embedding's id; CPython gives a
    freed object's address to a new one, so a new image's embedding could take a dead copy's
    id and overwrite its entry: the next copy of the first image paid a second mirrored pass
    (and, a flaky failure in CI, the memo held one entry where it should hold two)."""
    import builtins
    import gc

    seg = _Cones()
    seg.flip_tta = True
    pts, lbl = np.array([[[20.0, 30.0]]], np.float32), np.array([[1]])
    first = _image(60, 90)
    real_id = id  # stand-in for CPython's address reuse: every embedding gets one id
    builtins.id = lambda obj: 7 if isinstance(obj, ImageEmbedding) else real_id(obj)
    try:
        seg.predict(seg.embed(first), pts, lbl)  # that embedding dies at once
        gc.collect()
        seg.predict(seg.embed(_image(60, 91)), pts, lbl)
        assert len(seg._mirror_memo) == 2
        seg.predict(seg.embed(first), pts, lbl)  # a new copy of the first image's pixels
    finally:
        builtins.id = real_id
    assert seg.mirror_encoder_calls == 2


@pytest.mark.parametrize("field", ["multimask", "keep_low_res"])
def test_predict_refuses_a_flag_that_is_not_a_bool(field: str) -> None:
    """``multimask="no"`` is truthy: predict gave three masks per prompt without a word."""
    seg = _Cones()
    emb = seg.embed(_image(60, 90))
    pts, lbl = np.array([[[20.0, 30.0]]], np.float32), np.array([[1]])
    with pytest.raises(TypeError, match=f"{field} must be a bool, got 'no'"):
        seg.predict(emb, pts, lbl, **{field: "no"})
    assert len(seg.predict(emb, pts, lbl, **{field: np.bool_(False)})) == (3 if field == "keep_low_res" else 1)
