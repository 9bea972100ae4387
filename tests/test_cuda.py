"""The GPU path: every stage that can run on CUDA agrees with the CPU.

These tests run only where torch sees a CUDA device (they are skipped on CPU-only machines,
CI included); on a GPU machine they are part of the default suite. Tolerances are those of
float32 on different kernels: masks compared by IoU, logits and scores by absolute error.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import composer
from composer.automatic import AutomaticMaskGenerator
from composer.embedding import EmbeddingCache
from composer.interactive import ClickSession

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module", autouse=True)
def _exact_matmul():
    # TF32 would change the float32 results by ~1e-3 relative; parity needs IEEE float32.
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[::2, ::2, :3])  # 256 x 256


@pytest.fixture(scope="module")
def pair():
    cpu = composer.load_segmenter("composer_tiny", device="cpu")
    gpu = composer.load_segmenter("composer_tiny", device="cuda")
    return cpu, gpu


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def test_auto_device_is_the_gpu_and_the_model_id_does_not_depend_on_it(pair) -> None:
    cpu, gpu = pair
    assert composer.load_segmenter("composer_tiny").device.type == "cuda"
    assert gpu.device.type == "cuda" and cpu.device.type == "cpu"
    assert gpu.model_id == cpu.model_id  # embeddings cached on one device serve the other
    assert composer.load_segmenter("classic").device.type == "cpu"
    with pytest.raises(ValueError, match="CPU only"):
        composer.load_segmenter("classic", device="cuda")


@pytest.mark.parametrize("tta,refine", [("off", False), ("flip", False), ("flip", True)])
def test_points_and_boxes_match_the_cpu(pair, image, tta, refine) -> None:
    cpu, gpu = pair
    for seg in pair:
        seg.flip_tta = tta == "flip"
        if not refine:
            seg.__dict__["_saved_refine"] = seg.mask_refine
            seg.mask_refine = None
    try:
        e_cpu, e_gpu = cpu.embed(image), gpu.embed(image)
        assert e_gpu.features.device.type == "cuda"
        assert (e_gpu.features.cpu() - e_cpu.features).abs().max() < 1e-3
        pts = np.array([[[128, 100]], [[60, 200]]], np.float32)
        lab = np.ones((2, 1), np.int64)
        box = np.array([[40, 20, 200, 250], [100, 120, 250, 250]], np.float32)
        for kw in (dict(points=pts, labels=lab), dict(boxes=box)):
            a, b = cpu.predict(e_cpu, **kw), gpu.predict(e_gpu, **kw)
            ia, ib = a.extras["predicted_iou"], b.extras["predicted_iou"]
            assert np.abs(ia - ib).max() < 2e-3
            # the contrast ranking (shipped) scores the masks, which differ by a few pixels
            assert ("contrast" in a.extras) == ("contrast" in b.extras) == (a.meta["rank"] is not None)
            if "contrast" in a.extras:
                assert np.abs(a.extras["contrast"] - b.extras["contrast"]).max() < 0.05
            la, lb = a.extras["low_res_logits"], b.extras["low_res_logits"]
            assert np.abs(la - lb).max() < 2e-2
            for ma, mb in zip(a.masks.to_dense(), b.masks.to_dense(), strict=True):
                assert _iou(ma, mb) > 0.98
    finally:
        for seg in pair:
            if "_saved_refine" in seg.__dict__:
                seg.mask_refine = seg.__dict__.pop("_saved_refine")


def test_click_session_follows_clicks_on_the_gpu(pair, image) -> None:
    cpu, gpu = pair
    out = []
    for seg in pair:
        s = ClickSession(seg, image)
        s.click((128, 100), 1)
        masks, scores = s.click((150, 60), 0)
        out.append((masks[0], scores[0]))
    assert _iou(out[0][0], out[1][0]) > 0.97
    assert abs(float(out[0][1]) - float(out[1][1])) < 5e-3


def test_cache_moves_embeddings_between_devices(pair, image, tmp_path) -> None:
    cpu, gpu = pair
    cache = EmbeddingCache(disk_dir=tmp_path)
    e_gpu = cache.get(image, gpu)  # computed on the GPU, written to disk from the GPU
    fresh = EmbeddingCache(disk_dir=tmp_path)
    e_disk = fresh.get(image, cpu)  # read back on the CPU
    assert fresh.stats()["disk_hits"] == 1
    assert e_disk.features.device.type == "cpu"
    assert (e_disk.features - e_gpu.features.cpu()).abs().max() == 0
    # an embedding read from disk (CPU tensors) is decoded on the GPU model
    dets = gpu.predict(e_disk, points=np.array([[[128, 100]]], np.float32), labels=np.ones((1, 1)))
    assert len(dets) == 3


def test_automatic_masks_match_the_cpu(pair, image) -> None:
    cpu, gpu = pair
    kw = dict(points_per_side=8, pred_iou_thresh=0.5, stability_score_thresh=0.5)
    a = AutomaticMaskGenerator(cpu, **kw).generate(image)
    b = AutomaticMaskGenerator(gpu, **kw).generate(image)
    assert len(a) > 0
    # thresholds can flip a borderline mask; nearly every mask must have its twin
    da, db = a.masks.to_dense(), b.masks.to_dense()
    matched = [max((_iou(m, n) for n in db), default=0.0) > 0.95 for m in da]
    assert np.mean(matched) >= 0.9, (len(a), len(b), np.mean(matched))
    assert abs(len(a) - len(b)) <= max(1, len(a) // 10)


def test_edges_match_the_cpu(pair, image) -> None:
    from tasks.edges import EdgeConfig, EdgeTask

    cpu, gpu = pair
    cfg = EdgeConfig(points_per_side=8)
    ea, eb = EdgeTask(cpu, cfg)(image), EdgeTask(gpu, cfg)(image)
    assert ea.edges.shape == eb.edges.shape == image.shape[:2]
    assert np.abs(ea.edges - eb.edges).mean() < 5e-3


def _official_helpers():
    """The suite's seeded official models (tests/sam/test_network.py), loaded by path."""
    from pathlib import Path

    from _modules import load_file

    pytest.importorskip("segment_anything")
    return load_file(Path(__file__).parent / "sam" / "test_network.py", "_sam_test_network")


