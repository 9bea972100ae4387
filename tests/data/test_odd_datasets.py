"""Odd dataset folders found by an audit of the readers and of ``eval --dataset``: each gets a
one-line ValueError naming the file (or a per-item error), never silently wrong ground truth.

All datasets here are small fakes under ``tmp_path`` in the real layouts (see each
``SOURCE.md`` under the data root); no real data is needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from composer.cli import main as cli_main
from composer.data.bsds import BSDS500, load_ground_truth
from composer.data.coco import CocoDataset, normalise_coco_dict
from composer.data.interactive import Berkeley, GrabCut
from composer.data.regions import BSDSRegions
from composer.structures import Detections, Masks
from composer.structures.masks import polygons_rle

H, W = 20, 30


def _object() -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[5:15, 5:20] = True
    return m


def _grabcut(root: Path) -> Path:
    (root / "data_GT").mkdir(parents=True)
    (root / "boundary_GT").mkdir()
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(root / "data_GT" / "a.jpg")
    return root


def _berkeley(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(root / "images" / "1.jpg")
    return root


# ---------------------------------------------------------------- GrabCut / Berkeley
def test_masks_with_alpha_palette_or_one_bit_read_as_shown(tmp_path):
    """An opaque RGBA GrabCut mask made the whole image foreground ("max over channels" took
    the alpha of 255); 1-bit and palette masks read as bools and indices, i.e. empty."""
    obj = _object()
    grab = _grabcut(tmp_path / "grabcut")
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[obj, :3] = 255
    Image.fromarray(rgba).save(grab / "boundary_GT" / "a.png")
    item = GrabCut(grab)[0]
    np.testing.assert_array_equal(item.gt_mask, obj)
    assert not item.ignore.any()

    berk = _berkeley(tmp_path / "berkeley")
    Image.fromarray(obj).save(berk / "masks" / "1.png")  # mode "1"
    np.testing.assert_array_equal(Berkeley(berk)[0].gt_mask, obj)
    pal = Image.fromarray(obj.astype(np.uint8), "P")
    pal.putpalette([0, 0, 0, 255, 255, 255])
    pal.save(berk / "masks" / "1.png")
    np.testing.assert_array_equal(Berkeley(berk)[0].gt_mask, obj)


def test_an_unreadable_mask_is_a_value_error_naming_it(tmp_path):
    grab = _grabcut(tmp_path / "grabcut")
    (grab / "boundary_GT" / "a.bmp").write_bytes(b"not a bitmap")
    with pytest.raises(ValueError, match=r"cannot read mask .*boundary_GT/a\.bmp"):
        GrabCut(grab)[0]
    berk = _berkeley(tmp_path / "berkeley")
    (berk / "masks" / "1.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"cannot read mask .*masks/1\.png"):
        Berkeley(berk)[0]


def test_stems_that_name_two_files_are_refused(tmp_path):
    """Two images for one GrabCut stem (which one was used depended on the folder order) and
    two masks for one item id (the object counted twice, or one of two objects lost)."""
    obj = (_object() * 255).astype(np.uint8)
    grab = _grabcut(tmp_path / "grabcut")
    Image.fromarray(obj).save(grab / "boundary_GT" / "a.bmp")
    assert len(GrabCut(grab)) == 1
    Image.fromarray(np.full((H, W, 3), 200, np.uint8)).save(grab / "data_GT" / "a.bmp")
    with pytest.raises(ValueError, match=r"images .*a\.bmp and a\.jpg share the stem 'a'"):
        GrabCut(grab)
    (grab / "data_GT" / "a.bmp").unlink()
    Image.fromarray(obj).save(grab / "boundary_GT" / "a.png")
    with pytest.raises(ValueError, match=r"masks .*a\.bmp and a\.png give the same item id 'a'"):
        GrabCut(grab)

    berk = _berkeley(tmp_path / "berkeley")
    Image.fromarray(obj).save(berk / "masks" / "1.png")
    Image.fromarray(obj).save(berk / "masks" / "1a.png")
    assert Berkeley(berk).image_ids == ["1", "1a"]
    Image.fromarray(obj).save(berk / "masks" / "1.bmp")
    with pytest.raises(ValueError, match=r"masks .*1\.bmp and 1\.png give the same item id '1'"):
        Berkeley(berk)


def test_an_exif_rotated_image_is_refused(tmp_path):
    """``load_image`` turns the image upright; the mask is in stored pixels. A half turn keeps
    the size, so the object was silently mirrored against the image."""
    grab = _grabcut(tmp_path / "grabcut")
    Image.fromarray((_object() * 255).astype(np.uint8)).save(grab / "boundary_GT" / "a.bmp")
    item = GrabCut(grab)[0]
    assert item.load_image().shape == (H, W, 3)
    exif = Image.Exif()
    exif[0x0112] = 3  # rotate 180
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(grab / "data_GT" / "a.jpg", exif=exif)
    with pytest.raises(ValueError, match=r"a\.jpg has EXIF orientation 3"):
        GrabCut(grab)[0].load_image()


# ---------------------------------------------------------------- BSDS500
def _gt_cell(segs: list[np.ndarray], bdry_shape: tuple[int, int] | None = None) -> dict:
    cell = np.empty((1, len(segs)), dtype=object)
    for k, seg in enumerate(segs):
        st = np.empty((1, 1), dtype=[("Segmentation", object), ("Boundaries", object)])
        st[0, 0]["Segmentation"] = seg.astype(np.uint16)
        st[0, 0]["Boundaries"] = np.zeros(bdry_shape or seg.shape, np.uint8)
        cell[0, k] = st
    return {"groundTruth": cell}


def _bsds(root: Path, ids: tuple[str, ...] = ("1",)) -> Path:
    (root / "images" / "test").mkdir(parents=True)
    (root / "groundTruth" / "test").mkdir(parents=True)
    seg = np.ones((H, W))
    seg[:, W // 2:] = 2
    for i in ids:
        Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(root / "images" / "test" / f"{i}.jpg")
        scipy.io.savemat(root / "groundTruth" / "test" / f"{i}.mat", _gt_cell([seg]))
    return root


def test_a_bsds_image_without_its_mat_is_refused(tmp_path):
    """It dropped out of the split unseen: 199 of 200 test images scored as "the test split"."""
    root = _bsds(tmp_path, ("1", "2"))
    assert BSDS500("test", root=root).ids == ["1", "2"]
    (root / "groundTruth" / "test" / "2.mat").unlink()
    with pytest.raises(ValueError, match=r"1 images in .*images/test have no ground truth, "
                                         r"e\.g\. .*groundTruth/test/2\.mat"):
        BSDS500("test", root=root)


def test_a_corrupt_bsds_mat_is_a_value_error_naming_it(tmp_path):
    path = tmp_path / "1.mat"
    path.write_bytes(b"junk" * 10)
    with pytest.raises(ValueError, match=r"cannot read .*1\.mat as a \.mat file"):
        load_ground_truth(path)
    scipy.io.savemat(path, {"groundTruth": np.ones((3, 3))})  # a matrix, not a cell
    with pytest.raises(ValueError, match=r"1\.mat: annotator 0 is not a struct"):
        load_ground_truth(path)
    st = np.empty((1, 1), dtype=[("Seg", object)])
    st[0, 0]["Seg"] = np.ones((H, W))
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = st
    scipy.io.savemat(path, {"groundTruth": cell})
    with pytest.raises(ValueError, match=r"1\.mat: annotator 0 is not a struct with Segmentation"):
        load_ground_truth(path)
    scipy.io.savemat(path, _gt_cell([np.ones((H, W))], bdry_shape=(H + 1, W)))
    with pytest.raises(ValueError, match=r"1\.mat: annotator 0 has Segmentation \(20, 30\) "
                                         r"and Boundaries \(21, 30\)"):
        load_ground_truth(path)


def test_regions_of_an_image_whose_every_region_is_tiny(tmp_path):
    """No region reaches min_area_fraction: the image counted as evaluated with no masks (a
    whole split of such images gave mIoU 0 with exit status 0); now an item error."""
    root = _bsds(tmp_path)
    assert len(BSDSRegions("test", root=root)[0].gt) == 2
    tiny = np.arange(H * W).reshape(H, W) + 1  # one pixel per region
    scipy.io.savemat(root / "groundTruth" / "test" / "1.mat", _gt_cell([tiny]))
    with pytest.raises(ValueError, match=r"image '1': no region of .*1\.mat covers "
                                         r"min_area_fraction=0\.01"):
        BSDSRegions("test", root=root)[0]


# ---------------------------------------------------------------- COCO
GOOD = {"images": [{"id": 1, "file_name": "a.jpg", "height": H, "width": W}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 8],
                         "segmentation": [[5, 5, 15, 5, 15, 13, 5, 13]], "iscrowd": 0}],
        "categories": [{"id": 1, "name": "x"}]}


def test_coco_unknown_categories_and_repeated_ids_are_refused():
    """COCOeval leaves objects of unlisted categories out of AP (fewer misses, higher AP), and
    pycocotools keeps the last of two records with one id and counts it twice."""
    ann = GOOD["annotations"][0]
    cases = [
        ({**GOOD, "annotations": [ann, {**ann, "id": 8, "category_id": 5}]},
         r"annotations\[1\] \(id 8\) has category_id 5, which is not among the categories"),
        ({**GOOD, "categories": []}, r"annotations\[0\] \(id 7\) has category_id 1"),
        ({**GOOD, "annotations": [ann, {**ann, "bbox": [0, 0, 3, 3]}]},
         r"annotations\[1\] repeats id 7"),
        ({**GOOD, "images": GOOD["images"] * 2}, r"images\[1\] repeats id 1"),
        ({**GOOD, "images": [{**GOOD["images"][0], "id": [1]}]}, r"images\[0\] id must be an integer, got '\[1\]'"),
    ]
    for data, msg in cases:
        with pytest.raises(ValueError, match=msg):
            normalise_coco_dict(data)
    assert normalise_coco_dict(GOOD)["annotations"][0]["id"] == 7


def test_coco_records_without_size_or_bbox_name_the_record(tmp_path):
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(tmp_path / "a.jpg")
    (tmp_path / "nosize.json").write_text(json.dumps(
        {**GOOD, "images": [{"id": 1, "file_name": "a.jpg"}]}))
    with pytest.raises(ValueError, match="image record 1 needs integer height and width"):
        CocoDataset(tmp_path / "nosize.json", tmp_path)[0]
    nobox = {k: v for k, v in GOOD["annotations"][0].items() if k != "bbox"}
    (tmp_path / "nobox.json").write_text(json.dumps({**GOOD, "annotations": [nobox]}))
    # COCO's bbox is its mask's: computed where the json has none (eval points failed the image)
    gt = CocoDataset(tmp_path / "nobox.json", tmp_path)[0].gt
    np.testing.assert_array_equal(gt.boxes, [[5, 5, 15, 13]])
    # a segmentation that cannot be read (so no bbox could be computed either) is named with
    # what is wrong with it: "annotation 7 has no bbox" sent the user after the wrong field
    for seg, why in (({"size": [H, W], "counts": "junk!"}, "compressed RLE counts hold"),
                     ({"size": [H - 1, W], "counts": [0, 10]},
                      rf"RLE size \[{H - 1}, {W}\] differs from image_size \[{H}, {W}\]")):
        nothing = {**nobox, "segmentation": seg}
        (tmp_path / "nothing.json").write_text(json.dumps({**GOOD, "annotations": [nothing]}))
        with pytest.raises(ValueError, match=f"^annotation 7: {why}"):
            CocoDataset(tmp_path / "nothing.json", tmp_path)[0]
    # a polygon written flat ([x0, y0, ...]) too: eval said "annotation 7 has no bbox"
    flat = {**nobox, "segmentation": [5, 5, 15, 5, 15, 13]}
    (tmp_path / "flat.json").write_text(json.dumps({**GOOD, "annotations": [flat]}))
    with pytest.raises(ValueError, match=r"annotation 7: polygon parts must be lists .*a flat list"):
        CocoDataset(tmp_path / "flat.json", tmp_path)[0]


# ---------------------------------------------------------------- eval --dataset flags
def test_eval_refuses_split_and_images_flags_it_would_ignore(tmp_path, capsys, monkeypatch):
    """``--split val`` on GrabCut and ``--images DIR`` without ``--coco`` evaluated the
    default data while the command line said otherwise; refused before any data or model."""
    monkeypatch.setenv("SAM_COMPOSER_DATA", str(tmp_path / "nothing"))
    out = str(tmp_path / "o")
    cases = [
        (["points", "--dataset", "grabcut", "--split", "val"],
         "--split applies to --dataset bsds500 only; grabcut has no splits"),
        (["points", "--coco", str(tmp_path / "x.json"), "--images", str(tmp_path),
          "--split", "val"], "--split applies to --dataset bsds500 only; a --coco json"),
        (["instances", "--dataset", "coco", "--coco", str(tmp_path / "x.json"), "--images",
          str(tmp_path)], "--dataset coco and --coco"),  # was accepted, --dataset ignored
        (["instances", "--images", str(tmp_path)], f"--images {tmp_path} needs --coco"),
        (["points", "--dataset", "grabcut", "--images", str(tmp_path)], "needs --coco"),
    ]
    for argv, msg in cases:
        assert cli_main(["eval", *argv, "--model", "classic", "--out", out]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("sam-composer eval: error: ") and msg in err, (argv, err)
        assert len(err.strip().splitlines()) == 1
    # instances and proposals (COCO only) do not offer --split at all
    for task in ("instances", "proposals"):
        with pytest.raises(SystemExit):
            cli_main(["eval", task, "--split", "val", "--out", out])
        assert "unrecognized arguments: --split val" in capsys.readouterr().err
    # a BSDS split typo and a missing dataset stay one-line errors
    argv = ["eval", "edges", "--split", "tst", "--method", "sobel", "--out", out]
    assert cli_main(argv) == 2
    assert "split must be one of ('train', 'val', 'test'), got 'tst'" in capsys.readouterr().err
    assert cli_main(["eval", "points", "--dataset", "berkeley", "--model", "classic", "--out", out]) == 2
    assert f"dataset 'berkeley' not found at {tmp_path / 'nothing' / 'berkeley'}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # edges need boundaries, which a COCO json has not: no --coco flag (every image failed)
    with pytest.raises(SystemExit) as exc:
        cli_main(["eval", "edges", "--coco", str(tmp_path / "x.json"), "--out", out])
    assert exc.value.code == 2 and "unrecognized arguments: --coco" in capsys.readouterr().err


def _perfect_detections() -> Detections:
    """GOOD's object (rasterised from its polygon) with category 1 and score 0.9."""
    rle = polygons_rle(GOOD["annotations"][0]["segmentation"], (H, W))
    return Detections.from_masks(Masks([rle], (H, W)), scores=[0.9], labels=[1])


