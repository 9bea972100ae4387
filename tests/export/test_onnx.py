"""ONNX export (``composer.export``) and the ``onnx`` backend against the PyTorch models."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

if os.environ.get("CI") == "true":
    import onnxruntime  # noqa: F401  (the test extra installs it: under CI its absence fails)
else:
    pytest.importorskip("onnxruntime")

from composer.cli import main as cli_main  # noqa: E402
from composer.export import export_onnx  # noqa: E402
from composer.interactive import ClickSession  # noqa: E402
from composer.predictor import SamPredictor  # noqa: E402
from composer.sam.build import build_sam_from_config  # noqa: E402
from composer.sam.composer_tiny import (  # noqa: E402
    MODEL_NAME,
    PACKAGED_WEIGHTS,
    ComposerTinyConfig,
    build_composer_tiny,
)
from composer.sam.configs import CONFIGS  # noqa: E402
from composer.segmenters import _load_onnx, load_segmenter  # noqa: E402
from composer.segmenters.onnx import OnnxSegmenter  # noqa: E402


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = (rng.random((150, 220, 3)) * 70).astype(np.uint8)
    img[35:110, 60:160] = (200, 60, 40)
    img[60:90, 90:130] = (30, 160, 220)
    return img


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The packaged composer_tiny (hi-res path, click maps, refinement, TTA, ranking), exported."""
    seg = load_segmenter("composer_tiny", device="cpu")
    out = export_onnx(seg, tmp_path_factory.mktemp("onnx_tiny"))
    return seg, out


@pytest.fixture(scope="module")
def tiny_256(tmp_path_factory):
    """composer_tiny's packaged weights built for a 256 px input (stride 16: the same 16 x 16
    grid and 384 channels as the 512 model's), exported; its derived id names 256px."""
    seg = SamPredictor(
        build_composer_tiny(PACKAGED_WEIGHTS, config=ComposerTinyConfig(img_size=256, embed_stride=16)),
        model_id_prefix=f"{MODEL_NAME}-packaged-",
    )
    return seg, export_onnx(seg, tmp_path_factory.mktemp("onnx_tiny_256"), check=False)


def assert_vit_parity(parity: dict[str, float]) -> None:
    """The small ViT's export against the model: ONNX Runtime 1.32 keeps every output within
    1e-4; 1.17 and 1.18 (``make test-oldest``) differ by 6e-4 on the decoder's logits, within the
    export's own 1e-3 check."""
    assert parity["embedding"] < 1e-4 and parity["iou"] < 1e-4, parity
    assert parity["logits"] < 1e-3, parity


def small_vit_sam() -> SamPredictor:
    """SAM's ViT architecture (windowed + global attention, relative positions) at a small
    size, seeded random weights."""
    cfg = dataclasses.replace(
        CONFIGS["vit_b"], encoder_embed_dim=48, encoder_depth=2, encoder_num_heads=2,
        encoder_global_attn_indexes=(1,), img_size=256, window_size=4, mlp_ratio=2.0,
        out_chans=64, prompt_embed_dim=64, mask_in_chans=8, decoder_mlp_dim=128,
        decoder_num_heads=2, iou_head_hidden_dim=64,
    )
    model = build_sam_from_config(cfg, seed=0)
    with torch.no_grad():  # random init leaves norms trivial: perturb every tensor
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return SamPredictor(model)


def _prompt_cases(h: int, w: int) -> list[dict]:
    return [
        dict(points=[[0.4 * w, 0.45 * h]], labels=[1]),
        dict(points=[[0.4 * w, 0.45 * h], [0.75 * w, 0.2 * h]], labels=[1, 0]),
        dict(boxes=[[0.25 * w, 0.2 * h, 0.75 * w, 0.75 * h]]),
        dict(points=[[0.5 * w, 0.5 * h]], labels=[0], boxes=[[0.25 * w, 0.2 * h, 0.75 * w, 0.75 * h]]),
        # three prompts of padded points in one call
        dict(points=[[[10.0, 10.0], [0, 0]], [[0.6 * w, 0.5 * h], [0.3 * w, 0.3 * h]],
                     [[w - 1.0, h - 1.0], [5.0, 7.0]]],
             labels=[[1, -1], [1, 0], [1, 1]]),
        # more prompts than one call of the decoder graph takes (max_batch): chunked
        dict(points=np.stack([np.linspace(1, w - 2, 21), np.linspace(1, h - 2, 21)], 1)[:, None],
             labels=np.ones((21, 1), int)),
    ]


