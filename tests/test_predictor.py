"""The stateless predictor against the official SamPredictor on shared random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from composer import Detections, EmbeddingCache
from composer.predictor import SamPredictor
from composer.segmenters.base import best_per_prompt

segment_anything = pytest.importorskip("segment_anything")


def official_tiny_sam(seed: int = 0) -> torch.nn.Module:
    """The official modules with small dims (fast on CPU), seeded random weights."""
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    torch.manual_seed(seed)
    dim = 64
    model = Sam(
        image_encoder=ImageEncoderViT(
            depth=2, embed_dim=48, img_size=256, mlp_ratio=2, num_heads=2, patch_size=16,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=(1,), window_size=4, out_chans=dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim, image_embedding_size=(16, 16), input_image_size=(256, 256), mask_in_chans=8
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=128, num_heads=2),
            transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=64,
        ),
    )
    # random init leaves LayerNorm/bias trivial; perturb every tensor so parity is meaningful
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return official_tiny_sam()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = (rng.random((120, 180, 3)) * 60).astype(np.uint8)
    img[30:90, 40:120] += 150
    return img


def test_official_signature_matches_official_predictor(model, image):
    from segment_anything import SamPredictor as OfficialPredictor

    ours, ref = SamPredictor(model), OfficialPredictor(model)
    ours.set_image(image)
    ref.set_image(image)
    torch.testing.assert_close(ours.get_image_embedding(), ref.get_image_embedding(), atol=1e-5, rtol=0)
    cases = [
        dict(point_coords=np.array([[80.0, 60.0]]), point_labels=np.array([1])),
        dict(point_coords=np.array([[80.0, 60.0], [10.0, 10.0]]), point_labels=np.array([1, 0])),
        dict(box=np.array([35.0, 25.0, 125.0, 95.0])),
        dict(point_coords=np.array([[80.0, 60.0]]), point_labels=np.array([1]), box=np.array([35.0, 25.0, 125.0, 95.0])),
    ]
    for case in cases:
        for multimask in (True, False):
            m1, s1, l1 = ours.predict(**case, multimask_output=multimask, return_logits=True)
            m2, s2, l2 = ref.predict(**case, multimask_output=multimask, return_logits=True)
            assert np.abs(l1 - l2).max() < 1e-3
            assert np.abs(s1 - s2).max() < 1e-4
            assert np.abs(m1 - m2).max() < 1e-3
    # mask input round trip: feed the best low-res logits back
    _, s, low = ref.predict(point_coords=np.array([[80.0, 60.0]]), point_labels=np.array([1]))
    best = low[np.argmax(s)][None]
    _, _, l1 = ours.predict(point_coords=np.array([[80.0, 60.0]]), point_labels=np.array([1]), mask_input=best)
    _, _, l2 = ref.predict(point_coords=np.array([[80.0, 60.0]]), point_labels=np.array([1]), mask_input=best)
    assert np.abs(l1 - l2).max() < 1e-3


def test_batched_boxes_match_official_predict_torch(model, image):
    from segment_anything import SamPredictor as OfficialPredictor

    boxes = np.array([[35.0, 25.0, 125.0, 95.0], [0.0, 0.0, 60.0, 50.0], [100.0, 10.0, 179.0, 119.0]])
    ours = SamPredictor(model)
    emb = ours.embed(image)
    dets = ours.predict(emb, boxes=boxes, multimask=True)
    assert isinstance(dets, Detections) and len(dets) == 9
    assert dets.masks.image_size == image.shape[:2]
    ref = OfficialPredictor(model)
    ref.set_image(image)
    tb = ref.transform.apply_boxes_torch(torch.as_tensor(boxes), image.shape[:2])
    masks, iou, low = ref.predict_torch(None, None, boxes=tb, multimask_output=True)
    np.testing.assert_allclose(dets.scores, iou.reshape(-1).numpy(), atol=1e-4)
    np.testing.assert_allclose(dets.extras["low_res_logits"], low.reshape(9, *low.shape[-2:]).numpy(), atol=1e-3)
    ref_dense = masks.reshape(9, *masks.shape[-2:]).numpy()
    ours_dense = dets.masks.to_dense()
    disagree = (ref_dense != ours_dense).mean()
    assert disagree < 1e-3  # only pixels whose logit sits within float noise of the threshold
    np.testing.assert_array_equal(dets.extras["prompt_index"], np.repeat(np.arange(3), 3))
    best = best_per_prompt(dets)
    assert len(best) == 3
    np.testing.assert_allclose(best.scores, iou.max(dim=1).values.numpy(), atol=1e-4)


def test_shared_cache_costs_one_encoder_call(model, image):
    cache = EmbeddingCache()
    p1, p2 = SamPredictor(model), SamPredictor(model)
    assert p1.model_id == p2.model_id
    e1 = cache.get(image, p1)
    e2 = cache.get(image.copy(), p2)
    p1.predict(e1, points=[[80, 60]])
    p2.predict(e2, boxes=[35, 25, 125, 95])
    assert cache.encoder_calls == 1 and cache.hits == 1 and cache.misses == 1
    other = SamPredictor(official_tiny_sam(seed=1))
    assert other.model_id != p1.model_id
    with pytest.raises(ValueError, match="cannot be decoded"):
        other.predict(e1, points=[[80, 60]])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(points=[[500.0, 10.0]]), "outside"),
        (dict(points=[[np.nan, 10.0]]), "NaN"),
        (dict(boxes=[50.0, 10.0, 20.0, 40.0]), "x1 >= x0"),
        (dict(), "empty prompt set"),
        (dict(boxes=np.zeros((0, 4))), "empty prompt set"),
        (dict(points=[[10.0, 10.0]], mask_input=np.zeros((1, 1, 8, 8))), "mask_input"),
    ],
)
def test_bad_prompts_raise(model, image, kwargs, match):
    pred = SamPredictor(model)
    emb = pred.embed(image)
    with pytest.raises(ValueError, match=match):
        pred.predict(emb, **kwargs)


def test_disk_cache_roundtrip_and_corruption(model, image, tmp_path, caplog):
    pred = SamPredictor(model)
    c1 = EmbeddingCache(disk_dir=tmp_path)
    e1 = c1.get(image, pred)
    c2 = EmbeddingCache(disk_dir=tmp_path)
    e2 = c2.get(image, pred)
    assert c2.disk_hits == 1 and c2.encoder_calls == 0
    torch.testing.assert_close(e1.features, e2.features)
    npz = next(tmp_path.glob("*.npz"))
    npz.write_bytes(npz.read_bytes()[:-20] + b"x" * 20)
    c3 = EmbeddingCache(disk_dir=tmp_path)
    with caplog.at_level("WARNING"):
        e3 = c3.get(image, pred)
    assert c3.encoder_calls == 1 and "corrupt" in caplog.text
    torch.testing.assert_close(e1.features, e3.features)


def test_crop_embedding_and_lru_budget(model, image):
    pred = SamPredictor(model)
    emb_bytes = pred.embed(image).nbytes
    cache = EmbeddingCache(max_bytes=emb_bytes * 2)
    full = cache.get(image, pred)
    crop = cache.get(image, pred, crop_box=(0, 0, 90, 60))
    assert crop.crop_box == (0, 0, 90, 60) and crop.original_size == (60, 90)
    assert full.crop_box is None
    cache.get(image, pred, crop_box=(90, 60, 180, 120))
    assert len(cache) == 2 and cache.stats()["bytes"] <= emb_bytes * 2
    with pytest.raises(ValueError, match="not inside"):
        cache.get(image, pred, crop_box=(0, 0, 500, 60))


def test_the_official_predictor_runs_box_prompts_on_our_model(image):
    """The official SamPredictor passes boxes as (B, 1, 4); our prompt encoder refused every
    box prompt of it (and of our own predict_torch given that shape)."""
    from segment_anything import SamPredictor as OfficialPredictor

    from composer.sam import build_sam

    ours_model = build_sam("vit_tiny_test")
    official = OfficialPredictor(ours_model)
    official.set_image(image)
    box = np.array([10, 20, image.shape[1] // 2, image.shape[0] // 2])
    masks, _, low = official.predict(box=box)
    ours = SamPredictor(ours_model)
    ours.set_image(image)
    m2, _, low2 = ours.predict(box=box)
    np.testing.assert_allclose(low2, low, atol=1e-5)
    assert (masks == m2).all()
    b = ours.transform.apply_boxes_torch(torch.as_tensor(box[None], dtype=torch.float32),
                                         image.shape[:2])[:, None]
    assert ours.predict_torch(None, None, boxes=b)[0].shape[:2] == (1, 3)


def test_an_embedding_that_does_not_fit_the_model_is_refused(model, image):
    """An embedding built by hand under the model's id, with another feature grid or padded
    input side, failed deep inside the decoder (or decoded with the wrong geometry)."""
    import dataclasses

    pred = SamPredictor(model)
    emb = pred.embed(image)
    wrong_grid = dataclasses.replace(emb, features=torch.zeros(1, emb.features.shape[1], 8, 8))
    with pytest.raises(ValueError, match=r"features \(1, 64, 8, 8\) with pad_size 256 do not fit"):
        pred.predict(wrong_grid, points=[[80, 60]])
    with pytest.raises(ValueError, match=r"pad_size 512 do not fit .* \(16, 16\) grid over a 256 input"):
        pred.predict(dataclasses.replace(emb, pad_size=512), points=[[80, 60]])
    assert len(pred.predict(emb, points=[[80, 60]])) == 3


def test_set_torch_image_refuses_sizes_that_do_not_fit_before_the_encoder(model, image):
    """An original size of which the tensor is no resize (e.g. (W, H) for (H, W)) was refused by
    the embedding's own checks only after the encoder pass (seconds for a ViT-H on a CPU)."""
    pred = SamPredictor(model)
    x = torch.as_tensor(pred.transform.apply_image(image)).permute(2, 0, 1)[None]
    h, w = image.shape[:2]
    assert h != w
    passes = []
    hook = pred.model.image_encoder.register_forward_hook(lambda *_: passes.append(1))
    try:
        with pytest.raises(ValueError, match="resized by one factor"):
            pred.set_torch_image(x, (w, h))
        assert not passes and not pred.is_image_set
        pred.set_torch_image(x, (h, w))
        assert len(passes) == 1 and pred.is_image_set
    finally:
        hook.remove()


