"""Training loop, prompt simulation, losses, feature cache and resume (tiny CPU configs)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from composer.sam.composer_tiny import ComposerTinyConfig, build_composer_tiny
from composer.training.data import (
    IGNORE_LABEL,
    SegmentationItem,
    Variant,
    apply_variant,
    make_variants,
    prepare_sample,
    synthetic_shapes,
)
from composer.training.evaluate import evaluate_samples
from composer.training.features import FeatureCache
from composer.training.losses import LossWeights, mask_iou, promptable_loss
from composer.training.prompts import (
    center_click,
    corrective_points,
    jitter_box,
    mask_box,
    round_plan,
    sample_near_centre,
)
from composer.training.trainer import TrainConfig, Trainer

TINY = ComposerTinyConfig(
    img_size=128,
    embed_stride=16,
    embed_dim=32,
    neck_dim=32,
    decoder_depth=1,
    decoder_heads=4,
    decoder_mlp_dim=64,
    iou_head_hidden_dim=32,
    mask_in_chans=8,
)
# composer_tiny's own geometry (stride 32) at TINY's size, without the hi-res path and the
# click maps.
SMALL = dataclasses.replace(TINY, embed_stride=32, mask_in_chans=16, hires=False, click_maps=False)


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- prompts
def test_jitter_box_bounds() -> None:
    rng = np.random.default_rng(0)
    for box, frac in (([10.0, 20.0, 410.0, 320.0], 0.1), ([50.0, 60.0, 80.0, 75.0], 0.1)):
        b = np.asarray(box)
        w, h = b[2] - b[0], b[3] - b[1]
        shifts = []
        for _ in range(500):
            j = jitter_box(b, rng, frac=frac, max_px=20.0)
            assert j[2] > j[0] and j[3] > j[1]
            shifts.append(j - b)
        shifts = np.abs(np.asarray(shifts))
        # Each coordinate moves at most 20 px and about 10% of its side (std).
        assert shifts.max() <= 20.0 + 1e-9
        std = shifts.std(axis=0) if w < 100 else None
        if std is not None:
            assert 0.5 * 0.1 * w < np.sqrt((shifts[:, 0] ** 2).mean()) < 1.5 * 0.1 * w
            assert 0.5 * 0.1 * h < np.sqrt((shifts[:, 1] ** 2).mean()) < 1.5 * 0.1 * h
        else:
            # Large box: 10% of 400 px = 40 px std, so the 20 px cap is hit often.
            assert (shifts[:, 0] > 19.99).mean() > 0.3
    clipped = jitter_box(np.array([0.0, 0.0, 30.0, 30.0]), rng, bounds=(30.0, 30.0))
    assert clipped.min() >= 0 and clipped.max() <= 30
    with pytest.raises(ValueError):
        jitter_box(np.array([5.0, 5.0, 5.0, 9.0]), rng)


def test_corrective_point_lies_in_error_region() -> None:
    rng = np.random.default_rng(1)
    gt = np.zeros((3, 16, 16), bool)
    gt[:, 4:12, 4:12] = True
    pred = gt.copy()
    pred[0, 4:12, 4:8] = False  # false negatives only
    pred[1, 0:3, 0:16] = True  # false positives only
    valid = np.ones((16, 16), bool)
    for _ in range(50):
        xy, lab = corrective_points(pred, gt, valid, rng)
        x, y = xy[0].astype(int)
        assert lab[0] == 1 and gt[0, y, x] and not pred[0, y, x]
        x, y = xy[1].astype(int)
        assert lab[1] == 0 and pred[1, y, x] and not gt[1, y, x]
        assert lab[2] == -1  # no error, no click
    # Invalid pixels are never clicked.
    valid2 = np.ones((16, 16), bool)
    valid2[0:3, 0:8] = False
    for _ in range(50):
        xy, _ = corrective_points(pred[1:2], gt[1:2], valid2, rng)
        x, y = xy[0].astype(int)
        assert valid2[y, x] and pred[1, y, x]


def test_round_plan_center_click_and_box() -> None:
    rng = np.random.default_rng(2)
    for _ in range(20):
        plan = round_plan(8, 2, rng)
        assert len(plan) == 10 and plan.count(False) == 2 and plan[-1] is False and plan[0] is True
    assert round_plan(0, 1, rng) == [False]
    m = np.zeros((20, 30), bool)
    m[5:15, 2:8] = True
    m[2:18, 12:28] = True  # the bigger square holds the deepest point
    x, y = center_click(m)
    assert m[y, x] and 12 <= x < 28
    assert mask_box(m).tolist() == [2, 2, 28, 18]


# --------------------------------------------------------------------------- losses and data
def test_loss_picks_best_output_and_regresses_iou() -> None:
    gt = torch.zeros(2, 8, 8, dtype=torch.bool)
    gt[:, 2:6, 2:6] = True
    good = torch.where(gt, 10.0, -10.0).float()
    logits = torch.stack([-good, good, torch.full_like(good, -10.0)], 1)  # (2, 3, 8, 8)
    iou_pred = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    out = promptable_loss(logits, iou_pred, gt, torch.ones(8, 8), LossWeights())
    assert out.best.tolist() == [1, 1]
    assert float(out.mask) < 1e-3 and float(out.iou) < 1e-6
    ious = mask_iou(logits, gt, torch.ones(8, 8))
    assert torch.allclose(ious[:, 1], torch.ones(2))


def test_variants_and_prepare_sample() -> None:
    item = synthetic_shapes(1, size=96, seed=3)[0]
    vs = make_variants(4, seed=7)
    assert vs[0] == Variant() and vs[1].flip and vs == make_variants(4, seed=7)
    img, layers = apply_variant(item, Variant(flip=True))
    assert np.array_equal(layers[0], item.layers[0][:, ::-1]) and img.shape == item.image.shape
    layers = item.layers.copy()
    layers[0, :5] = IGNORE_LABEL
    s = prepare_sample(
        SegmentationItem("x", item.image[:, :64], layers[:, :, :64]), Variant(), 128, 32
    )
    assert s.input_size == (128, 85) and s.layers.shape == (1, 32, 32)
    assert not s.valid[:, 22:].any() and not s.valid[0].any() and s.valid[5:, :21].all()


def test_composer_tiny_geometry_and_fp16_export(tmp_path) -> None:
    from composer.sam.composer_tiny import export_fp16

    cfg = SMALL
    model = build_composer_tiny(config=cfg, pretrained_backbone=False)
    assert model.image_encoder.img_size == 128 and cfg.embedding_size == 4
    with torch.no_grad():
        emb = model.image_encoder(torch.zeros(1, 3, 128, 128))
    assert emb.shape == (1, 32, 4, 4)
    assert tuple(model.prompt_encoder.mask_input_size) == (16, 16) == (cfg.low_res_size,) * 2
    with pytest.raises(ValueError):
        model.image_encoder(torch.zeros(1, 3, 64, 64))
    # a backbone that is not the pip package's (random here) is written by default
    assert any(k.startswith("image_encoder.backbone.")
               for k in torch.load(export_fp16(model, tmp_path / "d.pt"), weights_only=True))
    path = export_fp16(model, tmp_path / "w.pt", include_backbone=False)
    sd = torch.load(path, weights_only=True)
    assert all(v.dtype == torch.float16 for v in sd.values() if v.is_floating_point())
    assert not any(k.startswith("image_encoder.backbone.") for k in sd)  # packaged format
    again = build_composer_tiny(checkpoint=path, config=cfg)
    k = "mask_decoder.iou_token.weight"
    assert torch.allclose(again.state_dict()[k], model.state_dict()[k], atol=1e-2)
    # The backbone of a trained-parts-only file is the ImageNet one from the pip package.
    imagenet = build_composer_tiny(config=cfg, pretrained_backbone=True)
    b = "image_encoder.backbone._blocks.3._depthwise_conv.weight"
    assert torch.equal(again.state_dict()[b], imagenet.state_dict()[b])
    full = build_composer_tiny(
        checkpoint=export_fp16(model, tmp_path / "full.pt", include_backbone=True), config=cfg
    )
    assert torch.allclose(full.state_dict()[b], model.state_dict()[b], atol=1e-2)
    del sd[k]
    torch.save(sd, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="iou_token"):
        build_composer_tiny(checkpoint=tmp_path / "broken.pt", config=cfg)


def test_hires_path_starts_as_identity_and_is_chunk_exact(tmp_path, monkeypatch) -> None:
    """The hi-res mask path: packed into the embedding, zero at first (an earlier stage's
    checkpoint loads unchanged), then added to the upscaled maps alike in every chunk."""
    import dataclasses

    from composer.sam import mask_decoder as md
    from composer.sam.composer_tiny import export_fp16

    cfg = SMALL
    torch.manual_seed(0)
    plain = build_composer_tiny(config=cfg, pretrained_backbone=False)
    path = export_fp16(plain, tmp_path / "plain.pt")
    plain = build_composer_tiny(checkpoint=path, config=cfg)
    hr_cfg = dataclasses.replace(cfg, hires=True)
    hires = build_composer_tiny(checkpoint=path, config=hr_cfg)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        e0, e1 = plain.image_encoder(x), hires.image_encoder(x)
    assert e0.shape == (1, 32, 4, 4) and e1.shape == (1, 32 + 16 * 4, 4, 4)
    pe = plain.prompt_encoder
    pts = (torch.rand(6, 2, 2) * 128, torch.ones(6, 2, dtype=torch.int))
    with torch.no_grad():
        sparse, dense = pe(points=pts, boxes=None, masks=None)
        m0, i0 = plain.mask_decoder(e0, pe.get_dense_pe(), sparse, dense, True)
        m1, i1 = hires.mask_decoder(e1, pe.get_dense_pe(), sparse, dense, True)
    assert torch.equal(m0, m1) and torch.equal(i0, i1)  # zero-initialised branch: identity
    # The wrong embedding for a decoder is named, not silently decoded.
    with pytest.raises(ValueError, match="channels"):
        plain.mask_decoder(e1, pe.get_dense_pe(), sparse, dense, True)
    # A trained (non-zero) branch changes the masks only through the hi-res map, the same
    # in one pass, in chunks of prompts, per image batch and with the IoU gate.
    torch.nn.init.normal_(hires.image_encoder.hires.conv2.weight, std=0.5)
    with torch.no_grad():
        e1 = hires.image_encoder(x)
        full, iou = hires.mask_decoder(e1, pe.get_dense_pe(), sparse, dense, True)
        assert (full - m0).abs().max() > 1e-3
        monkeypatch.setattr(md, "PROMPT_CHUNK", 2)
        monkeypatch.setattr(md, "CHUNK_BYTES", 1)
        chunked, _ = hires.mask_decoder(e1, pe.get_dense_pe(), sparse, dense, True)
        batched, _ = hires.mask_decoder(e1.expand(6, -1, -1, -1), pe.get_dense_pe(), sparse, dense, True)
        # halfway between two prompts' best IoUs: no prompt sits on the threshold, where a
        # last-bit difference between the gated and the full pass could flip it
        best = iou.max(dim=1).values.sort().values
        thr = float(best[2] + best[3]) / 2
        gated, _ = hires.mask_decoder(e1, pe.get_dense_pe(), sparse, dense, True, min_iou=thr)
    assert torch.allclose(chunked, full, atol=1e-5) and torch.allclose(batched, full, atol=1e-5)
    keep = (iou > thr).any(dim=1)
    assert 0 < int(keep.sum()) < 6
    assert torch.allclose(gated[keep], full[keep], atol=1e-5)
    assert (gated[~keep] == md.SKIPPED_LOGIT).all()
    # Its weights round-trip through the packaged format.
    again = build_composer_tiny(checkpoint=export_fp16(hires, tmp_path / "hr.pt"), config=hr_cfg)
    k = "image_encoder.hires.conv2.weight"
    assert torch.allclose(again.state_dict()[k], hires.state_dict()[k], atol=1e-2)
    # A config without the path refuses a file with it (names the keys).
    with pytest.raises(ValueError, match="hires"):
        build_composer_tiny(checkpoint=tmp_path / "hr.pt", config=cfg)
    # Without a config, the file decides (shipped architecture, with or without the path).
    for flag in (False, True):
        arch = dataclasses.replace(ComposerTinyConfig(), hires=flag, click_maps=not flag)
        f = export_fp16(
            build_composer_tiny(config=arch, pretrained_backbone=False), tmp_path / f"{flag}.pt"
        )
        auto = build_composer_tiny(checkpoint=f)
        assert (auto.image_encoder.hires is not None) is flag
        assert auto.mask_decoder.hires_dim == (16 if flag else 0)
        assert auto.mask_decoder.map_dim == (0 if flag else 16)
        assert (auto.prompt_encoder.click_maps is None) is flag


def test_click_maps_start_as_identity_follow_clicks_and_are_chunk_exact(tmp_path, monkeypatch) -> None:
    """The click maps: drawn where the clicks are, zero at first (an earlier stage's checkpoint
    loads unchanged), then added per prompt alike in one pass, in chunks and with mask inputs."""
    from composer.sam import mask_decoder as md
    from composer.sam.composer_tiny import export_fp16

    torch.manual_seed(0)
    path = export_fp16(build_composer_tiny(config=SMALL, pretrained_backbone=False), tmp_path / "p.pt")
    plain = build_composer_tiny(checkpoint=path, config=SMALL)
    cm_cfg = dataclasses.replace(SMALL, click_maps=True)
    cm = build_composer_tiny(checkpoint=path, config=cm_cfg)
    branch = cm.prompt_encoder.click_maps
    assert branch is not None and plain.prompt_encoder.click_maps is None
    # Rasterisation: a positive click at input pixel (40, 72) peaks at low-res pixel
    # (40.5 * 16 / 128 - 0.5) = (4.5, 8.5) -> pixels 4..5 / 8..9 of a 16x16 map; labels -1 draw nothing.
    pts = (torch.tensor([[[40.0, 72.0], [0.0, 0.0]]]), torch.tensor([[1, -1]]))
    logits = torch.full((1, 1, 16, 16), -8.0)
    raster = branch.rasterize(pts, logits, 1, (16, 16), (128, 128), torch.device("cpu"))
    peak = divmod(int(raster[0, 0].argmax()), 16)
    assert peak[0] in (8, 9) and peak[1] in (4, 5) and raster[0, 1].max() == 0
    assert torch.allclose(raster[0, 2], torch.tanh(torch.tensor(-2.0)).expand(16, 16))
    assert (raster[0, 3] == 1).all()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        emb = plain.image_encoder(x)
    pe = plain.prompt_encoder.get_dense_pe()
    pts = (torch.rand(6, 3, 2) * 128, torch.randint(0, 2, (6, 3)))
    masks = torch.randn(6, 1, 16, 16) * 4
    with torch.no_grad():
        for m_in in (None, masks):
            s0, d0 = plain.prompt_encoder(points=pts, boxes=None, masks=m_in)
            s1, d1 = cm.prompt_encoder(points=pts, boxes=None, masks=m_in)
            assert d1.shape == (6, 32 + 16 * 4, 4, 4)
            r0 = plain.mask_decoder(emb, pe, s0, d0, True)
            r1 = cm.mask_decoder(emb, pe, s1, d1, True)
            assert all(torch.equal(a, b) for a, b in zip(r0, r1, strict=True))  # identity
        with pytest.raises(ValueError, match="channels"):
            plain.mask_decoder(emb, pe, s1, d1, True)
    # A trained branch changes the masks most at the clicks, the same in one pass, in chunks
    # of prompts and with the IoU gate.
    torch.nn.init.normal_(branch.conv2.weight, std=0.5)
    with torch.no_grad():
        for m_in in (None, masks):
            sparse, dense = cm.prompt_encoder(points=pts, boxes=None, masks=m_in)
            full, iou = cm.mask_decoder(emb, pe, sparse, dense, True)
            base, _ = plain.mask_decoder(emb, pe, *plain.prompt_encoder(points=pts, boxes=None, masks=m_in), True)
            assert (full - base).abs().max() > 1e-3
            with monkeypatch.context() as mp:
                mp.setattr(md, "PROMPT_CHUNK", 2)
                mp.setattr(md, "CHUNK_BYTES", 1)
                chunked, _ = cm.mask_decoder(emb, pe, sparse, dense, True)
            best = iou.max(dim=1).values.sort().values  # as above: no prompt on the threshold
            thr = float(best[len(best) // 2 - 1] + best[len(best) // 2]) / 2
            gated, _ = cm.mask_decoder(emb, pe, sparse, dense, True, min_iou=thr)
            assert torch.allclose(chunked, full, atol=1e-5)
            keep = (iou > thr).any(dim=1)
            assert torch.allclose(gated[keep], full[keep], atol=1e-5)
    # The weights round-trip through the packaged format; a config without the branch refuses them.
    again = build_composer_tiny(checkpoint=export_fp16(cm, tmp_path / "cm.pt"), config=cm_cfg)
    k = "prompt_encoder.click_maps.conv2.weight"
    assert torch.allclose(again.state_dict()[k], cm.state_dict()[k], atol=1e-2)
    with pytest.raises(ValueError, match="click_maps"):
        build_composer_tiny(checkpoint=tmp_path / "cm.pt", config=SMALL)


def _red_square_on_grey() -> tuple[SegmentationItem, np.ndarray]:
    """A paste source, a red square (label 3) on black, and a uniform grey background."""
    src_img = np.zeros((60, 60, 3), np.uint8)
    src_img[10:50, 10:50] = (255, 0, 0)
    layer = np.zeros((1, 60, 60), np.uint16)
    layer[0, 10:50, 10:50] = 3
    return SegmentationItem("src", src_img, layer), np.full((80, 100, 3), 128, np.uint8)


def test_paste_composites_label_the_visible_pasted_objects() -> None:
    from composer.training.data import paste_composites

    source, bg = _red_square_on_grey()
    out = paste_composites(12, [source], [bg], size=64, seed=5, max_objects=2, feather=0.0)
    again = paste_composites(12, [source], [bg], size=64, seed=5, max_objects=2, feather=0.0)
    assert len(out) == 12 and all(np.array_equal(a.image, b.image) for a, b in zip(out, again, strict=True))
    for it in out:
        assert it.image.shape == (64, 64, 3) and it.layers.shape == (1, 64, 64)
        lab = it.layers[0]
        assert 1 <= lab.max() <= 2
        # Labelled pixels are the pasted (red) object, unlabelled ones the grey background.
        red = (it.image[..., 0] > 200) & (it.image[..., 1] < 50)
        assert np.array_equal(lab > 0, red)
    with pytest.raises(ValueError):
        paste_composites(1, [], [bg])


def test_coco_subset_split_is_disjoint_and_ordered(coco_dir) -> None:
    from composer.data.coco import coco_subset
    from composer.training.data import COCO_HOLDOUT, coco_subset_split

    held, train = coco_subset_split("holdout"), coco_subset_split("train")
    ids = coco_subset().image_ids
    assert held == ids[:COCO_HOLDOUT] and train == ids[COCO_HOLDOUT:]
    assert not set(held) & set(train) and len(held) + len(train) == len(ids)
    with pytest.raises(ValueError, match="split"):
        coco_subset_split("test")


# --------------------------------------------------------------------------- the loop
@pytest.fixture(scope="module")
def shapes_cache(tmp_path_factory):
    torch.manual_seed(0)
    model = build_composer_tiny(config=TINY, pretrained_backbone=True)
    cache = FeatureCache("tiny-test", root=tmp_path_factory.mktemp("features"))
    train_items = synthetic_shapes(24, size=128, seed=10)
    val_items = synthetic_shapes(8, size=128, seed=99)

    def variants(item):
        return make_variants(2, seed=0)

    low = TINY.low_res_size
    train = cache.load_all(cache.build(model, train_items, variants, low))
    val = cache.load_all(cache.build(model, val_items, lambda _: [Variant()], low))
    # A second build finds every entry on disk.
    again = cache.build(model, train_items, variants, low)
    assert len(again) == 48 and all(p.exists() for p in again)
    # Layers can be subsampled on load for a coarser model (nearest, pixel centres).
    half = cache.load(again[0], low_res=low // 2)
    full = cache.load(again[0])
    assert half.layers.shape[-1] == low // 2
    assert np.array_equal(half.layers, full.layers[:, 1::2, 1::2])
    return model, train, val


def _config(tmp_path, steps: int, **kw) -> TrainConfig:
    base = dict(
        steps=steps,
        masks_per_image=4,
        num_corrective=1,
        no_point_rounds=1,
        lr=3e-3,
        warmup_steps=5,
        freeze=("image_encoder.backbone",),
        checkpoint_dir=str(tmp_path),
        checkpoint_every=1000,
        # Dice-led loss: from scratch, SAM's 20x focal term first collapses to all-background.
        loss=LossWeights(focal=1.0),
        seed=0,
    )
    base.update(kw)
    return TrainConfig(**base)


def _copy_of(model0) -> torch.nn.Module:
    """A fresh TINY composer_tiny with ``model0``'s weights (each test trains its own copy)."""
    model = build_composer_tiny(config=TINY, pretrained_backbone=False)
    model.load_state_dict(model0.state_dict())
    return model