def _compare(ref, ours, image, tol=2e-4):
    er, eo = ref.embed(image), ours.embed(image)
    torch.testing.assert_close(eo.features, er.features, atol=tol, rtol=0)
    h, w = image.shape[:2]
    for case in _prompt_cases(h, w):
        for multimask in (True, False):
            kw = dict(multimask=multimask, refine="off", tta="off", rank="off")
            dr, do = ref.predict(er, **case, **kw), ours.predict(eo, **case, **kw)
            np.testing.assert_allclose(do.extras["low_res_logits"], dr.extras["low_res_logits"],
                                       atol=tol * 10, rtol=0)
            np.testing.assert_allclose(do.scores, dr.scores, atol=tol, rtol=0)
            a, b = do.masks.to_dense(), dr.masks.to_dense()
            assert (a != b).mean() < 1e-3


def test_export_records_parity_and_settings(tiny):
    seg, out = tiny
    meta = json.loads((out.directory / "model.json").read_text())
    assert meta["format"] == "sam-composer-onnx/1"
    assert meta["model_id"] == seg.model_id
    assert meta["img_size"] == 512 and meta["low_res_size"] == [64, 64]
    assert max(meta["parity"].values()) < 1e-4
    assert meta["max_batch"] == 16  # composer_tiny's CPU decoder chunk
    assert meta["settings"]["flip_tta"] is True
    assert meta["settings"]["prompt_shift"] == 0.5
    assert meta["settings"]["mask_refine"]["band"] == seg.mask_refine.band
    assert meta["settings"]["mask_rank"]["weight"] == seg.mask_rank.weight
    assert meta["settings"]["box_zoom"] == 0.35


def test_onnx_backend_matches_composer_tiny(tiny, image):
    seg, out = tiny
    ours = load_segmenter("onnx", checkpoint=out.directory)
    assert isinstance(ours, OnnxSegmenter) and ours.model_id == f"onnx-{seg.model_id}"
    assert ours.device.type == "cpu"
    assert (ours.flip_tta, ours.mask_refine, ours.mask_rank) == (seg.flip_tta, seg.mask_refine, seg.mask_rank)
    assert ours.prompt_shift == seg.prompt_shift == 0.5
    assert ours.amg_thresholds == seg.amg_thresholds and ours.edge_refine == seg.edge_refine
    assert ours.box_zoom == seg.box_zoom == 0.35
    _compare(seg, ours, image)


def test_export_without_prompt_shift_follows_its_model(tiny, tmp_path):
    """Exports from before ``prompt_shift`` was recorded: a composer_tiny one mirrors flip TTA's
    prompts as its training frame needs (0.5), as the PyTorch model does."""
    _, out = tiny
    old = tmp_path / "old"
    shutil.copytree(out.directory, old)
    meta = json.loads((old / "model.json").read_text())
    del meta["settings"]["prompt_shift"]
    (old / "model.json").write_text(json.dumps(meta))
    assert OnnxSegmenter(old).prompt_shift == 0.5


def test_onnx_click_session_follows_the_torch_one(tiny, image):
    """First click with the shipped settings (refine, flip TTA, contrast rank), then two
    corrective clicks that feed the previous logits back as mask input (the click-map path)."""
    seg, out = tiny
    ours = OnnxSegmenter(out.directory)
    sessions = [ClickSession(s, image, s.embed(image)) for s in (seg, ours)]
    for point, label in (((100, 70), 1), ((150, 60), 0), ((70, 100), 1)):
        (mr, sr), (mo, so) = (s.click(point, label) for s in sessions)
        np.testing.assert_allclose(so, sr, atol=1e-3, rtol=0)
        assert (mo != mr).mean() < 2e-3


def test_onnx_embedding_is_refused_by_torch_model(tiny, image):
    seg, out = tiny
    emb = OnnxSegmenter(out.directory).embed(image)
    with pytest.raises(ValueError, match="onnx-"):
        seg.predict(emb, points=[[10, 10]], labels=[1])


