"""AutomaticMaskGenerator against the official SamAutomaticMaskGenerator on shared random weights.

The model is the official ``segment_anything`` modules with small dims and perturbed random
weights. Random decoders give texture-like masks that all span the image (NMS would leave one),
so the decoder is wrapped to add a location term: the point token's positional encoding
correlated with the dense positional encoding of the image, a bump around the clicked point
whose size differs per output. Both generators call the same ``model.mask_decoder``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from composer import Detections, EmbeddingCache
from composer.amg_utils import LowResUpsampler, generate_crop_boxes
from composer.automatic import AmgConfig, AutomaticMaskGenerator
from composer.embedding import ImageEmbedding
from composer.predictor import SamPredictor
from composer.segmenters.base import MaskLogits, PromptableSegmenter, upsample_logits
from composer.structures import Prompts

segment_anything = pytest.importorskip("segment_anything")


class BumpDecoder(torch.nn.Module):
    """Official MaskDecoder output plus a bump around the prompt point (see module docstring)."""

    def __init__(self, decoder: torch.nn.Module, label_embed: torch.nn.Embedding) -> None:
        super().__init__()
        self.decoder = decoder
        self.label_embed = label_embed
        self.register_buffer("offsets", torch.tensor([5.0, 4.0, 7.0, 10.0]))

    def forward(
        self,
        image_embeddings,
        image_pe,
        sparse_prompt_embeddings,
        dense_prompt_embeddings,
        multimask_output,
    ):
        masks, iou = self.decoder(
            image_embeddings=image_embeddings,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse_prompt_embeddings,
            dense_prompt_embeddings=dense_prompt_embeddings,
            multimask_output=multimask_output,
        )
        q = sparse_prompt_embeddings[:, 0] - self.label_embed.weight[0]
        sim = torch.einsum("bc,chw->bhw", q, image_pe[0]) / (q.shape[1] / 2)
        sim = F.interpolate(sim[:, None], masks.shape[-2:], mode="bilinear", align_corners=False)
        off = self.offsets[1:] if multimask_output else self.offsets[:1]
        return 8.0 * masks + 14.0 * sim - off[None, :, None, None], iou


def tiny_official_sam(seed: int = 0) -> torch.nn.Module:
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
            depth=2,
            embed_dim=48,
            img_size=256,
            mlp_ratio=2,
            num_heads=2,
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=(1,),
            window_size=4,
            out_chans=dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(16, 16),
            input_image_size=(256, 256),
            mask_in_chans=8,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=128, num_heads=2),
            transformer_dim=dim,
            iou_head_depth=3,
            iou_head_hidden_dim=64,
        ),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.mask_decoder = BumpDecoder(model.mask_decoder, model.prompt_encoder.point_embeddings[1])
    return model.eval()


def scene(h: int = 120, w: int = 180) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = (40, 60, 90)
    img[h // 6 : h // 2, w // 12 : w * 5 // 12] = (220, 40, 40)
    img[h // 2 : h * 11 // 12, w * 5 // 9 : w * 17 // 18] = (30, 200, 60)
    yy, xx = np.mgrid[:h, :w]
    img[(yy - 0.3 * h) ** 2 / (0.15 * h) ** 2 + (xx - 0.72 * w) ** 2 / (0.17 * w) ** 2 < 1] = (
        240,
        230,
        50,
    )
    return img


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_official_sam()


def official(model, image, output_mode="coco_rle", **kw):
    from segment_anything import SamAutomaticMaskGenerator

    return SamAutomaticMaskGenerator(model, output_mode=output_mode, **kw).generate(image)


def assert_parity(records: list[dict], dets: Detections) -> None:
    assert len(dets) == len(records)
    if not records:
        return
    theirs = [
        {"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()}
        for r in records
    ]
    iou = np.asarray(mask_utils.iou(theirs, dets.masks.rles, [0] * len(dets)))
    best = iou.argmax(axis=1)
    assert iou.max(axis=1).min() >= 0.98
    assert len(set(best.tolist())) == len(records)  # one-to-one
    ref_iou = np.array([r["predicted_iou"] for r in records])
    ref_stab = np.array([r["stability_score"] for r in records])
    np.testing.assert_allclose(dets.extras["predicted_iou"][best], ref_iou, atol=1e-4)
    np.testing.assert_allclose(dets.extras["stability_score"][best], ref_stab, atol=1e-3)
    ref_pts = np.array([r["point_coords"][0] for r in records])
    np.testing.assert_allclose(dets.extras["point_coords"][best], ref_pts, atol=1e-3)
    ref_crop = np.array([r["crop_box"] for r in records], np.float64)  # XYWH
    crop = dets.extras["crop_box"][best].astype(np.float64)
    np.testing.assert_array_equal(np.c_[crop[:, :2], crop[:, 2:] - crop[:, :2]], ref_crop)


@pytest.mark.parametrize(
    "image_size, settings",
    [
        ((120, 180), dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.5)),
        (
            (120, 180),
            dict(
                points_per_side=6,
                pred_iou_thresh=0.0,
                stability_score_thresh=0.5,
                crop_n_layers=1,
                min_mask_region_area=100,
                points_per_batch=20,
            ),
        ),
        # larger than the 256-px model input: the other upsampling path
        (
            (300, 420),
            dict(
                points_per_side=6,
                pred_iou_thresh=0.0,
                stability_score_thresh=0.6,
                box_nms_thresh=0.5,
                crop_n_layers=1,
                crop_n_points_downscale_factor=2,
            ),
        ),
    ],
)
def test_parity_with_official_generator(model, image_size, settings):
    image = scene(*image_size)
    records = official(model, image, **settings)
    dets = AutomaticMaskGenerator(SamPredictor(model), **settings).generate(image)
    assert len(records) >= 20  # the comparison must be about something
    assert_parity(records, dets)
    # same order as the official generator
    assert list(dets.extras["predicted_iou"]) == pytest.approx(
        [r["predicted_iou"] for r in records], abs=1e-4
    )


@pytest.mark.parametrize("output_mode", ["binary_mask", "uncompressed_rle", "coco_rle"])
def test_official_records_are_the_official_generators_dicts(model, output_mode):
    """The notebook's ``SamAutomaticMaskGenerator(sam, output_mode=...).generate(image)`` has a
    one-line port: ``official_records(AutomaticMaskGenerator(sam).generate(image), mode)``
    (the generator took no SAM model, and its Detections had no converter to those dicts)."""
    from composer.automatic import official_records

    image = scene()
    settings = dict(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.5,
                    crop_n_layers=1, min_mask_region_area=100, points_per_batch=20)
    theirs = official(model, image, output_mode=output_mode, **settings)
    ours = official_records(AutomaticMaskGenerator(model, **settings).generate(image), output_mode)
    assert len(theirs) >= 20 and len(ours) == len(theirs)
    same_masks = 0
    for a, b in zip(theirs, ours, strict=True):
        assert list(a) == list(b)  # the same keys in the same order
        for key in a:
            assert type(a[key]) is type(b[key]), key
        assert len(b["point_coords"]) == 1
        assert a["point_coords"][0] == pytest.approx(b["point_coords"][0], abs=1e-4)
        assert a["predicted_iou"] == pytest.approx(b["predicted_iou"], abs=1e-4)
        assert a["stability_score"] == pytest.approx(b["stability_score"], abs=1e-3)
        assert a["crop_box"] == b["crop_box"]
        sa, sb = a["segmentation"], b["segmentation"]
        if output_mode == "binary_mask":
            assert sa.dtype == sb.dtype == bool and sa.shape == sb.shape == image.shape[:2]
        else:
            assert list(sa) == list(sb) == ["size", "counts"] and sa["size"] == sb["size"]
            assert type(sa["counts"]) is type(sb["counts"])
        if (output_mode == "binary_mask" and (sa == sb).all()) or (
            output_mode != "binary_mask" and sa["counts"] == sb["counts"]
        ):
            same_masks += 1
            assert (a["area"], a["bbox"]) == (b["area"], b["bbox"])
    assert same_masks >= 0.9 * len(theirs)  # the rest differ by float noise at the threshold


def test_generator_takes_a_sam_model_and_names_output_mode(model):
    image = scene()
    settings = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.5)
    direct = AutomaticMaskGenerator(model, **settings)
    assert isinstance(direct.segmenter, SamPredictor)
    wrapped = AutomaticMaskGenerator(SamPredictor(model), **settings)
    assert direct.generate(image).masks == wrapped.generate(image).masks
    by_keyword = AutomaticMaskGenerator(model=model, **settings)  # the notebook's call
    assert by_keyword.generate(image).masks == wrapped.generate(image).masks
    with pytest.raises(TypeError, match="not both"):
        AutomaticMaskGenerator(SamPredictor(model), model=model)
    with pytest.raises(TypeError, match="needs a segmenter"):
        AutomaticMaskGenerator(points_per_side=4)
    with pytest.raises(TypeError, match="official_records"):
        AutomaticMaskGenerator(model, output_mode="coco_rle")
    # the official generator's second argument is points_per_side: named in the error
    with pytest.raises(TypeError, match=r"AmgConfig, got int; .* points_per_side=32$"):
        AutomaticMaskGenerator(model, 32)
    with pytest.raises(TypeError, match="PromptableSegmenter or a SAM model"):
        AutomaticMaskGenerator(torch.nn.Linear(2, 2))
    from composer.automatic import official_records

    with pytest.raises(ValueError, match="output_mode must be one of"):
        official_records(wrapped.generate(image), "rle")


def test_official_defaults_and_cache(model):
    image = scene()
    cfg = AmgConfig()
    assert (
        cfg.points_per_side,
        cfg.points_per_batch,
        cfg.pred_iou_thresh,
        cfg.stability_score_thresh,
        cfg.stability_score_offset,
        cfg.box_nms_thresh,
        cfg.crop_n_layers,
        cfg.crop_nms_thresh,
        cfg.crop_n_points_downscale_factor,
        cfg.min_mask_region_area,
        cfg.multimask,
    ) == (32, 64, 0.88, 0.95, 1.0, 0.7, 0, 0.7, 1, 0, True)
    assert cfg.crop_overlap_ratio == 512 / 1500 and cfg.max_mask_area_fraction is None
    cache = EmbeddingCache()
    seg = SamPredictor(model)
    amg = AutomaticMaskGenerator(
        seg,
        cache=cache,
        points_per_side=4,
        crop_n_layers=1,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
    )
    first = amg.generate(image)
    assert cache.encoder_calls == len(generate_crop_boxes(image.shape[:2], 1, 512 / 1500)[0]) == 5
    second = amg.generate(image)
    assert cache.encoder_calls == 5  # every crop embedding came from the cache
    assert [r["counts"] for r in first.masks.rles] == [r["counts"] for r in second.masks.rles]
    seg.embed(image)  # the full-image entry is shared with plain predictor use
    assert cache.get(image, seg) is not None and cache.encoder_calls == 5


def test_config_for_segmenter_takes_recommended_thresholds(model):
    seg = SamPredictor(model)
    assert seg.amg_thresholds is None
    assert AmgConfig.for_segmenter(seg) == AmgConfig()  # SAM: the official defaults
    seg.amg_thresholds = {
        "pred_iou_thresh": 0.4,
        "stability_score_thresh": 0.6,
        "box_nms_thresh": 0.1,
    }
    cfg = AmgConfig.for_segmenter(seg)
    assert (cfg.pred_iou_thresh, cfg.stability_score_thresh) == (0.4, 0.6)
    assert cfg.box_nms_thresh == 0.7  # only quality thresholds can be recommended
    base = AmgConfig(points_per_side=8, crop_n_layers=1)
    cfg = AmgConfig.for_segmenter(seg, base, stability_score_thresh=0.9)
    assert (cfg.points_per_side, cfg.crop_n_layers) == (8, 1)
    assert (cfg.pred_iou_thresh, cfg.stability_score_thresh) == (0.4, 0.9)  # overrides win
    # A None threshold is "not given" (a CLI flag at its default): the recommendation stays.
    cfg = AmgConfig.for_segmenter(seg, base, pred_iou_thresh=None, stability_score_thresh=0.9)
    assert (cfg.pred_iou_thresh, cfg.stability_score_thresh) == (0.4, 0.9)
    amg = AutomaticMaskGenerator(seg, points_per_side=4)
    assert (amg.config.pred_iou_thresh, amg.config.points_per_side) == (0.4, 4)
    assert AutomaticMaskGenerator(seg, AmgConfig()).config.pred_iou_thresh == 0.88


def test_outputs_filters_and_options(model):
    image = scene()
    seg = SamPredictor(model)
    base = dict(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    dets = AutomaticMaskGenerator(seg, keep_low_res_logits=True, **base).generate(image)
    n = len(dets)
    assert n > 0 and dets.masks.image_size == (120, 180)
    assert dets.boxes.dtype == np.float32 and dets.boxes.shape == (n, 4)
    np.testing.assert_array_equal(dets.boxes, dets.masks.boxes())
    np.testing.assert_array_equal(dets.scores, dets.extras["predicted_iou"])
    assert dets.extras["point_coords"].shape == (n, 2)
    assert (dets.extras["crop_box"] == [0, 0, 180, 120]).all()
    assert dets.extras["low_res_logits"].shape == (n, 64, 64)
    # masks are the low-res logits upsampled and thresholded
    emb = seg.embed(image)
    up = upsample_logits(torch.from_numpy(dets.extras["low_res_logits"])[:, None], emb)[:, 0] > 0
    np.testing.assert_array_equal(up.numpy(), dets.masks.to_dense())
    # filters only remove masks
    big = AutomaticMaskGenerator(seg, max_mask_area_fraction=0.05, **base).generate(image)
    assert len(big) < n and (big.masks.area <= 0.05 * 120 * 180).all()
    single = AutomaticMaskGenerator(seg, multimask=False, **base).generate(image)
    assert 0 < len(single) <= 36
    # explicit grids equal the generated ones
    grid = AmgConfig(points_per_side=6).layer_grids()
    same = AutomaticMaskGenerator(
        seg, point_grids=grid, pred_iou_thresh=0.0, stability_score_thresh=0.0
    ).generate(image)
    assert [r["counts"] for r in same.masks.rles] == [
        r["counts"] for r in AutomaticMaskGenerator(seg, **base).generate(image).masks.rles
    ]


@pytest.mark.parametrize(
    "image, settings",
    [
        (scene(5, 5), dict(points_per_side=1, crop_n_layers=2)),  # some crops come out empty
        (np.full((40, 60, 3), 128, np.uint8), dict(points_per_side=4)),  # single colour
        (scene(5, 6), dict(points_per_side=8)),  # grid denser than the pixels
    ],
)
def test_degenerate_inputs_give_valid_detections(model, image, settings):
    dets = AutomaticMaskGenerator(
        SamPredictor(model),
        **settings,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        min_mask_region_area=4,
    ).generate(image)
    assert isinstance(dets, Detections)
    assert dets.masks is not None and dets.masks.image_size == image.shape[:2]
    assert set(dets.extras) == {"predicted_iou", "stability_score", "point_coords", "crop_box"}
    assert np.isfinite(dets.extras["stability_score"]).all()
    assert (dets.boxes[:, 2] <= image.shape[1]).all() and (dets.boxes[:, 3] <= image.shape[0]).all()


def test_no_surviving_masks_is_empty(model):
    dets = AutomaticMaskGenerator(
        SamPredictor(model), points_per_side=4, pred_iou_thresh=0.99, keep_low_res_logits=True
    ).generate(scene())
    assert (
        len(dets) == 0
        and dets.boxes.shape == (0, 4)
        and dets.extras["point_coords"].shape == (0, 2)
    )
    assert dets.meta["image_size"] == (120, 180)


def test_config_validation(model):
    seg = SamPredictor(model)
    with pytest.raises(ValueError):
        AmgConfig(points_per_side=8, point_grids=[np.zeros((1, 2))])
    with pytest.raises(ValueError):
        AmgConfig(points_per_side=None)
    with pytest.raises(ValueError):
        AmgConfig(point_grids=[np.full((2, 2), 1.5)], points_per_side=None)
    with pytest.raises(ValueError):
        AmgConfig(point_grids=[np.zeros((1, 2))], points_per_side=None, crop_n_layers=1)
    for bad in (
        dict(points_per_batch=0),
        dict(box_nms_thresh=1.5),
        dict(crop_overlap_ratio=1.0),
        dict(max_mask_area_fraction=0.0),
        dict(pred_iou_thresh=float("nan")),
        dict(min_mask_region_area=-1),
        dict(crop_n_layers=-1),
    ):
        with pytest.raises(ValueError):
            AutomaticMaskGenerator(seg, **bad)
    with pytest.raises(TypeError):
        AutomaticMaskGenerator(seg, not_a_setting=1)
    with pytest.raises(ValueError):
        AutomaticMaskGenerator(seg).generate(np.zeros((0, 5, 3), np.uint8))


@pytest.mark.parametrize(
    "low, pad, size",
    [(256, 1024, (321, 481)), (64, 256, (300, 420)), (128, 512, (7, 3)), (64, 256, (256, 171))],
)
def test_upsampler_matches_official_geometry(low, pad, size):
    torch.manual_seed(0)
    s = pad / max(size)
    emb = ImageEmbedding(
        torch.zeros(1, 1, 1, 1), size, (int(size[0] * s + 0.5), int(size[1] * s + 0.5)), pad, "m"
    )
    logits = torch.randn(3, low, low) * 4
    ref = upsample_logits(logits[:, None], emb)[:, 0]
    up = LowResUpsampler((low, low), pad, emb.input_size, size)
    assert (up(logits) - ref).abs().max() < 1e-4
    assert torch.equal(up.transposed(logits).transpose(1, 2) > 0, up(logits) > 0)


class _DiscSegmenter(PromptableSegmenter):
    """Non-SAM geometry (128x128 low-res over a 512 padded square): discs around the point."""

    model_id = "discs"
    mask_threshold = 0.5
    low_res_size = (128, 128)

    def embed(self, image):
        h, w = image.shape[:2]
        s = 512 / max(h, w)
        return ImageEmbedding(
            torch.zeros(1, 1, 8, 8),
            (h, w),
            (int(h * s + 0.5), int(w * s + 0.5)),
            512,
            self.model_id,
        )

    def decode(self, embedding, prompts, multimask=True):
        oh, ow = embedding.original_size
        ih, iw = embedding.input_size
        pts = torch.as_tensor(prompts.points[:, 0])
        x = pts[:, 0] * iw / ow / 4
        y = pts[:, 1] * ih / oh / 4
        yy, xx = torch.meshgrid(torch.arange(128) + 0.5, torch.arange(128) + 0.5, indexing="ij")
        d = torch.sqrt((xx - x[:, None, None]) ** 2 + (yy - y[:, None, None]) ** 2)
        radii = torch.tensor([3.0, 6.0, 12.0] if multimask else [6.0])
        logits = (radii[None, :, None, None] - d[:, None]) / 2 + 0.5
        iou = torch.linspace(0.9, 0.8, len(radii)).expand(len(pts), -1)
        return MaskLogits(logits.float(), iou.contiguous().float())


def test_any_promptable_segmenter_matches_its_predict():
    seg = _DiscSegmenter()
    image = np.zeros((90, 140, 3), np.uint8)
    dets = AutomaticMaskGenerator(
        seg, points_per_side=5, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0
    ).generate(image)
    assert len(dets) == 75
    ref = seg.predict(
        seg.embed(image),
        points=dets.extras["point_coords"][:, None],
        multimask=True,
        keep_low_res=False,
    )
    # the three outputs of a point are distinct discs; each of ours is one of the point's masks
    iou = np.asarray(mask_utils.iou(dets.masks.rles, ref.masks.rles, [0] * len(ref)))
    assert (iou.max(axis=1) >= 0.99).all()
    assert ((dets.extras["stability_score"] > 0) & (dets.extras["stability_score"] <= 1)).all()
    assert Prompts.create(dets.extras["point_coords"][:, None], image_size=(90, 140)) is not None


def test_iou_gated_decoding_keeps_the_same_masks():
    """With composer.sam's decoder the generator skips the masks its IoU filter drops: same output."""
    from composer.sam.build import build_sam
    from composer.sam.mask_decoder import SKIPPED_LOGIT

    torch.manual_seed(0)
    model = build_sam("vit_tiny_test")
    seg = SamPredictor(model)
    assert seg.skips_low_iou
    image = scene()
    probe = AutomaticMaskGenerator(
        seg, points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0
    ).generate(image)
    thr = float(np.min(probe.extras["predicted_iou"])) - 1e-4  # the probe's masks pass
    settings = dict(points_per_side=6, pred_iou_thresh=thr, stability_score_thresh=0.0)
    calls: list[dict] = []
    skipped: list[int] = []
    decode = seg.decode

    def spy(*args, **kwargs):
        calls.append(kwargs)
        out = decode(*args, **kwargs)
        skipped.append(int((out.logits == SKIPPED_LOGIT).flatten(1).all(1).sum()))
        return out

    seg.decode = spy  # type: ignore[method-assign]
    gated = AutomaticMaskGenerator(seg, **settings).generate(image)
    assert calls and all(c.get("min_iou") == thr for c in calls)
    assert sum(skipped) > 0  # some prompts' masks were never computed
    seg.decode = decode  # type: ignore[method-assign]
    seg.skips_low_iou = False
    plain = AutomaticMaskGenerator(seg, **settings).generate(image)
    assert 0 < len(gated) == len(plain)
    assert [r["counts"] for r in gated.masks.rles] == [r["counts"] for r in plain.masks.rles]
    np.testing.assert_allclose(
        gated.extras["predicted_iou"], plain.extras["predicted_iou"], atol=1e-6
    )


