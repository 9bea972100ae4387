"""FeatureCache.build with item references: a complete cache reads no image or ground truth
(every rerun of recipes/data_engine.py decoded every BSDS image and .mat file, and every
automatically annotated image, to find entries that were all on disk)."""

from __future__ import annotations

import dataclasses
import json
import pickle
from collections import OrderedDict
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from composer.sam.composer_tiny import build_composer_tiny
from composer.training.data import (
    ItemRef,
    SegmentationItem,
    bsds_ids,
    bsds_item_refs,
    coco_item_refs,
    coco_items,
    load_bsds_item,
    make_variants,
    synthetic_shapes,
)
from composer.training.features import FeatureCache

from .test_train_cli import _coco_dataset
from .test_training import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def _model():
    cfg = dataclasses.replace(TINY, hires=False, click_maps=False)
    return build_composer_tiny(config=cfg, pretrained_backbone=False)


def _counting_refs(items: list[SegmentationItem], loads: list[str]) -> list[ItemRef]:
    def load(item: SegmentationItem) -> SegmentationItem:
        loads.append(item.image_id)
        return item

    return [ItemRef(it.image_id, lambda it=it: load(it)) for it in items]


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def test_a_complete_cache_loads_no_item(tmp_path) -> None:
    model = _model()
    items = synthetic_shapes(3, size=96, seed=5)
    loads: list[str] = []
    refs = _counting_refs(items, loads)

    def variants(it):
        return make_variants(2, seed=len(it.image_id))

    cache = FeatureCache("refs", root=tmp_path / "a")
    paths = cache.build(model, refs, variants, low_res=64)
    assert loads == [it.image_id for it in items]  # each read once for its two entries
    loads.clear()
    assert cache.build(model, refs, variants, low_res=64) == paths
    assert loads == []  # before: every item decoded again
    paths[3].unlink()  # one entry of the second item is missing: only that item is read
    assert cache.build(model, refs, variants, low_res=64) == paths and loads == ["shapes/5/1"]
    # the entries are those of a build from the items themselves, bit for bit
    plain = FeatureCache("refs", root=tmp_path / "b").build(model, items, variants, low_res=64)
    assert [p.name for p in plain] == [p.name for p in paths]
    for a, b in zip(paths, plain, strict=True):
        ours, theirs = _arrays(a), _arrays(b)
        assert ours.keys() == theirs.keys()
        assert all(np.array_equal(ours[k], theirs[k]) for k in ours)


def test_a_reference_that_loads_another_item_is_refused(tmp_path) -> None:
    item = synthetic_shapes(1, size=96, seed=5)[0]
    cache = FeatureCache("refs", root=tmp_path)
    with pytest.raises(ValueError, match="item reference 'other' loaded item 'shapes/5/0'"):
        cache.build(_model(), [ItemRef("other", lambda: item)], lambda _: make_variants(1, 0), 64)


def test_coco_item_refs_are_coco_items_unread(tmp_path, monkeypatch) -> None:
    import composer.io.image as image_io

    ann, images = _coco_dataset(tmp_path, n=3)
    expected = list(coco_items(ann, images, image_ids=[3, 1]))
    real, reads = image_io.load_image, []
    monkeypatch.setattr(image_io, "load_image", lambda p: reads.append(p) or real(p))
    refs = list(coco_item_refs(ann, images, image_ids=[3, 1]))
    assert [r.image_id for r in refs] == ["coco/3", "coco/1"] and reads == []
    for ref, item in zip(refs, expected, strict=True):
        got = ref.load()
        assert got.image_id == item.image_id
        assert np.array_equal(got.image, item.image) and np.array_equal(got.layers, item.layers)
    assert len(reads) == 2


def test_coco_item_refs_pickle(tmp_path) -> None:
    """A reference of coco_item_refs loaded through a function local to it, which does not
    pickle ("Can't pickle local object"): such a reference could not go to a spawned worker,
    as a bsds_item_refs one can. It pickles, and its copy loads the same item."""
    import pickle

    ann, images = _coco_dataset(tmp_path, n=2)
    (ref,) = coco_item_refs(ann, images, image_ids=[2])
    copy = pickle.loads(pickle.dumps(ref))
    (item,) = coco_items(ann, images, image_ids=[2])
    got = copy.load()
    assert copy.image_id == got.image_id == item.image_id == "coco/2"
    assert np.array_equal(got.image, item.image) and np.array_equal(got.layers, item.layers)