def test_embedding_of_another_grid_or_input_size_is_refused(tiny, tiny_256, image):
    """A foreign embedding under the export's id: ONNX Runtime refused another grid or channel
    count with its own InvalidArgument error, and decoded another pad_size's embedding in the
    wrong frame silently; now a ValueError, as SamPredictor's."""
    seg, out = tiny
    ours = OnnxSegmenter(out.directory, settings=False)
    emb = ours.embed(image)
    ours.predict(emb, points=[[100, 70]], labels=[1])  # its own embedding decodes
    small, small_export = tiny_256  # the same weights at a 256 input
    assert small.model_id != seg.model_id  # the derived id carries the input size
    other = OnnxSegmenter(small_export.directory)
    assert other.model_id != ours.model_id
    # under this export's id (built by hand: the ids of exports at two sizes differ)
    foreign = dataclasses.replace(other.embed(image), model_id=ours.model_id)
    assert foreign.features.shape == emb.features.shape and foreign.pad_size == 256
    h, w = image.shape[:2]
    cases = {
        "another input size": foreign,
        "another grid": dataclasses.replace(emb, features=torch.zeros(1, 384, 8, 8)),
        "other channels": dataclasses.replace(emb, features=torch.zeros(1, 256, 16, 16)),
        # another model's embedding (SAM's ViT: 64 channels, 16 x 16 over 256) under this id
        "another model": dataclasses.replace(small_vit_sam().embed(image), model_id=ours.model_id),
        "hand-made pad_size": dataclasses.replace(
            emb, pad_size=1024, input_size=(round(h * 1024 / w), 1024)),
    }
    for bad in cases.values():  # the names say what each is
        with pytest.raises(ValueError, match=r"do not fit this model, which decodes 384-channel "
                                             r"features of a \(16, 16\) grid over a 512 input"):
            ours.predict(bad, points=[[100, 70]], labels=[1])
    # the shape travels with a copy sent to a worker process
    assert pickle.loads(pickle.dumps(ours)).embedding_shape == (1, 384, 16, 16)


def _as_made_before_ids_named_the_size(export, to) -> str:
    """A copy of ``export``'s folder in ``to`` whose model.json has the id that the export's
    model had before 53ec658 (``composer_tiny-packaged-<fingerprint>``); that id."""
    shutil.copytree(export.directory, to)
    meta = json.loads((to / "model.json").read_text())
    meta["model_id"] = old_id = meta["model_id"].replace(f"-{meta['img_size']}px-", "-")
    assert "px" not in old_id
    (to / "model.json").write_text(json.dumps(meta))
    return old_id


def test_exports_at_two_input_sizes_made_before_ids_named_it_get_two_ids(tmp_path, tiny, tiny_256, image):
    """The same weights exported at 512 and 256 px before a derived id named the input size
    shared an id: an EmbeddingCache used by both handed the second the first's embedding,
    which its predict refused (check_fits) instead of computing its own. An id without the
    size now gets it appended; an id that names it is kept."""
    from composer.embedding import EmbeddingCache

    old_ids = [_as_made_before_ids_named_the_size(export, tmp_path / name)
               for name, (_, export) in (("e512", tiny), ("e256", tiny_256))]
    assert old_ids[0] == old_ids[1]  # the same weights, the same old id
    big, small = (OnnxSegmenter(tmp_path / name, settings=False) for name in ("e512", "e256"))
    assert (big.model_id, small.model_id) == (f"onnx-{old_ids[0]}-512px", f"onnx-{old_ids[0]}-256px")
    cache = EmbeddingCache()
    for seg in (big, small, big, small):
        emb = cache.get(image, seg)
        assert emb.pad_size == seg.img_size
        assert len(seg.predict(emb, points=[[100, 70]], labels=[1], multimask=False)) == 1
    assert (cache.encoder_calls, cache.hits) == (2, 2)
    # the old export decodes as the new one does, and the new one's id is kept as it is
    new = OnnxSegmenter(tiny[1].directory, settings=False)
    assert new.model_id == f"onnx-{tiny[0].model_id}"
    torch.testing.assert_close(cache.get(image, new).features, cache.get(image, big).features)


def test_onnx_model_id_names_the_input_size_once():
    from composer.segmenters.onnx import onnx_model_id

    assert onnx_model_id("composer_tiny-packaged-512px-0da76b6b6c90", 512) == \
        "onnx-composer_tiny-packaged-512px-0da76b6b6c90"
    assert onnx_model_id("composer_tiny-packaged-0da76b6b6c90", 512) == \
        "onnx-composer_tiny-packaged-0da76b6b6c90-512px"
    assert onnx_model_id("mine", 256) == "onnx-mine-256px"  # a fixed id, too
    # another size, or the digits of another number, is not this size
    assert onnx_model_id("mine-512px", 256) == "onnx-mine-512px-256px"
    assert onnx_model_id("m-1512px", 512) == "onnx-m-1512px-512px"