def test_max_side_processes_a_large_image_at_that_size() -> None:
    """``max_side``: a large image's candidates are processed at that size from the full image's
    (cached) embedding, and the kept masks come back at full resolution, close to the
    full-resolution run's; an image within ``max_side`` gives exactly the same output."""
    import cv2
    from skimage import data

    from composer import load_segmenter

    seg = load_segmenter("composer_tiny")
    image = np.ascontiguousarray(data.astronaut()[::2, ::2, :3])  # 256 x 256
    big = cv2.resize(image, None, fx=3, fy=2, interpolation=cv2.INTER_CUBIC)  # 768 x 512
    cfg = dict(points_per_side=6, min_mask_region_area=30)
    cache = EmbeddingCache()
    cache.get(big, seg)
    scaled = AutomaticMaskGenerator(seg, cache=cache, max_side=384, **cfg).generate(big)
    assert cache.encoder_calls == 1  # the full image's embedding, shared
    assert scaled.meta["max_side"] == {"max_side": 384, "processed_size": (256, 384)}
    full = AutomaticMaskGenerator(seg, cache=cache, **cfg).generate(big)
    assert len(scaled) > 0 and abs(len(scaled) - len(full)) <= max(1, len(full) // 5)
    assert scaled.masks.image_size == (512, 768)
    rs, rf = scaled.masks.to_coco_rles(), full.masks.to_coco_rles()
    best = np.asarray(mask_utils.iou(rs, rf, [0] * len(rf))).max(axis=1)
    assert np.median(best) > 0.9
    # boxes are the upsampled masks' tight boxes; points and crop boxes in full-image pixels
    for m, box in zip(scaled.masks.to_dense(), scaled.boxes, strict=True):
        ys, xs = np.nonzero(m)
        assert tuple(box) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert (scaled.extras["crop_box"] == [[0, 0, 768, 512]]).all()
    pts = scaled.extras["point_coords"]
    assert pts[:, 0].max() > 384 and pts[:, 0].max() < 768 and pts[:, 1].max() < 512
    # crop layers embed crops of the full image too
    crops = AutomaticMaskGenerator(seg, max_side=384, points_per_side=4, crop_n_layers=1).generate(big)
    cb = crops.extras["crop_box"]
    assert len(crops) and cb[:, 2].max() <= 768 and cb[:, 3].max() <= 512 and (cb[:, :2] >= 0).all()
    # through a cache: the full image's crops are cached, each handed back in the scaled
    # crop's frame (its size and box there; the full image's box made an inconsistent embedding)
    crop_cache = EmbeddingCache()
    cached = AutomaticMaskGenerator(seg, cache=crop_cache, max_side=384, points_per_side=4,
                                    crop_n_layers=1).generate(big)
    assert crop_cache.encoder_calls == 5 and cached.masks.to_coco_rles() == crops.masks.to_coco_rles()
    within = AutomaticMaskGenerator(seg, max_side=256, **cfg).generate(image)
    plain = AutomaticMaskGenerator(seg, **cfg).generate(image)
    assert within.masks.to_coco_rles() == plain.masks.to_coco_rles()
    assert "max_side" not in within.meta
    with pytest.raises(ValueError, match="max_side"):
        AmgConfig(max_side=0)