def test_training_decreases_loss_and_improves_heldout_miou(shapes_cache, tmp_path) -> None:
    model0, train, val = shapes_cache
    torch.manual_seed(0)
    model = _copy_of(model0)
    before = evaluate_samples(model, val, max_masks=4)
    trainer = Trainer(model, _config(tmp_path, steps=70), train)
    hist = trainer.fit()
    after = evaluate_samples(model, val, max_masks=4)
    losses = [h["loss"] for h in hist]
    assert np.mean(losses[-15:]) < 0.85 * np.mean(losses[:10])
    assert after.miou_top1 > before.miou_top1 + 0.1, (before, after)
    assert after.miou_oracle >= after.miou_top1
    assert (tmp_path / "last.pt").exists()
    # The backbone stayed frozen; the decoder moved.
    sd0, sd1 = model0.state_dict(), model.state_dict()
    k = "image_encoder.backbone._blocks.3._depthwise_conv.weight"
    assert torch.equal(sd0[k], sd1[k])
    assert not torch.equal(
        sd0["mask_decoder.iou_token.weight"], sd1["mask_decoder.iou_token.weight"]
    )
    # The click maps (TINY has them) start at zero and learn.
    assert sd1["prompt_encoder.click_maps.conv2.weight"].abs().max() > 0


