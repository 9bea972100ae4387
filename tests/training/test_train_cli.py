"""``sam-composer train`` end to end on a small COCO-format dataset made here."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from composer.cli import main
from composer.training.data import synthetic_shapes


def _coco_dataset(root: Path, n: int = 6) -> tuple[Path, Path]:
    images = root / "images"
    images.mkdir(parents=True)
    doc: dict = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "shape"}]}
    for i, item in enumerate(synthetic_shapes(n, size=96, seed=3)):
        name = f"{i:03d}.png"
        Image.fromarray(item.image).save(images / name)
        doc["images"].append({"id": i + 1, "file_name": name, "height": 96, "width": 96})
        for lab in np.unique(item.layers[0]):
            if lab == 0:
                continue
            m = np.asfortranarray((item.layers[0] == lab).astype(np.uint8))
            rle = mask_utils.encode(m)
            rle["counts"] = rle["counts"].decode()
            doc["annotations"].append(
                {
                    "id": len(doc["annotations"]) + 1,
                    "image_id": i + 1,
                    "category_id": 1,
                    "segmentation": rle,
                    "area": float(m.sum()),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
    ann = root / "instances.json"
    ann.write_text(json.dumps(doc))
    return ann, images


def test_train_command_writes_loadable_weights_and_resumes(tmp_path, capsys) -> None:
    from composer.sam.build import build_sam

    ann, images = _coco_dataset(tmp_path)
    out = tmp_path / "run"
    argv = ["train", "--data", str(ann), "--images", str(images), "--model", "vit_tiny_test"]
    argv += ["--random-init", "--out", str(out), "--steps", "6", "--masks-per-image", "2"]
    argv += ["--corrective", "1", "--val-fraction", "0.34"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "4 training images" in text and "2 held out" in text
    report = json.loads((out / "train_report.json").read_text())
    assert report["steps"] == 6 and report["val_single_click_miou_after"] is not None
    # the weights' digest as sha256sum prints it: a copy of model.pt can be checked
    sha256 = hashlib.sha256((out / "model.pt").read_bytes()).hexdigest()
    assert report["weights_sha256"] == sha256
    model = build_sam("vit_tiny_test", checkpoint=out / "model.pt")
    trained = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    # The same command again finds the finished run and does not train further.
    assert main(argv) == 0
    assert "resumed from" in capsys.readouterr().out
    assert json.loads((out / "train_report.json").read_text())["steps"] == 6


def test_train_command_errors(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SAM_COMPOSER_HOME", str(tmp_path / "home"))
    ann, images = _coco_dataset(tmp_path, n=2)
    base = ["train", "--data", str(ann), "--images", str(images), "--out", str(tmp_path / "o")]
    # Official weights absent from the cache: a one-line error naming the download command.
    assert main([*base, "--model", "vit_b"]) == 2
    assert "download" in capsys.readouterr().err
    assert main([*base, "--model", "vit_tiny_test"]) == 2
    assert "--random-init" in capsys.readouterr().err
    assert main([*base, "--model", "vit_tiny_test", "--random-init", "--steps", "0"]) == 2
    # an unknown architecture is named as such, composer_tiny listed (it said "no registered
    # weights", or listed only the SAM configs with --random-init)
    for extra in ([], ["--random-init"]):
        assert main([*base, "--model", "vit_x", *extra]) == 2
        assert "unknown --model 'vit_x'; valid: composer_tiny, vit_b" in capsys.readouterr().err
    tiny = [*base, "--model", "vit_tiny_test", "--random-init"]
    for extra, message in ((["--max-images", "0"], "--max-images must be >= 1"),
                           (["--time-budget-min", "-1"], "--time-budget-min must be > 0"),
                           (["--masks-per-image", "0"], "--masks-per-image must be >= 1"),
                           (["--lr", "nan"], "--lr must be a positive number")):
        capsys.readouterr()
        assert main([*tiny, *extra]) == 2, extra
        assert message in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert main(["train", "--data", str(ann), "--images", str(images), "--model", "vit_tiny_test",
                 "--random-init", "--out", str(tmp_path / "afile")]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--data", str(ann)])


def test_train_command_is_robust_to_odd_data_and_other_runs(tmp_path, capsys) -> None:
    """An empty segmentation is left out (not a pycocotools crash; image 1 has no other
    object); a held-out share that would take every image leaves one for training; an --out
    holding a run with other settings or another architecture is refused with a one-line
    error, never silently resumed."""
    ann, images = _coco_dataset(tmp_path, n=3)
    doc = json.loads(ann.read_text())
    doc["annotations"][0]["segmentation"] = []
    ann.write_text(json.dumps(doc))
    out = tmp_path / "run"
    argv = ["train", "--data", str(ann), "--images", str(images), "--model", "vit_tiny_test",
            "--random-init", "--out", str(out), "--steps", "2", "--masks-per-image", "2",
            "--corrective", "1", "--val-fraction", "0.99"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "1 training images" in text and "1 held out" in text
    assert json.loads((out / "run.json").read_text())["model"] == "vit_tiny_test"
    # a longer run of the same settings resumes; other settings are refused
    assert main([*argv[:-8], "--steps", "3", *argv[-6:]]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert main([*argv, "--lr", "3e-4"]) == 2
    err = capsys.readouterr().err
    assert "other settings (lr)" in err and len(err.strip().splitlines()) == 1
    # the json edited in place is other data (it resumed silently, with another split)
    saved = ann.read_text()
    ann.write_text(json.dumps({**doc, "info": {"edited": True}}))
    assert main(argv) == 2
    assert "other settings (data_sha256)" in capsys.readouterr().err
    ann.write_text(saved)
    # a run.json from before the digests were recorded still resumes
    ident = json.loads((out / "run.json").read_text())
    del ident["data_sha256"], ident["val_data_sha256"]
    (out / "run.json").write_text(json.dumps(ident))
    assert main(argv) == 0
    assert "resumed from" in capsys.readouterr().out
    # a last.pt of another architecture (no run.json: an older run) is a clear error too
    (out / "run.json").unlink()
    other = ["train", "--data", str(ann), "--images", str(images), "--model", "composer_tiny",
             "--out", str(out), "--steps", "4", "--masks-per-image", "2", "--corrective", "1"]
    assert main(other) == 2
    err = capsys.readouterr().err
    assert "not a training state of this model" in err and "Traceback" not in err
    # the failed command did not stamp the folder: the right one still resumes
    assert not (out / "run.json").exists()
    assert main(argv) == 0
    assert "resumed from" in capsys.readouterr().out
    (out / "run.json").write_text("[1]")
    assert main(argv) == 2
    assert "run.json is unreadable" in capsys.readouterr().err


def test_a_small_dataset_that_holds_out_nothing_says_so(tmp_path, capsys) -> None:
    """3 images x the default 0.1 round to none held out: no before/after mIoU, which only a
    "0 held out" in the summary line said."""
    ann, images = _coco_dataset(tmp_path, n=3)
    argv = ["train", "--data", str(ann), "--images", str(images), "--model", "vit_tiny_test",
            "--random-init", "--out", str(tmp_path / "run"), "--steps", "1",
            "--masks-per-image", "1", "--corrective", "0"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "--val-fraction 0.1 of 3 image(s) holds out none" in text and "0 held out" in text


def test_coco_item_ids_are_the_images_coco_items_yields(tmp_path) -> None:
    """train lists the images from the json alone and reads them one at a time: the listing
    must be the reader's own, or the held-out split would move."""
    from composer.training.data import coco_item_ids, coco_items

    ann, images = _coco_dataset(tmp_path, n=5)
    doc = json.loads(ann.read_text())
    for a in doc["annotations"]:
        if a["image_id"] == 2:
            a["iscrowd"] = 1  # image 2 has only a crowd region: no item
        if a["image_id"] == 4:
            a["area"] = 3.0  # below min_area below
    ann.write_text(json.dumps(doc))
    for min_area in (0.0, 10.0):
        ids = coco_item_ids(ann, images, min_area=min_area)
        items = list(coco_items(ann, images, min_area=min_area))
        assert [f"coco/{i}" for i in ids] == [it.image_id for it in items]
    assert coco_item_ids(ann, images) == [1, 3, 4, 5]
    assert coco_item_ids(ann, images, min_area=10.0) == [1, 3, 5]