def test_coco_string_ids_and_sizes_score_like_integers(caplog):
    """A json with "1" for its ids and "20" for its sizes scored AP 0: the results' integer
    category ids matched no ground truth (and string sizes broke COCOeval)."""
    from composer.evaluation.coco_ap import CocoEvaluator

    stringy = json.loads(json.dumps(GOOD))
    stringy["images"][0].update(id="1", height=str(H), width=f"{W}.0")
    stringy["annotations"][0].update(image_id="1", category_id="1")
    stringy["categories"][0]["id"] = "1"
    out = normalise_coco_dict(stringy)
    assert out["images"][0]["id"] == 1 and out["images"][0]["width"] == W
    assert out["annotations"][0]["category_id"] == 1 and out["categories"][0]["id"] == 1
    scores = []
    for data in (GOOD, stringy):
        ev = CocoEvaluator(data)
        ev.process(1, _perfect_detections())
        scores.append(ev.evaluate())
    assert scores[0]["segm/AP"] == pytest.approx(1.0) and scores[1] == scores[0]
    for bad, msg in (("cat", r"categories\[0\] id must be an integer, got 'cat'"),
                     (1.5, r"categories\[0\] id must be an integer, got '1.5'"),
                     (True, r"categories\[0\] id must be an integer")):
        with pytest.raises(ValueError, match=msg):
            normalise_coco_dict({**GOOD, "categories": [{"id": bad, "name": "x"}]})
    with pytest.raises(ValueError, match=r"images\[1\] repeats id 1"):
        normalise_coco_dict({**GOOD, "images": [GOOD["images"][0], stringy["images"][0]]})


