"""Prompts given as torch tensors, also ones that require grad (as a CUDA tensor, which
``np.asarray`` refuses the same way: there is no GPU here)."""

from __future__ import annotations

import numpy as np
import torch

from composer.structures import Prompts


def test_tensors_that_require_grad_are_read():
    pts = torch.tensor([[10.0, 20.0]], requires_grad=True)
    box = torch.tensor([1.0, 2.0, 30.0, 40.0], requires_grad=True)
    mask = torch.zeros(8, 8, requires_grad=True)
    p = Prompts.create(pts, torch.tensor([1]), box, mask, image_size=(50, 60))
    np.testing.assert_array_equal(p.points, [[[10.0, 20.0]]])
    np.testing.assert_array_equal(p.boxes, [[1.0, 2.0, 30.0, 40.0]])
    assert p.labels.dtype == np.int64 and p.mask_input.shape == (1, 1, 8, 8)


def test_a_tensor_that_np_asarray_refuses_is_read(monkeypatch):
    class DeviceTensor:  # what a CUDA tensor does: no __array__, but detach().cpu().numpy()
        def __array__(self, *a, **k):
            raise TypeError("can't convert cuda:0 device type tensor to numpy")

        def detach(self):
            return self

        def cpu(self):
            return torch.tensor([[3.0, 4.0]])

        def numpy(self):
            raise AssertionError("numpy() of the device tensor itself")

    p = Prompts.create(DeviceTensor(), [1], image_size=(10, 10))
    np.testing.assert_array_equal(p.points, [[[3.0, 4.0]]])
