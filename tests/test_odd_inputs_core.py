"""Odd inputs to the core API (images, prompts, sessions, cache, refinement, export folders)
found by an audit: each gets a result, a one-line error naming the problem, or keeps what was
already computed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from composer.embedding import EmbeddingCache
from composer.interactive import ClickSession
from composer.io.image import load_image
from composer.refine import ContrastRank, GrabCutRefine
from composer.segmenters import load_segmenter


@pytest.fixture(scope="module")
def seg():
    return load_segmenter("composer_tiny", device="cpu")


@pytest.fixture(scope="module")
def image():
    return (np.random.default_rng(0).random((60, 80, 3)) * 255).astype(np.uint8)


def test_integer_images_wider_than_16_bits_keep_their_range(tmp_path):
    # 20-bit data in int32: scaled by 20 bits, not 32 (which left it black)
    g = np.array([[0, 2**19, 2**20 - 1]], np.int32)
    assert load_image(g)[0, :, 0].tolist() == [0, 128, 255]
    # data wider than 32 bits is scaled, not wrapped around by the uint8 cast
    wide = np.arange(6, dtype=np.int64).reshape(2, 3) << 40
    out = load_image(wide)[..., 0].ravel()
    assert (np.diff(out.astype(int)) > 0).all() and out[-1] == round(5 * 2**40 / (2**43 - 1) * 255)
    # a 32-bit (mode "I") file: the same as its array, not saturated at 16 bits
    data = (np.arange(64, dtype=np.int32).reshape(8, 8) * 4000)  # max 252000 > 65535
    Image.fromarray(data).save(tmp_path / "i32.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "i32.tif"), load_image(data))
    assert np.unique(load_image(tmp_path / "i32.tif")[..., 0]).size == 64  # none saturated


def test_a_bfloat16_tensor_is_an_image():
    t = torch.linspace(0, 1, 12).reshape(1, 3, 4).to(torch.bfloat16)
    out = load_image(t)
    assert out.shape == (3, 4, 3) and out[-1, -1, 0] == 255


@pytest.mark.parametrize("name", ["classic", "composer_tiny"])
def test_predict_with_the_image_instead_of_its_embedding(seg, image, name):
    s = seg if name == "composer_tiny" else load_segmenter("classic")
    with pytest.raises(TypeError, match="needs the ImageEmbedding.*got ndarray"):
        s.predict(image, points=[[10, 10]])
    with pytest.raises(TypeError, match="got NoneType"):
        s.predict(None, boxes=[[0, 0, 10, 10]])


def test_official_predict_takes_one_prompt(seg, image):
    seg.set_image(image)
    try:
        with pytest.raises(ValueError, match="takes one prompt, got 2"):
            seg.predict(point_coords=[[[10, 10]], [[40, 30]]], point_labels=[[1], [1]])
        with pytest.raises(ValueError, match=r"box must be one XYXY box.*\(2, 4\)"):
            seg.predict(box=[[0, 0, 10, 10], [5, 5, 20, 20]])
        with pytest.raises(ValueError, match=r"box must be one XYXY box.*\(3,\)"):
            seg.predict(box=[0, 0, 10])
        h, w = seg.low_res_size
        with pytest.raises(ValueError, match=rf"mask_input must be \(N, 1, {h}, {w}\)"):
            seg.predict(point_coords=[[10, 10]], point_labels=[1], mask_input=np.zeros((1, 32, 32)))
        masks, scores, low = seg.predict(point_coords=[[10, 10]], point_labels=[1],
                                         mask_input=np.zeros((1, h, w)), multimask_output=False)
        assert masks.shape == (1, 60, 80) and scores.shape == (1,) and low.shape == (1, h, w)
    finally:
        seg.reset_image()


def test_click_session_checks_the_image_beside_an_embedding(seg, image):
    emb = seg.embed(image)
    with pytest.raises(ValueError, match=r"image size \(40, 50\) differs from the embedding's"):
        ClickSession(seg, image[:40, :50], emb)
    session = ClickSession(seg, image, emb)
    with pytest.raises(ValueError, match="one \\(x, y\\) pair, got shape \\(3,\\)"):
        session.click((1, 2, 3), 1)
    with pytest.raises(ValueError, match="label must be 0 or 1"):
        session.click((10, 10), np.array([1]))
    assert session.points == []
    masks, _ = session.click((10, 10), 1)
    assert masks.shape == (3, 60, 80)


def test_cache_keeps_the_embedding_when_its_disk_tier_cannot_be_written(seg, image, tmp_path, caplog):
    cache = EmbeddingCache(disk_dir=tmp_path / "afile")
    # a file where the folder should be, made after the cache (one given at first is refused)
    (tmp_path / "afile").write_text("not a folder")
    emb = cache.get(image, seg)
    assert emb.original_size == (60, 80) and "cannot write" in caplog.text
    again = cache.get(image, seg)
    assert torch.equal(again.features, emb.features) and cache.encoder_calls == 1 and cache.hits == 1


@pytest.mark.parametrize("box", [(10, 10, 40), (np.nan, 0, 40, 40), (0, 0, 40, 40, 1)])
def test_cache_refuses_malformed_crop_boxes(seg, image, box):
    with pytest.raises(ValueError, match="crop_box must be 4 finite XYXY numbers"):
        EmbeddingCache().get(image, seg, crop_box=box)


def test_contrasts_refuse_masks_of_another_size():
    rng = np.random.default_rng(0)
    big = (rng.random((300, 200, 3)) * 255).astype(np.uint8)
    masks = np.zeros((1, 30, 20), bool)
    masks[0, 5:20, 5:15] = True
    rank = ContrastRank(max_side=100)  # the image is scaled: masks were silently resized to it
    with pytest.raises(ValueError, match=r"masks must be \(N, 300, 200\)"):
        rank.contrasts(big, masks)
    with pytest.raises(ValueError, match=r"masks must be \(N, 300, 200\)"):
        rank.contrasts(big, np.zeros((300, 200), bool))  # one mask, not a stack of them
    assert rank.contrasts(big, np.zeros((2, 300, 200), bool)).tolist() == [0.0, 0.0]


def test_refine_inplace_refuses_a_read_only_mask():
    img = np.zeros((20, 20, 3), np.uint8)
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    mask.flags.writeable = False
    with pytest.raises(ValueError, match="mask is read-only"):
        GrabCutRefine().refine_inplace(img, mask)
    assert GrabCutRefine()(img, mask).shape == (20, 20)


@pytest.mark.parametrize(
    ("meta", "message"),
    [("[1, 2]", "a JSON list, not an object"), (None, "lacks model_id, img_size")],
)
def test_onnx_folder_with_a_bad_model_json(tmp_path, meta, message):
    from composer.export.onnx import DECODER_FILE, ENCODER_FILE, FORMAT, META_FILE
    from composer.segmenters.onnx import read_meta

    for name in (ENCODER_FILE, DECODER_FILE):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / META_FILE).write_text(meta if meta is not None else json.dumps({"format": FORMAT}))
    with pytest.raises(ValueError, match=message):
        read_meta(tmp_path)


def test_an_unreadable_checkpoint_is_not_called_a_misfit(tmp_path):
    """A file that is no state dict at all is reported as unreadable, not as one that does
    not fit the architecture."""
    import torch

    from composer.hub.checkpoint import UnreadableCheckpoint
    from composer.sam.build import build_sam

    junk, listed = tmp_path / "junk.pth", tmp_path / "list.pth"
    junk.write_text("not a checkpoint")
    torch.save([1, 2], listed)
    for path, message in ((junk, "could not read checkpoint"), (listed, "holds a list")):
        with pytest.raises(UnreadableCheckpoint, match=message) as err:
            build_sam("vit_tiny_test", checkpoint=path)
        assert "does not fit" not in str(err.value)


def test_click_session_keeps_its_own_copy_of_the_image(seg, image):
    from composer.interactive import ClickSession, ZoomIn

    img = image.copy()
    s = ClickSession(seg, img, zoom_in=ZoomIn())
    img[:] = 0  # the caller draws on its array between clicks
    assert s.image is not None and s.image.any()