@pytest.mark.parametrize("segmentation", [[], [[]], [[5, 5, 15, 5]], [[5, 5], []]])
def test_coco_empty_segmentations_are_left_out_of_ap(segmentation, caplog):
    """pycocotools failed at the end of a whole evaluation on these (IndexError, 'input type is
    not supported', a 4-number polygon read as a box), losing every metric."""
    from composer.evaluation.coco_ap import CocoEvaluator

    ann = GOOD["annotations"][0]
    data = {**GOOD, "annotations": [
        ann, {**ann, "id": 8, "segmentation": segmentation},
        {**ann, "id": 9, "segmentation": [[1, 1], [5, 5, 15, 5, 15, 13, 5, 13]]}]}
    with caplog.at_level("WARNING"):
        out = normalise_coco_dict(data)
    assert [a["id"] for a in out["annotations"]] == [7, 9]
    assert out["annotations"][1]["segmentation"] == [[5, 5, 15, 5, 15, 13, 5, 13]]
    assert "1 annotation(s) have no polygon of 3 or more points" in caplog.text
    ev = CocoEvaluator(data)
    ev.process(1, _perfect_detections())
    metrics = ev.evaluate()
    assert 0 < metrics["segm/AP"] < 1  # annotation 9 repeats 7: one of the two is missed


