"""recipes/click_honour.py: counting corrective clicks that the next mask honours."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from _modules import load_recipe

from composer.embedding import ImageEmbedding
from composer.structures import Detections, Masks

H, W = 40, 50


def _load():
    return load_recipe("click_honour")


@dataclass
class Item:
    gt_mask: np.ndarray
    ignore: None = None

    def load_image(self) -> np.ndarray:
        return np.zeros((H, W, 3), np.uint8)


class FixedMask:
    """Returns one mask whatever the clicks: it honours only clicks that already agree with it."""

    model_id = "fixed"

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask

    def embed(self, image):
        return ImageEmbedding(torch.zeros(1, 1, 1, 1), (H, W), (H, W), W, self.model_id)

    def predict(self, emb, points=None, labels=None, boxes=None, mask_input=None, multimask=True):
        return Detections.from_masks(Masks.from_dense(self.mask[None]), np.ones(1, np.float32))


def test_counts_honoured_clicks_by_label() -> None:
    honoured_clicks = _load().honoured_clicks
    gt = np.zeros((H, W), bool)
    gt[10:30, 10:30] = True
    # The oracle is right after one click: one positive click, honoured.
    assert honoured_clicks(FixedMask(gt), [Item(gt)], 5) == {"positive": (1, 1), "negative": (0, 0)}
    # A mask too large everywhere: the first (positive) click is honoured, then every negative
    # correction lands where the mask stays wrong, so none is honoured.
    big = np.zeros((H, W), bool)
    big[5:35, 5:45] = True
    out = honoured_clicks(FixedMask(big), [Item(gt)], 4)
    assert out == {"positive": (1, 1), "negative": (0, 3)}