def _count_parses(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The jsons that ``composer.data.coco.load_coco`` reads from now on (a COCO object passed
    on is no read)."""
    import composer.data.coco as coco_io

    real, parses = coco_io.load_coco, []

    def load_coco(ann, **kwargs):
        if not isinstance(ann, coco_io.COCO):
            parses.append(ann)
        return real(ann, **kwargs)

    monkeypatch.setattr(coco_io, "load_coco", load_coco)
    return parses


def _bulky_coco_dataset(root: Path) -> tuple[Path, Path]:
    """Two annotated images in a json made ~200 KB by 2000 image records without annotations
    (listed by no reference)."""
    ann, images = _coco_dataset(root, n=2)
    doc = json.loads(ann.read_text())
    doc["images"] += [{"id": 100 + i, "file_name": f"none{i}.png", "height": 96, "width": 96}
                      for i in range(2000)]
    ann.write_text(json.dumps(doc))
    assert ann.stat().st_size > 100_000
    return ann, images


def test_coco_item_refs_pickle_small_and_parse_the_json_once(tmp_path, monkeypatch) -> None:
    """A reference pickled the whole parsed json (453 KB for the 80-image COCO subset, 450 MB
    for COCO train, per reference sent to a worker). It names its item in a few hundred
    bytes, resolves to the same item, and its process parses the json once for all."""
    import composer.training.data as training_data

    ann, images = _bulky_coco_dataset(tmp_path)
    refs = list(coco_item_refs(ann, images, max_instances=2))
    assert [r.image_id for r in refs] == ["coco/1", "coco/2"]
    blobs = [pickle.dumps(r) for r in refs]
    assert max(map(len, blobs)) < 2_000, [len(b) for b in blobs]  # before: 83_338 each
    expected = list(coco_items(ann, images, max_instances=2))
    parses = _count_parses(monkeypatch)
    # a process that has parsed no json yet (e.g. a spawned worker)
    monkeypatch.setattr(training_data, "_PARSED", OrderedDict(), raising=False)
    for blob, item in zip(blobs, expected, strict=True):
        got = pickle.loads(blob).load()
        assert got.image_id == item.image_id
        assert np.array_equal(got.image, item.image) and np.array_equal(got.layers, item.layers)
    assert len(parses) == 1  # one parse for both references


def test_coco_item_ref_of_a_changed_json_is_refused(tmp_path, monkeypatch) -> None:
    """The json changed after its references were listed: they would name other items (the
    parsed json they carried before kept the old ones); a clear error instead."""
    import composer.training.data as training_data

    ann, images = _coco_dataset(tmp_path, n=2)
    (ref,) = coco_item_refs(ann, images, image_ids=[2])
    copy = pickle.loads(pickle.dumps(ref))
    monkeypatch.setattr(training_data, "_PARSED", OrderedDict(), raising=False)  # a new process
    doc = json.loads(ann.read_text())
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] != 2]
    ann.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"instances.json changed since its items were listed"):
        copy.load()
    # listed again, the new json's items come
    assert [r.image_id for r in coco_item_refs(ann, images)] == ["coco/1"]


def test_bsds_item_refs_are_bsds_items_unread(bsds_dir, monkeypatch) -> None:
    import composer.data.bsds as bsds_io

    real, reads = bsds_io.load_ground_truth, []
    monkeypatch.setattr(bsds_io, "load_ground_truth", lambda p: reads.append(p) or real(p))
    refs = list(bsds_item_refs(("val",), data_root=bsds_dir.parent))
    assert [r.image_id for r in refs] == [
        f"bsds/val/{i}" for _, i in bsds_ids(("val",), data_root=bsds_dir.parent)
    ]
    assert reads == []
    (ref,) = islice(refs, 1)
    got, item = ref.load(), load_bsds_item("val", ref.image_id.rsplit("/", 1)[1], bsds_dir.parent)
    assert got.image_id == item.image_id and np.array_equal(got.layers, item.layers)
    assert np.array_equal(got.image, item.image)


@pytest.mark.parametrize("warmup_shapes", [0, 2])
def test_train_default_reads_bsds_only_where_it_needs_the_pixels(
    tmp_path, monkeypatch, warmup_shapes
) -> None:
    """recipes/train_default.py's cache of BSDS features: without warm-up shapes (whose
    backgrounds are the images) a rerun over a complete cache reads no image; with them each
    image is read once per run, not once more for the cache."""
    from argparse import Namespace

    from tests._modules import load_recipe

    recipe = load_recipe("train_default")
    items = synthetic_shapes(2, size=96, seed=7)
    loads: list[str] = []
    monkeypatch.setenv("SAM_COMPOSER_HOME", str(tmp_path))
    monkeypatch.setattr(recipe, "evaluation_bsds_ids", lambda: set())
    monkeypatch.setattr(recipe, "bsds_item_refs", lambda *a, **k: _counting_refs(items, loads))
    monkeypatch.setattr(recipe, "cache_name", lambda model: "bsds-test")
    args = Namespace(variants=2, warmup_shapes=warmup_shapes, coco_train=False, paste=0)
    model = _model()
    first = recipe.build_cache(args, model)
    assert loads == ["shapes/7/0", "shapes/7/1"]
    loads.clear()
    assert recipe.build_cache(args, model) == first
    assert loads == ([] if not warmup_shapes else ["shapes/7/0", "shapes/7/1"])
    assert sorted(first) == ["shapes/7/0", "shapes/7/1"] and all(len(v) == 2 for v in first.values())


def test_coco_item_refs_of_three_jsons_parse_each_once_in_any_order(tmp_path, monkeypatch):
    """The references of the process that listed them share the json parsed at listing: a
    per-process cache of the two most recent jsons made a mix of three jsons' references
    (e.g. shuffled together) parse a json again for almost every item, COCO train's 450 MB
    each time."""

    jsons = [_coco_dataset(tmp_path / name, n=2) for name in "abc"]
    refs = [list(coco_item_refs(ann, images)) for ann, images in jsons]
    parses = _count_parses(monkeypatch)
    for pair in zip(*refs, strict=True):  # a, b, c, a, b, c
        for ref in pair:
            assert ref.load().image_id == ref.image_id
    assert parses == []  # before: 6 parses, one per item after the listing


def test_the_parsed_json_goes_with_its_references(tmp_path) -> None:
    """The references carried the parsed json, which went with them; a module-level cache
    kept the two most recent jsons parsed for the rest of the process (COCO train's json
    is GBs parsed)."""
    import gc
    import weakref

    import composer.data.coco as coco_io

    ann, images = _coco_dataset(tmp_path, n=2)
    seen: list[weakref.ref] = []
    real = coco_io.load_coco

    def load_coco(ann, **kwargs):
        coco = real(ann, **kwargs)
        if not isinstance(ann, coco_io.COCO):  # a json read, not a COCO object passed on
            seen.append(weakref.ref(coco))
        return coco

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(coco_io, "load_coco", load_coco)
        refs = list(coco_item_refs(ann, images))
    assert len(seen) == 1 and seen[0]() is not None
    assert refs[1].load().image_id == "coco/2"
    del refs
    gc.collect()
    assert seen[0]() is None


def test_an_entry_cut_short_leaves_no_part_file(tmp_path) -> None:
    """A full disk mid-write left a half-written <key>.npz.part in the cache folder; the
    error now removes it (and the next build writes the entry whole)."""
    from tests.test_atomic import file_size_limit

    model = _model()
    items = synthetic_shapes(1, size=96, seed=5)
    cache = FeatureCache("cut", root=tmp_path)
    with file_size_limit(4096), pytest.raises(OSError):
        cache.build(model, items, lambda it: make_variants(1, seed=0), low_res=64)
    assert not list(tmp_path.rglob("*.part")) and not list(tmp_path.rglob("*.npz"))
    paths = cache.build(model, items, lambda it: make_variants(1, seed=0), low_res=64)
    assert [p.suffix for p in paths] == [".npz"] and paths[0].stat().st_size > 4096
    assert not list(tmp_path.rglob("*.part"))


def test_two_writers_of_one_entry_both_finish_and_leave_it_whole(tmp_path, monkeypatch) -> None:
    """Two runs sharing the cache folder (the default one) building the same entry: both wrote
    <key>.npz.part, the second truncating the first's file, so the first renamed the second's
    half-written bytes into place and the second's rename failed (FileNotFoundError)."""
    model = _model()
    items = synthetic_shapes(1, size=96, seed=5)
    real_write, real_savez = FeatureCache._write, np.savez
    args: list = []
    raced: list = []

    def capture(path, sample, feats):
        args[:] = [path, sample, feats]
        real_write(path, sample, feats)

    def savez(f, **arrays):
        if not raced:  # the other run writes the same entry, start to end, while this one does
            raced.append(True)
            real_write(*args)
        real_savez(f, **arrays)

    monkeypatch.setattr(FeatureCache, "_write", staticmethod(capture))
    monkeypatch.setattr(np, "savez", savez)
    cache = FeatureCache("race", root=tmp_path)
    paths = cache.build(model, items, lambda it: make_variants(1, seed=0), low_res=64)
    assert raced and [p.suffix for p in paths] == [".npz"]
    assert not list(tmp_path.rglob("*.part"))
    assert FeatureCache.load(paths[0]).image_id.startswith(f"{items[0].image_id}@")
