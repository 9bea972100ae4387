"""recipes/tune_classic.py: classic's first-click cues, their rescoring, and the weight search."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from _modules import load_recipe

from composer.segmenters import _classic_ops
from composer.segmenters.classic import ClassicSegmenter

H, W = 96, 128


def _load():
    return load_recipe("tune_classic")


@dataclass
class Item:
    image_id: str
    gt_mask: np.ndarray
    image: np.ndarray
    ignore: None = None

    def load_image(self) -> np.ndarray:
        return self.image


def scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A textured image with a red disc and a blue square; their ground-truth masks."""
    rng = np.random.default_rng(0)
    img = rng.integers(90, 140, (H, W, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:H, :W]
    disc = (yy - 45) ** 2 + (xx - 40) ** 2 < 22**2
    square = (yy >= 20) & (yy < 70) & (xx >= 80) & (xx < 115)
    img[disc] = (200, 40, 40)
    img[square] = (30, 50, 210)
    return img, disc, square


def test_cues_rescore_to_the_segmenters_scores() -> None:
    mod = _load()
    img, disc, square = scene()
    items = [Item("disc", disc, img), Item("square", square, img)]
    a = mod.first_click_cues(ClassicSegmenter(), items)
    assert a.shape == (2, mod.WIDTH)
    assert list(a[:, -1]) == [0, 1]
    # the recorded cues give back the scores the segmenter returned, and the IoUs are real
    p = mod.shipped_params()
    np.testing.assert_allclose(mod.rescore(a, p[:6], p[6]), a[:, mod.SCORES], atol=1e-6)
    mod.check_rescore({"scene": a})
    assert (a[:, mod.IOUS] >= 0).all() and (a[:, mod.IOUS] <= 1).all()
    assert a[:, mod.IOUS].max(1).min() > 0.5  # each object is found by some candidate
    cues = a[:, mod.CUES].reshape(-1, 3, 6)
    assert (cues >= 0).all() and (np.delete(cues, 2, axis=2) <= 1).all()  # edge cue may pass 1
    # the patches are gone afterwards
    assert ClassicSegmenter._score.__name__ == "_score"
    assert _classic_ops.mask_features.__name__ == "mask_features"


def test_patches_are_removed_after_an_error() -> None:
    mod = _load()
    with pytest.raises(RuntimeError), mod.recording_cues([]):
        assert ClassicSegmenter._score.__name__ == "score"
        raise RuntimeError("boom")
    assert ClassicSegmenter._score.__name__ == "_score"
    assert _classic_ops.mask_features.__name__ == "mask_features"


def test_check_rescore_refuses_cues_that_do_not_match() -> None:
    mod = _load()
    img, disc, _ = scene()
    a = mod.first_click_cues(ClassicSegmenter(), [Item("disc", disc, img)])
    a[0, mod.CUES.start] += 0.5  # the first candidate's centrality, now wrong
    with pytest.raises(RuntimeError, match="recomputed scores differ"):
        mod.check_rescore({"scene": a})


def fake_set(n: int, rng: np.random.Generator) -> np.ndarray:
    """Objects whose best candidate is the one with the highest cue 1 (colour separation) while
    the shipped weights, dominated by cue 0 (centrality), pick the one with the highest cue 0."""
    mod = _load()
    a = np.zeros((n, mod.WIDTH))
    cues = rng.uniform(0.2, 0.4, (n, 3, 6))
    for i in range(n):
        best, decoy = rng.permutation(3)[:2]
        cues[i, decoy, 0] = 0.95  # central click, wrong mask
        cues[i, best, 1] = 0.9  # well separated, right mask
        a[i, 3 + best] = 0.9
        a[i, 3 + decoy] = 0.3
        a[i, 3 + (3 - best - decoy)] = 0.5
    a[:, mod.CUES] = cues.reshape(n, 18)
    p = mod.shipped_params()
    a[:, mod.SCORES] = mod.rescore(a, p[:6], p[6])
    return a


def test_search_finds_the_cue_that_ranks_the_best_mask() -> None:
    mod = _load()
    rng = np.random.default_rng(1)
    data = {"bsds_heldout": fake_set(40, rng), "coco_tune": fake_set(40, rng)}
    start = mod.shipped_params()
    before = mod.tuning_mean(data, ["bsds_heldout", "coco_tune"], start)
    tuned = mod.search(data, ["bsds_heldout", "coco_tune"], start)
    after = mod.tuning_mean(data, ["bsds_heldout", "coco_tune"], tuned)
    assert before < 0.5 and after == pytest.approx(0.9)
    assert tuned[1] - tuned[0] > start[1] - start[0]  # separation now outweighs centrality


def test_search_keeps_the_start_where_nothing_is_better() -> None:
    mod = _load()
    rng = np.random.default_rng(2)
    a = fake_set(20, rng)
    a[:, mod.IOUS] = 0.6  # every candidate alike: no ranking is better than another
    start = mod.shipped_params()
    tuned = mod.search({"bsds_heldout": a, "coco_tune": a}, ["bsds_heldout", "coco_tune"], start)
    np.testing.assert_array_equal(tuned, start)


def test_rescore_halves_fallbacks_and_zeroes_empty_masks() -> None:
    mod = _load()
    a = np.zeros((1, mod.WIDTH))
    a[0, mod.CUES] = 1.0
    a[0, mod.FALLBACK] = [0, 1, -1]
    s = mod.rescore(a, np.full(6, 0.1), 0.0)
    np.testing.assert_allclose(s, [[0.6, 0.3, 0.0]])
