"""recipes/text_to_mask_coco.py scores masks by their own area, and rescores a saved run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _modules import load_recipe
from PIL import Image
from pycocotools import mask as mask_utils

from composer.data.coco import CocoDataset


def _dataset(root: Path) -> CocoDataset:
    """One 100 x 100 image with a 30 x 30 object: mask area 900, small (< 32**2)."""
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(root / "a.png")
    m = np.zeros((100, 100), np.uint8, order="F")
    m[10:40, 10:40] = 1
    rle = mask_utils.encode(m)
    rle["counts"] = rle["counts"].decode()
    doc = {"images": [{"id": 1, "file_name": "a.png", "height": 100, "width": 100}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": rle,
                            "area": 900.0, "bbox": [10.0, 10.0, 30.0, 30.0], "iscrowd": 0}],
           "categories": [{"id": 1, "name": "thing"}]}
    (root / "gt.json").write_text(json.dumps(doc))
    return CocoDataset(root / "gt.json", root)


def test_masks_are_sized_by_their_area_and_a_saved_run_rescores(tmp_path, capsys):
    """With the detections' boxes passed to loadRes, a small mask with a wide box counted as a
    medium detection: APs 0 and APm 1 (the harness's CocoEvaluator drops the box)."""
    recipe = load_recipe("text_to_mask_coco")
    dataset = _dataset(tmp_path)
    m = np.zeros((100, 100), np.uint8, order="F")
    m[10:40, 10:40] = 1
    rle = mask_utils.encode(m)
    rle["counts"] = rle["counts"].decode()
    entries = [{"image_id": 1, "category_id": 1, "segmentation": rle, "score": 0.9,
                "bbox": [10.0, 10.0, 90.0, 30.0], "area": 2700.0}]
    records = [{"image_id": 1, "category_id": 1, "prompt": "thing", "n_masks": 1,
                "top_iou": 1.0, "seconds": 0.1, "matched": "thing", "message": None}]
    metrics = recipe.score(dataset, entries, records)
    assert metrics["mask_AP"] == pytest.approx(1.0) and metrics["mask_APs"] == pytest.approx(1.0)
    assert metrics["mask_APm"] == -1.0  # no medium object, no medium detection
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(entries))
    (run / "queries.json").write_text(json.dumps(records))
    run_settings = {"model": "composer_tiny", "refine": True, "limit": None}
    (run / "summary.json").write_text(json.dumps(
        {"metrics": {"mask_APs": 0.0}, "model_id": "m-1", "settings": run_settings}))
    argv = ["--coco", str(tmp_path / "gt.json"), "--images", str(tmp_path), "--rescore",
            str(run), "--out", str(tmp_path / "again")]
    assert recipe.main(argv) == 0
    summary = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert summary["metrics"]["mask_APs"] == pytest.approx(1.0)
    assert summary["rescored_from"] == str(run)
    # the run's own settings and model id, not this command's defaults (model None, no refine)
    assert summary["settings"] == run_settings and summary["model_id"] == "m-1"
    assert summary["metrics_before_rescore"] == {"mask_APs": 0.0}
    (run / "queries.json").write_text(json.dumps([{**records[0], "image_id": 7}]))
    with pytest.raises(SystemExit) as exc:
        recipe.main(argv)
    assert exc.value.code == 2
    assert "queries name images outside the data given" in capsys.readouterr().err
