"""The central types: truncated RLE refused, equality of copies, Prompts[int] keeps the prompt
axis, concatenation with empty results, from_coco round trips, meta image_size checked."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from composer import Detections, Masks, Prompts


def _dets() -> Detections:
    dense = np.zeros((2, 10, 12), bool)
    dense[0, 1:3, 2:5] = True
    dense[1, 5:9, :] = True
    return Detections.from_masks(Masks.from_dense(dense), scores=[0.9, 0.8], labels=[1, 2],
                                 extras={"x": np.arange(2)}, meta={"image_id": 7})


@pytest.mark.parametrize("counts", ["", "e0", b"e02", "0T"])
def test_masks_refuses_truncated_rle(counts: str | bytes) -> None:
    with pytest.raises(ValueError, match="compressed RLE counts"):
        Masks([{"size": [50, 50], "counts": counts}], (50, 50))


def test_equality_of_copies() -> None:
    d = _dets()
    assert d == copy.deepcopy(d) and d.masks == copy.deepcopy(d.masks)
    assert d != d[:1] and Detections.empty((3, 3)) == Detections.empty((3, 3))


def test_prompts_int_index_keeps_prompt_axis() -> None:
    p = Prompts.create(points=np.zeros((3, 2, 2)), boxes=np.zeros((3, 4)))
    assert p[0].points.shape == (1, 2, 2) and p[-1].boxes.shape == (1, 4)
    assert [len(q) for q in p] == [1, 1, 1]


def test_concatenate_with_empty_is_neutral() -> None:
    d = _dets()
    assert len(Detections.concatenate([Detections.empty((10, 12)), d])) == 2


def test_from_coco_round_trip_keeps_image_id() -> None:
    d = _dets()
    back = Detections.from_coco(d.to_coco())
    assert back.meta["image_id"] == 7 and back.to_coco() == d.to_coco()
    with pytest.raises(ValueError, match="one image"):
        Detections.from_coco([{"bbox": [0, 0, 1, 1], "image_id": 1}, {"bbox": [0, 0, 1, 1], "image_id": 2}])


def test_meta_image_size_must_match_masks() -> None:
    with pytest.raises(ValueError, match="image_size"):
        Detections(np.zeros((1, 4)), masks=Masks.from_dense(np.ones((1, 4, 4), bool)),
                   meta={"image_size": (5, 5)})


def test_the_counts_check_agrees_with_pycocotools() -> None:
    """The vectorised check of compressed counts passes every string pycocotools encodes
    (random masks of many sizes, long runs included) and refuses their truncations, whose
    runs no longer cover the image."""
    from pycocotools import mask as mask_utils

    from composer.structures.masks import _check_compressed_counts

    rng = np.random.default_rng(0)
    for trial in range(200):
        h, w = int(rng.integers(1, 90)), int(rng.integers(1, 90))
        kind = trial % 3
        if kind == 0:
            m = rng.random((h, w)) < rng.random()
        elif kind == 1:  # few long runs
            m = np.zeros((h, w), bool)
            m[: int(rng.integers(0, h + 1)), : int(rng.integers(0, w + 1))] = True
        else:
            m = np.ones((h, w), bool) if trial % 2 else np.zeros((h, w), bool)
        counts = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))["counts"]
        _check_compressed_counts(counts, h * w)
        for cut in {1, len(counts) // 2, len(counts) - 1} - {0, len(counts)}:
            with pytest.raises(ValueError, match="compressed RLE counts"):
                _check_compressed_counts(counts[:cut], h * w)
    big = mask_utils.encode(np.asfortranarray(np.ones((3000, 4000), np.uint8)))["counts"]
    _check_compressed_counts(big, 12_000_000)  # one run of 12 million pixels


def test_equality_reads_meta_as_json_does() -> None:
    """meta compared with a plain ==: an array value raised, and (4, 4) differed from [4, 4]
    (a JSON round trip)."""
    a, b = _dets(), _dets()
    a.meta.update(size=(4, 4), arr=np.arange(3))
    b.meta.update(size=[4, 4], arr=np.arange(3))
    assert a == b
    b.meta["arr"] = np.arange(4)
    assert a != b
