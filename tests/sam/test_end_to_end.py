"""Our checkpoint loading + network + predictor against the official predictor, end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from composer import build_sam
from composer.predictor import SamPredictor
from composer.sam import CONFIGS

pytest.importorskip("segment_anything")
from segment_anything import SamPredictor as OfficialPredictor  # noqa: E402
from test_network import seeded_official  # noqa: E402  (same folder)


def test_official_pth_through_our_stack_matches_official_predictor(tmp_path):
    ref = seeded_official(CONFIGS["vit_tiny_test"], seed=5)
    path = tmp_path / "official_tiny.pth"
    torch.save(ref.state_dict(), path)
    ours = SamPredictor(build_sam("vit_tiny_test", checkpoint=path))
    official = OfficialPredictor(ref)
    rng = np.random.default_rng(1)
    image = (rng.random((75, 110, 3)) * 255).astype(np.uint8)
    official.set_image(image)
    emb = ours.embed(image)
    assert (emb.features - official.get_image_embedding()).abs().max() < 1e-3
    boxes = np.array([[10, 5, 60, 50], [40, 20, 100, 70]], np.float32)
    points = np.array([[[30, 30], [50, 40]], [[70, 45], [0, 0]]], np.float32)
    labels = np.array([[1, 0], [1, -1]])
    dets = ours.predict(emb, points=points, labels=labels, boxes=boxes, multimask=True)
    tp = official.transform.apply_coords_torch(torch.as_tensor(points), image.shape[:2])
    tb = official.transform.apply_boxes_torch(torch.as_tensor(boxes), image.shape[:2])
    _, iou, low = official.predict_torch(tp, torch.as_tensor(labels), tb, multimask_output=True)
    assert np.abs(dets.extras["low_res_logits"] - low.reshape(6, *low.shape[-2:]).numpy()).max() < 1e-3
    assert np.abs(dets.scores - iou.reshape(-1).numpy()).max() < 1e-4


def test_sam_model_registry_ports_the_official_one(tmp_path):
    """``sam_model_registry[name](checkpoint=...)``, as code written for segment_anything (and
    mobile_sam's "vit_t") calls it, builds the same model as ``build_sam``."""
    from segment_anything import sam_model_registry as official_registry

    import composer

    registry = composer.sam_model_registry
    assert set(official_registry) | {"vit_t"} == set(registry)
    default = registry["default"](meta=True)  # segment_anything's "default" is ViT-H
    vit_h = build_sam("vit_h", meta=True)
    assert [(n, p.shape) for n, p in default.named_parameters()] == [
        (n, p.shape) for n, p in vit_h.named_parameters()
    ]
    source = build_sam("vit_t", seed=3)
    path = tmp_path / "mobile_sam.pt"
    torch.save(source.state_dict(), path)
    loaded = registry["vit_t"](checkpoint=path)
    assert not loaded.training
    for (name, a), (_, b) in zip(source.state_dict().items(), loaded.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
