"""Audit of composer.sam and SamPredictor: devices, dtypes and the official predictor's
batched API (``predict_torch``, ``transform``, ``set_torch_image``, ``features``)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch

from composer.predictor import SamPredictor
from composer.sam import CONFIGS, build_sam
from composer.sam import build as sam_build

pytest.importorskip("segment_anything")
from segment_anything import SamPredictor as OfficialPredictor  # noqa: E402
from test_network import seeded_official  # noqa: E402  (same folder)


def _cpu_has_half_kernels() -> bool:
    """torch 2.1 has no float16 convolution or addmm on the CPU (later releases do)."""
    half = torch.float16
    try:
        torch.nn.functional.conv2d(
            torch.ones(1, 1, 3, 3, dtype=half), torch.ones(1, 1, 1, 1, dtype=half)
        )
        torch.nn.functional.linear(
            torch.ones(2, 2, dtype=half), torch.ones(2, 2, dtype=half), torch.ones(2, dtype=half)
        )
    except RuntimeError:
        return False
    return True


needs_cpu_half = pytest.mark.skipif(
    not _cpu_has_half_kernels(), reason=f"torch {torch.__version__} has no float16 CPU kernels"
)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The official tiny model (seeded unit-gain weights) and ours loaded from its .pth."""
    ref = seeded_official(CONFIGS["vit_tiny_test"], seed=7)
    path = tmp_path_factory.mktemp("audit") / "tiny.pth"
    torch.save(ref.state_dict(), path)
    rng = np.random.default_rng(3)
    image = (rng.random((60, 90, 3)) * 255).astype(np.uint8)
    return {"ref": ref, "path": path, "image": image}


