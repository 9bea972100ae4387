"""Masks and Detections: RLE round trips, indexing, length checks, COCO export."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from composer.structures import Detections, EdgeMap, Masks, Prompts


def _masks(n: int = 4, h: int = 17, w: int = 23, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((n, h, w)) > 0.6


def test_masks_roundtrip_area_boxes_iou():
    dense = _masks()
    m = Masks.from_dense(dense)
    np.testing.assert_array_equal(m.to_dense(), dense)
    np.testing.assert_array_equal(m.area, dense.reshape(4, -1).sum(1))
    box = np.zeros((2, 17, 23), bool)
    box[0, 3:9, 5:12] = True
    mb = Masks.from_dense(box)
    np.testing.assert_allclose(mb.boxes()[0], [5, 3, 12, 9])
    np.testing.assert_allclose(mb.boxes()[1], [0, 0, 0, 0])
    inter = (dense[:, None] & dense[None]).reshape(4, 4, -1).sum(-1)
    union = (dense[:, None] | dense[None]).reshape(4, 4, -1).sum(-1)
    np.testing.assert_allclose(m.iou(), inter / union)


def test_masks_indexing_and_concat():
    m = Masks.from_dense(_masks())
    assert len(m[1:3]) == 2 and len(m[np.array([True, False, True, True])]) == 3
    np.testing.assert_array_equal(m[2].to_dense()[0], m.to_dense()[2])
    np.testing.assert_array_equal(m[np.array([3, 0])].to_dense(), m.to_dense()[[3, 0]])
    both = Masks.concatenate([m, m[:1]])
    assert len(both) == 5
    with pytest.raises(ValueError, match="sizes"):
        Masks.concatenate([m, Masks.from_dense(np.zeros((1, 5, 5), bool))])
    with pytest.raises(IndexError):
        m[7]


def test_masks_accept_str_counts_and_uncompressed():
    dense = _masks(1)
    rle = mask_utils.encode(np.asfortranarray(dense[0].astype(np.uint8)))
    as_str = {"size": rle["size"], "counts": rle["counts"].decode()}
    np.testing.assert_array_equal(Masks([as_str], (17, 23)).to_dense()[0], dense[0])
    with pytest.raises(ValueError, match="differs"):
        Masks([as_str], (10, 10))


def test_detections_length_checks():
    with pytest.raises(ValueError, match="scores has 2"):
        Detections(np.zeros((3, 4)), scores=np.zeros(2))
    with pytest.raises(ValueError, match="masks has 4"):
        Detections(np.zeros((3, 4)), masks=Masks.from_dense(_masks()))
    with pytest.raises(ValueError, match="extras"):
        Detections(np.zeros((3, 4)), extras={"x": np.zeros(5)})
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        Detections(np.zeros((3, 3)))


def test_detections_indexing_and_concatenate():
    m = Masks.from_dense(_masks())
    d = Detections.from_masks(m, scores=[0.9, 0.1, 0.5, 0.7], labels=[1, 2, 3, 4],
                              extras={"stability_score": np.arange(4.0)}, meta={"image_id": 7})
    sel = d[d.scores > 0.4]
    assert len(sel) == 3 and sel.labels.tolist() == [1, 3, 4]
    assert sel.extras["stability_score"].tolist() == [0.0, 2.0, 3.0]
    assert d[-1].labels.tolist() == [4]
    assert d.sort_by_score().scores.tolist() == pytest.approx([0.9, 0.7, 0.5, 0.1])
    cat = Detections.concatenate([d, d[:2]])
    assert len(cat) == 6 and len(cat.masks) == 6 and cat.meta["image_id"] == 7
    empty = Detections.empty((17, 23))
    assert len(empty) == 0 and empty.to_coco(image_id=1) == []


def test_to_coco_from_coco_roundtrip():
    m = Masks.from_dense(_masks())
    d = Detections.from_masks(m, scores=[0.9, 0.1, 0.5, 0.7], labels=[1, 2, 3, 4], meta={"image_id": 7})
    entries = json.loads(json.dumps(d.to_coco()))
    assert entries[0]["image_id"] == 7 and entries[2]["category_id"] == 3
    x0, y0, x1, y1 = d.boxes[1]
    assert entries[1]["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0])
    back = Detections.from_coco(entries, image_size=(17, 23))
    np.testing.assert_array_equal(back.masks.to_dense(), m.to_dense())
    np.testing.assert_allclose(back.scores, d.scores)
    poly = [{"bbox": [2, 2, 5, 5], "category_id": 3, "segmentation": [[2, 2, 7, 2, 7, 7, 2, 7]]}]
    pd = Detections.from_coco(poly, image_size=(17, 23))
    assert 20 <= pd.masks.area[0] <= 36


def test_prompts_normalise_shapes():
    p = Prompts.create(points=[[1, 2], [3, 4]], labels=[1, 0], image_size=(10, 10))
    assert p.points.shape == (1, 2, 2) and p.labels.tolist() == [[1, 0]]
    p = Prompts.create(boxes=[[0, 0, 5, 5], [1, 1, 2, 2]], mask_input=np.zeros((1, 1, 8, 8)))
    assert len(p) == 2 and p.mask_input.shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="labels"):
        Prompts.create(points=[[1, 2]], labels=[1, 1])
    with pytest.raises(ValueError, match="1, 0 or -1"):
        Prompts.create(points=[[1, 2]], labels=[3])
    with pytest.raises(ValueError, match="counts differ"):
        Prompts.create(points=np.zeros((2, 1, 2)), boxes=np.zeros((3, 4)))
    # padding points (-1) may lie anywhere
    Prompts.create(points=[[1, 2], [0, 0]], labels=[1, -1], image_size=(10, 10))
    with pytest.raises(ValueError, match="outside"):
        Prompts.create(boxes=[0, 0, 11, 5], image_size=(10, 10))


def test_edge_map_checks():
    e = EdgeMap(np.array([[0.0, 0.5], [1.0, 0.25]]))
    assert e.to_uint8().tolist() == [[0, 128], [255, 64]]
    with pytest.raises(ValueError):
        EdgeMap(np.array([[2.0]]))
    with pytest.raises(ValueError):
        EdgeMap(np.zeros(3))


def test_area_and_coco_export_of_more_than_255_masks() -> None:
    # pycocotools' area() overflows a uint8 scratch array beyond 255 RLEs under NumPy 2.
    dense = np.zeros((300, 20, 30), bool)
    for i in range(300):
        dense[i, : 1 + i % 20, : 1 + i % 30] = True
    masks = Masks.from_dense(dense)
    expected = dense.reshape(300, -1).sum(1)
    assert np.array_equal(masks.area, expected)
    dets = Detections(boxes=masks.boxes(), scores=np.ones(300, np.float32), masks=masks)
    anns = dets.to_coco(image_id=1)
    assert len(anns) == 300 and [a["area"] for a in anns] == expected.tolist()


def test_segmentation_rle_refuses_truncated_or_odd_compressed_counts() -> None:
    """pycocotools decodes a compressed RLE string that is cut short into uninitialised memory
    (garbage masks in evaluation ground truth, training data and conversions): the reader of
    segmentations from files checks that the runs cover exactly the image."""
    from pycocotools import mask as mask_utils

    from composer.structures.masks import segmentation_rle

    mask = np.zeros((20, 30), np.uint8)
    mask[5:12, 7:19] = 1
    good = mask_utils.encode(np.asfortranarray(mask))
    text = good["counts"].decode()
    assert np.array_equal(mask_utils.decode(segmentation_rle({"size": [20, 30], "counts": text}, (20, 30))), mask)
    for counts, message in ((text[:-2], "cover"), ("", "cover 0 pixels, not 600"),
                            (text + "~", "hold '~'"), (7, "must be a string or a list")):
        with pytest.raises(ValueError, match=message):
            segmentation_rle({"size": [20, 30], "counts": counts}, (20, 30))