def test_a_picture_listed_twice_is_not_held_out_and_trained_on(tmp_path, capsys) -> None:
    """The --val-fraction split is by json record: one picture under two ids could be trained
    on and held out at once (the held-out mIoU then measured a trained image). Such held-out
    records are left out and counted; masks beyond the 64 largest of an image are counted;
    a rerun with fewer --steps says it returns the longer run."""
    ann, images = _coco_dataset(tmp_path, n=4)
    doc = json.loads(ann.read_text())
    first = doc["images"][0]
    doc["images"].append({**first, "id": 99})  # image 1's file again, as image 99
    anns = [a for a in doc["annotations"] if a["image_id"] == first["id"]]
    doc["annotations"] += [{**a, "id": 1000 + k, "image_id": 99} for k, a in enumerate(anns)]
    # 70 copies of one small square on image 2: 6 beyond the cap of 64 masks per image
    m = np.zeros((96, 96), np.uint8, order="F")
    m[10:20, 10:20] = 1
    rle = mask_utils.encode(m)
    rle["counts"] = rle["counts"].decode()
    doc["annotations"] += [
        {"id": 2000 + k, "image_id": 2, "category_id": 1, "segmentation": rle, "area": 100.0,
         "bbox": [10, 10, 10, 10], "iscrowd": 0}
        for k in range(70)
    ]
    # box-only annotations on the held-out images 1 (left out below) and 3: only image 3's
    # counts as skipped in the held-out set
    doc["annotations"] += [{"id": 3000 + i, "image_id": i, "category_id": 1, "area": 50.0,
                            "bbox": [0, 0, 5, 10], "iscrowd": 0} for i in (1, 3)]
    ann.write_text(json.dumps(doc))
    out = tmp_path / "run"
    argv = ["train", "--data", str(ann), "--images", str(images), "--model", "vit_tiny_test",
            "--random-init", "--out", str(out), "--steps", "3", "--masks-per-image", "2",
            "--val-fraction", "0.4"]  # holds out records 0 and 2 of 5: image 1 and image 3
    # the duplicate (id 99, last) is trained on, its twin (id 1) is held out: left out
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "1 held-out image(s) are also training images under another id (e.g. coco/1)" in text
    assert "1 held out" in text
    n_cap = sum(1 for a in doc["annotations"] if a["image_id"] == 2) - 64
    assert f"{n_cap} training mask(s) beyond the 64 largest of their image" in text
    assert "1 annotation(s) supply no mask and are skipped (0 of training, 1 of held-out " \
        "images; no segmentation: 1)" in text
    report = json.loads((out / "train_report.json").read_text())
    assert report["val_images"] == 1
    assert [e["annotation_id"] for e in report["skipped_annotations"]] == [3003]
    assert report["skipped_annotations_by_reason"] == {"no segmentation": 1}
    argv[argv.index("--steps") + 1] = "2"
    assert main(argv) == 0
    assert "already holds 3 trained steps, more than --steps 2" in capsys.readouterr().out