@pytest.mark.parametrize("arch", ["vit_tiny_test", "vit_b"])
def test_official_checkpoint_parity_on_the_gpu(tmp_path, arch) -> None:
    """An official-format .pth (seeded official model) gives the official outputs on CUDA."""
    from segment_anything import SamPredictor as OfficialPredictor

    from composer import build_sam
    from composer.predictor import SamPredictor
    from composer.sam import CONFIGS

    ref = _official_helpers().seeded_official(CONFIGS[arch], seed=5).eval()
    path = tmp_path / "official.pth"
    torch.save(ref.state_dict(), path)
    ours = SamPredictor(build_sam(arch, checkpoint=path, device="cuda"))
    official = OfficialPredictor(ref.to("cuda"))
    rng = np.random.default_rng(0)
    img = (rng.random((90, 120, 3)) * 255).astype(np.uint8)
    official.set_image(img)
    emb = ours.embed(img)
    ref_emb = official.get_image_embedding()
    scale = float(ref_emb.abs().max())
    assert float((emb.features - ref_emb).abs().max()) < 1e-4 * max(scale, 1.0)
    pts = np.array([[[40, 30], [80, 60]]], np.float32)
    lab = np.array([[1, 0]])
    dets = ours.predict(emb, points=pts, labels=lab, multimask=True)
    _, iou, low = official.predict(point_coords=pts[0], point_labels=lab[0],
                                   multimask_output=True, return_logits=True)
    assert np.abs(dets.scores - iou).max() < 1e-3
    assert np.abs(dets.extras["low_res_logits"] - low).max() < 1e-3 * max(1.0, np.abs(low).max())


def test_training_steps_with_mixed_precision_on_the_gpu(tmp_path) -> None:
    """The trainer's CUDA path: float16 autocast + GradScaler, checkpoint, resume."""
    from composer.sam.composer_tiny import ComposerTinyConfig, build_composer_tiny
    from composer.training.data import Variant, synthetic_shapes
    from composer.training.features import FeatureCache
    from composer.training.losses import LossWeights
    from composer.training.trainer import TrainConfig, Trainer

    tiny = ComposerTinyConfig(img_size=128, embed_stride=16, embed_dim=32, neck_dim=32,
                              decoder_depth=1, decoder_heads=4, decoder_mlp_dim=64,
                              iou_head_hidden_dim=32, mask_in_chans=8)
    torch.manual_seed(0)
    model = build_composer_tiny(config=tiny, pretrained_backbone=True, device="cuda")
    cache = FeatureCache("tiny-cuda", root=tmp_path / "features")
    items = synthetic_shapes(8, size=128, seed=10)
    samples = cache.load_all(cache.build(model, items, lambda _: [Variant()], tiny.low_res_size))
    cfg = TrainConfig(steps=30, masks_per_image=4, num_corrective=1, no_point_rounds=1, lr=3e-3,
                      warmup_steps=5, freeze=("image_encoder.backbone",),
                      checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=15,
                      loss=LossWeights(focal=1.0), seed=0)
    trainer = Trainer(model, cfg, samples)
    assert trainer.amp and trainer.device.type == "cuda"
    hist = trainer.fit()
    losses = [h["loss"] for h in hist]
    assert len(losses) == 30 and np.isfinite(losses).all()
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    assert (tmp_path / "ck" / "last.pt").exists()


