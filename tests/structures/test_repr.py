"""Detections and ImageEmbedding print as summaries: in a notebook the generated dataclass
reprs dumped every low-res logit map, the features and the image itself."""

from __future__ import annotations

import numpy as np
import torch

from composer.embedding import ImageEmbedding
from composer.structures import Detections, Masks


def test_detections_repr_is_a_summary() -> None:
    masks = Masks.from_dense(np.ones((3, 20, 30), bool))
    dets = Detections(
        np.zeros((3, 4)), scores=[0.5, 0.25, 1.0], masks=masks,
        extras={"low_res_logits": np.zeros((3, 256, 256), np.float32),
                "prompt_index": np.array([0, 0, 0])},
        meta={"image_size": (20, 30), "model_id": "m"},
    )
    text = repr(dets)
    assert len(text) < 400
    assert text.startswith("Detections(n=3, image_size=(20, 30), boxes=<3 x 4 float32>, "
                           "scores=[0.5, 0.25, 1], labels=None, masks=Masks(n=3")
    assert "low_res_logits: <3 x 256 x 256 float32>" in text and "prompt_index: [0, 0, 0]" in text
    assert "meta keys=[image_size, model_id]" in text
    assert repr(dets[:0]).startswith("Detections(n=0, image_size=(20, 30), boxes=<0 x 4 float32>")


def test_embedding_repr_names_shapes_not_values() -> None:
    emb = ImageEmbedding(
        features=torch.zeros(1, 256, 64, 64), original_size=(480, 640), input_size=(768, 1024),
        pad_size=1024, model_id="sam-x", extras={"image": torch.zeros(480, 640, 3, dtype=torch.uint8)},
    )
    assert repr(emb) == (
        "ImageEmbedding(model_id='sam-x', features=<1 x 256 x 64 x 64 float32 cpu>, "
        "original_size=(480, 640), input_size=(768, 1024), pad_size=1024, crop_box=None, "
        "extras={image: <480 x 640 x 3 uint8 cpu>})"
    )
