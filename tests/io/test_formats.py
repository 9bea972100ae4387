"""Polygons of masks and the conversions of ``sam-composer convert`` (COCO polygons, YOLO, PNG
masks)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from composer.cli import main as cli_main
from composer.io.formats import PNG_MASK_COLUMNS, convert, read_annotations
from composer.io.visualize import write_detections
from composer.structures import Detections, Masks
from composer.structures.masks import mask_polygons, merge_polygons


def raster(polys, h, w) -> np.ndarray:
    parts = [p for p in polys if len(p) >= 6]
    if not parts:
        return np.zeros((h, w), bool)
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(parts, h, w))).astype(bool)


def blobs(seed: int, h: int = 60, w: int = 80) -> np.ndarray:
    """Random smooth shapes: several parts, some with holes, some touching the border."""
    rng = np.random.default_rng(seed)
    from scipy import ndimage as ndi

    return ndi.gaussian_filter(rng.random((h, w)), 3) > 0.52


def fill(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    return ndi.binary_fill_holes(mask)


@pytest.mark.parametrize("seed", range(6))
def test_polygons_give_back_the_mask_without_its_holes(seed):
    m = blobs(seed)
    polys, holes = mask_polygons(m)
    assert len(polys) >= 1
    np.testing.assert_array_equal(raster(polys, *m.shape), fill(m))
    # hole count: background components not connected to the border (4-connectivity of the
    # background pairs with the 8-connected foreground of OpenCV's contours)
    from scipy import ndimage as ndi

    bg, n = ndi.label(np.pad(~m, 1, constant_values=True))
    assert holes == n - 1
    merged = merge_polygons(polys)
    np.testing.assert_array_equal(raster([merged], *m.shape), fill(m))


def test_tiny_and_degenerate_masks():
    m = np.zeros((7, 9), bool)
    assert mask_polygons(m) == ([], 0)
    m[3, 4] = True  # one pixel: its square
    assert mask_polygons(m) == ([[4.0, 3.0, 4.0, 4.0, 5.0, 4.0, 5.0, 3.0]], 0)
    m[3, 4:8] = True  # a 1-px line; and a pixel in the image corner
    m[0, 0] = True
    polys, _ = mask_polygons(m)
    assert len(polys) == 2 and len(polys[0]) == 8  # largest part first
    np.testing.assert_array_equal(raster(polys, 7, 9), m)
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7], ring[4, 4] = True, False
    polys, holes = mask_polygons(ring)
    assert holes == 1 and raster(polys, 9, 9).sum() == 25
    with pytest.raises(ValueError, match="tolerance"):
        mask_polygons(ring, tolerance=-1)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        mask_polygons(np.ones((2, 3, 3), bool))
    assert merge_polygons([]) == []


def test_tolerance_trades_vertices_for_accuracy():
    yy, xx = np.mgrid[:200, :300]
    disk = (xx - 150) ** 2 / 110**2 + (yy - 100) ** 2 / 70**2 < 1
    exact, _ = mask_polygons(disk)
    coarse, _ = mask_polygons(disk, tolerance=1.0)
    assert len(coarse[0]) < len(exact[0]) / 4
    r = raster(coarse, 200, 300)
    assert (r & disk).sum() / (r | disk).sum() > 0.98
    assert Masks.from_dense(disk[None]).to_polygons(tolerance=1.0) == [coarse]


@pytest.fixture(scope="module")
def coco_json(coco_dir):
    return coco_dir / "annotations" / "instances_val2017.json"


def _gt_masks(coco_json):
    data = json.loads(coco_json.read_text())
    size = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
    out = {}
    for a in data["annotations"]:
        h, w = size[a["image_id"]]
        seg = a["segmentation"]
        rle = (mask_utils.merge(mask_utils.frPyObjects(seg, h, w)) if isinstance(seg, list)
               else mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg)
        out[a["id"]] = mask_utils.decode(rle).astype(bool)
    return data, out


def test_coco_dataset_to_polygons_is_exact(coco_json, tmp_path):
    data, masks = _gt_masks(coco_json)
    stats = convert(coco_json, tmp_path / "poly.json", "coco-polygons")
    out = json.loads((tmp_path / "poly.json").read_text())
    assert stats["images"] == len(out["images"]) == len(data["images"])
    assert stats["annotations"] == len(out["annotations"]) == len(data["annotations"])
    assert out["categories"] == [{"id": c["id"], "name": c["name"]} for c in data["categories"]]
    kept = 0
    for a in out["annotations"]:
        m = masks[a["id"]]
        h, w = m.shape
        if isinstance(a["segmentation"], dict):  # holes: the RLE is kept
            kept += 1
            got = mask_utils.decode(a["segmentation"]).astype(bool)
        else:
            got = raster(a["segmentation"], h, w)
        np.testing.assert_array_equal(got, m)
        assert a["area"] == int(m.sum())
    assert kept == stats["kept_rle"] + stats["crowd"] and stats["kept_rle"] > 0
    assert stats["crowd"] == sum(a["iscrowd"] for a in data["annotations"]) > 0
    filled = convert(coco_json, tmp_path / "fill.json", "coco-polygons", holes="fill")
    assert filled["kept_rle"] == 0 and filled["filled_holes"] == stats["kept_rle"]


def test_coco_dataset_to_yolo(coco_json, tmp_path):
    data, masks = _gt_masks(coco_json)
    stats = convert(coco_json, tmp_path / "yolo", "yolo", tolerance=0.5)
    names = (tmp_path / "yolo" / "classes.txt").read_text().splitlines()
    assert names == [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
    cat_index = {c["id"]: i for i, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
    assert stats["images"] == len(data["images"])
    assert stats["objects"] + stats["crowd"] == len(data["annotations"]) and stats["crowd"] > 0
    assert "names:\n  0: \"person\"" in (tmp_path / "yolo" / "data.yaml").read_text()
    assert stats["multi_part"] > 0 and stats["dropped_holes"] > 0
    ious = []
    for im in data["images"]:
        stem = im["file_name"].rsplit(".", 1)[0]
        lines = (tmp_path / "yolo" / "labels" / f"{stem}.txt").read_text().splitlines()
        anns = [a for a in data["annotations"] if a["image_id"] == im["id"] and not a["iscrowd"]]
        assert len(lines) == len(anns)
        for line, a in zip(lines, anns, strict=True):
            vals = line.split()
            assert int(vals[0]) == cat_index[a["category_id"]]
            xy = np.asarray(vals[1:], float).reshape(-1, 2)
            assert xy.min() >= 0 and xy.max() <= 1
            poly = (xy * (im["width"], im["height"])).ravel().tolist()
            r, m = raster([poly], im["height"], im["width"]), fill(masks[a["id"]])
            ious.append((r & m).sum() / max(1, (r | m).sum()))
    assert np.mean(ious) > 0.97 and np.median(ious) > 0.98


def test_detection_jsons_and_results_lists(tmp_path):
    image = np.zeros((40, 50, 3), np.uint8)
    dense = np.stack([blobs(1, 40, 50), blobs(2, 40, 50)])
    masks = Masks.from_dense(dense)
    dets = Detections(boxes=masks.boxes(), masks=masks, scores=np.array([0.9, 0.4]),
                      labels=np.array([0, 1]), meta={"class_names": ["person", "dog"]})
    for stem in ("a", "b"):  # b's json predates image_file: its file name is its stem
        write_detections(dets, image, tmp_path / "dets", stem=stem, mask_pngs=False,
                         image_file="a.jpeg" if stem == "a" else None)
    (tmp_path / "dets" / "summary.json").write_text(json.dumps({"images": []}))
    ann = read_annotations(tmp_path / "dets")
    assert [im.name for im in ann.images] == ["a", "b"]
    assert [im.file_name for im in ann.images] == ["a.jpeg", "b"]
    assert ann.categories == {0: "person", 1: "dog"}
    dets.meta["class_names"] = ["person", "dog", "cat"]  # every class: stable indices
    write_detections(dets, image, tmp_path / "three", stem="c", mask_pngs=False)
    assert read_annotations(tmp_path / "three").categories == {0: "person", 1: "dog", 2: "cat"}
    convert(tmp_path / "dets", tmp_path / "y", "yolo")
    assert (tmp_path / "y" / "classes.txt").read_text() == "person\ndog\n"
    assert len((tmp_path / "y" / "labels" / "a.txt").read_text().splitlines()) == 2
    convert(tmp_path / "dets" / "a.json", tmp_path / "a_poly.json", "coco-polygons", holes="fill")
    out = json.loads((tmp_path / "a_poly.json").read_text())
    assert out["images"][0]["file_name"] == "a.jpeg"
    np.testing.assert_allclose([a["score"] for a in out["annotations"]], [0.9, 0.4], rtol=1e-6)
    for a, m in zip(out["annotations"], dense, strict=True):
        np.testing.assert_array_equal(raster(a["segmentation"], 40, 50), fill(m))
    results = [{"image_id": 7, "category_id": 3, "score": 0.5,
                "segmentation": Masks.from_dense(dense[:1]).to_coco_rles()[0]}]
    (tmp_path / "results.json").write_text(json.dumps(results))
    stats = convert(tmp_path / "results.json", tmp_path / "r.json", "coco-polygons")
    assert stats["annotations"] == 1
    assert json.loads((tmp_path / "r.json").read_text())["images"][0]["height"] == 40


def test_instances_class_names_stale_labels_and_corrupt_files(tmp_path):
    """`instances`/`text` write class_names as {"<category id>": name}: the names survive;
    a second yolo run into the same folder leaves no label of the first; a corrupt json in a
    folder is an error naming it, not a silently missing image; a json --out that is a folder
    or in a missing folder is a clear error or created, with no .part file left behind."""
    image = np.zeros((40, 50, 3), np.uint8)
    dense = np.stack([blobs(1, 40, 50), blobs(2, 40, 50)])
    masks = Masks.from_dense(dense)
    dets = Detections(boxes=masks.boxes(), masks=masks, scores=np.array([0.9, 0.4]),
                      labels=np.array([1, 39]),
                      meta={"class_names": {"1": "person", "3": "car", "39": "baseball bat"}})
    write_detections(dets, image, tmp_path / "inst", stem="a", mask_pngs=False)
    ann = read_annotations(tmp_path / "inst")
    assert ann.categories == {1: "person", 3: "car", 39: "baseball bat"}
    convert(tmp_path / "inst", tmp_path / "y", "yolo")
    assert (tmp_path / "y" / "classes.txt").read_text() == "person\ncar\nbaseball bat\n"
    assert [ln.split()[0] for ln in (tmp_path / "y/labels/a.txt").read_text().splitlines()] == [
        "0", "2"]
    # a second run into the same folder from other input: the first run's labels are gone
    write_detections(dets, image, tmp_path / "other", stem="b", mask_pngs=False)
    convert(tmp_path / "other", tmp_path / "y", "yolo")
    assert sorted(p.name for p in (tmp_path / "y" / "labels").iterdir()) == ["b.txt"]
    # a user's own YOLO folder (files no conversion listed) is refused, never emptied or
    # re-indexed: its hand-made labels were deleted and its classes.txt replaced
    for own in ("labels/keep.txt", "classes.txt", "data.yaml"):
        mine = tmp_path / "mine" / own.replace("/", "_").replace(".", "_")
        (mine / own).parent.mkdir(parents=True, exist_ok=True)
        (mine / own).write_text("cat\n")
        with pytest.raises(ValueError, match=f"holds YOLO files that sam-composer convert did "
                                             f"not write \\(e.g. {own}\\)"):
            convert(tmp_path / "other", mine, "yolo")
        assert (mine / own).read_text() == "cat\n"
    # a file the user adds to a converted folder survives the next conversion
    (tmp_path / "y" / "labels" / "extra.txt").write_text("0 0.1 0.1 0.2 0.1 0.2 0.2\n")
    assert convert(tmp_path / "inst", tmp_path / "y", "yolo")["stale_labels_removed"] == 1
    assert sorted(p.name for p in (tmp_path / "y" / "labels").iterdir()) == ["a.txt", "extra.txt"]
    # a conversion written before the manifest existed (its data.yaml is what a conversion
    # into that folder writes) is reconverted as before: it was refused as the user's own
    (tmp_path / "y" / ".sam-composer-yolo.json").unlink()
    (tmp_path / "y" / "labels" / "extra.txt").unlink()
    assert convert(tmp_path / "other", tmp_path / "y", "yolo")["stale_labels_removed"] == 1
    assert sorted(p.name for p in (tmp_path / "y" / "labels").iterdir()) == ["b.txt"]
    (tmp_path / "y" / ".sam-composer-yolo.json").unlink()
    (tmp_path / "y" / "data.yaml").write_text((tmp_path / "y" / "data.yaml").read_text() + "# mine\n")
    with pytest.raises(ValueError, match="did not write"):
        convert(tmp_path / "other", tmp_path / "y", "yolo")
    # stems that differ only in case are one file on macOS/Windows: kept apart
    from composer.io.formats import ImageAnnotations, _safe_stems

    ims = [ImageAnnotations(n, n, 5, 5, i) for i, n in enumerate(["Cat", "cat"], start=1)]
    assert _safe_stems(ims) == ["Cat", "cat_2"]
    # a corrupt per-image json in the folder
    (tmp_path / "inst" / "z.json").write_text('{"image_size": [40, 5')
    with pytest.raises(ValueError, match=r"z\.json is not valid JSON"):
        read_annotations(tmp_path / "inst")
    # json outputs: a folder is refused, a missing parent is created, no .part remains
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder"):
        convert(tmp_path / "other", tmp_path / "dir.json", "coco-polygons")
    convert(tmp_path / "other", tmp_path / "new" / "p.json", "coco-polygons")
    assert (tmp_path / "new" / "p.json").is_file()
    assert not list(tmp_path.rglob("*.part"))


def test_convert_command_and_bad_input(tmp_path, capsys):
    image = np.zeros((30, 30, 3), np.uint8)
    masks = Masks.from_dense(blobs(3, 30, 30)[None])
    dets = Detections(boxes=masks.boxes(), masks=masks, scores=np.array([0.5]))
    write_detections(dets, image, tmp_path, stem="x", mask_pngs=False)
    assert cli_main(["convert", str(tmp_path / "x.json"), "--to", "yolo",
                     "--out", str(tmp_path / "y")]) == 0
    assert "objects 1" in capsys.readouterr().out
    assert (tmp_path / "y" / "classes.txt").read_text() == "object\n"
    (tmp_path / "bad.json").write_text('{"foo": 1}')
    (tmp_path / "broken.json").write_text("{")
    for args, msg in (
        ([str(tmp_path / "bad.json"), "--to", "yolo"], "not a COCO dataset"),
        ([str(tmp_path / "broken.json"), "--to", "yolo"], "not JSON"),
        ([str(tmp_path / "x.json"), "--to", "yolo", "--tolerance", "-2"], "tolerance"),
        ([str(tmp_path / "missing.json"), "--to", "yolo"], "No such file"),
        ([str(tmp_path / "y"), "--to", "yolo"], "no per-image detection jsons"),
    ):
        assert cli_main(["convert", *args, "--out", str(tmp_path / "o")]) == 2
        assert msg in capsys.readouterr().err
    clash = {"images": [{"id": 1, "file_name": "a b.jpg", "height": 5, "width": 5},
                        {"id": 2, "file_name": "a_b.jpg", "height": 5, "width": 5}],
             "annotations": [{"id": 1, "image_id": 2, "category_id": 1,
                              "segmentation": [[1, 1, 4, 1, 4, 4, 1, 4]]}]}
    (tmp_path / "clash.json").write_text(json.dumps(clash))
    convert(tmp_path / "clash.json", tmp_path / "yc", "yolo")
    files = sorted(p.name for p in (tmp_path / "yc" / "labels").iterdir())
    assert files == ["a b.txt", "a_b.txt"]  # each image's own stem, as Ultralytics pairs them
    assert (tmp_path / "yc" / "labels" / "a_b.txt").read_text().startswith("0 0.2")
    assert (tmp_path / "yc" / "labels" / "a b.txt").read_text() == ""
    for bad in ({"images": [{"id": 1}], "annotations": []},
                {"images": [{"id": 1, "height": 5, "width": 5}], "annotations": [{"id": 1}]},
                {"images": {"a": 1}}, [], {"images": [{"id": 1, "height": 0, "width": 5}]}):
        (tmp_path / "m.json").write_text(json.dumps(bad))
        assert cli_main(["convert", str(tmp_path / "m.json"), "--to", "yolo",
                         "--out", str(tmp_path / "o")]) == 2
        assert "sam-composer convert: error" in capsys.readouterr().err
    orphan = {"images": [{"id": 1, "height": 5, "width": 5}],
              "annotations": [{"id": 1, "image_id": 2, "segmentation": []}]}
    (tmp_path / "orphan.json").write_text(json.dumps(orphan))
    with pytest.raises(ValueError, match="not in 'images'"):
        read_annotations(tmp_path / "orphan.json")


def test_nested_parts_many_parts_and_empty_masks(tmp_path):
    ring = np.zeros((9, 9), bool)
    ring[1:8, 1:8], ring[2:7, 2:7], ring[4, 4] = True, False, True  # an island in a hole
    polys, holes = mask_polygons(ring)
    assert holes == 1 and len(polys) == 1
    np.testing.assert_array_equal(raster([merge_polygons(polys)], 9, 9), fill(ring))
    noise = np.random.default_rng(0).random((300, 300)) < 0.3  # thousands of parts
    polys, _ = mask_polygons(noise)
    assert len(polys) > 1000
    np.testing.assert_array_equal(raster([merge_polygons(polys)], 300, 300), fill(noise))
    dot = np.zeros((5, 5), bool)
    dot[2, 2] = True  # simplification never loses a part
    assert mask_polygons(dot, tolerance=1.0)[0] == mask_polygons(dot)[0]
    # an empty mask stays a loadable (empty) RLE, and the output converts again
    masks = Masks.from_dense(np.stack([dot, np.zeros_like(dot)]))
    dets = Detections(boxes=masks.boxes(), masks=masks, scores=np.array([0.5, 0.1]))
    write_detections(dets, np.zeros((5, 5, 3), np.uint8), tmp_path, stem="e", mask_pngs=False)
    stats = convert(tmp_path / "e.json", tmp_path / "e_poly.json", "coco-polygons")
    assert stats["empty"] == 1
    from pycocotools.coco import COCO

    coco = COCO(str(tmp_path / "e_poly.json"))
    assert [int(coco.annToMask(a).sum()) for a in coco.dataset["annotations"]] == [1, 0]
    assert convert(tmp_path / "e_poly.json", tmp_path / "ey", "yolo")["empty"] == 1


@pytest.mark.parametrize("segmentation,msg", [
    ([[1, 1, float("nan"), 1, 5, 5]], "NaN"),
    ({"size": [20, 20], "counts": [0, 400]}, "RLE size"),
    ({"size": [10, 10], "counts": [-5, 105]}, "non-negative"),
    ("mask", "unknown segmentation"),
])
def test_bad_segmentations_are_errors(tmp_path, segmentation, msg):
    data = {"images": [{"id": 1, "file_name": "x.jpg", "height": 10, "width": 10}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                             "segmentation": segmentation}]}
    (tmp_path / "d.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=msg):
        convert(tmp_path / "d.json", tmp_path / "o.json", "coco-polygons")


def test_dataset_loading_shares_the_checks():
    from composer.data.coco import annotations_to_detections

    ann = {"id": 1, "bbox": [0, 0, 1, 1], "segmentation": [[1, 1, float("nan"), 1, 5, 5]]}
    with pytest.raises(ValueError, match="NaN"):
        annotations_to_detections([ann], (10, 10))
    with pytest.raises(ValueError, match="NaN"):
        Masks.from_polygons([ann["segmentation"]], (10, 10))


def test_huge_coordinates_are_clipped(tmp_path):
    data = {"images": [{"id": 1, "file_name": "x.jpg", "height": 10, "width": 10}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                             "segmentation": [[1, 1, 1e30, 1, 1e30, 1e30, 1, 1e30]]}]}
    (tmp_path / "d.json").write_text(json.dumps(data))
    convert(tmp_path / "d.json", tmp_path / "o.json", "coco-polygons")
    out = json.loads((tmp_path / "o.json").read_text())
    assert out["annotations"][0]["area"] == 81


AMG_HEADER = ["id", "area", "bbox_x0", "bbox_y0", "bbox_w", "bbox_h", "point_input_x",
              "point_input_y", "predicted_iou", "stability_score", "crop_box_x0", "crop_box_y0",
              "crop_box_w", "crop_box_h"]  # segment-anything's scripts/amg.py, in its order


def read_png_masks(folder):
    """The mask PNGs (as bool, checked binary 0/255 8-bit), metadata rows and labels map."""
    import cv2
    from PIL import Image

    with open(folder / "metadata.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == [*AMG_HEADER, "category", "score", "iscrowd"] == list(PNG_MASK_COLUMNS)
    masks = []
    for i in range(len(rows) - 1):
        with Image.open(folder / f"{i}.png") as im:
            assert im.mode == "L"
            m = np.asarray(im)
        assert set(np.unique(m)) <= {0, 255}
        masks.append(m == 255)
    assert sorted(p.name for p in folder.glob("*.png")) == sorted(
        [f"{i}.png" for i in range(len(masks))] + ["labels.png"])
    labels = cv2.imread(str(folder / "labels.png"), cv2.IMREAD_UNCHANGED)
    assert labels.dtype == np.uint16 and labels.ndim == 2
    return masks, [dict(zip(rows[0], r, strict=True)) for r in rows[1:]], labels


def painted(masks, shape):
    """The instance map the format promises: painted last to first, so the first mask wins."""
    out = np.zeros(shape, np.int64)
    for i in reversed(range(len(masks))):
        out[masks[i]] = i + 1
    return out


def mask_bbox(m):
    if not m.any():
        return [0, 0, 0, 0]
    ys, xs = np.nonzero(m)
    return [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_coco_dataset_to_png_masks_is_exact(coco_json, tmp_path):
    data = json.loads(coco_json.read_text())
    ims = data["images"][:2]  # 42 masks, polygons and crowd RLEs
    ids = {im["id"] for im in ims}
    small = {"images": ims, "categories": data["categories"],
             "annotations": [a for a in data["annotations"] if a["image_id"] in ids]}
    (tmp_path / "small.json").write_text(json.dumps(small))
    _, gt = _gt_masks(tmp_path / "small.json")
    names = {c["id"]: c["name"] for c in data["categories"]}
    stats = convert(tmp_path / "small.json", tmp_path / "png", "png-masks")
    assert stats["images"] == 2 and stats["masks"] == len(small["annotations"])
    assert stats["crowd"] == sum(a["iscrowd"] for a in small["annotations"]) > 0
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == sorted(
        im["file_name"].rsplit(".", 1)[0] for im in ims)
    for im in ims:
        anns = [a for a in small["annotations"] if a["image_id"] == im["id"]]
        masks, rows, labels = read_png_masks(tmp_path / "png" / im["file_name"].rsplit(".", 1)[0])
        assert len(masks) == len(rows) == len(anns)
        for i, (m, row, a) in enumerate(zip(masks, rows, anns, strict=True)):
            np.testing.assert_array_equal(m, gt[a["id"]])  # source order, exact
            assert int(row["id"]) == i and int(row["area"]) == int(m.sum())
            assert [int(row[k]) for k in AMG_HEADER[2:6]] == mask_bbox(m)
            assert row["category"] == names[a["category_id"]]
            assert row["iscrowd"] == str(a["iscrowd"])
            # a labelled dataset has no generator fields nor scores: empty, not made up
            assert all(row[k] == "" for k in AMG_HEADER[6:] + ["score"])
        np.testing.assert_array_equal(labels, painted(masks, m.shape))


def test_png_masks_fields_overlaps_and_empty_masks(tmp_path):
    """The same masks and generator fields from both of ``everything``'s outputs (a COCO json
    with XYWH crop boxes and ``[[x, y]]`` points, a per-image json with XYXY and ``[x, y]``)
    give the same files; overlaps go to the first mask; an empty mask keeps its number."""
    h, w = 40, 50
    dense = np.zeros((4, h, w), bool)
    dense[0, 5:25, 5:30] = True
    dense[1, 15:35, 20:45] = True  # overlaps mask 0: the overlap stays 0's
    dense[2, 8:12, 8:12] = True  # inside mask 0: hidden in labels.png
    dense[1, 30:33, 2:4] = True  # a second part; mask 3 stays empty
    iou = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    stab = np.array([0.95, np.nan, 0.85, 0.5], np.float32)  # NaN is written as null
    points = np.array([[10.5, 12.0], [30, 25], [9, 9], [1, 1]], np.float32)
    crops = np.array([[0, 0, 50, 40], [10, 5, 50, 40], [0, 0, 25, 20], [0, 0, 50, 40]])  # XYXY
    masks = Masks.from_dense(dense)
    dets = Detections(boxes=masks.boxes(), masks=masks, scores=iou, labels=np.array([0, 1, 0, 1]),
                      extras={"predicted_iou": iou, "stability_score": stab,
                              "point_coords": points, "crop_box": crops},
                      meta={"class_names": ["cat", "dog, big"]})
    write_detections(dets, np.zeros((h, w, 3), np.uint8), tmp_path, stem="pic", mask_pngs=False)
    rles = masks.to_coco_rles()
    coco = {"images": [{"id": 3, "file_name": "pic.jpg", "height": h, "width": w}],
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog, big"}],
            "annotations": [  # as tasks.everything.detections_to_annotations writes them
                {"id": 10 + i, "image_id": 3, "category_id": [1, 2, 1, 2][i], "iscrowd": 0,
                 "segmentation": rles[i], "predicted_iou": float(iou[i]),
                 "stability_score": None if np.isnan(stab[i]) else float(stab[i]),
                 "point_coords": [[float(v) for v in points[i]]], "score": float(iou[i]),
                 "crop_box": [float(crops[i, 0]), float(crops[i, 1]),
                              float(crops[i, 2] - crops[i, 0]), float(crops[i, 3] - crops[i, 1])]}
                for i in range(4)]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    got = {}
    for src in ("coco.json", "pic.json"):
        stats = convert(tmp_path / src, tmp_path / src.replace(".", "_"), "png-masks")
        assert stats == {"images": 1, "masks": 4, "crowd": 0, "empty": 1, "hidden": 1}
        got[src] = read_png_masks(tmp_path / src.replace(".", "_") / "pic")
    masks_out, rows, labels = got["pic.json"]
    for m, d in zip(masks_out, dense, strict=True):
        np.testing.assert_array_equal(m, d)
    assert not masks_out[3].any() and rows[3]["area"] == "0"
    assert labels[20, 25] == 1 and labels[30, 40] == 2 and labels[31, 3] == 2
    assert 3 not in labels and 4 not in labels
    np.testing.assert_array_equal(labels, painted(dense, (h, w)))
    assert [r["category"] for r in rows] == ["cat", "dog, big", "cat", "dog, big"]
    for r, i in zip(rows, range(4), strict=True):
        assert [float(r["point_input_x"]), float(r["point_input_y"])] == points[i].tolist()
        assert float(r["predicted_iou"]) == float(r["score"]) == float(iou[i])
        assert [int(r[k]) for k in AMG_HEADER[10:]] == [*crops[i, :2], *(crops[i, 2:] - crops[i, :2])]
        assert [int(r[k]) for k in AMG_HEADER[2:6]] == mask_bbox(dense[i])
    assert rows[1]["stability_score"] == "" and float(rows[0]["stability_score"]) == float(stab[0])
    assert rows[1]["crop_box_x0"] == "10" and rows[1]["crop_box_w"] == "40"
    assert rows[0]["point_input_x"] == "10.5" and rows[0]["point_input_y"] == "12"
    # the COCO json gives the same except its iscrowd column (per-image jsons have none)
    coco_masks, coco_rows, coco_labels = got["coco.json"]
    np.testing.assert_array_equal(coco_labels, labels)
    assert [r.pop("iscrowd") for r in coco_rows] == ["0"] * 4
    assert [r.pop("iscrowd") for r in rows] == [""] * 4
    assert coco_rows == rows
    # COCO polygons from the per-image json carry the COCO json's conventions (XYWH, [[x, y]])
    convert(tmp_path / "pic.json", tmp_path / "poly.json", "coco-polygons")
    poly = json.loads((tmp_path / "poly.json").read_text())["annotations"]
    for a, b in zip(poly, coco["annotations"], strict=True):
        assert a["crop_box"] == b["crop_box"] and a["point_coords"] == b["point_coords"]


def test_png_masks_many_masks_need_16_bits(tmp_path):
    dense = np.zeros((300, 20, 20), bool)
    dense[np.arange(300), np.arange(300) // 20, np.arange(300) % 20] = True  # one pixel each
    masks = Masks.from_dense(dense)
    dets = Detections(boxes=masks.boxes(), masks=masks, scores=np.ones(300, np.float32))
    write_detections(dets, np.zeros((20, 20, 3), np.uint8), tmp_path, stem="m", mask_pngs=False)
    convert(tmp_path / "m.json", tmp_path / "o", "png-masks")
    _, rows, labels = read_png_masks(tmp_path / "o" / "m")
    assert labels.max() == 300 and labels[14, 19] == 300 and (labels > 0).sum() == 300
    assert rows[299]["bbox_w"] == "1" and rows[299]["point_input_x"] == ""  # no generator fields


def test_png_masks_stems_reruns_and_bad_fields(tmp_path, capsys):
    seg = [[1, 1, 4, 1, 4, 4, 1, 4]]
    data = {"images": [{"id": 1, "file_name": "a b.jpg", "height": 5, "width": 5},
                       {"id": 2, "file_name": "a_b.jpg", "height": 5, "width": 5},
                       {"id": 3, "file_name": "sub/...jpg", "height": 5, "width": 5},
                       {"id": 4, "file_name": "x:y?.png", "height": 5, "width": 5}],
            "annotations": [{"id": k, "image_id": k, "category_id": 1, "segmentation": seg}
                            for k in (1, 2, 3, 4)]}
    (tmp_path / "d.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    assert cli_main(["convert", str(tmp_path / "d.json"), "--to", "png-masks",
                     "--out", str(out)]) == 0
    assert "images 4, masks 4" in capsys.readouterr().out
    folders = ["a_b", "a_b_2", "image_3", "x_y_"]  # "..." would be a path out of --out
    assert sorted(p.name for p in out.iterdir()) == folders
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json", "out"]
    # YOLO labels keep the image's stem (Ultralytics pairs images/<stem>.* with labels/<stem>.txt)
    assert convert(tmp_path / "d.json", tmp_path / "yolo", "yolo")["renamed"] == 1
    assert sorted(p.stem for p in (tmp_path / "yolo" / "labels").iterdir()) == [
        "a b", "a_b", "image_3", "x:y?"]
    masks, rows, _ = read_png_masks(out / "a_b_2")
    assert rows[0]["iscrowd"] == "" and masks[0].sum() == 9
    # a rerun with fewer masks leaves none of the earlier run's PNGs behind
    (out / "a_b" / "7.png").write_bytes(b"old")
    (out / "a_b" / "notes.png").write_bytes(b"mine")
    data["annotations"][0]["segmentation"] = {"size": [5, 5], "counts": [25]}  # empty
    (tmp_path / "d.json").write_text(json.dumps(data))
    assert convert(tmp_path / "d.json", out, "png-masks")["empty"] == 1
    assert sorted(p.name for p in (out / "a_b").iterdir()) == [
        "0.png", "labels.png", "metadata.csv", "notes.png"]
    for field, value, msg in (("crop_box", [0, 0, 5], "crop_box"),
                              ("point_coords", "center", "point_coords"),
                              ("predicted_iou", "high", "predicted_iou")):
        bad = {**data, "annotations": [{**data["annotations"][1], field: value}]}
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        assert cli_main(["convert", str(tmp_path / "bad.json"), "--to", "png-masks",
                         "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert msg in err and "'a_b.jpg', mask 0" in err


def test_coco_polygons_string_category_takes_no_existing_id(tmp_path):
    """A category_id that is no integer gets an id after the largest: it took id 2 (its
    position) although category 2 existed, merging the two classes."""
    from composer.io.formats import convert

    data = {"images": [{"id": 1, "file_name": "c.jpg", "height": 10, "width": 10}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 2,
                             "segmentation": [[1, 1, 4, 1, 4, 4, 1, 4]]},
                            {"id": 2, "image_id": 1, "category_id": "x",
                             "segmentation": [[5, 5, 8, 5, 8, 8, 5, 8]]}],
            "categories": [{"id": 2, "name": "a"}]}
    (tmp_path / "d.json").write_text(json.dumps(data))
    convert(tmp_path / "d.json", tmp_path / "p.json", "coco-polygons")
    out = json.loads((tmp_path / "p.json").read_text())
    assert out["categories"] == [{"id": 2, "name": "a"}, {"id": 3, "name": "x"}]
    assert [a["category_id"] for a in out["annotations"]] == [2, 3]


def test_coco_polygons_area_is_the_written_shapes(tmp_path):
    """With --holes fill the area stayed the mask's (316 for a ring whose filled polygon covers
    400 px); COCOeval's size buckets and annotation tools read it."""
    from pycocotools import mask as mask_utils

    from composer.io.formats import convert

    ring = np.zeros((30, 30), np.uint8, order="F")
    ring[5:25, 5:25] = 1
    ring[10:20, 10:20] = 0  # a hole of 100 px
    rle = mask_utils.encode(ring)
    rle["counts"] = rle["counts"].decode()
    data = {"images": [{"id": 1, "file_name": "r.png", "height": 30, "width": 30}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": rle,
                             "iscrowd": 0}],
            "categories": [{"id": 1, "name": "ring"}]}
    (tmp_path / "d.json").write_text(json.dumps(data))
    for holes, area in (("rle", 300), ("fill", 400)):
        convert(tmp_path / "d.json", tmp_path / f"{holes}.json", "coco-polygons", holes=holes)
        (ann,) = json.loads((tmp_path / f"{holes}.json").read_text())["annotations"]
        assert ann["area"] == area and ann["bbox"] == [5.0, 5.0, 20.0, 20.0], holes


