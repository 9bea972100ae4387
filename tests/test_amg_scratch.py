"""Reused chunk buffers in automatic mask generation (``composer.amg_utils.Scratch``).

The generator's full-size temporaries (upsampled logits, thresholded masks, int32 counts) come
from buffers allocated on a crop's first chunk and reused by its later chunks, instead of fresh
tensors that the kernel page-faults in on every chunk. The values must not change: the
upsampler, the counts and the whole generator are compared with the computation without
buffers, and the page faults of a generator run are bounded.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from composer.amg_utils import LowResUpsampler, Scratch, _resize_into, count_true, scratch_like


def test_scratch_reuses_a_buffer_until_a_larger_one_is_needed() -> None:
    s = Scratch()
    like = torch.zeros(1)
    a = s.take("x", (4, 5, 6), like)
    b = s.take("x", (2, 5, 6), like)  # smaller: a view of the same memory
    assert b.shape == (2, 5, 6) and b.is_contiguous()
    assert b.untyped_storage().data_ptr() == a.untyped_storage().data_ptr()
    c = s.take("x", (5, 5, 6), like)  # larger: a new buffer
    assert c.shape == (5, 5, 6)
    assert c.untyped_storage().nbytes() == 5 * 5 * 6 * 4
    d = s.take("x", (5, 5, 6), like, torch.bool)  # another dtype: a new buffer
    assert d.dtype == torch.bool
    other = s.take("y", (2, 5, 6), like)  # names do not share
    assert other.untyped_storage().data_ptr() != d.untyped_storage().data_ptr()
    s.clear()
    assert s._bufs == {}


def test_scratch_like_follows_a_transposed_layout() -> None:
    s = Scratch()
    t = torch.zeros(3, 7, 5).transpose(1, 2)  # (3, 5, 7), last two axes swapped in memory
    out = scratch_like(s, "m", t, torch.bool)
    assert out.shape == t.shape and out.stride() == t.stride()
    c = torch.zeros(3, 5, 7)
    assert scratch_like(s, "c", c, torch.int32).stride() == c.stride()


@pytest.mark.parametrize("transposed", [False, True])
def test_count_true_equals_the_int32_sum(transposed: bool) -> None:
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 37, 53, generator=g) > 0.4
    masks[2] = False
    masks[3] = True
    if transposed:
        masks = masks.transpose(1, 2)
    s = Scratch()
    got = count_true(masks, s)
    assert got.dtype == torch.int32
    assert torch.equal(got, masks.sum(dim=(1, 2), dtype=torch.int32))
    # a later, smaller call reuses the buffer and still counts right
    assert torch.equal(count_true(masks[:2], s), masks[:2].sum(dim=(1, 2), dtype=torch.int32))


@pytest.mark.parametrize(
    "geometry",
    [
        # (low_res, pad, input, original): one-stage (original within the input) ...
        ((64, 64), 512, (342, 512), (321, 481)),
        # ... and two-stage (a photo larger than the encoder's input), portrait and landscape
        ((64, 64), 512, (384, 512), (480, 640)),
        ((256, 256), 1024, (1024, 683), (1500, 1001)),
    ],
)
def test_upsampler_with_scratch_equals_without(geometry) -> None:
    low_res, pad, input_size, original = geometry
    up = LowResUpsampler(low_res, pad, input_size, original)
    g = torch.Generator().manual_seed(1)
    s = Scratch()
    for c in (5, 2, 7):  # a first chunk, a smaller one, then a larger one (buffers regrow)
        logits = torch.randn(c, *low_res, generator=g) * 8
        ref_t = up.transposed(logits)
        got_t = up.transposed(logits, s)
        assert torch.equal(got_t, ref_t)
        assert torch.equal(up(logits, s), up(logits))


def test_resize_into_is_interpolate_and_falls_back(monkeypatch) -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 1, 40, 33, generator=g)[..., :37, :31]  # a cropped view, as in use
    ref = F.interpolate(x, (97, 61), mode="bilinear", align_corners=False)
    out = torch.empty(3, 1, 97, 61)
    assert torch.equal(_resize_into(x, (97, 61), out), ref)

    real = torch._C._nn.upsample_bilinear2d

    def no_out_variant(*args, **kwargs):  # a torch whose private op lacks the out= form
        if "out" in kwargs:
            raise TypeError("upsample_bilinear2d() got an unexpected keyword argument 'out'")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch._C._nn, "upsample_bilinear2d", no_out_variant)
    out2 = torch.empty(3, 1, 97, 61)
    got = _resize_into(x, (97, 61), out2)
    assert got.data_ptr() == out2.data_ptr()
    assert torch.equal(got, ref)


@pytest.fixture(scope="module")
def tiny_and_photo(coco_dir):
    from composer import load_segmenter
    from composer.io.image import load_image

    seg = load_segmenter("composer_tiny", device="cpu")
    photo = load_image(sorted((coco_dir / "val2017").glob("*.jpg"))[0])
    return seg, photo


_REAL_TAKE = Scratch.take


def _fresh_take(self: Scratch, name, shape, like, dtype=None):
    """``Scratch.take`` allocating anew on every call (every chunk's buffers fresh)."""
    self._bufs.pop(name, None)
    return _REAL_TAKE(self, name, shape, like, dtype)


def test_generator_reuses_one_buffer_per_crop_and_keeps_its_masks(tiny_and_photo, monkeypatch):
    """Small chunks (many per crop) share one buffer; the masks equal those of fresh buffers
    and of one chunk per batch."""
    from composer import automatic
    from composer.automatic import AutomaticMaskGenerator

    seg, photo = tiny_and_photo
    amg = AutomaticMaskGenerator(seg, points_per_side=8, crop_n_layers=1)
    whole = amg.generate(photo)  # the shipped chunk size: one or two chunks per batch

    monkeypatch.setattr(automatic, "_CHUNK_BYTES", 3 * 4 * photo.shape[0] * photo.shape[1])
    # each crop's Scratch itself, kept alive here: by id(), a crop's Scratch could take the
    # address (the id) of an earlier crop's, freed, and their buffers would count as one crop's
    storages: list[tuple[Scratch, int]] = []

    def spy(self, name, shape, like, dtype=None):
        out = _REAL_TAKE(self, name, shape, like, dtype)
        if name == "up":
            storages.append((self, out.untyped_storage().data_ptr()))
        return out

    monkeypatch.setattr(Scratch, "take", spy)
    small = amg.generate(photo)
    per_crop: dict[Scratch, set[int]] = {}
    for scratch, ptr in storages:
        per_crop.setdefault(scratch, set()).add(ptr)
    assert len(per_crop) == 5  # one Scratch per crop: the image and its 4 first-layer crops
    assert len(storages) > 2 * len(per_crop)  # several chunks per crop ...
    assert all(len(p) == 1 for p in per_crop.values())  # ... all in one buffer

    monkeypatch.setattr(Scratch, "take", _fresh_take)
    fresh = amg.generate(photo)
    for other in (small, fresh):
        assert [r["counts"] for r in other.masks.rles] == [r["counts"] for r in whole.masks.rles]
        assert np.array_equal(other.scores, whole.scores)
        assert np.array_equal(other.extras["stability_score"], whole.extras["stability_score"])
        assert np.array_equal(other.boxes, whole.boxes)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mmap threshold")
def test_generator_page_faults_stay_bounded(tiny_and_photo) -> None:
    """A 640 x 480 photo with a 16 x 16 grid: 0.07 M minor page faults per run alone with the
    buffers reused, up to 0.145 M in a loaded full-suite worker (the thread count and the
    allocator's tuning vary it); 0.63 M (2.5 GB of fresh pages) when every chunk allocated its
    own. The bound sits between the two, nearer the regression."""
    import resource

    from composer.automatic import AutomaticMaskGenerator

    seg, photo = tiny_and_photo
    amg = AutomaticMaskGenerator(seg, points_per_side=16)
    amg.generate(photo)  # warm-up: the model's own first-call allocations
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    dets = amg.generate(photo)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert len(dets) > 0
    assert faults < 350_000, f"{faults} minor page faults for one generate call"