def test_first_round_weight_is_a_normalised_round_weight(shapes_cache, tmp_path) -> None:
    model0, train, _ = shapes_cache
    with pytest.raises(ValueError, match="first_round_weight"):
        _config(tmp_path, steps=1, first_round_weight=0.0)

    def first_loss(**kw) -> float:
        m = _copy_of(model0)
        return Trainer(m, _config(tmp_path, steps=1, **kw), train).train_step().loss

    # One round: the weight normalises away. Several rounds: it changes the mix.
    one = dict(num_corrective=0, no_point_rounds=0)
    assert first_loss(**one) == pytest.approx(first_loss(**one, first_round_weight=7.0), rel=1e-6)
    assert first_loss() != pytest.approx(first_loss(first_round_weight=7.0), rel=1e-4)


def test_resume_gives_the_same_state(shapes_cache, tmp_path) -> None:
    model0, train, _ = shapes_cache
    cfg = _config(tmp_path, steps=6, box_prob=0.5)
    a = Trainer(_copy_of(model0), cfg, train)
    for _ in range(3):
        a.train_step()
    ckpt = a.save_checkpoint(tmp_path / "mid.pt")
    for _ in range(3):
        a.train_step()

    b = Trainer(_copy_of(model0), cfg, train)
    assert b.resume(ckpt) and b.step == 3
    assert not b.resume(tmp_path / "missing.pt")
    for _ in range(3):
        b.train_step()
    sa, sb = a.model.state_dict(), b.model.state_dict()
    for key in sa:
        assert torch.allclose(sa[key], sb[key], atol=1e-6, rtol=0), key
    assert a.rng.bit_generator.state == b.rng.bit_generator.state
    assert [h["loss"] for h in a.history] == pytest.approx([h["loss"] for h in b.history], rel=1e-5)