def test_a_fractional_image_size_is_refused(tmp_path):
    """A height of 20.7 was cut to 20 without a word."""
    from composer.io.formats import convert

    data = {"images": [{"id": 1, "file_name": "r.png", "height": 20.7, "width": 30}],
            "annotations": [], "categories": []}
    (tmp_path / "d.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="20.7, not an integer"):
        convert(tmp_path / "d.json", tmp_path / "p.json", "coco-polygons")


def test_yolo_labels_are_named_after_the_image_and_clashes_counted(tmp_path):
    """dup.jpg and dup.png: a folder run names their jsons dup_jpg / dup_png, and the labels
    were named after those (neither pairs with its image), and a clash was counted as renamed
    0 (compared with the already renamed stem)."""
    from composer.io.formats import convert
    from composer.io.visualize import write_detections
    from composer.structures import Detections, Masks

    image = np.zeros((10, 12, 3), np.uint8)
    dense = np.zeros((1, 10, 12), bool)
    dense[0, 2:6, 3:8] = True
    dets = Detections.from_masks(Masks.from_dense(dense), scores=[0.9])
    folder = tmp_path / "run"
    for name in ("dup.jpg", "dup.png", "other.jpg"):
        write_detections(dets, image, folder, stem=name.replace(".", "_"), image_file=name,
                         mask_pngs=False)
    stats = convert(folder, tmp_path / "y", "yolo")
    labels = sorted(p.name for p in (tmp_path / "y" / "labels").iterdir())
    assert "other.txt" in labels and "dup.txt" in labels and len(labels) == 3
    assert stats["renamed"] == 1
    data = {"images": [{"id": i + 1, "file_name": n, "height": 10, "width": 12}
                       for i, n in enumerate(("dup.jpg", "dup.png"))],
            "annotations": [], "categories": []}
    (tmp_path / "d.json").write_text(json.dumps(data))
    assert convert(tmp_path / "d.json", tmp_path / "y2", "yolo")["renamed"] == 1


def test_a_dotted_stem_is_not_counted_as_renamed(tmp_path):
    """A json without image_file records the stem alone: "my.photo" was compared with
    Path("my.photo").stem, "my", and counted as renamed."""
    from composer.io.formats import convert
    from composer.io.visualize import write_detections
    from composer.structures import Detections, Masks

    dense = np.zeros((1, 10, 12), bool)
    dense[0, 2:6, 3:8] = True
    dets = Detections.from_masks(Masks.from_dense(dense), scores=[0.9])
    write_detections(dets, np.zeros((10, 12, 3), np.uint8), tmp_path / "run", stem="my.photo",
                     mask_pngs=False)
    stats = convert(tmp_path / "run", tmp_path / "y", "yolo")
    assert stats["renamed"] == 0 and (tmp_path / "y" / "labels" / "my.photo.txt").is_file()
