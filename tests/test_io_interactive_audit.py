"""Audit of image reading and click sessions: each test failed before its fix."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from composer.embedding import ImageEmbedding
from composer.interactive import ClickSession, ZoomIn, _inside, zoom_box
from composer.io.image import load_image
from composer.structures import Detections, Masks

T = Image.Transpose
#: the transpose that shows an image stored with EXIF/TIFF orientation k upright
UPRIGHT = {
    2: T.FLIP_LEFT_RIGHT,
    3: T.ROTATE_180,
    4: T.FLIP_TOP_BOTTOM,
    5: T.TRANSPOSE,
    6: T.ROTATE_270,
    7: T.TRANSVERSE,
    8: T.ROTATE_90,
}


def _stored(mode: str) -> Image.Image:
    rng = np.random.default_rng(0)
    if mode == "I;16":
        return Image.fromarray((rng.random((4, 5)) * 65535).astype(np.uint16))
    return Image.fromarray((rng.random((4, 5, 3)) * 255).astype(np.uint8)).convert(mode)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P"])
def test_uncompressed_tiff_is_upright_for_every_orientation(tmp_path, mode, orientation):
    """Pillow memory-maps uncompressed TIFFs opened by name and scrambled the pixels of those
    with orientation 5..8 (L, RGBA, CMYK, I;16, P); the shape was right, the content not."""
    img = _stored(mode)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(tmp_path / "o.tif", exif=exif)  # uncompressed
    want = load_image(img if orientation == 1 else img.transpose(UPRIGHT[orientation]))
    np.testing.assert_array_equal(load_image(tmp_path / "o.tif"), want)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


@pytest.mark.parametrize(
    "name, content",
    [
        ("bad.ppm", b"P6\n32r24\n255\n" + bytes(32 * 24 * 3)),  # Pillow: ValueError (int())
        ("short.png", b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", b"\x00\x00\x00\x02\x00")),
    ],
)
def test_corrupt_headers_are_value_errors_naming_the_file(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        load_image(tmp_path / name)


def test_nan_in_a_float_tiff_names_the_file(tmp_path):
    f = np.zeros((3, 4), np.float32)
    f[1, 1] = np.nan
    Image.fromarray(f, "F").save(tmp_path / "depth.tif")
    with pytest.raises(ValueError, match=r"depth\.tif.*NaN"):
        load_image(tmp_path / "depth.tif")


def test_png_trns_transparency_is_composited_on_white(tmp_path):
    """A grey or RGB PNG with a tRNS colour showed its transparent pixels in that colour,
    while RGBA, LA and palette transparency went white."""
    Image.fromarray(np.array([[0, 100]], np.uint8)).save(tmp_path / "l.png", transparency=0)
    out = load_image(tmp_path / "l.png")
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [100] * 3
    rgb = np.array([[[0, 0, 0], [100, 50, 0]]], np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png", transparency=(0, 0, 0))
    out = load_image(tmp_path / "rgb.png")
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [100, 50, 0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a POSIX FIFO")
def test_a_fifo_is_refused_without_reading_it_and_not_called_missing(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(ValueError, match=r"pipe\.png is not a regular file"):
        load_image(tmp_path / "pipe.png")


# --- click sessions -----------------------------------------------------------------------

H, W = 120, 160


def _embedding(h: int, w: int, model_id: str = "fake", crop_box=None) -> ImageEmbedding:
    s = 64 / max(h, w)
    return ImageEmbedding(
        torch.zeros(1, 1, 1, 1), (h, w), (round(h * s), round(w * s)), 64, model_id, crop_box
    )


class Fake:
    """Segmenter double: a fixed object (or nothing), every call recorded; ``bad_logits``
    makes the low-res logits unreadable (a failure after the masks were decoded)."""

    model_id = "fake"

    def __init__(self, gt: np.ndarray | None = None) -> None:
        self.gt = gt
        self.embedded: list[tuple[int, int]] = []
        self.points: list[np.ndarray] = []
        self.bad_logits = False

    def embed(self, image: np.ndarray) -> ImageEmbedding:
        h, w = image.shape[:2]
        self.embedded.append((h, w))
        return _embedding(h, w)

    def predict(self, emb, points=None, labels=None, mask_input=None, multimask=True):
        self.points.append(np.asarray(points).reshape(-1, 2))
        x0, y0 = (0, 0) if emb.crop_box is None else emb.crop_box[:2]
        h, w = emb.original_size
        local = np.zeros((h, w), bool) if self.gt is None else self.gt[y0 : y0 + h, x0 : x0 + w]
        low = np.array(["x"]) if self.bad_logits else np.zeros((1, 16, 16), np.float32)
        return Detections.from_masks(
            Masks.from_dense(local[None]), np.ones(1, np.float32), extras={"low_res_logits": low}
        )


def test_zoom_box_holds_sub_pixel_clicks():
    """With float clicks the rounded crop could start half a pixel past a click."""
    pts = np.array([[55.13, 37.09], [15.93, 17.62], [94.99, 38.18]])
    box = zoom_box(None, pts, (40, 151), expansion=1.0, min_crop=53)
    assert _inside(pts, box).all(), box
    rng = np.random.default_rng(0)
    for _ in range(300):
        pts = rng.uniform(0, 1, (3, 2)) * [W - 1e-3, H - 1e-3]
        box = zoom_box(None, pts, (H, W), expansion=float(rng.choice([1.0, 1.0001])), min_crop=8)
        assert _inside(pts, box).all() and (box[:2] >= 0).all() and box[2] <= W and box[3] <= H


def test_a_sub_pixel_newest_click_is_never_left_out_of_the_crop_prompt():
    """The newest click fell just outside its crop and was dropped: the click did nothing."""
    seg = Fake()  # empty predictions: the crop is the clicks' box alone
    s = ClickSession(seg, np.zeros((H, W, 3), np.uint8), zoom_in=ZoomIn(expansion=1.0, min_crop=8))
    s.click((100.6, 5.5), 1)
    s.click((0.6, 5.5), 1)
    assert s.crop_box is not None
    x0, y0 = s.crop_box[:2]
    sent = seg.points[-1]
    assert len(sent) == 2 and np.allclose(sent[-1], [0.6 - x0, 5.5 - y0])


def test_a_crop_covering_the_whole_image_reuses_its_embedding():
    """An image smaller than min_crop (or a large object) was embedded again as a 'crop'
    equal to the whole image, one wasted encoder run per session."""
    gt = np.zeros((40, 60), bool)
    gt[10:30, 20:40] = True
    seg = Fake(gt)
    s = ClickSession(seg, np.zeros((40, 60, 3), np.uint8), zoom_in=ZoomIn())
    for xy, label in (((30, 20), 1), ((25, 15), 1), ((5, 5), 0)):
        masks, _ = s.click(xy, label)
        assert masks.shape[1:] == (40, 60) and np.array_equal(masks[0], gt)
    assert s.encoder_calls == 0 and seg.embedded == [(40, 60)] and s.crop_box is None


def test_an_embedding_of_another_model_or_of_a_crop_is_refused_up_front():
    seg = Fake()
    image = np.zeros((H, W, 3), np.uint8)
    with pytest.raises(ValueError, match="'other'.*'fake'"):
        ClickSession(seg, image, embedding=_embedding(H, W, "other"))
    with pytest.raises(ValueError, match="crop"):
        ClickSession(seg, image, embedding=_embedding(H, W, crop_box=(0, 0, W, H)))
    assert seg.points == []


def test_a_click_failing_after_decoding_leaves_prediction_and_mask_prompt_as_they_were():
    gt = np.zeros((H, W), bool)
    gt[40:80, 60:100] = True
    seg = Fake(gt)
    s = ClickSession(seg, np.zeros((H, W, 3), np.uint8))
    s.click((80, 60), 1)
    gt[:] = False  # the failing click would predict an empty mask
    seg.bad_logits = True
    with pytest.raises(ValueError):
        s.click((10, 10), 0)
    assert s.prediction is not None and s.prediction.sum() == 40 * 40
    assert s.prev_logits is not None and s.points[-1].tolist() == [80, 60]


# ---------------------------------------------------------------- float arrays (review pass)
def test_float_overshoot_of_unit_range_is_not_read_as_0_255():
    from composer.io.image import load_image

    arr = np.full((4, 5, 3), 0.5, np.float32)
    arr[0, 0] = 1.08  # a bicubic resize of [0, 1] data overshoots
    out = load_image(arr)
    assert out[1, 1, 0] == 128 and out[0, 0, 0] == 255


def test_normalised_tensor_is_refused():
    from composer.io.image import load_image

    rng = np.random.default_rng(0)
    arr = ((rng.random((8, 8, 3)) - 0.45) / 0.225).astype(np.float32)  # ImageNet-style
    with pytest.raises(ValueError, match="normalised"):
        load_image(arr)


def test_float_0_255_with_undershoot_still_reads():
    from composer.io.image import load_image

    arr = np.full((4, 5, 3), 200.0, np.float32)
    arr[0, 0] = -3.0
    out = load_image(arr)
    assert out[0, 0, 0] == 0 and out[1, 1, 0] == 200


def test_top_index_never_picks_a_nan_score():
    from composer.interactive import top_index

    assert top_index(np.array([np.nan, 0.2, 0.7], np.float32)) == 2
    assert top_index(np.array([0.9, np.nan, 0.7])) == 0
    assert top_index(np.array([np.nan, np.nan])) == 0
    assert top_index(np.array([], np.float32)) == 0
    assert top_index(np.array([0.1, 0.5, 0.5])) == 1  # ties: the first, as np.argmax


def test_a_tensor_image_is_copied_for_zoom_crops():
    from composer.io.image import load_image

    t = torch.zeros(20, 30, 3, dtype=torch.uint8)
    assert np.shares_memory(load_image(t), t.numpy())  # the case the copy is for

    class Seg:
        model_id = "fake"

        def embed(self, image):
            return ImageEmbedding(torch.zeros(1, 1, 2, 2), image.shape[:2], (2, 2), 2, "fake")

    session = ClickSession(Seg(), t, zoom_in=ZoomIn())
    t[0, 0, 0] = 255  # the caller edits its tensor afterwards
    assert session.image[0, 0, 0] == 0