def test_ctrl_c_keeps_the_finished_steps(shapes_cache, tmp_path) -> None:
    """An interrupt between steps writes a checkpoint of the steps done; a rerun resumes."""
    model0, train, _ = shapes_cache
    cfg = _config(tmp_path, steps=50, box_prob=0.5)
    a = Trainer(_copy_of(model0), cfg, train)

    def stop(trainer: Trainer, stats: object) -> None:
        if trainer.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        a.fit(on_step=stop)
    b = Trainer(_copy_of(model0), cfg, train)
    assert b.resume() and b.step == 3 and len(b.history) == 3
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key


def _stop(signum: int, frame: object) -> None:
    """A SIGTERM handler as the CLI's: the signal answered as a Ctrl-C."""
    raise KeyboardInterrupt


@pytest.fixture
def stop_handlers():
    """Ctrl-C's KeyboardInterrupt and the CLI's SIGTERM handler, installed for the test
    whatever this process inherited (a background job's Python starts with SIGINT ignored,
    and a Ctrl-C is then never raised); the process's own are put back after."""
    import signal

    real = signal.signal
    old = {sig: real(sig, handler)
           for sig, handler in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, _stop))}
    try:
        yield
    finally:
        for sig, handler in old.items():
            real(sig, signal.SIG_DFL if handler is None else handler)


