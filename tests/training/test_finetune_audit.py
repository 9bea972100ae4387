"""Fine-tuning on one's own data as docs/training.md describes it: BatchNorm layers of a trained
encoder, the warm-up under a time budget, cached embeddings from Python, the progress averages,
and what ``sam-composer train`` tells the user (masks it skips, how to use the weights)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from composer.cli import main
from composer.sam.build import build_sam
from composer.training.data import Variant, prepare_sample, synthetic_shapes
from composer.training.trainer import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def _samples(model, n: int = 3, seed: int = 1):
    size = model.image_encoder.img_size
    low = model.prompt_encoder.mask_input_size[0]
    return [prepare_sample(it, Variant(), size, low) for it in synthetic_shapes(n, 96, seed=seed)]


def _small_config(**kw) -> TrainConfig:
    base = dict(steps=3, masks_per_image=2, num_corrective=1, no_point_rounds=1, lr=1e-3,
                warmup_steps=1)
    return TrainConfig(**{**base, **kw})


def _with_batchnorm():
    """vit_tiny_test whose image encoder ends in a BatchNorm (as composer_tiny's and vit_t's
    encoders hold BatchNorm layers)."""
    torch.manual_seed(0)
    model = build_sam("vit_tiny_test")
    dim = model.prompt_encoder.embed_dim
    model.image_encoder.neck.append(torch.nn.BatchNorm2d(dim))
    return model, model.image_encoder.neck[-1]


def test_a_trained_encoder_keeps_its_batchnorm_statistics() -> None:
    model, bn = _with_batchnorm()
    mean = bn.running_mean.clone()
    modes: list[bool] = []
    bn.register_forward_hook(lambda m, i, o: modes.append(m.training))
    trainer = Trainer(model, _small_config(freeze=()), _samples(model))
    trainer.fit()
    # one image per step: its statistics are not the data's, so BatchNorm stays in eval mode
    # while its affine weights train
    assert modes and not any(modes)
    assert torch.equal(bn.running_mean, mean)
    assert bn.weight.grad is not None

    model, bn = _with_batchnorm()
    mean = bn.running_mean.clone()
    Trainer(model, _small_config(freeze=(), batchnorm_stats=True), _samples(model)).fit()
    assert not torch.equal(bn.running_mean, mean)


def test_a_time_budget_ends_the_warm_up_too() -> None:
    model = build_sam("vit_tiny_test")
    budget = dict(steps=1000, warmup_steps=100, time_budget_s=60.0, lr=1e-3)
    trainer = Trainer(model, _small_config(**budget, warmup_fraction=0.1), _samples(model))
    trainer.step, trainer.elapsed = 5, 30.0  # a slow model: 5 steps in half the budget
    cosine = 1e-3 * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * 0.5)))
    assert trainer.lr_now() == pytest.approx(cosine)
    trainer.elapsed = 3.0  # half-way through the warm-up by time
    assert trainer.lr_now() == pytest.approx(0.5e-3)
    # without warmup_fraction the warm-up is counted in steps alone, as before
    plain = Trainer(model, _small_config(**budget), _samples(model))
    plain.step, plain.elapsed = 5, 30.0
    assert plain.lr_now() == pytest.approx(1e-3 * 6 / 100)
    with pytest.raises(ValueError, match="warmup_fraction"):
        _small_config(warmup_fraction=1.5)


def test_cached_embeddings_spare_the_encoder_and_train_alike() -> None:
    from composer.training.features import cache_embeddings

    torch.manual_seed(0)
    model = build_sam("vit_tiny_test")
    start = {k: v.clone() for k, v in model.state_dict().items()}
    plain = Trainer(model, _small_config(), _samples(model)).fit()

    model.load_state_dict(start)
    samples = _samples(model)
    cache_embeddings(model, samples)
    assert all(s.image is None and s.embedding is not None for s in samples)
    calls: list[int] = []
    model.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    cached = Trainer(model, _small_config(), samples).fit()
    assert not calls
    assert [h["loss"] for h in cached] == pytest.approx([h["loss"] for h in plain], rel=1e-5)
    cache_embeddings(model, samples)  # already cached: left as they are
    samples[0].embedding = None
    with pytest.raises(ValueError, match="no image"):
        cache_embeddings(model, samples[:1])


def test_the_progress_average_weighs_every_step_of_a_short_run(caplog) -> None:
    model = build_sam("vit_tiny_test")
    trainer = Trainer(model, _small_config(steps=20), _samples(model))
    with caplog.at_level(logging.INFO, logger="composer.training.trainer"):
        history = trainer.fit()
    losses = np.array([h["loss"] for h in history])
    w = 0.95 ** np.arange(len(losses))[::-1]
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("step 20 "))
    assert float(line.split()[3]) == pytest.approx(float((w * losses).sum() / w.sum()), abs=1e-4)


def _dataset(root: Path, tiny: bool = False) -> tuple[Path, Path]:
    images = root / "images"
    images.mkdir(parents=True)
    doc: dict = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "shape"}]}

    def add(image_id: int, m: np.ndarray) -> None:
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode()
        doc["annotations"].append({
            "id": len(doc["annotations"]) + 1, "image_id": image_id, "category_id": 1,
            "segmentation": rle, "area": float(m.sum()), "iscrowd": 0,
        })

    for i, item in enumerate(synthetic_shapes(3, size=96, seed=4)):
        Image.fromarray(item.image).save(images / f"{i}.png")
        doc["images"].append({"id": i + 1, "file_name": f"{i}.png", "height": 96, "width": 96})
        for lab in np.unique(item.layers[0])[1:]:
            add(i + 1, item.layers[0] == lab)
        if tiny:
            dot = np.zeros((96, 96), bool)
            dot[3:5, 3:5] = True
            add(i + 1, dot)
    ann = root / "instances.json"
    ann.write_text(json.dumps(doc))
    return ann, images


def test_train_says_which_masks_it_skips_and_how_to_use_a_config_name(tmp_path, capsys) -> None:
    ann, images = _dataset(tmp_path, tiny=True)
    argv = ["train", "--data", str(ann), "--images", str(images), "--model", "vit_tiny_test",
            "--random-init", "--steps", "2", "--masks-per-image", "2", "--corrective", "1",
            "--val-fraction", "0", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    n_masks = len(json.loads(ann.read_text())["annotations"])
    assert f"of the {n_masks} training masks are trained on" in out
    assert "at least 16 of the 32 x 32 low-res pixels" in out
    # vit_tiny_test is no segmenter backend: the hint is Python, not a flag that fails
    assert "use --model vit_tiny_test" not in out
    assert "build_sam('vit_tiny_test'" in out


def test_composer_tiny_weights_from_train_load_where_a_checkpoint_goes(tmp_path, capsys) -> None:
    import composer
    from composer.sam.composer_tiny import build_composer_tiny

    ann, images = _dataset(tmp_path)
    out = tmp_path / "run"
    argv = ["train", "--data", str(ann), "--images", str(images), "--model", "composer_tiny",
            "--steps", "1", "--masks-per-image", "1", "--corrective", "0",
            "--val-fraction", "0", "--out", str(out)]
    assert main(argv) == 0
    assert f"use --model composer_tiny --checkpoint={out / 'model.pt'}" in capsys.readouterr().out
    trained = torch.load(out / "model.pt", weights_only=True)
    for file in ("model.pt", "last.pt"):  # the weights, and the resumable training state
        seg = composer.load_segmenter("composer_tiny", checkpoint=out / file, device="cpu")
        assert all(torch.equal(v, trained[k]) for k, v in seg.model.state_dict().items())
    assert build_composer_tiny(out / "model.pt") is not None
    with pytest.raises(ValueError, match="does not fit"):
        composer.load_segmenter("vit_t", checkpoint=out / "model.pt", device="cpu")


def test_export_fp16_keeps_a_finetuned_backbone(tmp_path) -> None:
    """export_fp16 dropped the backbone by default, so an encoder fine-tuned with
    --train-encoder came back with the ImageNet backbone; now it is written when it differs."""
    from composer.sam.composer_tiny import (
        BACKBONE_PREFIX,
        PACKAGED_WEIGHTS,
        build_composer_tiny,
        export_fp16,
    )

    model = build_composer_tiny(PACKAGED_WEIGHTS)
    plain = export_fp16(model, tmp_path / "plain.pt")
    assert not any(k.startswith(BACKBONE_PREFIX) for k in torch.load(plain, weights_only=True))
    with torch.no_grad():
        weight = next(model.image_encoder.backbone.parameters())
        weight.mul_(0.5)
    tuned = export_fp16(model, tmp_path / "tuned.pt")
    assert any(k.startswith(BACKBONE_PREFIX) for k in torch.load(tuned, weights_only=True))
    back = build_composer_tiny(tuned)
    assert torch.equal(next(back.image_encoder.backbone.parameters()), weight.half().float())