# ------------------------------------------------------------------------------ build devices
def test_build_sam_cuda_without_gpu_is_a_clear_error_before_loading(
    pair: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def no_load(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the checkpoint was read before the device was checked")

    monkeypatch.setattr(sam_build, "_load_weights", no_load)
    with pytest.raises(ValueError, match="'cuda' asked for"):
        build_sam("vit_tiny_test", checkpoint=pair["path"], device="cuda")


def test_build_sam_gpu_index_past_the_last_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"cuda:3.*1 GPU"):
        build_sam("vit_tiny_test", device="cuda:3")


def test_build_sam_unknown_device_name_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        build_sam("vit_tiny_test", device="gpu")


@pytest.mark.parametrize("device", ["cpu:0", " cpu ", torch.device("cpu")])
def test_build_sam_cpu_spellings(device: Any) -> None:
    assert build_sam("vit_tiny_test", device=device).device.type == "cpu"


# ------------------------------------------------------------------------------ dtypes
@needs_cpu_half
def test_half_model_embeds_and_predicts_like_float32(pair: dict[str, Any]) -> None:
    model = build_sam("vit_tiny_test", checkpoint=pair["path"])
    full, half = SamPredictor(model), SamPredictor(copy.deepcopy(model).half())
    image = pair["image"]
    full.set_image(image)
    half.set_image(image)  # was: "Input type (float) and bias type (c10::Half) should be the same"
    assert half.features.dtype == torch.float16
    low = np.random.default_rng(0).normal(size=(1, 32, 32)).astype(np.float32)
    kw = dict(point_coords=np.array([[30.0, 20.0]]), point_labels=np.array([1]), mask_input=low)
    out_full = full.predict(**kw, return_logits=True)
    out_half = half.predict(**kw, return_logits=True)
    for a, b in zip(out_full, out_half, strict=True):
        assert b.dtype == np.float32 and a.shape == b.shape
        assert np.abs(a - b).max() < 0.05 * max(1.0, float(np.abs(a).max()))


@needs_cpu_half
def test_half_model_decodes_a_float32_embedding_of_the_same_model(pair: dict[str, Any]) -> None:
    """An embedding cached from the float32 model (same model_id) decodes on the half one."""
    model = build_sam("vit_tiny_test", checkpoint=pair["path"])
    full = SamPredictor(model, model_id="tiny")
    half = SamPredictor(copy.deepcopy(model).half(), model_id="tiny")
    emb = full.embed(pair["image"])
    a = full.predict(emb, boxes=[10, 5, 60, 50])
    b = half.predict(emb, boxes=[10, 5, 60, 50])
    np.testing.assert_allclose(a.scores, b.scores, atol=0.05)


@needs_cpu_half
def test_half_sam_forward_takes_float32_images_and_mask_inputs(pair: dict[str, Any]) -> None:
    model = build_sam("vit_tiny_test", checkpoint=pair["path"]).half()
    image = torch.rand(3, 85, 128) * 255
    rec = {
        "image": image,
        "original_size": (60, 90),
        "point_coords": torch.tensor([[[30.0, 20.0]]]),
        "point_labels": torch.tensor([[1]]),
        "mask_inputs": torch.zeros(1, 1, 32, 32),
    }
    out = model([rec], multimask_output=False)[0]
    assert out["masks"].shape == (1, 1, 60, 90)
    assert bool(torch.isfinite(out["low_res_logits"]).all())


# ------------------------------------------------------------------------------ official batched API
def test_predict_torch_and_transform_match_official(pair: dict[str, Any]) -> None:
    image = pair["image"]
    ours = SamPredictor(build_sam("vit_tiny_test", checkpoint=pair["path"]))
    ref = OfficialPredictor(pair["ref"])
    ours.set_image(image)
    ref.set_image(image)
    assert (ours.features - ref.features).abs().max() < 1e-3
    size = image.shape[:2]
    points = torch.tensor([[[10.0, 10.0], [50.0, 30.0]], [[80.0, 50.0], [0.0, 0.0]]])
    labels = torch.tensor([[1, 0], [1, -1]])
    boxes = torch.tensor([[1.0, 2.0, 40.0, 50.0], [30.0, 10.0, 89.0, 59.0]])
    np.testing.assert_allclose(
        ours.transform.apply_coords(points.numpy(), size),
        ref.transform.apply_coords(points.numpy(), size),
    )
    np.testing.assert_allclose(
        ours.transform.apply_boxes(boxes.numpy(), size),
        ref.transform.apply_boxes(boxes.numpy(), size),
    )
    tp = ours.transform.apply_coords_torch(points, size)
    tb = ours.transform.apply_boxes_torch(boxes, size)
    torch.testing.assert_close(tp, ref.transform.apply_coords_torch(points, size))
    torch.testing.assert_close(tb, ref.transform.apply_boxes_torch(boxes, size))
    low = 4 * torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    cases = [
        dict(point_coords=tp, point_labels=labels),
        dict(point_coords=None, point_labels=None, boxes=tb),
        dict(point_coords=tp, point_labels=labels, boxes=tb, mask_input=low),
    ]
    for case in cases:
        for multimask in (True, False):
            c = 3 if multimask else 1
            a = ours.predict_torch(**case, multimask_output=multimask, return_logits=True)
            b = ref.predict_torch(**case, multimask_output=multimask, return_logits=True)
            assert [tuple(t.shape) for t in a] == [(2, c, 60, 90), (2, c), (2, c, 32, 32)]
            for x, y in zip(a, b, strict=True):
                assert (x - y).abs().max() < 1e-3
            masks, _, _ = ours.predict_torch(**case, multimask_output=multimask)
            assert masks.dtype == torch.bool and masks.shape == (2, c, 60, 90)


def test_set_torch_image_matches_official(pair: dict[str, Any]) -> None:
    image = pair["image"]
    ours = SamPredictor(build_sam("vit_tiny_test", checkpoint=pair["path"]))
    ref = OfficialPredictor(pair["ref"])
    x = torch.as_tensor(ours.transform.apply_image(image)).permute(2, 0, 1)[None]
    assert torch.equal(x, torch.as_tensor(ref.transform.apply_image(image)).permute(2, 0, 1)[None])
    ours.set_torch_image(x, image.shape[:2])
    ref.set_torch_image(x, image.shape[:2])
    assert ours.input_size == tuple(ref.input_size) and ours.original_size == tuple(
        ref.original_size
    )
    assert (ours.get_image_embedding() - ref.get_image_embedding()).abs().max() < 1e-3
    with pytest.raises(ValueError, match="longest side"):
        ours.set_torch_image(x[..., :100], image.shape[:2])
    assert not ours.is_image_set


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            dict(point_coords=torch.tensor([[[np.nan, 1.0]]]), point_labels=torch.tensor([[1]])),
            "NaN",
        ),
        (
            dict(
                point_coords=None, point_labels=None, boxes=torch.tensor([[0.0, 0.0, np.inf, 9.0]])
            ),
            "NaN",
        ),
        (dict(point_coords=torch.tensor([[[1.0, 1.0]]]), point_labels=torch.tensor([[2]])), "-1"),
        (dict(point_coords=torch.tensor([[[1.0, 1.0]]]), point_labels=None), "point_labels"),
        (dict(point_coords=None, point_labels=None), "empty prompt set"),
        (
            dict(point_coords=None, point_labels=None, mask_input=torch.zeros(1, 1, 16, 16)),
            "mask_input",
        ),
    ],
)
def test_predict_torch_bad_prompts_raise(pair: dict[str, Any], kwargs: dict, match: str) -> None:
    pred = SamPredictor(build_sam("vit_tiny_test", checkpoint=pair["path"]))
    with pytest.raises(RuntimeError, match="set_image"):
        pred.predict_torch(torch.tensor([[[1.0, 1.0]]]), torch.tensor([[1]]))
    pred.set_image(pair["image"])
    with pytest.raises(ValueError, match=match):
        pred.predict_torch(**kwargs)


