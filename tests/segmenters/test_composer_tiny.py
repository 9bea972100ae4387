"""The packaged composer_tiny weights: integrity, loading, and a sanity check of the model."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest

from composer.sam.composer_tiny import PACKAGED_WEIGHTS, SHIPPED_SHA256


def test_packaged_weights_are_the_registered_file() -> None:
    assert PACKAGED_WEIGHTS.is_file(), "composer/weights/composer_tiny.pt is part of the package"
    assert PACKAGED_WEIGHTS.stat().st_size < 5_000_000
    assert hashlib.sha256(PACKAGED_WEIGHTS.read_bytes()).hexdigest() == SHIPPED_SHA256


def _disk_scene() -> tuple[np.ndarray, np.ndarray]:
    """A textured light background with a blue disk (centre (250, 140), radius 70)."""
    rng = np.random.default_rng(0)
    image = (200 + rng.integers(0, 20, (300, 400, 3))).astype(np.uint8)
    disk = np.zeros((300, 400), np.uint8)
    cv2.circle(disk, (250, 140), 70, 1, -1)
    image[disk > 0] = (30, 60, 160)
    return image, disk


def test_packaged_model_segments_an_object_from_one_click() -> None:
    from composer import load_segmenter
    from composer.segmenters import DEFAULT_ORDER

    seg = load_segmenter("composer_tiny")
    assert "composer_tiny-packaged" in seg.model_id
    # the default without official SAM weights: after the SAM names, before classic
    assert DEFAULT_ORDER.index("composer_tiny") == DEFAULT_ORDER.index("classic") - 1
    image, disk = _disk_scene()
    emb = seg.embed(image)
    dets = seg.predict(emb, points=np.array([[[250, 140]]]), labels=np.array([[1]]))
    masks = dets.masks.to_dense()
    gt = disk > 0
    best = masks[int(np.argmax(dets.scores))]
    assert (best & gt).sum() / (best | gt).sum() > 0.8
    # A click on the background does not return the disk.
    dets = seg.predict(emb, points=np.array([[[40, 40]]]), labels=np.array([[1]]))
    top = dets.masks.to_dense()[int(np.argmax(dets.scores))]
    assert (top & gt).sum() / max((top | gt).sum(), 1) < 0.5


def test_packaged_model_finds_the_object_with_generator_defaults() -> None:
    """composer_tiny's IoU head and logits are calibrated unlike SAM's: the generator's default
    config takes the model's recommended thresholds (chosen on BSDS500 val), so it finds the
    object; an explicit config or override still wins."""
    from composer import load_segmenter
    from composer.automatic import AmgConfig, AutomaticMaskGenerator
    from composer.sam.composer_tiny import AMG_THRESHOLDS

    seg = load_segmenter("composer_tiny")
    assert seg.amg_thresholds == AMG_THRESHOLDS
    amg = AutomaticMaskGenerator(seg, points_per_side=8)
    for key, value in AMG_THRESHOLDS.items():
        assert getattr(amg.config, key) == value
    assert AutomaticMaskGenerator(seg, AmgConfig()).config.pred_iou_thresh == 0.88
    assert AutomaticMaskGenerator(seg, pred_iou_thresh=0.5).config.pred_iou_thresh == 0.5
    image, disk = _disk_scene()
    dets = amg.generate(image)
    assert len(dets) > 0
    masks = dets.masks.to_dense()
    gt = disk > 0
    ious = (masks & gt).sum(axis=(1, 2)) / (masks | gt).sum(axis=(1, 2))
    assert ious.max() > 0.8


@pytest.mark.parametrize("damage", ["truncate", "other_arch"])
def test_damaged_composer_tiny_file_is_refused(tmp_path, damage) -> None:
    import torch

    from composer.sam.composer_tiny import build_composer_tiny

    path = tmp_path / "w.pt"
    if damage == "truncate":
        path.write_bytes(PACKAGED_WEIGHTS.read_bytes()[:1000])
    else:
        state = torch.load(PACKAGED_WEIGHTS, weights_only=True)
        state["mask_decoder.iou_token.weight"] = torch.zeros(1, 7)
        torch.save(state, path)
    with pytest.raises(ValueError):
        build_composer_tiny(checkpoint=path)


def test_packaged_model_refines_returned_masks_with_grabcut(caplog) -> None:
    """composer_tiny's 64x64 masks are refined by GrabCut in a band around their boundary:
    the returned masks fit the object better, ``low_res_logits`` stay the decoder's, both APIs
    agree, and ``refine`` switches it per call."""
    import dataclasses
    import logging

    from composer import load_segmenter
    from composer.sam.composer_tiny import MASK_RANK, MASK_REFINE

    seg = load_segmenter("composer_tiny")
    assert seg.mask_refine == MASK_REFINE
    image, disk = _disk_scene()
    gt = disk > 0
    emb = seg.embed(image)
    assert tuple(emb.extras["image"].shape) == image.shape
    pts, lbl = np.array([[[250, 140]]]), np.array([[1]])
    ref = seg.predict(emb, points=pts, labels=lbl)
    raw = seg.predict(emb, points=pts, labels=lbl, refine="off")
    assert ref.meta["refine"] == dataclasses.asdict(MASK_REFINE) and raw.meta["refine"] is None
    np.testing.assert_array_equal(ref.extras["low_res_logits"], raw.extras["low_res_logits"])
    # the predicted IoUs are the decoder's; the ranking scores add each mask's contrast
    np.testing.assert_array_equal(ref.extras["predicted_iou"], raw.extras["predicted_iou"])
    assert seg.mask_rank == MASK_RANK and ref.meta["rank"] == dataclasses.asdict(MASK_RANK)
    np.testing.assert_allclose(
        ref.scores, ref.extras["predicted_iou"] + MASK_RANK.weight * ref.extras["contrast"], rtol=1e-6
    )
    top = int(np.argmax(raw.scores))

    def iou(m: np.ndarray) -> float:
        return float((m & gt).sum() / max((m | gt).sum(), 1))

    before, after = iou(raw.masks.to_dense()[top]), iou(ref.masks.to_dense()[top])
    assert after > 0.95 and after > before + 0.01
    # a zoomed-in click (crop embedding) is refined in the crop's frame
    from composer.interactive import ClickSession, ZoomIn

    session = ClickSession(seg, image, embedding=emb, zoom_in=ZoomIn())
    session.click((250, 140), 1)
    zoomed, _ = session.click((300, 140), 1)
    assert session.encoder_calls == 1 and iou(zoomed[0]) > 0.95
    seg.set_image(image)
    masks, scores, _ = seg.predict(point_coords=[[250, 140]], point_labels=[1])
    np.testing.assert_array_equal(masks, ref.masks.to_dense())
    np.testing.assert_allclose(scores, ref.scores, rtol=1e-6)  # the official API ranks alike
    logits, _, _ = seg.predict(point_coords=[[250, 140]], point_labels=[1], return_logits=True)
    np.testing.assert_array_equal(logits > 0, raw.masks.to_dense())
    # An embedding made with refinement, flip TTA and ranking off keeps no image: "auto" then
    # warns and returns the decoder's masks (an older disk cache must not break), an explicit
    # refiner is an error.
    seg.mask_refine, seg.flip_tta, seg.mask_rank = None, False, None
    plain = seg.embed(image)
    assert "image" not in plain.extras
    seg.mask_refine, seg.mask_rank = MASK_REFINE, MASK_RANK
    with caplog.at_level(logging.WARNING, logger="composer.segmenters.base"):
        fallback = seg.predict(plain, points=pts, labels=lbl)
    assert fallback.meta["refine"] is None and "carries no image" in caplog.text
    assert fallback.meta["rank"] is None  # nor ranked by contrast
    # nor mirrored (flip_tta needs the image too): the decoder's own masks
    bare = seg.predict(emb, points=pts, labels=lbl, refine="off", tta="off", rank="off")
    np.testing.assert_array_equal(fallback.masks.to_dense(), bare.masks.to_dense())
    np.testing.assert_array_equal(fallback.scores, bare.scores)
    seg.flip_tta = True
    with pytest.raises(ValueError, match="carries none"):
        seg.predict(plain, points=pts, labels=lbl, refine=MASK_REFINE)
    with pytest.raises(ValueError, match="refine must be"):
        seg.predict(emb, points=pts, labels=lbl, refine="grabcut")


def test_composer_tiny_is_the_default_without_official_weights(monkeypatch, tmp_path) -> None:
    from composer import load_segmenter
    from composer.segmenters import default_segmenter_name

    monkeypatch.setenv("SAM_COMPOSER_HOME", str(tmp_path))  # no official SAM weights cached
    assert default_segmenter_name() == "composer_tiny"
    seg = load_segmenter()
    assert "composer_tiny-packaged" in seg.model_id and seg.mask_refine is not None


def test_demo_runs_the_shipped_model_end_to_end(monkeypatch, tmp_path, capsys) -> None:
    """``make demo`` (``python -m composer demo``) on a machine without official SAM weights
    uses composer_tiny: the point and box prompts find the astronaut's face and the shuttle
    patch, and segment-everything (the model's calibrated thresholds) returns masks."""
    import json

    from composer.cli import main

    monkeypatch.setenv("SAM_COMPOSER_HOME", str(tmp_path / "home"))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "segmenter: composer_tiny-packaged" in printed and "masks refined by GrabCut" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["segmenter"].startswith("composer_tiny-packaged")
    assert summary["automatic"]["n_masks"] > 0 and summary["cache"]["encoder_calls"] == 1
    # flip TTA's one mirrored pass (point and box prompts share it) is reported, not hidden
    assert summary["mirror_encoder_calls"] == 1
    assert "plus 1 for the mirrored image (flip TTA)" in printed
    # the point prompt's score is the contrast ranking's, printed with its two terms
    assert "point prompt: score" in printed and "(predicted IoU " in printed
    for name in ("prompts_overlay.png", "everything_overlay.png", "prompts.json"):
        assert (out / name).stat().st_size > 0


def test_demo_lists_every_file_it_writes(monkeypatch, tmp_path, capsys) -> None:
    """The demo's closing line names each file of its folder, astronaut.png (the input that the
    tutorials segment next) included: a learner reads the folder from that line."""
    import fnmatch

    from composer.cli import main

    monkeypatch.setenv("SAM_COMPOSER_HOME", str(tmp_path / "home"))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-automatic"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("outputs in "))
    listed = [name.split(" (")[0] for name in line.split(": ", 1)[1].split(", ")]
    written = sorted(p.name for p in out.iterdir())
    assert "astronaut.png" in written
    unlisted = [n for n in written if not any(fnmatch.fnmatch(n, pat) for pat in listed)]
    assert not unlisted, f"{unlisted} written but not in {line!r}"
