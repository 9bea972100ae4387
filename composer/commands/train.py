"""``sam-composer train``: fine-tune a promptable model on a COCO-format dataset.

Example (fine-tune SAM ViT-B, encoder frozen, on your own annotations)::

    sam-composer train --data annotations.json --images images/ --model vit_b --out runs/ft

Every non-crowd instance is a training mask; each image is seen as itself and mirrored. The
loop is :class:`composer.training.trainer.Trainer` (SAM's simulated interactive session, focal + dice
on the best of 3 outputs, IoU MSE). With a frozen image encoder (the default) every image is
embedded once up front, so a step only costs the prompt encoder and the mask decoder. A share
of the images (``--val-fraction``, or ``--val-data``) is held out and the single-click mIoU on
it is reported before and after training.

Writes to ``--out``: ``last.pt`` (resumable training state; re-running the same command
continues from it), ``model.pt`` (the trained model's state dict, loadable with
``--checkpoint out/model.pt`` by every other command), ``run.json`` (the settings a rerun must
share to resume) and ``train_report.json`` (with ``model.pt``'s SHA-256 under
``weights_sha256``, the images left out as unusable, each with
its reason, under ``failures``, and the annotations skipped as supplying no mask, e.g. box-only
ones, under ``skipped_annotations``, counted per reason).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: smallest mask trained on, in low-res pixels (prepare_sample's default min_area)
MIN_MASK_PIXELS = 16
#: instances per image that coco_items keeps (the largest; its default max_instances)
MAX_INSTANCES = 64


def _capped_instances(coco: Any, image_ids: list[int], skipped: list[Any]) -> int:
    """How many non-crowd instances of ``image_ids`` fall beyond coco_items' per-image cap:
    of those it does not skip before the cap (a bad ``area``, no segmentation), less those it
    skipped as undecodable or empty (``skipped``: its SkippedAnnotations; each leaves its place
    under the cap to the next largest)."""
    from ..structures.masks import crowd_flag
    from ..training.data import SKIP_BAD_SEGMENTATION, SKIP_EMPTY_MASK, annotation_area

    undecodable = Counter(
        s.item_id for s in skipped if s.reason in (SKIP_BAD_SEGMENTATION, SKIP_EMPTY_MASK)
    )
    n = 0
    for iid in image_ids:
        usable = 0
        for a in coco.loadAnns(coco.getAnnIds(imgIds=[iid])):
            if crowd_flag(a.get("iscrowd")) or a.get("segmentation") is None:
                continue
            try:
                annotation_area(a)
            except ValueError:
                continue  # skipped, and counted as such
            usable += 1
        n += max(0, usable - undecodable[f"coco/{iid}"] - MAX_INSTANCES)
    return n


def _say_skipped(train: list[Any], held_out: list[Any]) -> None:
    """Say how many annotations (SkippedAnnotation) of the training and held-out images were
    skipped, per reason, with a few examples."""
    n = len(train) + len(held_out)
    if not n:
        return
    counts: dict[str, int] = {}
    for s in train + held_out:
        counts[s.reason] = counts.get(s.reason, 0) + 1
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    print(f"{n} annotation(s) supply no mask and are skipped ({len(train)} of training, "
          f"{len(held_out)} of held-out images; {reasons}); the images' other masks are used "
          "(all listed in train_report.json), e.g.:")
    for s in (train[:3] + held_out[:3])[:3]:
        print(f"  {s.message}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a promptable model on COCO-format masks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, help="COCO/LVIS-format instances json")
    p.add_argument("--images", required=True, help="image folder of --data")
    p.add_argument(
        "--model",
        default="composer_tiny",
        help="architecture: composer_tiny, vit_b, vit_l, vit_h, vit_t, or a config name "
        "such as vit_tiny_test (default composer_tiny)",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="starting weights (file or registered name); default: the registered weights "
        "of --model (composer_tiny: packaged weights if present, else ImageNet backbone)",
    )
    p.add_argument(
        "--random-init",
        action="store_true",
        help="without --checkpoint: start from random weights instead of the registered ones "
        "(composer_tiny: ImageNet backbone, random decoder)",
    )
    p.add_argument("--out", required=True, help="output folder (checkpoints, model.pt, report)")
    p.add_argument("--steps", type=int, default=1000,
                   help="optimizer steps (one image each; default 1000)")
    p.add_argument("--time-budget-min", type=float, default=None, help="stop after N minutes")
    p.add_argument("--masks-per-image", type=int, default=16,
                   help="masks trained on per step, at most (default 16)")
    p.add_argument("--corrective", type=int, default=2,
                   help="corrective-click rounds per mask (default 2; TrainConfig's is 8)")
    p.add_argument("--lr", type=float, default=1e-4,
                   help="peak AdamW learning rate (default 1e-4; TrainConfig's is 8e-4)")
    p.add_argument(
        "--train-encoder",
        action="store_true",
        help="also train the image encoder (slow on a CPU; default: frozen, embedded once)",
    )
    p.add_argument("--val-data", default=None,
                   help="held-out COCO json (default: a split); an image also in --data (same "
                   "pixels, whatever its name) is refused")
    p.add_argument("--val-images", default=None, help="image folder of --val-data")
    p.add_argument(
        "--val-fraction", type=float, default=None,
        help="share of images held out, in [0, 1) (no --val-data; default 0.1)",
    )
    p.add_argument("--max-images", type=int, default=None, help="use the first N images only")
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N|mps",
                   help="where training runs: CUDA when torch sees a GPU, else the CPU (auto, "
                        "default), or the device named")
    p.add_argument("--seed", type=int, default=0, help="random seed, >= 0 (default 0)")
    p.set_defaults(func=run)


def build_model(name: str, checkpoint: str | None, random_init: bool) -> tuple[Any, str]:
    """(model in train-ready state, description of its starting weights).

    Raises:
        ValueError: an unknown architecture (the message lists the valid ones), or a SAM
            architecture without registered weights and neither ``checkpoint`` nor
            ``random_init``.
    """
    from ..sam.build import CONFIGS

    if name != "composer_tiny" and name not in CONFIGS:
        raise ValueError(
            f"unknown --model {name!r}; valid: {', '.join(['composer_tiny', *sorted(CONFIGS)])}"
        )
    if name == "composer_tiny":
        from ..sam.composer_tiny import PACKAGED_WEIGHTS, build_composer_tiny

        if checkpoint is None and PACKAGED_WEIGHTS.is_file() and not random_init:
            checkpoint = str(PACKAGED_WEIGHTS)
        start = checkpoint or "ImageNet backbone, random decoder"
        return build_composer_tiny(checkpoint=checkpoint, pretrained_backbone=True), start
    from ..sam.build import build_sam
    from ..segmenters import SAM_WEIGHTS

    if checkpoint is None and not random_init:
        checkpoint = SAM_WEIGHTS.get(name)
        if checkpoint is None:
            raise ValueError(
                f"--model {name} has no registered weights; pass --checkpoint FILE or --random-init"
            )
    return build_sam(name, checkpoint=checkpoint), checkpoint or "random"


def _say_unannotated(path: str, coco: Any, ids: list[int]) -> None:
    """Say how many images of the json ``path`` are not used: those without a non-crowd
    instance (``ids`` are the others). They were left out without a word."""
    n = len(coco.dataset["images"])
    if len(ids) < n:
        print(f"{n - len(ids)} of the {n} images of {path} have no non-crowd instance (no "
              "annotation, or crowd regions only) and are not used")


def _say_sizeless(sets: list[tuple[Any, list[int]]]) -> None:
    """Say how many of the images used (each set: a json's COCO and its image ids) have a
    record without ``height`` or ``width``, whose size is read from the image file."""
    sizeless = [
        f"image {iid} ({coco.imgs[iid].get('file_name')})"
        for coco, ids in sets for iid in ids
        if coco.imgs[iid].get("height") is None or coco.imgs[iid].get("width") is None
    ]
    if sizeless:
        named = ("e.g. " if len(sizeless) > 3 else "") + ", ".join(sizeless[:3])
        print(f"{len(sizeless)} image record(s) of the run have no width/height ({named}); "
              "their size is read from the image file")


def _check_disjoint(train_keys: set[str], held_out: list[tuple[str, str]]) -> None:
    """Refuse held-out images that are also training images (by their pixels, whatever their
    file names or ids): the mIoU reported as held-out would be measured on trained images.

    Args:
        train_keys: the pixel hashes (``embedding.image_hash``) of the training images.
        held_out: (item id, pixel hash) of each held-out image, in the --val-data order.

    Raises:
        ValueError: some images of ``held_out`` are in ``train_keys``; a few are named.
    """
    both = [item_id for item_id, key in held_out if key in train_keys]
    if both:
        raise ValueError(
            f"{len(both)} of the {len(held_out)} --val-data images are also in --data (e.g. "
            f"{', '.join(both[:3])}): the held-out mIoU would be measured on images trained "
            "on; remove them from one of the two"
        )


def _samples(
    items: Any, model: Any, frozen: bool, mirror: bool, kept: list[int] | None = None,
    layers: list[int] | None = None, keep: Callable[[str, str], bool] | None = None,
    with_masks: list[str] | None = None,
) -> list[Any]:
    """PreparedSamples (identity, + mirror) with cached embeddings when the encoder is frozen;
    ``kept`` (if given) gets the number of masks of each item's unmirrored sample appended,
    ``layers`` (if given) each item's number of instance masks (its layers' labels, 1..k in
    each layer: coco_items' packed layers). ``keep`` (if given) is asked
    with each item's id and pixel hash (``embedding.image_hash``) whether to build its samples;
    the images are hashed only then. ``with_masks`` (if given) gets the id of each item that
    gives a sample (a mask of the trained size). ``items`` is read one at a time (each image decoded once)
    and no item is kept: only the samples (input-size image or embedding, low-res masks) stay
    in memory, not the full-resolution images and masks."""
    from ..embedding import image_hash
    from ..training.data import Variant, prepare_sample
    from ..training.features import cache_embeddings

    img_size = int(model.image_encoder.img_size)
    low_res = int(model.prompt_encoder.mask_input_size[0])
    out: list[Any] = []
    for item in items:
        if keep is not None and not keep(item.image_id, image_hash(item.image)):
            continue
        if layers is not None:
            layers.append(sum(int(layer.max()) for layer in item.layers))
        n_before = len(out)
        for v in (Variant(), Variant(flip=True))[: 2 if mirror else 1]:
            s = prepare_sample(item, v, img_size, low_res, min_area=MIN_MASK_PIXELS)
            if kept is not None and not v.flip:
                kept.append(len(s.masks_index))
            if not len(s.masks_index):
                continue
            if frozen:
                cache_embeddings(model, [s])
            out.append(s)
        if with_masks is not None and len(out) > n_before:
            with_masks.append(item.image_id)
    return out


def _use_hint(model: str, weights: Path) -> str:
    """How to use the trained weights: a segmenter flag pair, or Python for a config name that
    no segmenter backend has (e.g. vit_tiny_test)."""
    from ..segmenters import BACKENDS

    if model in BACKENDS:
        # quoted and joined with "=", so it pastes when the folder's name has spaces or a dash
        return f"use --model {model} --checkpoint={shlex.quote(str(weights))}"
    return (
        f"no command takes --model {model}; from Python: "
        f"SamPredictor(build_sam({model!r}, checkpoint={str(weights)!r}))"
    )


#: what a training folder was started with; a rerun that resumes must match it
RUN_FILE = "run.json"


def _run_identity(args: argparse.Namespace) -> dict[str, Any]:
    """The settings a resumed run must share with the run that wrote ``last.pt`` (not
    ``--steps`` or ``--time-budget-min``: a rerun may train longer)."""

    def path(p: str | None) -> str | None:
        return None if p is None else str(Path(p).resolve())

    from ..hub.download import file_sha256

    def digest(p: str | None) -> str | None:
        """The json's SHA-256: an edited file at the same path is other data (and another
        held-out split)."""
        if p is None or not Path(p).is_file():
            return None
        return file_sha256(p)

    checkpoint = args.checkpoint  # a file by its resolved path; a registered name as given
    if checkpoint is not None and Path(checkpoint).exists():
        checkpoint = str(Path(checkpoint).resolve())
    return {
        "model": args.model, "checkpoint": checkpoint, "random_init": bool(args.random_init),
        "data": path(args.data), "data_sha256": digest(args.data), "images": path(args.images),
        "max_images": args.max_images, "val_data": path(args.val_data),
        "val_data_sha256": digest(args.val_data), "val_images": path(args.val_images),
        "val_fraction": args.val_fraction, "masks_per_image": args.masks_per_image,
        "corrective": args.corrective, "lr": args.lr, "train_encoder": bool(args.train_encoder),
        "seed": args.seed,
    }


def _check_same_run(out: Path, run_id: dict[str, Any]) -> None:
    """Refuse to resume a ``last.pt`` in ``out`` written with other data or settings."""
    last, ident = out / "last.pt", out / RUN_FILE
    if not (last.is_file() and ident.is_file()):
        return
    try:
        before = json.loads(ident.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        before = None
    if not isinstance(before, dict):
        raise ValueError(f"{ident} is unreadable; delete it to resume, or use a fresh --out")
    # a key an older run.json lacks (the jsons' digests) is not compared
    changed = sorted(k for k in before if before[k] != run_id.get(k))
    if changed:
        raise ValueError(
            f"--out {out} holds a training run (last.pt) started with other settings "
            f"({', '.join(changed)}); rerun with the same ones to resume, or use a fresh --out"
        )


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data.coco import load_coco
    from ..io.visualize import write_json
    from ..training.data import SkippedAnnotation, coco_item_ids, coco_items
    from ..training.evaluate import evaluate_samples
    from ..training.trainer import TrainConfig, Trainer

    if args.checkpoint is not None and args.random_init:
        raise ValueError("--random-init and --checkpoint conflict: start from random weights or "
                         "from the checkpoint, not both")
    if args.val_fraction is not None and args.val_data is not None:
        raise ValueError("--val-fraction splits --data; with --val-data nothing is split")
    if args.val_fraction is None:
        args.val_fraction = 0.1  # also the value earlier runs recorded in run.json
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {args.max_images}")
    if args.time_budget_min is not None and not args.time_budget_min > 0:
        raise ValueError(f"--time-budget-min must be > 0, got {args.time_budget_min}")
    if args.masks_per_image < 1:
        raise ValueError(f"--masks-per-image must be >= 1, got {args.masks_per_image}")
    if args.corrective < 0:
        raise ValueError(f"--corrective must be >= 0, got {args.corrective}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise ValueError(f"--lr must be a positive number, got {args.lr}")
    if not 0.0 <= args.val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if (args.val_data is None) != (args.val_images is None):
        raise ValueError("--val-data and --val-images go together")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    for flag, value in (("--data", args.data), ("--val-data", args.val_data)):
        if value is not None and Path(value).is_dir():
            raise ValueError(f"{flag} {value} is a folder; pass the COCO json file")
    out = Path(args.out)  # a file there is refused by the CLI before the command runs
    run_id = _run_identity(args)
    _check_same_run(out, run_id)
    from ..segmenters import resolve_device

    device = resolve_device(args.device)  # a device this machine cannot use: a one-line error
    # the device is named in the start line below, once the weights and the data are known
    # to be usable: a run that stops at a one-line error first printed "training on ..."
    torch.manual_seed(args.seed)
    model, start = build_model(args.model, args.checkpoint, args.random_init)
    model.to(device)
    frozen = not args.train_encoder
    # a damaged last.pt, or one of another model, is refused now, not after the embedding
    from ..training.checkpoint import checkpoint_file, precheck_checkpoint

    precheck_checkpoint(checkpoint_file(out), model)

    # The images are listed from the json, and read, one at a time, only to build their
    # samples: the whole dataset at full resolution never sits in memory.
    coco = load_coco(args.data, need_categories=False)
    ids = coco_item_ids(coco, args.images)
    if not ids:
        raise ValueError(f"{args.data} has no image with a non-crowd instance")
    _say_unannotated(args.data, coco, ids)
    ids = ids[: args.max_images]
    if args.val_data:
        val_coco = load_coco(args.val_data, need_categories=False)
        val_source, val_ids = val_coco, coco_item_ids(val_coco, args.val_images)
        _say_unannotated(args.val_data, val_coco, val_ids)
        train_ids = ids
    else:
        # Every k-th image is held out (spread over the dataset's order).
        n_val = int(round(len(ids) * args.val_fraction)) if len(ids) > 1 else 0
        n_val = min(n_val, len(ids) - 1)  # at least one image stays for training
        held = set(range(0, len(ids), len(ids) // n_val)[:n_val]) if n_val else set()
        val_source, val_ids = coco, [iid for i, iid in enumerate(ids) if i in held]
        train_ids = [iid for i, iid in enumerate(ids) if i not in held]
        if not n_val and args.val_fraction > 0:
            print(f"--val-fraction {args.val_fraction:g} of {len(train_ids)} image(s) holds out "
                  "none, so there is no held-out mIoU before and after; give a larger "
                  "--val-fraction (at least 2 images) or --val-data")
    val_images = args.val_images if args.val_data else args.images
    # a record without width/height takes the size of its image file (it left the image out)
    _say_sizeless([(coco, train_ids), (val_source, val_ids)])
    # the embedding of every image comes first and can take minutes: say so once the weights
    # and the json are known to be usable
    print(f"embedding {len(train_ids)} training and {len(val_ids)} held-out image(s) on "
          f"{device} ...", flush=True)
    t0 = time.perf_counter()
    kept: list[int] = []
    layers: list[int] = []
    # Each image is decoded once: its pixel hash (the held-out checks) is taken from the image
    # its samples are built from.
    train_keys: set[str] = set()
    leaked: list[str] = []
    # the images that give a sample: an image whose masks are all too small (or whose every
    # annotation is skipped) is read but not trained on or scored
    train_used: list[str] = []
    val_used: list[str] = []
    # An unusable image (missing or unreadable file, a record that cannot be read) is left
    # out and named, as eval does: the run trains on the others instead of stopping at it
    # after embedding the images before it. An annotation that supplies no mask (box-only,
    # undecodable, an area that is not a finite number >= 0) is skipped and named, and the
    # image's other masks are trained on (eval, which must not lose ground truth, still
    # refuses the image).
    failed: list[tuple[str, str]] = []
    val_failed: list[tuple[str, str]] = []
    skipped: list[SkippedAnnotation] = []
    val_skipped: list[SkippedAnnotation] = []

    def train_items() -> Any:
        return coco_items(coco, args.images, image_ids=train_ids, max_instances=MAX_INSTANCES,
                          failures=failed, pack_layers=True, skipped=skipped,
                          size_from_image=True)

    def val_items() -> Any:
        return coco_items(val_source, val_images, image_ids=val_ids, max_instances=MAX_INSTANCES,
                          failures=val_failed, pack_layers=True, skipped=val_skipped,
                          size_from_image=True)

    if args.val_data:
        # --val-data images that are also --data images (by their pixels) are refused. The
        # held-out images are read first; once a training image is found among them the run
        # will be refused, so the remaining training images are only hashed, not embedded.
        held_out: list[tuple[str, str]] = []
        held_keys: set[str] = set()
        overlap: list[str] = []  # training images that are held-out images

        def val_keep(item_id: str, key: str) -> bool:
            held_out.append((item_id, key))
            held_keys.add(key)
            return True

        def train_keep(item_id: str, key: str) -> bool:
            train_keys.add(key)
            if key in held_keys:
                overlap.append(item_id)
            return not overlap

        val = _samples(val_items(), model, frozen, mirror=False, keep=val_keep,
                       with_masks=val_used)
        train = _samples(train_items(), model, frozen, mirror=True, kept=kept, layers=layers,
                         keep=train_keep, with_masks=train_used)
        _check_disjoint(train_keys, held_out)
    else:
        # The split holds out json records; the same picture listed twice (two ids) would be
        # trained on and "held out" at once: such held-out images are left out, and said so.
        def train_keep(item_id: str, key: str) -> bool:
            train_keys.add(key)
            return True

        def val_keep(item_id: str, key: str) -> bool:
            if key in train_keys:
                leaked.append(item_id)
                return False
            return True

        train = _samples(train_items(), model, frozen, mirror=True, kept=kept, layers=layers,
                         keep=train_keep, with_masks=train_used)
        val = _samples(val_items(), model, frozen, mirror=False, keep=val_keep,
                       with_masks=val_used)
    if leaked:
        print(f"{len(leaked)} held-out image(s) are also training images under another id "
              f"(e.g. {', '.join(leaked[:3])}); they are left out of the held-out mIoU")
        left_out = set(leaked)  # their skipped annotations are not the held-out set's
        val_skipped[:] = [s for s in val_skipped if s.item_id not in left_out]
    n_train = len(train_ids) - len(failed)
    n_val = len(val_ids) - len(leaked) - len(val_failed)
    if failed or val_failed:
        print(f"{len(failed)} training and {len(val_failed)} held-out image(s) could not be "
              "used and are left out (all listed in train_report.json), e.g.:")
        for _, message in (failed[:3] + val_failed[:3])[:3]:
            print(f"  {message}")
    _say_skipped(skipped, val_skipped)
    if not n_train:
        raise ValueError(f"none of the {len(train_ids)} training images could be used (e.g. "
                         f"{failed[0][1]})")
    failed_ids = {int(item_id.split("/", 1)[1]) for item_id, _ in failed}
    capped = _capped_instances(
        coco, [iid for iid in train_ids if iid not in failed_ids], skipped
    )
    if capped:
        print(f"{capped} training mask(s) beyond the {MAX_INSTANCES} largest of their image are "
              "not used")
    # the held-out images are read under the same cap: their masks beyond it are not scored
    val_left_out = {item_id for item_id, _ in val_failed} | set(leaked)
    val_capped = _capped_instances(
        val_source, [iid for iid in val_ids if f"coco/{iid}" not in val_left_out], val_skipped
    )
    if val_capped:
        print(f"{val_capped} held-out mask(s) beyond the {MAX_INSTANCES} largest of their image "
              "are not scored in the held-out mIoU")
    low_res = int(model.prompt_encoder.mask_input_size[0])
    size_rule = (
        f"at least {MIN_MASK_PIXELS} of the {low_res} x {low_res} low-res pixels of the padded "
        "square input and at most 95 % of the image"
    )
    if not train:
        raise ValueError(f"no usable training mask (a mask must cover {size_rule})")
    # images read but giving no sample are counted apart: "8 training images (14 samples)"
    # when one of them had only masks too small said nothing of it
    trained = f"{n_train} training images"
    if len(train_used) < n_train:
        trained += f", {len(train_used)} with a mask to train on"
    scored = f"{n_val} held out"
    if val and len(val_used) < n_val:
        scored += f", {len(val_used)} with a mask to score"
    print(
        f"model {args.model} from {start}, on {device}; {trained} ({len(train)} samples), "
        f"{scored}; embedded in {time.perf_counter() - t0:.1f} s"
    )
    if n_val and not val:
        # said: a held-out set of masks too small (or none) gave no mIoU lines, unexplained
        print(f"none of the {n_val} held-out image(s) has a mask to score (a mask must cover "
              f"{size_rule}), so there is no held-out mIoU before and after")
    n_masks = sum(layers)
    if sum(kept) < n_masks:
        print(
            f"{sum(kept)} of the {n_masks} training masks are trained on; the others are "
            f"too small or too large (a mask must cover {size_rule})"
        )
    out.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(
        steps=args.steps,
        time_budget_s=args.time_budget_min * 60 if args.time_budget_min else None,
        masks_per_image=args.masks_per_image,
        num_corrective=args.corrective,
        no_point_rounds=1,
        lr=args.lr,
        warmup_steps=min(250, max(1, args.steps // 10)),
        warmup_fraction=0.1,  # a time budget ends the warm-up at a tenth of it too
        freeze=("image_encoder",) if frozen else (),
        checkpoint_dir=str(out),
        checkpoint_every=max(1, min(250, args.steps // 4)),
        seed=args.seed,
    )
    before = evaluate_samples(model, val) if val else None
    trainer = Trainer(model, config, train)
    if trainer.resume():
        print(f"resumed from {trainer.checkpoint_path()} at step {trainer.step}")
    # only now, with last.pt (if any) known to be this model's: the folder's settings
    write_json(out / RUN_FILE, run_id, indent=2)
    history = trainer.fit(progress=True) if not trainer.done() else trainer.history
    if trainer.step > args.steps:
        print(f"{args.out} already holds {trainer.step} trained steps, more than --steps "
              f"{args.steps}; its weights are those of step {trainer.step} (use a fresh --out "
              "for a shorter run)")
    after = evaluate_samples(model, val) if val else None
    from ..hub.checkpoint import save_state_file
    from ..hub.download import file_sha256

    weights = out / "model.pt"
    save_state_file({k: v.detach().cpu() for k, v in model.state_dict().items()}, weights)
    tail = history[-min(50, len(history)) :]
    report = {
        "model": args.model,
        "start_weights": str(start),
        "train_images": n_train,
        # of those, the images that gave a sample (a mask of the trained size)
        "train_images_with_masks": len(train_used),
        "train_samples": len(train),
        "val_images": n_val,
        "val_images_with_masks": len(val_used),
        "steps": trainer.step,
        "seconds": trainer.elapsed,
        "final_loss": sum(h["loss"] for h in tail) / max(len(tail), 1),
        "val_single_click_miou_before": None if before is None else before.miou_top1,
        "val_single_click_miou_after": None if after is None else after.miou_top1,
        "val_oracle_miou_before": None if before is None else before.miou_oracle,
        "val_oracle_miou_after": None if after is None else after.miou_oracle,
        "weights": str(weights),
        # the file's digest as `sha256sum` prints it: a copy of the weights can be checked
        "weights_sha256": file_sha256(weights),
        "failures": [
            {"image_id": item_id, "held_out": held, "error": message}
            for held, group in ((False, failed), (True, val_failed))
            for item_id, message in group
        ],
        "skipped_annotations_by_reason": {
            reason: sum(1 for s in skipped + val_skipped if s.reason == reason)
            for reason in sorted({s.reason for s in skipped + val_skipped})
        },
        "skipped_annotations": [
            {"image_id": s.item_id, "annotation_id": s.annotation_id, "held_out": held,
             "reason": s.reason, "error": s.message}
            for held, group in ((False, skipped), (True, val_skipped))
            for s in group
        ],
    }
    # atomically, as run.json and the weights: a crash or Ctrl-C mid-write leaves the
    # previous report whole (it was written in place, and could be left cut off)
    write_json(out / "train_report.json", report, indent=2)
    print(
        f"{trainer.step} steps in {trainer.elapsed / 60:.1f} min, final loss {report['final_loss']:.4f}"
    )
    if before is not None and after is not None:
        print(
            f"held-out single-click mIoU (low-res frame, {after.n} masks): top-1 "
            f"{before.miou_top1:.3f} -> {after.miou_top1:.3f}, oracle {before.miou_oracle:.3f} "
            f"-> {after.miou_oracle:.3f}"
        )
    print(f"weights: {weights} ({_use_hint(args.model, weights)})")
    return 0