def test_coco_annotations_of_unknown_images_are_reported(caplog):
    ann = GOOD["annotations"][0]
    with caplog.at_level("WARNING"):
        out = normalise_coco_dict({**GOOD, "annotations": [ann, {**ann, "id": 8, "image_id": 5}]})
    assert len(out["annotations"]) == 2
    assert "1 annotation(s) name an image_id that is not among the images" in caplog.text


def test_an_item_that_cannot_be_read_is_a_failure_naming_its_image(tmp_path):
    """The failure said ``image None`` when the item's ground truth could not be built."""
    from composer.evaluation.coco_ap import CocoEvaluator
    from composer.evaluation.runner import run

    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(tmp_path / "a.jpg")
    ann = GOOD["annotations"][0]
    data = {**GOOD, "images": [*GOOD["images"], {**GOOD["images"][0], "id": 2}],
            "annotations": [ann, {**ann, "id": 8, "image_id": 2, "segmentation": None}]}
    (tmp_path / "d.json").write_text(json.dumps(data))
    ds = CocoDataset(tmp_path / "d.json", tmp_path)
    report = run(lambda ctx: _perfect_detections(), ds, [CocoEvaluator(ds.coco, ("segm",))])
    (fail,) = report["meta"]["failures"]
    assert fail["image_id"] == 2 and "annotation 8 has no segmentation" in fail["error"]
    assert report["meta"]["n_images"] == 1 and report["metrics"]["segm/AP"] == pytest.approx(1.0)