# ------------------------------------------------------------------------------ prompt encoder
@pytest.mark.parametrize("where", ["points", "boxes"])
def test_prompt_encoder_refuses_nan_and_inf(where: str) -> None:
    """Sam.forward (and any direct caller) got NaN masks without a word."""
    model = build_sam("vit_tiny_test")
    prompt: dict[str, Any] = {"points": None, "boxes": None, "masks": None}
    if where == "points":
        prompt["points"] = (torch.tensor([[[np.nan, 3.0]]]), torch.tensor([[1]]))
    else:
        prompt["boxes"] = torch.tensor([[0.0, 0.0, np.inf, 5.0]])
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.prompt_encoder(**prompt)


def test_sam_forward_refuses_nan_mask_inputs() -> None:
    """Mask inputs are checked where a caller gives them (Sam.forward), not in the prompt
    encoder, where training feeds back its own logits and reports their NaN at the loss."""
    model = build_sam("vit_tiny_test")
    size = model.image_encoder.img_size
    low = model.prompt_encoder.mask_input_size
    rec = {"image": torch.zeros(3, size, size), "original_size": (size, size),
           "boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]),
           "mask_inputs": torch.full((1, 1, *low), float("nan"))}
    with pytest.raises(ValueError, match="mask_inputs contain NaN"):
        model([rec], multimask_output=False)


def test_set_image_bgr_only_for_arrays(tmp_path) -> None:
    """A file is decoded as RGB: image_format='BGR' would swap its channels into BGR."""
    from PIL import Image

    pred = SamPredictor(build_sam("vit_tiny_test"))
    rgb = np.zeros((12, 16, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "red.png")
    with pytest.raises(ValueError, match="BGR"):
        pred.set_image(tmp_path / "red.png", image_format="BGR")
    with pytest.raises(ValueError, match="BGR"):
        pred.set_image(Image.fromarray(rgb), image_format="BGR")
    pred.set_image(tmp_path / "red.png")  # RGB: fine
    a = pred.get_image_embedding().clone()
    pred.set_image(np.ascontiguousarray(rgb[..., ::-1]), image_format="BGR")  # a BGR array
    assert torch.equal(a, pred.get_image_embedding())