def test_ctrl_c_during_the_weight_update_checkpoints_that_step(
    shapes_cache, tmp_path, stop_handlers
) -> None:
    """A real SIGINT that arrives while the optimizer changes the weights is held until the
    step is whole: the checkpoint holds that step (the interrupt struck mid-update and left
    no checkpoint, so the run lost every step since the last one). Ctrl-C's handler is
    installed by ``stop_handlers``: run from a background job (SIGINT ignored) the SIGINT was
    ignored and the test failed."""
    import signal

    model0, train, _ = shapes_cache
    cfg = _config(tmp_path, steps=50, box_prob=0.5)
    a = Trainer(_copy_of(model0), cfg, train)
    real_step = a.optimizer.step

    def step_then_ctrl_c(*args, **kwargs):
        if a.step == 2:
            signal.raise_signal(signal.SIGINT)  # Python raises at its next instruction
        return real_step(*args, **kwargs)

    a.optimizer.step = step_then_ctrl_c  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        a.fit()
    assert a.step == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    b = Trainer(_copy_of(model0), cfg, train)
    assert b.resume() and b.step == 3 and len(b.history) == 3
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key


def test_a_signal_answered_as_the_handlers_are_held_leaves_none_holding(
    stop_handlers, monkeypatch
) -> None:
    """A stop signal received just before its handler is swapped for the holding one is
    answered by its own handler (CPython runs it as signal.signal begins), which raises: the
    handlers already swapped are put back (Ctrl-C's was left holding, every later Ctrl-C of
    the process then unanswered). Simulated: no signal is sent."""
    import signal

    from composer.training.trainer import _signals_held

    real = signal.signal

    def signal_after_a_sigterm(signum, handler):
        if signum == signal.SIGTERM and handler is not _stop:
            signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # the CLI's: raises
        return real(signum, handler)

    monkeypatch.setattr(signal, "signal", signal_after_a_sigterm)
    with pytest.raises(KeyboardInterrupt):
        with _signals_held():
            pytest.fail("the block ran")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is _stop


