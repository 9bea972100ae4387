"""Odd inputs to the central types: each test failed before its fix (silent wrong results,
crashes with unclear messages, or wasted work)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from composer.structures import Detections, Masks, Prompts


def _dets() -> Detections:
    dense = np.zeros((3, 6, 8), bool)
    dense[0, :2, :2] = dense[1, 2:4, 2:5] = dense[2, 4:, 5:] = True
    return Detections.from_masks(Masks.from_dense(dense), scores=[0.9, 0.5, 0.7], labels=[1, 2, 3],
                                 extras={"k": np.arange(3)}, meta={"image_id": 4})


def test_from_dense_integer_values_are_nonzero_not_wrapped_and_floats_must_be_binary():
    # int64 256 was cast to uint8 (0): a full mask became empty
    dense = np.zeros((1, 4, 5), np.int64)
    dense[0, 1:3, 1:4] = 256
    assert Masks.from_dense(dense).area.tolist() == [6]
    assert Masks.from_dense(dense.astype(np.float32) / 256).area.tolist() == [6]  # 0/1 floats
    # probabilities were truncated to 0 (an empty mask), NaN too
    for bad in (np.full((1, 2, 2), 0.7), np.full((1, 2, 2), np.nan)):
        with pytest.raises(ValueError, match="only 0 and 1"):
            Masks.from_dense(bad)
    with pytest.raises(ValueError, match="bool or integer"):
        Masks.from_dense(np.zeros((1, 2, 2), complex))


def test_bare_boolean_is_not_an_index():
    # True is an int to Python: it picked item 1
    d = _dets()
    for obj in (d, d.masks):
        with pytest.raises(IndexError, match="bare boolean"):
            obj[True]


def test_detections_empty_and_odd_index_arrays():
    d = _dets()
    # [] is float64 to NumPy: an empty selection crashed
    empty = d[[]]
    assert len(empty) == 0 and len(empty.masks) == 0 and empty.extras["k"].shape == (0,)
    for bad in (np.array([[0, 1]]), np.array(1), np.array([0.5])):
        with pytest.raises(IndexError, match="unsupported index of detections"):
            d[bad]


def test_masks_integer_array_out_of_range_names_the_range():
    m = _dets().masks
    with pytest.raises(IndexError, match=r"out of range for 3 masks"):
        m[np.array([0, 5])]
    with pytest.raises(IndexError, match=r"out of range for 3 masks"):
        m[np.array([-4])]


def test_scores_and_labels_shapes_and_fractional_labels():
    boxes = np.zeros((6, 4))
    with pytest.raises(ValueError, match=r"scores must be \(N,\)"):
        Detections(boxes, scores=np.ones((3, 2)))  # was flattened into 6 scores
    with pytest.raises(ValueError, match="whole numbers"):
        Detections(boxes[:3], labels=[1.7, 2, 3])  # 1.7 was cut to 1
    with pytest.raises(ValueError, match="whole numbers"):
        Detections(boxes[:3], labels=[np.nan, 2, 3])
    d = Detections(boxes[:3], scores=np.ones((3, 1)), labels=np.array([[1.0, 2.0, 3.0]]))
    assert d.scores.shape == (3,) and d.labels.tolist() == [1, 2, 3]


def test_image_size_must_be_whole_pixels():
    with pytest.raises(ValueError, match="whole pixels"):
        Masks.empty((5.5, 7))  # was cut to (5, 7)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        Masks.empty("57")
    assert Masks.empty((np.int64(5), 7.0)).image_size == (5, 7)


def test_odd_rles_are_refused_with_clear_messages():
    with pytest.raises(ValueError, match="got str"):
        Masks(["abc"], (2, 2))
    with pytest.raises(ValueError, match="counts must be"):
        Masks([{"size": [2, 2], "counts": 5}], (2, 2))  # failed later, in to_dense
    with pytest.raises(ValueError, match=r"size must be \[H, W\]"):
        Masks([{"size": [2, 2, 2], "counts": [4]}], (2, 2))


def test_to_coco_json_ready_ids_no_nan_and_areas_computed_once(monkeypatch):
    d = _dets()
    for iid in (np.float32(3), np.array(3)):
        json.dumps(d.to_coco(image_id=iid))  # raised TypeError: not JSON serializable
    calls = []
    real_area = mask_utils.area

    def counting_area(rles):
        calls.append(1)
        return real_area(rles)

    monkeypatch.setattr(mask_utils, "area", counting_area)
    entries = d.to_coco()
    assert [e["area"] for e in entries] == [4, 6, 6] and len(calls) == 1  # was once per item
    nan = Detections(np.array([[0, 0, 1, 1], [np.nan, 0, 1, 1]]), scores=[0.5, 0.5])
    with pytest.raises(ValueError, match=r"items \[1\] have NaN"):
        nan.to_coco(image_id=1)  # wrote NaN, which is not JSON
    with pytest.raises(ValueError, match=r"items \[0\] have NaN"):
        Detections(np.zeros((1, 4)), scores=[np.inf]).to_coco(image_id=1)


def test_from_coco_refuses_truncated_compressed_rle():
    # pycocotools decoded the empty string into uninitialised memory: a garbage mask
    entry = {"bbox": [0, 0, 1, 1], "segmentation": {"size": [5, 7], "counts": ""}}
    with pytest.raises(ValueError, match="cover 0 pixels"):
        Detections.from_coco([entry], image_size=(5, 7))
    d = _dets()
    back = Detections.from_coco(d.to_coco(), image_size=(6, 8))
    assert np.array_equal(back.masks.to_dense(), d.masks.to_dense())


def test_prompts_odd_mask_input_and_image_size():
    for shape in ((8,), (), (1, 1, 0, 0), (1, 0, 8)):
        with pytest.raises(ValueError, match="mask_input must be"):
            Prompts.create(mask_input=np.zeros(shape))  # were taken as (1, 1, 1, 8) ...
    with pytest.raises(ValueError, match=r"got shape \(3, 8, 8\)"):
        Prompts.create(boxes=np.zeros((3, 4)), mask_input=np.zeros((3, 8, 8)))  # said (1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"image_size must be \(H, W\)"):
        Prompts.create(boxes=[0, 0, 1, 1], image_size=(10,))  # IndexError: tuple index
    assert Prompts.create(mask_input=np.zeros((8, 8))).mask_input.shape == (1, 1, 8, 8)


def test_concatenating_detections_of_different_images_is_refused():
    """The first item's image_size / image_id were kept silently for all."""
    a = Detections(np.zeros((1, 4), np.float32), meta={"image_size": (10, 20), "image_id": 1})
    b = Detections(np.zeros((2, 4), np.float32), meta={"image_size": (30, 20), "image_id": 1})
    c = Detections(np.zeros((1, 4), np.float32), meta={"image_size": (10, 20), "image_id": np.int64(2)})
    with pytest.raises(ValueError, match=r"different images \(image_size \(10, 20\), \(30, 20\)\)"):
        Detections.concatenate([a, b])
    with pytest.raises(ValueError, match=r"different images \(image_id 1, 2\)"):
        Detections.concatenate([a, c])
    same = Detections(np.zeros((1, 4), np.float32), meta={"image_size": (10, 20), "image_id": np.int64(1)})
    joined = Detections.concatenate([a, same])
    assert len(joined) == 2 and joined.meta["image_id"] == 1


def test_uint8_masks_of_several_nonzero_values_encode_every_nonzero_pixel():
    """pycocotools' encoder starts a run at every change of byte value: [1, 2, 2, 0, 1] came
    back as [1, 0, 0, 1, 0] (a label map, or 0/1/255 mixes, lost pixels)."""
    m = np.array([[[1, 2, 2, 0, 1]]], np.uint8)
    masks = Masks.from_dense(m)
    assert masks.area.tolist() == [4]
    assert masks.to_dense().astype(int).tolist() == [[[1, 1, 1, 0, 1]]]