def test_accelerator_chunks_decode_like_one_pass(pair, image, monkeypatch) -> None:
    """On CUDA the decoder takes larger chunks of prompts (ACCEL_CHUNK_BYTES): same logits."""
    from composer.sam import mask_decoder as md

    _, gpu = pair
    emb = gpu.embed(image)
    rng = np.random.default_rng(0)
    pts = (rng.random((100, 1, 2)) * 250).astype(np.float32)
    from composer.structures import Prompts

    prompts = Prompts.create(points=pts, labels=np.ones((100, 1)), image_size=image.shape[:2])
    whole = gpu.decode(emb, prompts)
    monkeypatch.setattr(md, "ACCEL_CHUNK_BYTES", 1)  # chunks of PROMPT_CHUNK
    chunked = gpu.decode(emb, prompts)
    assert (whole.logits - chunked.logits).abs().max() < 1e-4
    assert (whole.iou_pred - chunked.iou_pred).abs().max() < 1e-5


def test_onnx_export_of_a_gpu_model(pair, image, tmp_path) -> None:
    """``export_onnx`` of a model on CUDA traces a CPU copy: the caller's model stays on the
    GPU, and the exported graphs (run by ONNX Runtime on the CPU) agree with it."""
    pytest.importorskip("onnxruntime")
    from composer.export import export_onnx

    _, gpu = pair
    out = export_onnx(gpu, tmp_path / "onnx")
    assert max(out.meta["parity"].values()) < 1e-3
    assert {p.device.type for p in gpu.model.parameters()} == {"cuda"}
    ours = composer.load_segmenter("onnx", checkpoint=out.directory)
    assert ours.device.type == "cpu"
    e_gpu, e_onnx = gpu.embed(image), ours.embed(image)
    assert (e_gpu.features.cpu() - e_onnx.features).abs().max() < 1e-3
    kw = dict(points=[[128, 100]], labels=[1], refine="off", tta="off", rank="off")
    a, b = gpu.predict(e_gpu, **kw), ours.predict(e_onnx, **kw)
    assert np.abs(a.scores - b.scores).max() < 2e-3
    for ma, mb in zip(a.masks.to_dense(), b.masks.to_dense(), strict=True):
        assert _iou(ma, mb) > 0.98


def test_everything_in_worker_processes_on_the_gpu(image, tmp_path) -> None:
    """``annotate_folder`` with two spawned workers, each with its own copy of a CUDA model,
    writes what one process writes."""
    from PIL import Image

    from composer.automatic import AmgConfig
    from composer.runner import LocalEngine
    from tasks.everything import annotate_folder

    src = tmp_path / "images"
    src.mkdir()
    for k in range(3):
        Image.fromarray(np.ascontiguousarray(np.rot90(image, k))).save(src / f"{k}.png")
    seg = composer.load_segmenter("composer_tiny", device="cuda")
    config = AmgConfig.for_segmenter(seg, points_per_side=8)
    # the spawned workers run with torch's default precision (TF32 convolutions): so does
    # the one-process run here (this module turns TF32 off for its CPU comparisons)
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
    try:
        seq = annotate_folder(src, seg, tmp_path / "seq.json", config=config, resume=False)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    par = annotate_folder(src, seg, tmp_path / "par.json", config=config, resume=False,
                          engine=LocalEngine(2, threads=1))
    assert seq["failures"] == par["failures"] == []
    assert seq["images"] == par["images"]
    assert len(seq["annotations"]) > 0
    assert abs(len(seq["annotations"]) - len(par["annotations"])) <= 1
    from pycocotools import mask as mask_utils

    def dense(anns, image_id):
        return [mask_utils.decode(a["segmentation"]) for a in anns if a["image_id"] == image_id]

    matched = []  # a borderline mask may flip a threshold: nearly every mask has its twin
    for im in seq["images"]:
        a, b = dense(seq["annotations"], im["id"]), dense(par["annotations"], im["id"])
        matched += [max((_iou(m, n) for n in b), default=0.0) > 0.95 for m in a]
    assert np.mean(matched) >= 0.9, matched
