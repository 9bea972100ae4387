"""Odd inputs found by an audit of automatic mask generation, the task adapters and the mask
formats: each gets a result or a one-line error naming what is wrong, and never costs earlier
output."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from composer.automatic import AmgConfig
from composer.cli import main as cli_main
from composer.io.formats import FORMATS, convert
from tasks.edges import EdgeConfig
from tasks.text_to_mask import TextConfig

NAN = float("nan")


def _out(tmp_path, name: str, to: str):
    return tmp_path / (f"{name}.json" if to == "coco-polygons" else name)


# ---------------------------------------------------------------------- AmgConfig
@pytest.mark.parametrize("bad, field", [
    (dict(stability_score_thresh=95.0), "stability_score_thresh"),  # a percentage: no mask left
    (dict(stability_score_offset=-1.0), "stability_score_offset"),  # scores above 1
    (dict(min_mask_region_area=NAN), "min_mask_region_area"),  # was silently no clean-up
    (dict(crop_n_layers=1.5), "crop_n_layers"),  # was a TypeError in generate()
    (dict(points_per_batch=2.5), "points_per_batch"),
    (dict(points_per_side=2.5), "points_per_side"),  # was a grid of 2 per side
    (dict(max_side=NAN), "max_side"),
    # one grid given as the list of grids: each point was taken for a layer's grid
    (dict(points_per_side=None, point_grids=np.full((4, 2), 0.5)), r"point_grids\[0\]"),
    (dict(points_per_side=None, point_grids=[np.zeros((3, 3))]), r"point_grids\[0\]"),
])
def test_amg_config_refuses_settings_out_of_range(bad, field):
    with pytest.raises(ValueError, match=field):
        AmgConfig(**bad)


def test_amg_config_still_takes_numpy_integers_and_empty_grids():
    assert AmgConfig(points_per_side=np.int64(8), max_side=np.int32(64)).points_per_side == 8
    cfg = AmgConfig(points_per_side=None, point_grids=[np.zeros((0, 2)), [[0.5, 0.5]]],
                    crop_n_layers=1)
    assert [g.shape for g in cfg.layer_grids()] == [(0, 2), (1, 2)]
    assert AmgConfig(pred_iou_thresh=1.5).pred_iou_thresh == 1.5  # a predicted IoU may pass 1


def test_everything_cli_refuses_a_percentage_stability_threshold(tmp_path, capsys):
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(tmp_path / "x.png")
    args = ["everything", str(tmp_path / "x.png"), "--out", str(tmp_path / "o"),
            "--points-per-side", "2", "--stability-thresh", "95"]
    assert cli_main(args) == 2
    assert "stability_score_thresh must be in [0, 1]" in capsys.readouterr().err


def test_task_configs_refuse_nan():
    with pytest.raises(ValueError, match="edge NMS"):
        EdgeConfig(nms_margin=NAN)  # was accepted: nothing suppressed
    with pytest.raises(ValueError, match="crop_expand"):
        TextConfig(crop_expand=NAN)  # was "cannot convert float NaN to integer" mid-task


# ---------------------------------------------------------------------- amg_utils
def test_remove_small_regions_on_empty_and_0_255_masks():
    # in a child process: OpenCV crashed (segfault) on a mask of no pixels
    code = (
        "import numpy as np\n"
        "from composer.amg_utils import remove_small_regions\n"
        "for shape in ((0, 0), (0, 5), (5, 0)):\n"
        "    for mode in ('holes', 'islands'):\n"
        "        m, changed = remove_small_regions(np.zeros(shape, bool), 3, mode)\n"
        "        assert m.shape == shape and not changed\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-500:]
    from composer.amg_utils import remove_small_regions

    ring = np.zeros((7, 7), np.uint8)
    ring[1:6, 1:6], ring[3, 3] = 255, 0  # a 0/255 mask with a one-pixel hole
    filled, changed = remove_small_regions(ring, 3, "holes")
    assert changed and filled.dtype == bool and filled.sum() == 25
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        remove_small_regions(np.zeros((2, 5, 5), bool), 3, "holes")


# ---------------------------------------------------------------------- formats
def _detections_json(path, segmentation, **det) -> None:
    rec = {"image_size": [10, 12],
           "detections": [{"box_xyxy": [3, 2, 8, 5], "score": 0.5,
                           "segmentation": segmentation, **det}]}
    path.write_text(json.dumps(rec))


def _square_rle() -> dict:
    m = np.zeros((10, 12), np.uint8)
    m[2:5, 3:8] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": [10, 12], "counts": rle["counts"].decode()}


@pytest.mark.parametrize("to", FORMATS)
@pytest.mark.parametrize("counts", ["", "cut"])
def test_truncated_compressed_rle_is_an_error(tmp_path, to, counts):
    """pycocotools decodes a short string into uninitialised memory: garbage masks were
    written (polygons, PNGs) without a word."""
    seg = _square_rle()
    seg["counts"] = "" if counts == "" else seg["counts"][:-2]
    _detections_json(tmp_path / "x.json", seg)
    with pytest.raises(ValueError, match="image 'x', mask 0: compressed RLE counts"):
        convert(tmp_path / "x.json", _out(tmp_path, "o", to), to)
    _detections_json(tmp_path / "ok.json", _square_rle())  # the intact string still converts
    convert(tmp_path / "ok.json", _out(tmp_path, "ok", to), to)


@pytest.mark.parametrize("to", FORMATS)
@pytest.mark.parametrize("counts", [120, None])
def test_rle_counts_of_a_bad_type_name_the_mask(tmp_path, to, counts):
    _detections_json(tmp_path / "x.json", {"size": [10, 12], "counts": counts})
    with pytest.raises(ValueError, match="image 'x', mask 0"):  # was pycocotools' TypeError
        convert(tmp_path / "x.json", _out(tmp_path, "o", to), to)


@pytest.mark.parametrize("to", ["coco-polygons", "yolo"])
def test_mask_of_another_size_names_the_image_and_mask(tmp_path, to):
    _detections_json(tmp_path / "x.json", {"size": [20, 24], "counts": [480]})
    with pytest.raises(ValueError, match="image 'x', mask 0: RLE size"):
        convert(tmp_path / "x.json", _out(tmp_path, "o", to), to)


def test_duplicate_image_ids_are_an_error(tmp_path):
    """The second image of an id replaced the first: one image and its size were lost."""
    poly = [[3, 2, 8, 2, 8, 5, 3, 5]]
    data = {"images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 12},
                       {"id": 1, "file_name": "b.jpg", "height": 5, "width": 5}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": poly}]}
    (tmp_path / "d.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="image id 1 appears more than once"):
        convert(tmp_path / "d.json", tmp_path / "o.json", "coco-polygons")


@pytest.mark.parametrize("field, value, msg", [
    ("image_size", [NAN, 12], "image_size is nan"),
    ("image_size", [10], r"image_size is \[10\], not \[height, width\]"),
    ("label", NAN, "detection 0 label is nan"),
    ("label", "cat", "detection 0 label is 'cat'"),
])
def test_bad_numbers_of_a_detections_json_name_the_field(tmp_path, field, value, msg):
    rec = {"image_size": [10, 12],
           "detections": [{"box_xyxy": [3, 2, 8, 5], "segmentation": _square_rle()}]}
    if field == "image_size":
        rec["image_size"] = value
    else:
        rec["detections"][0][field] = value
    (tmp_path / "x.json").write_text(json.dumps(rec))
    with pytest.raises(ValueError, match=msg):
        convert(tmp_path / "x.json", tmp_path / "o.json", "coco-polygons")


def test_dataset_image_size_nan_names_the_image(tmp_path):
    data = {"images": [{"id": 7, "file_name": "a.jpg", "height": NAN, "width": 12}],
            "annotations": []}
    (tmp_path / "d.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="image 7 height is nan"):
        convert(tmp_path / "d.json", tmp_path / "o.json", "coco-polygons")


def test_null_iscrowd_is_not_crowd_in_every_format(tmp_path):
    poly = [[3, 2, 8, 2, 8, 5, 3, 5]]
    data = {"images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 12}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": poly,
                             "iscrowd": None}]}
    (tmp_path / "d.json").write_text(json.dumps(data))
    # coco-polygons raised a TypeError; YOLO and PNG masks took null as not crowd
    assert convert(tmp_path / "d.json", tmp_path / "o.json", "coco-polygons")["crowd"] == 0
    out = json.loads((tmp_path / "o.json").read_text())
    assert out["annotations"][0]["iscrowd"] == 0
    assert convert(tmp_path / "d.json", tmp_path / "y", "yolo")["objects"] == 1


@pytest.mark.parametrize("to", ["yolo", "png-masks"])
def test_a_failed_conversion_keeps_the_earlier_output(tmp_path, to):
    """The folder formats remove an earlier run's files as they go: a bad mask halfway used to
    leave neither that run's output nor a whole new one."""
    poly = [[3, 2, 8, 2, 8, 5, 3, 5]]
    good = {"images": [{"id": i, "file_name": f"im{i}.jpg", "height": 10, "width": 12}
                       for i in (1, 2)],
            "annotations": [{"id": i, "image_id": i, "category_id": 1, "segmentation": poly}
                            for i in (1, 2)]}
    (tmp_path / "good.json").write_text(json.dumps(good))
    bad = json.loads(json.dumps(good))
    bad["annotations"][1]["segmentation"] = {"size": [20, 20], "counts": [400]}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    out = tmp_path / "out"
    convert(tmp_path / "good.json", out, to)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="image 'im2.jpg', mask 0: RLE size"):
        convert(tmp_path / "bad.json", out, to)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