def _counting_loads(monkeypatch) -> dict[str, int]:
    """Counts image decodes by file name (coco_items reads every image through load_image)."""
    import composer.io.image as image_io

    real, counts = image_io.load_image, {}

    def load_image(path):
        counts[Path(path).name] = counts.get(Path(path).name, 0) + 1
        return real(path)

    monkeypatch.setattr(image_io, "load_image", load_image)
    return counts


@pytest.mark.parametrize("held_out", ["val-data", "val-fraction", "overlap"])
def test_train_decodes_each_image_once(tmp_path, capsys, monkeypatch, held_out) -> None:
    """The --val-data duplicate check read every training and held-out image, then the samples
    read them all again; the --val-fraction split must not either. With an overlap the error
    is the same as before."""
    ann, images = _coco_dataset(tmp_path / "train", n=4)
    argv = ["train", "--data", str(ann), "--images", str(images), "--model", "vit_tiny_test",
            "--random-init", "--out", str(tmp_path / "run"), "--steps", "1",
            "--masks-per-image", "1", "--corrective", "0"]
    val_dir = tmp_path / "val"
    val_dir.mkdir()
    doc = json.loads(ann.read_text())
    for im in doc["images"]:  # other pixels (or, for "overlap", image 3's) under other names
        pixels = np.array(Image.open(images / im["file_name"]))
        if not (held_out == "overlap" and im["id"] == 3):
            pixels[0, 0] = 255 - pixels[0, 0]
        im["file_name"] = f"v{im['file_name']}"
        Image.fromarray(pixels).save(val_dir / im["file_name"])
    (tmp_path / "val.json").write_text(json.dumps(doc))
    if held_out == "val-fraction":
        argv += ["--val-fraction", "0.5"]
    else:
        argv += ["--val-data", str(tmp_path / "val.json"), "--val-images", str(val_dir)]
    counts = _counting_loads(monkeypatch)
    if held_out == "overlap":
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "1 of the 4 --val-data images are also in --data (e.g. coco/3)" in err
    else:
        assert main(argv) == 0
        assert ("2" if held_out == "val-fraction" else "4") + " held out" in capsys.readouterr().out
    expected = {f"{i:03d}.png" for i in range(4)}
    if held_out != "val-fraction":
        expected |= {f"v{i:03d}.png" for i in range(4)}
    assert counts == dict.fromkeys(expected, 1)


