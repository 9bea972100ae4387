"""Semantic audit of composer/models: matcher priorities and plurals, CLIP preprocessing of
weights files, torchvision's own score floor and detection count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from composer.models.coco_names import COCO_CATEGORIES
from composer.models.text import TextMatcher

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------- text matcher
def test_a_class_name_beats_the_singular_form_of_another_class():
    # "glasses" singularises to "glass"; the class named "glass" must keep its own name
    m = TextMatcher({1: "glasses", 2: "glass"}, encoder=None)
    hit = m.match("glass")
    assert hit is not None and (hit.class_id, hit.method) == (2, "exact")
    hit = m.match("glasses")
    assert hit is not None and hit.class_id == 1


def test_the_full_prompt_wins_over_its_singular_form_in_every_process():
    # forms were a set of strings: which of "glasses" / "glass" was looked up first changed
    # with the hash seed, so the same prompt matched different classes from run to run
    code = (
        "from composer.models.text import TextMatcher\n"
        "m = TextMatcher({1: 'glass', 2: 'glasses'}, encoder=None)\n"
        "print(m.match('glasses').class_id)\n"
    )
    got = set()
    for seed in range(8):
        env = {**os.environ, "PYTHONHASHSEED": str(seed)}
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        got.add(out.stdout.strip())
    assert got == {"2"}


@pytest.mark.parametrize(
    ("prompt", "name"),
    [
        ("buses", "bus"),
        ("two buses", "bus"),
        ("knives", "knife"),
        ("mice", "mouse"),
        ("the vases", "vase"),
        ("benches", "bench"),
        ("skis", "skis"),
        ("hot dogs", "hot dog"),
    ],
)
def test_plurals_match_their_class_exactly(prompt, name):
    m = TextMatcher(COCO_CATEGORIES, encoder=None)
    hit = m.match(prompt)
    assert hit is not None and (hit.name, hit.method, hit.score) == (name, "exact", 1.0)


def test_caller_synonyms_take_precedence_over_the_built_in_table():
    # "bag" is a built-in synonym of handbag; the caller's table says backpack
    m = TextMatcher(COCO_CATEGORIES, encoder=None, synonyms={"backpack": ("bag", "rucksack")})
    assert m.match("a bag").name == "backpack"
    assert m.match("rucksacks").name == "backpack"
    assert m.match("purse").name == "handbag"  # the rest of the built-in table stays
    # replacing a class's entry still drops its built-in words
    m = TextMatcher(COCO_CATEGORIES, encoder=None, synonyms={"handbag": ("clutch",)})
    assert m.match("clutch").name == "handbag" and m.match("purse") is None


# ------------------------------------------------------------------------------------ CLIP
TINY = "composer-audit2-tiny-clip"
TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    open_clip = pytest.importorskip("open_clip")
    folder = tmp_path_factory.mktemp("audit2clip")
    cfg = folder / f"{TINY}.json"
    cfg.write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY, pretrained=None)
    weights = folder / "weights" / "open_clip_model.bin"
    weights.parent.mkdir()
    torch.save(model.state_dict(), weights)
    return weights


def test_clip_file_weights_take_the_sidecar_preprocessing(tiny_weights):
    from composer.models.clip import ClipModel

    plain = ClipModel.load(TINY, weights=tiny_weights)
    assert torch.allclose(plain.mean.flatten(), torch.tensor([0.48145466, 0.4578275, 0.40821073]))
    sidecar = tiny_weights.parent / "open_clip_config.json"
    sidecar.write_text(
        json.dumps(
            {
                "model_cfg": TINY_CFG,
                "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
            }
        )
    )
    try:
        clip = ClipModel.load(TINY, weights=tiny_weights)
        assert clip.mean.flatten().tolist() == [0.5] * 3
        assert clip.std.flatten().tolist() == [0.5] * 3
        crop = np.full((20, 20, 3), 200, np.uint8)
        assert not np.allclose(clip.encode_images([crop]), plain.encode_images([crop]))
        sidecar.write_text(json.dumps({"preprocess_cfg": {"mean": "grey"}}))
        with pytest.raises(ValueError, match="open_clip_config.json"):
            ClipModel.load(TINY, weights=tiny_weights)
    finally:
        sidecar.unlink()


def test_clip_file_weights_of_siglip_are_normalised_as_siglip(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    from composer.models.clip import _file_preprocess

    if not open_clip.list_pretrained_tags_by_model("ViT-B-16-SigLIP"):
        pytest.skip("this open_clip has no SigLIP tags")
    # open_clip's model config of SigLIP has no mean/std (OpenAI's were used); every one of
    # its pretrained tags says 0.5 / 0.5
    model_cfg = open_clip.get_model_config("ViT-B-16-SigLIP")
    assert "mean" not in model_cfg.get("preprocess_cfg", {})
    path = tmp_path / "siglip.safetensors"
    path.write_bytes(b"")
    got = _file_preprocess(open_clip, "ViT-B-16-SigLIP", path)
    assert got == {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    got = _file_preprocess(open_clip, "ViT-B-16", path)
    assert got["mean"] == pytest.approx((0.48145466, 0.4578275, 0.40821073))


# ----------------------------------------------------------------------------- torchvision
def test_torchvision_score_floor_and_count_follow_ours(tmp_path):
    import torchvision.models.detection as tvd

    from composer.models.detectors import TorchvisionDetector

    torch.manual_seed(0)
    model = tvd.fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    path = tmp_path / "fcos.pth"
    torch.save(model.state_dict(), path)
    kw = {"min_size": 96, "max_size": 96}
    det = TorchvisionDetector(
        "fcos_resnet50_fpn", weights=path, score_threshold=0.0, max_dets=150, model_kwargs=kw
    )
    # FCOS's own floor is 0.2 and its count 100: they cut before ours did
    assert det.model.score_thresh == 0.0 and det.model.detections_per_img == 150
    rng = np.random.default_rng(0)
    out = det(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8))
    assert len(out) > 0 and out.scores is not None and float(out.scores.min()) < 0.2
    # the caller's model_kwargs still win
    det = TorchvisionDetector(
        "fcos_resnet50_fpn",
        weights=path,
        score_threshold=0.0,
        model_kwargs={**kw, "score_thresh": 0.3},
    )
    assert det.model.score_thresh == 0.3 and det.model.detections_per_img == 100