def test_an_exif_rotated_image_of_the_json_size_is_explained_before_the_model_runs(tmp_path):
    """The stored pixels have the json's size and EXIF orientation 6 turns them: the message
    said only that the sizes differ (the file "is" 20x30 though it stores 30x20), and eval
    instances segmented the image before finding out."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(tmp_path / "a.jpg", exif=exif)
    (tmp_path / "d.json").write_text(json.dumps(GOOD))
    item = CocoDataset(tmp_path / "d.json", tmp_path)[0]
    with pytest.raises(ValueError, match=(
            r"a.jpg: the image file is 20x30 \(WxH\) but the json says 30x20: the file stores "
            r"30x20 pixels with EXIF orientation 6")):
        item.load_image()
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(tmp_path / "a.jpg")
    assert item.load_image().shape == (H, W, 3)
    Image.fromarray(np.full((W, H, 3), 90, np.uint8)).save(tmp_path / "a.jpg")
    with pytest.raises(ValueError, match=r"is 20x30 \(WxH\) but the json says 30x20$"):
        item.load_image()


def test_eval_reports_record_what_reproduces_their_numbers(tmp_path, monkeypatch):
    """report.json said "BSDS500" and "_ImageTask" whatever the split and edge method, kept
    no benchmark settings (the threshold count moves ODS), no data files, no command line and
    no code version; Canny's soft map kept 99 levels whatever the threshold count."""
    monkeypatch.setenv("SAM_COMPOSER_DATA", str(tmp_path / "data"))
    root = _bsds(tmp_path / "data" / "bsds500", ("1", "2"))
    out = tmp_path / "edges"
    argv = ["eval", "edges", "--method", "canny", "--thresholds", "5", "--workers", "1",
            "--out", str(out)]
    assert cli_main(argv) == 0
    meta = json.loads((out / "report.json").read_text())["meta"]
    assert meta["task"] == "edges:canny" and meta["config"]["levels"] == 5
    assert meta["dataset_split"] == "test" and meta["dataset_files"]["root"] == str(root)
    assert len(meta["evaluator_settings"][0]["thresholds"]) == 5
    assert meta["command"] == ["sam-composer", *argv]
    import composer

    checkout = (Path(composer.__file__).resolve().parents[1] / ".git").exists()
    assert meta["code"]["version"] and ("git_commit" in meta["code"]) == checkout
    # a COCO json: its files, and the results file written beside the report
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(tmp_path / "a.jpg")
    (tmp_path / "gt.json").write_text(json.dumps(GOOD))
    out = tmp_path / "inst"
    assert cli_main(["eval", "instances", "--coco", str(tmp_path / "gt.json"), "--images",
                     str(tmp_path), "--model", "classic", "--boxes", "gt", "--out", str(out)]) == 0
    meta = json.loads((out / "report.json").read_text())["meta"]
    assert meta["dataset_files"] == {"ann_file": str(tmp_path / "gt.json"),
                                     "image_dir": str(tmp_path)}
    assert meta["files"] == ["results.json", "report.json"]