def test_sam_vit_architecture_exports(tmp_path, image):
    ref = small_vit_sam()
    out = export_onnx(ref, tmp_path)
    assert_vit_parity(out.meta["parity"])
    assert out.meta["settings"] == {"mask_refine": None, "mask_rank": None, "flip_tta": False,
                                    "prompt_shift": 0.0, "amg_thresholds": None,
                                    "edge_refine": None, "box_zoom": None}
    ours = OnnxSegmenter(out.directory)
    assert ours.mask_refine is None and not ours.flip_tta and ours.prompt_shift == 0.0
    _compare(ref, ours, image)


def test_bad_folders_and_backends(tmp_path, tiny):
    with pytest.raises(ValueError, match="export folder"):
        load_segmenter("onnx")
    with pytest.raises(ValueError, match="not an ONNX export folder"):
        OnnxSegmenter(tmp_path / "nowhere")
    (tmp_path / "encoder.onnx").write_bytes(b"x")
    with pytest.raises(ValueError, match="missing decoder.onnx, model.json"):
        OnnxSegmenter(tmp_path)
    (tmp_path / "decoder.onnx").write_bytes(b"x")
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ValueError, match="not readable JSON"):
        OnnxSegmenter(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="sam-composer-onnx/1"):
        OnnxSegmenter(tmp_path)
    meta = json.loads((tiny[1].directory / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="ONNX Runtime cannot load .*encoder.onnx"):
        OnnxSegmenter(tmp_path)
    # hand-edited normalisation: a zero std gave NaN scores and empty masks, a NaN threshold
    # emptied every mask; both are refused when the folder is read
    for key, value in (("pixel_std", [58.4, 0, 57.4]), ("mask_threshold", float("nan")),
                       ("pixel_mean", [1, 2]), ("pixel_std", "wide")):
        (tmp_path / "model.json").write_text(json.dumps({**meta, key: value}))
        with pytest.raises(ValueError, match="pixel_mean, pixel_std and mask_threshold|must be three finite"):
            OnnxSegmenter(tmp_path)
    with pytest.raises(ValueError, match="runs on the CPU"):
        _load_onnx("onnx", tiny[1].directory, device=torch.device("cuda"))
    with pytest.raises(ValueError, match="no PyTorch network"):
        export_onnx("classic", tmp_path / "classic")


def test_cli_export_and_segment(tmp_path, capsys, image):
    from PIL import Image

    assert cli_main(["export", "--model", "classic", "--out", str(tmp_path / "c")]) == 2
    assert "no PyTorch network" in capsys.readouterr().err
    out = tmp_path / "onnx"
    assert cli_main(["export", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "largest |ONNX Runtime - PyTorch|" in text and (out / "decoder.onnx").is_file()
    Image.fromarray(image).save(tmp_path / "img.png")
    assert cli_main(["segment", str(tmp_path / "img.png"), "--model", "onnx", "--checkpoint",
                     str(out), "--point", "100,70", "--out", str(tmp_path / "seg")]) == 0
    assert (tmp_path / "seg" / "img_mask000.png").is_file()


def test_bad_opset_and_out_are_one_line_errors(tmp_path, capsys):
    from composer.export.onnx import max_opset

    for opset in ("5", "13", "99", "-1"):
        assert cli_main(["export", "--opset", opset, "--out", str(tmp_path / "o")]) == 2
        assert f"opset must be 14 to {max_opset()}, got {opset}" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert cli_main(["export", "--no-check", "--out", str(tmp_path / "afile")]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err


def test_failed_export_leaves_no_stale_model_json(tmp_path, tiny, monkeypatch):
    """A failed export over an older one must not leave the old model.json beside new graphs."""
    import composer.export.onnx as onnx_export

    for name in ("encoder.onnx", "decoder.onnx", "model.json"):
        (tmp_path / name).write_bytes((tiny[1].directory / name).read_bytes())
    monkeypatch.setattr(onnx_export, "check_parity", lambda *a, **k: {"logits": 1.0})
    with pytest.raises(ValueError, match="differ from the model"):
        export_onnx(small_vit_sam(), tmp_path)
    assert not (tmp_path / "model.json").exists()
    with pytest.raises(ValueError, match="missing model.json"):
        OnnxSegmenter(tmp_path)


def _strip_stamps(path) -> None:
    """Remove the export id and role from a graph, as exports before 2026-11-24 wrote it."""
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.save(proto, str(path))


def test_graphs_of_another_export_or_swapped_are_refused(tmp_path, tiny, image):
    """A folder mixing two exports of one architecture (same shapes, other weights) ran
    silently with wrong masks; swapped files failed only at the first prompt."""
    a = export_onnx(small_vit_sam(), tmp_path / "a", check=False).directory
    b = export_onnx(small_vit_sam(), tmp_path / "b", check=False).directory
    assert json.loads((a / "model.json").read_text())["export_id"] != json.loads(
        (b / "model.json").read_text())["export_id"]
    mixed = tmp_path / "mixed"
    shutil.copytree(a, mixed)
    shutil.copy(b / "encoder.onnx", mixed / "encoder.onnx")
    with pytest.raises(ValueError, match="encoder.onnx belongs to another export"):
        OnnxSegmenter(mixed)
    swapped = tmp_path / "swapped"
    shutil.copytree(a, swapped)
    os.replace(swapped / "encoder.onnx", swapped / "tmp.onnx")
    os.replace(swapped / "decoder.onnx", swapped / "encoder.onnx")
    os.replace(swapped / "tmp.onnx", swapped / "decoder.onnx")
    with pytest.raises(ValueError, match="not the encoder graph .*it is the decoder graph"):
        OnnxSegmenter(swapped)
    # exports without ids: the graphs' inputs and the embedding's shape are checked
    for f in ("encoder.onnx", "decoder.onnx"):
        _strip_stamps(swapped / f)
    meta = json.loads((swapped / "model.json").read_text())
    del meta["export_id"]
    (swapped / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="not the encoder graph .*a graph with inputs"):
        OnnxSegmenter(swapped)
    old = tmp_path / "old"
    shutil.copytree(a, old)
    (old / "model.json").write_text(json.dumps(meta))
    OnnxSegmenter(old).embed(image)  # an old, consistent export still loads
    shutil.copy(tiny[1].directory / "encoder.onnx", old / "encoder.onnx")
    _strip_stamps(old / "encoder.onnx")
    with pytest.raises(ValueError, match="embedding's shape differs"):
        OnnxSegmenter(old)


def test_threads_follow_torch_and_onnx_is_not_needed_to_run(tiny, image, monkeypatch):
    """ONNX Runtime took every core whatever OMP_NUM_THREADS or --threads-per-worker said, and
    running a folder demanded the ``onnx`` package, which only exporting uses."""
    import pickle
    import sys

    _, out = tiny
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        seg = OnnxSegmenter(out.directory)
        assert seg._encoder.get_session_options().intra_op_num_threads == 1
        assert OnnxSegmenter(out.directory, threads=2)._decoder.get_session_options(
            ).intra_op_num_threads == 2
        copy = pickle.loads(pickle.dumps(seg))  # a worker's copy opens its sessions when used
        assert copy._encoder is None
        torch.set_num_threads(2)
        emb = copy.embed(image)
        assert copy._encoder.get_session_options().intra_op_num_threads == 2
        np.testing.assert_allclose(emb.features.numpy(), seg.embed(image).features.numpy(),
                                   atol=1e-5)
    finally:
        torch.set_num_threads(before)


def test_hand_edited_model_json_errors_name_it(tmp_path, tiny):
    _, out = tiny
    meta = json.loads((out.directory / "model.json").read_text())
    for f in ("encoder.onnx", "decoder.onnx"):
        shutil.copy(out.directory / f, tmp_path / f)
    bad = [({"settings": {**meta["settings"], "amg_thresholds": "x"}}, "its settings cannot be applied"),
           ({"settings": {**meta["settings"], "edge_refine": [1, 2, 3]}}, "its settings cannot be applied"),
           ({"low_res_size": 64}, "must be whole numbers"),
           ({"img_size": "abc"}, "must be whole numbers")]
    for change, message in bad:
        (tmp_path / "model.json").write_text(json.dumps({**meta, **change}))
        with pytest.raises(ValueError, match=f"model.json.*{message}"):
            OnnxSegmenter(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({**meta, "settings": {"amg_thresholds": "x"}}))
    assert OnnxSegmenter(tmp_path, settings=False).amg_thresholds is None