def test_a_ctrl_c_answered_as_the_handlers_are_put_back_leaves_none_holding(
    stop_handlers, monkeypatch
) -> None:
    """A Ctrl-C received at the end of the held block is answered once Ctrl-C's handler is
    back, as signal.signal puts back the next one: that one is still put back (SIGTERM's was
    left holding, a later `kill` unanswered), and the Ctrl-C is raised. Simulated: no signal
    is sent."""
    import signal

    from composer.training.trainer import _signals_held

    real = signal.signal
    answered: list[int] = []

    def signal_after_a_ctrl_c(signum, handler):
        if signum == signal.SIGTERM and handler is _stop and not answered:
            answered.append(signum)
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # Ctrl-C's, put back: raises
        return real(signum, handler)

    monkeypatch.setattr(signal, "signal", signal_after_a_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        with _signals_held():
            pass
    assert answered == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is _stop


def test_ctrl_c_checkpoint_warning_starts_its_own_line(shapes_cache, tmp_path, capsys) -> None:
    """With the progress bar on, the 'interrupted: checkpoint at step N' warning is on a line
    of its own (it was appended to the bar's line, after its carriage-return redraws)."""
    import logging
    import sys

    model0, train, _ = shapes_cache
    a = Trainer(_copy_of(model0), _config(tmp_path, steps=50, box_prob=0.5), train)

    def stop(trainer: Trainer, stats: object) -> None:
        if trainer.step == 2:
            raise KeyboardInterrupt

    handler = logging.StreamHandler(sys.stderr)  # the CLI's: logging to the bar's stream
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("composer.training.trainer")
    log.addHandler(handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            a.fit(progress=True, on_step=stop)
    finally:
        log.removeHandler(handler)
    err = capsys.readouterr().err
    assert "interrupted: checkpoint at step 2" in err
    assert "\nWARNING composer.training.trainer: interrupted: checkpoint at step 2" in err


def test_ctrl_c_inside_a_step_resumes_bit_identical(shapes_cache, tmp_path) -> None:
    """A step cut short by Ctrl-C is forgotten, sampling state included: the resumed run
    redoes it and ends where an uninterrupted run does."""
    model0, train, _ = shapes_cache
    cfg = _config(tmp_path / "a", steps=5, box_prob=0.5)
    a = Trainer(_copy_of(model0), cfg, train)
    a.fit()
    cfg_b = _config(tmp_path / "b", steps=5, box_prob=0.5)
    b = Trainer(_copy_of(model0), cfg_b, train)
    real_decode, calls = b.decode, []

    def decode_then_stop(*args, **kwargs):
        calls.append(b.step)
        if b.step == 3 and calls.count(3) == 2:  # mid-step: the sampling RNG has moved on
            raise KeyboardInterrupt
        return real_decode(*args, **kwargs)

    b.decode = decode_then_stop  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        b.fit()
    c = Trainer(_copy_of(model0), cfg_b, train)
    assert c.resume() and c.step == 3
    c.fit()
    for key, value in a.model.state_dict().items():
        assert torch.allclose(value, c.model.state_dict()[key], atol=1e-6, rtol=0), key
    assert a.rng.bit_generator.state == c.rng.bit_generator.state
    assert [h["loss"] for h in a.history] == pytest.approx([h["loss"] for h in c.history], rel=1e-5)


def test_warmup_samples_are_used_first(shapes_cache, tmp_path) -> None:
    model0, train, val = shapes_cache
    with pytest.raises(ValueError):
        Trainer(model0, _config(tmp_path, steps=4, warmup_sample_steps=2), train)

    class Recording(list):
        def __init__(self, items, name, log):
            super().__init__(items)
            self.name, self.log = name, log

        def __getitem__(self, i):
            self.log.append(self.name)
            return super().__getitem__(i)

    log: list[str] = []
    model = _copy_of(model0)
    cfg = _config(tmp_path, steps=5, warmup_sample_steps=2, warmup_sample_prob=0.0)
    t = Trainer(model, cfg, Recording(train, "main", log), Recording(val[:2], "warm", log))
    for _ in range(5):
        t.train_step()
    assert log == ["warm", "warm", "main", "main", "main"]


def test_multimask_warmup_trains_the_single_output_first(shapes_cache, tmp_path) -> None:
    model0, train, _ = shapes_cache
    with pytest.raises(ValueError, match="multimask_prob"):
        _config(tmp_path, steps=2, multimask_prob=1.5)
    model = _copy_of(model0)
    calls: list[tuple[int, bool]] = []
    decoder_forward = model.mask_decoder.forward

    def spy(*args, **kwargs):
        calls.append((t.step, bool(kwargs["multimask_output"])))
        return decoder_forward(*args, **kwargs)

    model.mask_decoder.forward = spy  # type: ignore[method-assign]
    cfg = _config(tmp_path, steps=8, box_prob=0.0, multimask_warmup_steps=4, multimask_prob=1.0)
    t = Trainer(model, cfg, train)
    for _ in range(8):
        t.train_step()
    # Single output only before the warm-up ends; then the first round of every click uses 3.
    assert not any(mm for step, mm in calls if step < 4)
    assert all(any(mm for s, mm in calls if s == step) for step in range(4, 8))


def test_feedback_oracle_prob_carries_the_truly_best_output(shapes_cache, tmp_path, monkeypatch) -> None:
    import composer.training.trainer as trainer_mod

    model0, train, _ = shapes_cache
    with pytest.raises(ValueError, match="feedback_oracle_prob"):
        _config(tmp_path, steps=1, feedback_oracle_prob=1.5)
    outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    real_loss = trainer_mod.promptable_loss

    def loss_spy(logits, iou_pred, *args, **kwargs):
        out = real_loss(logits, iou_pred, *args, **kwargs)
        outputs.append((logits.detach().clone(), iou_pred.detach().clone(), out.true_iou.clone()))
        return out

    monkeypatch.setattr(trainer_mod, "promptable_loss", loss_spy)

    def first_feedback(p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Round 0's logits, predicted and true IoUs, and the mask prompt of round 1."""
        outputs.clear()
        m = _copy_of(model0)
        cfg = _config(
            tmp_path,
            steps=1,
            box_prob=0.0,
            multimask_prob=1.0,
            num_corrective=1,
            no_point_rounds=0,
            feedback_oracle_prob=p,
        )
        t = Trainer(m, cfg, train)
        prompts: list[torch.Tensor | None] = []
        real_decode = t.decode

        def decode_spy(emb, coords, labels, boxes, mask_in, multimask):
            prompts.append(None if mask_in is None else mask_in.detach().clone())
            return real_decode(emb, coords, labels, boxes, mask_in, multimask)

        t.decode = decode_spy  # type: ignore[method-assign]
        t.train_step()
        assert prompts[0] is None and prompts[1] is not None
        logits, iou_pred, true_iou = outputs[0]
        return logits, iou_pred, true_iou, prompts[1][:, 0]

    rows = torch.arange(4)
    logits, iou_pred, true_iou, fed = first_feedback(0.0)
    assert logits.shape[1] == 3 and torch.equal(fed, logits[rows, iou_pred.argmax(1)])
    logits, iou_pred, true_iou, fed = first_feedback(1.0)
    assert torch.equal(fed, logits[rows, true_iou.argmax(1)])
    # The two choices differ on this step, so the check above can fail.
    assert not torch.equal(iou_pred.argmax(1), true_iou.argmax(1))


def test_centre_point_prob_draws_first_points_near_the_middle(shapes_cache, tmp_path) -> None:
    import cv2

    m = np.zeros((20, 30), bool)
    m[5:15, 2:8] = True
    m[2:18, 12:28] = True
    dt = cv2.distanceTransform(np.pad(m, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    rng = np.random.default_rng(0)
    picks = {sample_near_centre(m, rng) for _ in range(200)}
    assert len(picks) > 1  # a region near the middle, not one pixel
    assert all(dt[y, x] >= 0.7 * dt.max() and 12 <= x < 28 for x, y in picks)
    assert sample_near_centre(np.zeros((4, 4), bool), rng) is None
    with pytest.raises(ValueError, match="centre_point_prob"):
        _config(tmp_path, steps=1, centre_point_prob=-0.1)

    # the trainer's first points: near the middle of each mask with probability 1, anywhere
    # in it with probability 0 (always inside, in the model-input frame)
    model0, train, _ = shapes_cache
    for p, central in ((1.0, True), (0.0, False)):
        t = Trainer(_copy_of(model0), _config(tmp_path, steps=1, box_prob=0.0,
                                              centre_point_prob=p), train)
        low = t.low_res
        gt = np.zeros((2, low, low), bool)
        gt[0, 2 : low - 2, 2 : low // 2] = True
        gt[1, low // 2 :, low // 2 :] = True
        depth = [cv2.distanceTransform(np.pad(g, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
                 for g in gt]
        shares = []
        for _ in range(20):
            is_box, points, _ = t._first_prompts(gt, np.ones((low, low), bool))
            assert not is_box.any()
            xy = np.floor(points * low / t.img_size).astype(int)  # back to low-res pixels
            for g, d, (x, y) in zip(gt, depth, xy, strict=True):
                assert g[y, x], (p, x, y)
                shares.append(d[y, x] >= 0.7 * d.max() - 1e-6)
        assert all(shares) if central else not all(shares)


def test_paste_composites_scale_and_single_object() -> None:
    from composer.training.data import paste_composites

    source, bg = _red_square_on_grey()
    out = paste_composites(10, [source], [bg], size=100, seed=1, max_objects=1, scale=(0.6, 0.8))
    for it in out:
        lab = it.layers[0]
        assert lab.max() == 1
        ys, xs = np.nonzero(lab)
        side = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
        assert 58 <= side <= 82, side
    with pytest.raises(ValueError, match="scale"):
        paste_composites(1, [source], [bg], scale=(0.5, 1.5))
