"""Odd inputs to the segmenter backends, mask refinement and the models they compose with
(detectors, CLIP), found by an audit: each gets a result or a one-line ValueError instead of a
crash, a silent no-op or silently wrong output."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from composer.models.detectors import CocoJsonDetector, SlicedDetector, SsdMobileNetDetector
from composer.refine import ContrastRank, GrabCutRefine
from composer.segmenters import ClassicConfig


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("edge_weight", -5.0),  # negative graph weights: scipy's dijkstra aborted the process
        ("compactness", 0.0),  # ZeroDivisionError inside SLIC at embed time
        ("logit_clip", float("nan")),  # every mask empty, scored 1.0
        ("extents", (float("nan"), 1.5, 3.0)),
    ],
)
def test_classic_config_refuses_settings_that_crash_or_empty_masks(field, value):
    with pytest.raises(ValueError, match=field):
        ClassicConfig(**{field: value})


def _textured_case() -> tuple[np.ndarray, np.ndarray]:
    img = (np.random.default_rng(0).random((60, 80, 3)) * 255).astype(np.uint8)
    mask = np.zeros((60, 80), bool)
    mask[20:40, 30:50] = True
    return img, mask


def test_grabcut_refine_with_a_float_iteration_count_refines():
    """iters=2.0 (e.g. a model.json written by hand) made OpenCV refuse the call, and the
    masks came back unrefined without a word."""
    img, mask = _textured_case()
    want = GrabCutRefine(iters=2)(img, mask)
    assert (want != mask).any()
    np.testing.assert_array_equal(GrabCutRefine(iters=2.0)(img, mask), want)
    for bad in (float("nan"), 1.5, True):
        with pytest.raises(ValueError, match="iters must be a whole number"):
            GrabCutRefine(iters=bad)


def test_grabcut_refine_leaves_a_mask_on_a_flat_image_unchanged():
    """With one colour everywhere GrabCut gave the whole band to the background: the mask
    shrank by the band's width."""
    flat = np.full((200, 200, 3), 128, np.uint8)
    mask = np.zeros((200, 200), bool)
    mask[50:150, 50:150] = True
    np.testing.assert_array_equal(GrabCutRefine()(flat, mask), mask)
    img, _ = _textured_case()  # a flat crop inside a textured image: the crop is what counts
    big = np.zeros((300, 300, 3), np.uint8)
    big[:60, :80] = img
    big[100:, 100:] = 90
    m = np.zeros((300, 300), bool)
    m[180:260, 180:260] = True
    np.testing.assert_array_equal(GrabCutRefine()(big, m), m)


def test_an_infinite_band_is_refused():
    """band=inf (or `--mask-refine inf`) passed the `> 0` check and overflowed in
    band_pixels at predict time."""
    from composer.commands.common import parse_mask_refine

    with pytest.raises(ValueError, match="band must be a finite number"):
        GrabCutRefine(band=float("inf"))
    with pytest.raises(ValueError, match="band must be a finite number"):
        ContrastRank(band=float("inf"))
    with pytest.raises(ValueError, match="band must be a finite number"):
        parse_mask_refine("inf")


# ------------------------------------------------------------------------------------ onnx
@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from composer.export.onnx import export_onnx
    from composer.segmenters import load_segmenter

    out = export_onnx(load_segmenter("composer_tiny", device="cpu"), tmp_path_factory.mktemp("onnx"))
    return out.directory


def _edited(src, dst, **changes):
    from composer.export.onnx import DECODER_FILE, ENCODER_FILE, META_FILE

    dst.mkdir()
    for name in (ENCODER_FILE, DECODER_FILE):
        shutil.copy(src / name, dst / name)
    meta = json.loads((src / META_FILE).read_text())
    meta.update(changes)
    (dst / META_FILE).write_text(json.dumps(meta))
    return dst


def test_onnx_max_batch_beyond_the_exported_chunk_is_an_error(onnx_dir, tmp_path):
    """The traced decoder keeps its chunk size (16 prompts): with max_batch edited to 64,
    20 prompts gave 16 prompts' masks and nothing said so."""
    from composer.segmenters.onnx import OnnxSegmenter

    meta = json.loads((onnx_dir / "model.json").read_text())
    edited = _edited(onnx_dir, tmp_path / "e", max_batch=4 * int(meta["max_batch"]))
    seg = OnnxSegmenter(edited, threads=1, settings=False)
    img = (np.random.default_rng(0).random((60, 80, 3)) * 255).astype(np.uint8)
    emb = seg.embed(img)
    n = int(meta["max_batch"]) + 4
    points = np.random.default_rng(1).uniform(0, 59, (n, 1, 2))
    with pytest.raises(ValueError, match=r"returned \d+ masks for \d+ prompts.*max_batch"):
        seg.predict(emb, points=points)
    good = OnnxSegmenter(onnx_dir, threads=1, settings=False)
    assert len(good.predict(good.embed(img), points=points)) == 3 * n


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"img_size": 256}, r"img_size says \[256, 256\], but the graph's image input is"),
        ({"low_res_size": [32, 32]}, r"low_res_size says \[32, 32\], but the graph's mask_input"),
        ({"settings": [1]}, "settings must be a JSON object or null, got a list"),
    ],
)
def test_onnx_model_json_that_disagrees_with_the_graphs(onnx_dir, tmp_path, change, message):
    """A model.json edited to other sizes failed at the first image with ONNX Runtime's own
    error type (a traceback from the CLI); settings of the wrong type with AttributeError."""
    from composer.segmenters.onnx import OnnxSegmenter

    with pytest.raises(ValueError, match=message):
        OnnxSegmenter(_edited(onnx_dir, tmp_path / "e", **change), threads=1)


