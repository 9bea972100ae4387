"""Official-style SamPredictor calls that used to be accepted silently."""

import numpy as np
import pytest
import torch

import composer
from composer.io.image import load_image


@pytest.fixture(scope="module")
def pred():
    p = composer.SamPredictor(composer.build_sam("vit_tiny_test"))
    p.set_image(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    return p


PT, LB = np.array([[5.0, 5.0]]), np.array([1])


@pytest.mark.parametrize("kw", [{"multimask_output": "False"}, {"return_logits": "no"}])
def test_flags_must_be_bools(pred, kw):
    with pytest.raises(TypeError, match="must be a bool"):
        pred.predict(point_coords=PT, point_labels=LB, **kw)
    with pytest.raises(TypeError, match="must be a bool"):
        pred.predict_torch(torch.tensor([[[5.0, 5.0]]]), torch.ones(1, 1), **kw)


def test_boolean_mask_input_is_refused(pred):
    h, w = pred.low_res_size
    with pytest.raises(ValueError, match="not a boolean mask"):
        pred.predict(point_coords=PT, point_labels=LB, mask_input=np.ones((1, h, w), bool))
    with pytest.raises(ValueError, match="not a boolean mask"):
        pred.predict_torch(None, None, mask_input=torch.ones(1, 1, h, w, dtype=torch.bool))


def test_ambiguous_tensor_layout_is_refused():
    with pytest.raises(ValueError, match="ambiguous between CHW and HWC"):
        load_image(torch.zeros(3, 50, 3, dtype=torch.uint8))
    assert load_image(torch.zeros(3, 50, 40, dtype=torch.uint8)).shape == (50, 40, 3)


def test_set_image_embedding_is_refused_after_the_weights_change():
    sam = composer.build_sam("vit_tiny_test")
    p = composer.SamPredictor(sam)
    p.set_image(np.zeros((30, 40, 3), np.uint8))
    with torch.no_grad():
        sam.mask_decoder.iou_token.weight.add_(1.0)
    with pytest.raises(ValueError, match="cannot be decoded"):
        p.predict(point_coords=PT, point_labels=LB)
    with pytest.raises(ValueError, match="cannot be decoded"):
        p.predict_torch(torch.tensor([[[5.0, 5.0]]]), torch.ones(1, 1))


@pytest.mark.parametrize(
    "kw", [dict(point_coords=PT, point_labels=LB, boxes=np.array([[1, 1, 9, 9]])),
           dict(box=np.array([1, 1, 9, 9]), multimask=False)]
)
def test_mixed_keyword_forms_are_named(pred, kw):
    """The TypeError blamed the valid keyword of the form it guessed ("unexpected keyword
    argument 'point_coords'"); it now names both groups."""
    with pytest.raises(TypeError, match="mixes the official form's .* with the embedding form's"):
        pred.predict(**kw)
