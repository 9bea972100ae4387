"""Odd inputs found by an audit of the CLI and the API: each gets a result or a one-line error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from composer.cli import main as cli_main
from composer.hub.checkpoint import load_state_dict_file
from composer.interactive import ClickSession
from composer.io.image import load_image
from composer.models.detectors import CocoJsonDetector
from composer.segmenters import load_segmenter


@pytest.fixture(scope="module")
def seg():
    return load_segmenter("composer_tiny", device="cpu")  # refinement, flip TTA, ranking on


def test_16bit_data_is_scaled_by_its_bit_depth(tmp_path):
    g = np.full((8, 8), 100, np.uint16)
    g[0, 0] = 256  # one pixel just over 8 bits: 9-bit range, not the 16-bit one
    Image.fromarray(g).save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png")[1, 1, 0] == round(100 / 511 * 255)
    g12 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 64)  # 12-bit data, max 4032
    Image.fromarray(g12).save(tmp_path / "b.png")
    assert load_image(tmp_path / "b.png").max() == round(4032 / 4095 * 255)
    full = np.array([[0, 65535]], np.uint16)
    assert load_image(full)[0, :, 0].tolist() == [0, 255]


def test_folders_and_decompression_bombs_are_one_line_errors(tmp_path):
    (tmp_path / "x.jpg").mkdir()
    with pytest.raises(ValueError, match="is a folder, not an image file"):
        load_image(tmp_path / "x.jpg")
    Image.new("1", (20000, 10000)).save(tmp_path / "bomb.png")
    with pytest.raises(ValueError, match="MAX_IMAGE_PIXELS"):
        load_image(tmp_path / "bomb.png")


@pytest.mark.parametrize("shape", [(1, 1, 3), (50, 1, 3), (3, 5000, 3)])
def test_degenerate_shapes_segment_with_flip_tta(seg, shape):
    image = np.full(shape, 90, np.uint8)
    emb = seg.embed(image)
    dets = seg.predict(emb, points=[[0, 0]], labels=[1])
    assert dets.meta["tta"] == "flip" and dets.masks.image_size == shape[:2]


def test_a_failed_click_leaves_the_session_unchanged(seg, monkeypatch):
    image = np.full((40, 60, 3), 90, np.uint8)
    image[10:30, 20:40] = 200
    session = ClickSession(seg, image, seg.embed(image))
    session.click((30, 20), 1)
    before = (len(session.points), session.frame, session.prediction.copy())
    with pytest.raises(ValueError, match="label must be 0 or 1"):
        session.click((5, 5), 0.5)

    def boom(*args, **kwargs):
        raise RuntimeError("decoder failed")

    monkeypatch.setattr(seg, "predict", boom)
    with pytest.raises(RuntimeError):
        session.click((5, 5), 0)
    monkeypatch.undo()
    assert (len(session.points), session.frame) == before[:2]
    np.testing.assert_array_equal(session.prediction, before[2])
    session.click((5, 5), 0)
    assert session.labels == [1, 0]


def test_cli_refuses_bad_labels_and_output_paths(tmp_path, capsys):
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(tmp_path / "img.png")
    base = ["segment", str(tmp_path / "img.png"), "--out"]
    assert cli_main([*base, str(tmp_path / "o"), "--point", "10,10,0.9"]) == 2
    assert "LABEL must be 1 (foreground) or 0 (background), got 0.9" in capsys.readouterr().err
    assert cli_main([*base, str(tmp_path / "o"), "--point", "10,10,-1"]) == 2
    (tmp_path / "afile").write_text("x")
    assert cli_main([*base, str(tmp_path / "afile"), "--point", "10,10"]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    # every command whose --out is a folder refuses a file before loading anything
    afile = str(tmp_path / "afile")
    for argv in (["demo", "--out", afile, "--no-automatic"],
                 ["everything", str(tmp_path / "img.png"), "--out", afile],
                 ["instances", str(tmp_path / "img.png"), "--out", afile],
                 ["eval", "points", "--dataset", "grabcut", "--out", afile],
                 ["train", "--data", afile, "--images", str(tmp_path), "--out", afile]):
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"--out {afile} exists and is not a folder" in err, (argv, err)
    # a negative coordinate list is a value, not an option (argparse said "expected one
    # argument"): it reaches the prompt checks, which name it
    assert cli_main([*base, str(tmp_path / "o"), "--point", "-5,-5"]) == 2
    assert "points outside the 60x40 image: [[-5.0, -5.0]]" in capsys.readouterr().err
    assert cli_main([*base, str(tmp_path / "o"), "--box", "-5,-5,20,20"]) == 2
    assert "boxes outside the 60x40 image" in capsys.readouterr().err
    # an empty --out would write into the current folder
    assert cli_main([*base, "", "--point", "10,10"]) == 2
    assert "--out is empty" in capsys.readouterr().err
    # an OSError from deeper down (here: a folder inside a file) is a one-line error too
    assert cli_main(["export", "--no-check", "--out", str(tmp_path / "afile" / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sam-composer export: error:") and "Traceback" not in err


def test_random_bytes_as_checkpoint(tmp_path):
    (tmp_path / "rand.pt").write_bytes(np.random.default_rng(0).bytes(4096).replace(b"\x80", b"\x00"))
    with pytest.raises(ValueError, match="not a PyTorch checkpoint") as e:
        load_state_dict_file(tmp_path / "rand.pt")
    assert "weights_only" not in str(e.value)


def test_a_plain_pickle_as_checkpoint_says_so_without_torch_warnings(tmp_path, recwarn):
    """pickle.dump's file was said to hold "Python objects other than tensors", under a raw
    torch UserWarning about its pickle protocol."""
    import pickle

    with open(tmp_path / "p.pth", "wb") as f:
        pickle.dump({"a": 1}, f, protocol=4)
    with pytest.raises(ValueError, match=r"a plain Python pickle \(protocol 4\), not a "
                                         "checkpoint written by torch.save"):
        load_state_dict_file(tmp_path / "p.pth")
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]
    # torch.save's legacy format with a newer protocol is torch's, not a plain pickle
    torch.save({"w": torch.zeros(2)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False,
               pickle_protocol=4)
    with pytest.raises(ValueError, match="legacy torch.save checkpoint written with pickle "
                                         "protocol 4.*save it again"):
        load_state_dict_file(tmp_path / "legacy.pth")
    torch.save({"w": torch.zeros(2)}, tmp_path / "legacy2.pth", _use_new_zipfile_serialization=False)
    assert set(load_state_dict_file(tmp_path / "legacy2.pth")) == {"w"}  # protocol 2 loads


def test_results_json_of_non_objects(tmp_path):
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="results entry 0 lacks image_id or bbox"):
        CocoJsonDetector(tmp_path / "list.json")


def test_a_rerun_into_the_same_folder_leaves_no_stale_mask_pngs(tmp_path):
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(tmp_path / "img.png")
    base = ["segment", str(tmp_path / "img.png"), "--point", "30,20", "--out", str(tmp_path / "o")]
    assert cli_main([*base, "--multimask"]) == 0
    assert len(list((tmp_path / "o").glob("img_mask*.png"))) == 3
    assert cli_main(base) == 0
    assert sorted(p.name for p in (tmp_path / "o").glob("img_mask*.png")) == ["img_mask000.png"]


def test_zero_area_boxes_are_accepted_as_in_sam(seg):
    """A box of zero width or height is a valid SAM prompt (coinciding corners): masks come
    back (composer_tiny's small, around the point); classic gives a one-pixel mask."""
    rng = np.random.default_rng(0)
    img = (rng.random((120, 160, 3)) * 255).astype(np.uint8)
    emb = seg.embed(img)
    point = seg.predict(emb, boxes=[[10, 10, 10, 10]])
    assert len(point) == 3 and np.isfinite(point.scores).all()
    assert (point.masks.area < 0.05 * 120 * 160).all()  # small, where the box is
    for b in point.masks.boxes()[point.masks.area > 0]:
        assert b[0] <= 10 <= b[2] and b[1] <= 10 <= b[3]
    line = seg.predict(emb, boxes=[[10, 10, 50, 10]])
    assert len(line) == 3 and np.isfinite(line.scores).all()
    classic = load_segmenter("classic")
    dets = classic.predict(classic.embed(img), boxes=[[0, 0, 0, 0]])
    assert len(dets) == 3 and (dets.masks.area == 1).all()


def test_cli_turns_out_of_memory_into_a_one_line_error(tmp_path, capsys, monkeypatch):
    """`everything --points-per-side 100000` asked numpy for 74.5 GiB: a traceback before."""
    import composer.commands.everything as everything

    def huge(args):
        raise MemoryError("Unable to allocate 74.5 GiB for an array with shape (100000, 100000)")

    monkeypatch.setattr(everything, "run", huge)
    argv = ["everything", str(tmp_path / "img.png"), "--out", str(tmp_path / "o")]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sam-composer everything: error: out of memory (Unable to allocate 74.5 GiB")

    def other(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(everything, "run", other)
    with pytest.raises(RuntimeError, match="a bug"):  # other runtime errors stay tracebacks
        cli_main(argv)


def test_a_broken_link_in_a_folder_is_a_named_failure(tmp_path, capsys):
    """A dangling symlink named like an image was skipped without a word."""
    from composer.commands.instances import image_files

    src = tmp_path / "imgs"
    src.mkdir()
    Image.fromarray(np.full((48, 64, 3), 120, np.uint8)).save(src / "good.png")
    (src / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (src / "sub.jpg").mkdir()  # a folder named like an image is still no image
    assert [p.name for p in image_files(src)] == ["gone.jpg", "good.png"]
    out = tmp_path / "out"
    assert cli_main(["everything", str(src), "--out", str(out), "--points-per-side", "4"]) == 1
    assert "1 failed" in capsys.readouterr().out
    import json

    coco = json.loads((out / "annotations.json").read_text())
    assert [f["file_name"] for f in coco["failures"]] == ["gone.jpg"]
    assert [im["file_name"] for im in coco["images"]] == ["good.png"]


def test_many_crop_layers_say_what_they_cost(tmp_path, capsys, monkeypatch):
    """--crop-n-layers 5 ran for minutes without a word."""
    import composer.commands.everything as everything

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(everything, "annotate_folder", stop, raising=False)
    img = tmp_path / "a.png"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(img)
    monkeypatch.setattr("composer.automatic.AutomaticMaskGenerator.generate", stop)
    with pytest.raises(Stop):
        cli_main(["everything", str(img), "--crop-n-layers", "4", "--out", str(tmp_path / "o")])
    assert "--crop-n-layers 4: 341 crops per image" in capsys.readouterr().out