@pytest.mark.parametrize(
    "settings, named",
    [
        ({"flip_tta": True}, ["flip TTA"]),
        ({"mask_rank": "rank"}, ["contrast ranking"]),
        ({"mask_refine": "refine", "flip_tta": True}, ["mask refinement", "flip TTA"]),
    ],
)
def test_an_embedding_without_the_image_says_which_settings_it_skips(
        model, image, caplog, settings, named):
    """An embedding without the image (set_torch_image, or made before the settings were set)
    makes predict skip refinement, flip TTA and contrast ranking, as the README says, "with a
    warning": the warning came only for refinement, so a segmenter with flip TTA or ranking
    alone skipped them without a word. Each skipped setting is named; the masks are the bare
    decoder's; an embedding that keeps the image gives no warning."""
    import logging

    from composer.refine import ContrastRank, GrabCutRefine

    values = {"rank": ContrastRank(), "refine": GrabCutRefine()}
    pred = SamPredictor(model)
    plain = pred.embed(image)  # no setting yet: the embedding keeps no image
    assert "image" not in plain.extras
    bare = pred.predict(plain, points=[[90, 60]], labels=[1])
    for name, value in settings.items():
        setattr(pred, name, values.get(value, value) if isinstance(value, str) else value)
    with caplog.at_level(logging.WARNING, logger="composer.segmenters.base"):
        out = pred.predict(plain, points=[[90, 60]], labels=[1])
    warned = [r.getMessage() for r in caplog.records if "carries no image" in r.getMessage()]
    assert len(warned) == 1, caplog.text
    for what in named:
        assert what in warned[0], warned[0]
    for what in {"mask refinement", "flip TTA", "contrast ranking"} - set(named):
        assert what not in warned[0], warned[0]
    np.testing.assert_array_equal(out.masks.to_dense(), bare.masks.to_dense())
    np.testing.assert_array_equal(out.scores, bare.scores)
    # the official pair after set_torch_image: a fresh segmenter warns there too
    caplog.clear()
    official = SamPredictor(model)
    for name, value in settings.items():
        setattr(official, name, values.get(value, value) if isinstance(value, str) else value)
    x = torch.as_tensor(official.transform.apply_image(image)).permute(2, 0, 1)[None]
    official.set_torch_image(x, image.shape[:2])
    with caplog.at_level(logging.WARNING, logger="composer.segmenters.base"):
        official.predict(point_coords=np.array([[90, 60]]), point_labels=np.array([1]))
    assert any(named[0] in r.getMessage() for r in caplog.records), caplog.text
    # an embedding that keeps the image: applied, no warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="composer.segmenters.base"):
        official.predict(official.embed(image), points=[[90, 60]], labels=[1])
    assert "carries no image" not in caplog.text


def test_a_setting_set_after_the_warning_about_an_embedding_without_the_image_warns_too(
        model, image, caplog):
    """The warning about an embedding without the image came once per segmenter: one that
    warned of skipping flip TTA then skipped a mask refinement set later without a word.
    Now each skipped setting is named the first time it is skipped, and only then."""
    import logging

    from composer.refine import GrabCutRefine

    pred = SamPredictor(model)
    plain = pred.embed(image)  # no setting yet: the embedding keeps no image
    pred.flip_tta = True

    def warnings() -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="composer.segmenters.base"):
            pred.predict(plain, points=[[90, 60]], labels=[1])
        return [r.getMessage() for r in caplog.records if "carries no image" in r.getMessage()]

    first = warnings()
    assert len(first) == 1 and "flip TTA" in first[0] and "mask refinement" not in first[0]
    assert warnings() == []  # said once
    pred.mask_refine = GrabCutRefine()
    later = warnings()
    assert len(later) == 1 and "mask refinement" in later[0], later
    assert warnings() == []