# ------------------------------------------------------------------------------- detectors
class _FakeDetector:
    model_id = "fake"
    class_names = {1: "person"}

    def __call__(self, image, image_id=None):
        from composer.structures import Detections

        boxes = np.array([[0, 0, 10, 10], [20, 20, 40, 40], [50, 5, 60, 30]], np.float32)
        return Detections(boxes, np.array([0.9, 0.8, 0.7], np.float32), np.ones(3, np.int64))


def test_negative_max_dets_is_refused():
    """max_dets=-1 sliced the sorted detections from the end: the last one was dropped."""
    entries = [{"image_id": 1, "category_id": 1, "bbox": [i, i, 5, 5], "score": 0.5} for i in range(4)]
    with pytest.raises(ValueError, match="max_dets must be None or a whole number >= 0"):
        CocoJsonDetector(entries, max_dets=-1)
    with pytest.raises(ValueError, match="max_dets"):
        SlicedDetector(_FakeDetector(), max_dets=-1)
    with pytest.raises(ValueError, match="max_dets"):
        SsdMobileNetDetector(max_dets=-1)
    with pytest.raises(ValueError, match="max_dets"):
        CocoJsonDetector(entries, max_dets=2.5)
    image = np.zeros((64, 64, 3), np.uint8)
    assert len(CocoJsonDetector(entries, max_dets=0)(image, 1)) == 0
    assert len(CocoJsonDetector(entries, max_dets=3.0)(image, 1)) == 3
    assert len(SlicedDetector(_FakeDetector(), slice_size=1000, max_dets=None)(image)) == 3


# ------------------------------------------------------------------------------------ clip
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    open_clip = pytest.importorskip("open_clip")
    from composer.models.clip import ClipModel

    name = "composer-audit-tiny-clip"
    cfg = tmp_path_factory.mktemp("clipcfg") / f"{name}.json"
    cfg.write_text(json.dumps({
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    return ClipModel.load(name)


def test_clip_refuses_non_string_and_blank_prompts(tiny_clip):
    """None and 5 were encoded as the words "None" and "5"; "" and "   " as the bare
    templates."""
    for bad in (None, 5, b"dog", "", "   "):
        with pytest.raises(ValueError, match="prompts must be non-empty strings"):
            tiny_clip.encode_text(["a dog", bad])
    out = tiny_clip.encode_text(["dog", "dog", "dog " * 200])  # duplicates, over the token limit
    assert out.shape == (3, 32) and np.isfinite(out).all()
    np.testing.assert_allclose(out[0], out[1])


def test_clip_template_with_extra_fields_is_a_value_error(tiny_clip):
    """A template with a second placeholder or a named field raised IndexError / KeyError."""
    for bad in ("a {} and a {}", "{x} of a {}"):
        with pytest.raises(ValueError, match="one '\\{\\}' and no other fields"):
            tiny_clip.encode_text(["dog"], templates=[bad])
    assert tiny_clip.encode_text(["dog"], templates=["a {{literal}} {}"]).shape == (1, 32)


def test_minilm_without_sentence_transformers_names_the_pip_command(monkeypatch, tmp_path):
    """A missing sentence-transformers was a bare ImportError without the install hint."""
    import builtins

    from composer.models.text import MiniLmEncoder, load_text_encoder

    real = builtins.__import__

    def no_st(name, *args, **kwargs):
        if name.startswith("sentence_transformers"):
            raise ImportError("No module named 'sentence_transformers'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_st)
    with pytest.raises(ValueError, match=r"needs sentence-transformers: pip install 'sam-composer\[text\]'"):
        MiniLmEncoder(model_dir=tmp_path)
    assert load_text_encoder("auto") is None  # auto falls back to names and synonyms


def test_a_ground_truth_json_as_detector_maps_file_names_by_its_images(tmp_path):
    """A COCO dataset json given as --detector matched no image of a folder ("image id 'good'
    is not in the results' image ids"): its images list was not used to map names to ids."""
    import json

    data = {"images": [{"id": 7, "file_name": "sub/good.jpg", "height": 64, "width": 64}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [4, 5, 10, 12],
                             "iscrowd": 0}],
            "categories": [{"id": 3, "name": "car"}]}
    (tmp_path / "gt.json").write_text(json.dumps(data))
    det = CocoJsonDetector(tmp_path / "gt.json")
    image = np.zeros((64, 64, 3), np.uint8)
    for name in ("good", "good.jpg", "sub/good.jpg", 7):
        dets = det(image, name)
        np.testing.assert_array_equal(dets.boxes, [[4, 5, 14, 17]])
        assert det.class_names[3] == "car"
    assert len(det(image, "other")) == 0
    (tmp_path / "bad.json").write_text(json.dumps({**data, "images": [{"id": 7}]}))
    with pytest.raises(ValueError, match="images or categories of the COCO json are malformed"):
        CocoJsonDetector(tmp_path / "bad.json")