def test_train_says_how_many_listed_images_have_no_instance(tmp_path, capsys) -> None:
    """Images without annotations, or with crowd regions only, were dropped without a word:
    the count of training images was all that showed it."""
    ann, images = _coco_dataset(tmp_path, n=4)
    doc = json.loads(ann.read_text())
    doc["images"].append({"id": 50, "file_name": "000.png", "height": 96, "width": 96})
    for a in doc["annotations"]:
        if a["image_id"] == 2:
            a["iscrowd"] = 1
    ann.write_text(json.dumps(doc))
    argv = ["train", "--data", str(ann), "--images", str(images), "--model", "vit_tiny_test",
            "--random-init", "--out", str(tmp_path / "run"), "--steps", "1",
            "--masks-per-image", "1", "--corrective", "0", "--val-fraction", "0",
            "--max-images", "2"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert f"2 of the 5 images of {ann} have no non-crowd instance" in text
    assert "2 training images" in text


def test_train_names_its_device_only_once_the_run_starts(tmp_path, capsys) -> None:
    """Every run printed "training on cpu" before its weights and data were checked, so a run
    that then stopped at a one-line error had printed a misleading first line; the device is
    now named in the start line."""
    ann, images = _coco_dataset(tmp_path, n=3)
    base = ["train", "--data", str(ann), "--images", str(images), "--model", "vit_tiny_test",
            "--out", str(tmp_path / "o"), "--steps", "1", "--masks-per-image", "1",
            "--corrective", "0", "--device", "cpu"]
    assert main(base) == 2  # no registered weights, no --random-init
    captured = capsys.readouterr()
    assert "--random-init" in captured.err and captured.out == ""
    (tmp_path / "empty.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    assert main([*base, "--random-init", "--data", str(tmp_path / "empty.json")]) == 2
    captured = capsys.readouterr()
    assert "no image with a non-crowd instance" in captured.err and captured.out == ""
    assert main([*base, "--random-init"]) == 0
    out = capsys.readouterr().out
    assert "training on" not in out
    # the embedding, which comes first and can take minutes, is announced once it starts
    assert "embedding 3 training and 0 held-out image(s) on cpu ..." in out.splitlines()
    assert "model vit_tiny_test from random, on cpu; 3 training images" in out
