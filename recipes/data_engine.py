"""The SAM data engine's fully automatic stage, then retraining, on composer_tiny.

Command (after ``recipes/train_default.py``; ~35 min on one core of the 2-core CPU)::

    OMP_NUM_THREADS=1 python recipes/data_engine.py --weights composer/weights/composer_tiny.pt \\
        --work-dir ~/.cache/sam-composer/data_engine

Stages (each resumes: the annotation log, the feature cache, the checkpoints and the evaluations
of the same weights on the same held-out sets are reused; an image and its masks are read only
for cache entries still missing):
  1. automatic annotation (``tasks.everything.annotate_folder``): the model segments every
     "unlabelled" image with a point grid, keeping masks by predicted IoU, stability and box
     NMS, small regions cleaned (SA-1B's fully automatic stage); written as COCO json;
  2. retraining: the model is fine-tuned on those masks mixed with the human-labelled masks;
     a control run fine-tunes for the same number of steps on the human masks alone, so the
     effect of the automatic masks is separated from the effect of more training;
  3. evaluation on held-out data (single centre click, then corrective clicks: GrabCut and
     Berkeley, which no stage has seen): start weights, control, data engine.

Unlabelled images: by default BSDS500 train+val minus the Berkeley/GrabCut images (their human
labels are not read by stage 1); ``--images DIR`` takes any folder instead (your own photos;
files that cannot be read are listed as failures, the others annotated). Human masks: by default
the BSDS500 train+val regions of ``recipes/train_default.py``; ``--labelled JSON
--labelled-images DIR`` takes your own COCO instances json instead. Evaluation is always on
GrabCut and Berkeley (under ``SAM_COMPOSER_DATA``). Prints a table and writes
``<work-dir>/data_engine.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import sys
import time
import zlib
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import check_out_dir, check_same_run, file_digest, one_line_errors  # noqa: E402
from train_default import CACHE_LOW_RES, cache_name, evaluate  # noqa: E402

from composer.automatic import AmgConfig  # noqa: E402
from composer.hub.checkpoint import save_state_file  # noqa: E402
from composer.io.records import log_path  # noqa: E402
from composer.sam.composer_tiny import (  # noqa: E402
    PACKAGED_WEIGHTS,
    ComposerTinyConfig,
    build_composer_tiny,
)
from composer.segmenters import load_segmenter  # noqa: E402
from composer.training.data import (  # noqa: E402
    ItemRef,
    bsds_ids,
    bsds_item_refs,
    coco_item_refs,
    evaluation_bsds_ids,
    make_variants,
)
from composer.training.features import FeatureCache  # noqa: E402
from composer.training.losses import LossWeights  # noqa: E402
from composer.training.trainer import TrainConfig, Trainer  # noqa: E402
from tasks.everything import annotate_folder  # noqa: E402

#: corrective clicks of the held-out evaluation (``evaluate``'s protocol; the verdict names it)
EVAL_MAX_CLICKS = 5


class _NoItemTracebacks(logging.Filter):
    """Drops annotate_folder's INFO traceback of a failed image (``sam-composer`` shows it with
    -v only): this recipe logs at INFO, so each unreadable photo of a user's folder printed a
    traceback of some twenty lines after its one WARNING line, which reads as a crash.
    ``SAM_COMPOSER_TRACEBACK=1`` keeps them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno == logging.INFO
            and isinstance(record.msg, str)
            and record.msg.startswith("annotate_folder: ")
            and record.msg.endswith(" failed:\n%s")
        )


def check_evaluation_data() -> None:
    """The held-out sets (GrabCut, Berkeley) are there: checked before the stages that take
    minutes, which a user's own --images and --labelled run without reading them (a missing
    set was found only after the automatic stage and the feature caches)."""
    from composer.data.paths import dataset_dir

    for name in ("grabcut", "berkeley"):
        dataset_dir(name)  # ValueError naming the path and SAM_COMPOSER_DATA


def unlabelled_folder(work: Path) -> Path:
    """A folder of links to BSDS500 train+val images minus the evaluation images."""
    from composer.data.paths import dataset_dir

    base = dataset_dir("bsds500")
    folder = work / "unlabelled"
    folder.mkdir(parents=True, exist_ok=True)
    for split, image_id in bsds_ids(("train", "val"), exclude=evaluation_bsds_ids()):
        link = folder / f"{image_id}.jpg"
        if not link.exists():
            link.symlink_to(base / "images" / split / f"{image_id}.jpg")
    return folder


def automatic_stage(args: argparse.Namespace, images: Path) -> Path:
    out = args.work_dir / "automatic.json"
    segmenter = load_segmenter("composer_tiny", checkpoint=str(args.weights))
    # The model's own quality thresholds (chosen on BSDS val by recipes/calibrate_amg.py)
    # unless given (None): SAM's 0.88 / 0.95 keep almost nothing of composer_tiny's masks.
    config = AmgConfig.for_segmenter(
        segmenter,
        AmgConfig(
            points_per_side=args.points_per_side,
            box_nms_thresh=0.7,
            min_mask_region_area=100,
            max_mask_area_fraction=0.95,
        ),
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_thresh,
    )
    logging.info(
        "automatic stage thresholds: predicted IoU > %.2f, stability >= %.2f",
        config.pred_iou_thresh,
        config.stability_score_thresh,
    )
    t = time.perf_counter()
    try:
        doc = annotate_folder(images, segmenter, out, config=config, limit=args.limit)
    except ValueError as exc:
        log = log_path(out)
        if not str(exc).startswith(str(log)):
            raise
        # the folder log's advice names the CLI's --out / --overwrite, which this recipe lacks
        raise ValueError(
            f"{exc}; with this recipe: delete {log} to annotate every image afresh, or use "
            "another --work-dir"
        ) from None
    n_img, n_ann = len(doc["images"]), len(doc["annotations"])
    logging.info(
        "automatic stage: %d images, %d masks (%.1f per image), %d failures, %.0f s",
        n_img,
        n_ann,
        n_ann / max(n_img, 1),
        len(doc["failures"]),
        time.perf_counter() - t,
    )
    return out


class _Unreadable(Exception):
    """An item that cannot be read (its image or its labels), as raised by its ``load``."""


def _load_or_tag(ref: ItemRef):
    try:
        return ref.load()
    except (ValueError, OSError) as exc:
        raise _Unreadable(str(exc)) from exc


def cached_samples(
    model, name: str, items, n_variants: int, low: int, min_area: int,
    failures: list[dict] | None = None,
):
    """The samples of ``items`` (ItemRefs: an item is read only where one of its cache
    entries is missing, so a rerun reads no image or ground truth). With ``failures`` an
    item that cannot be read (a missing or corrupt image of a user's json) is left out with
    one WARNING line and listed there ({"image_id", "error"}); without, it raises."""
    cache = FeatureCache(name)
    paths: list[Path] = []
    for ref in items:
        tagged = ItemRef(ref.image_id, partial(_load_or_tag, ref))
        try:
            paths += cache.build(
                model,
                [tagged],
                # Same per-image seeds as recipes/train_default.py, so its cache entries are
                # reused.
                lambda it: make_variants(n_variants, seed=zlib.crc32(it.image_id.encode())),
                low_res=CACHE_LOW_RES,
            )
        except _Unreadable as exc:
            if failures is None:
                raise ValueError(str(exc)) from None
            logging.warning("left out %s: %s", ref.image_id, exc)
            failures.append({"image_id": ref.image_id, "error": str(exc)})
    return cache.load_all(paths, min_area=min_area, low_res=low)


def annotations_digest(path: str | Path) -> str:
    """The automatic stage's masks and images, digested (10 hex digits): not the file's bytes,
    as annotate_folder rewrites ``info.date_created`` on every run and a file digest named a new
    feature cache (rebuilt, the old one left) at each rerun."""
    doc = json.loads(Path(path).read_text())
    content = json.dumps([doc.get("images"), doc.get("annotations")], sort_keys=True)
    return hashlib.sha1(content.encode()).hexdigest()[:10]


def labelled_digest(ann_file: Path, image_dir: Path) -> str:
    """``--labelled``'s masks and images (:func:`annotations_digest`) and its image folder."""
    content = f"{annotations_digest(ann_file)}|{Path(image_dir).resolve()}"
    return hashlib.sha1(content.encode()).hexdigest()[:10]


def finetune(
    args,
    samples,
    tag: str,
    weights_sha256: str | None,
    data_digest: str | None = None,
    labelled: str | None = None,
) -> torch.nn.Module:
    """Fine-tune the start weights on ``samples`` into ``<work-dir>/<tag>`` (resumable).
    ``weights_sha256``: ``file_digest(args.weights)``, taken once per run by the caller (the
    two runs share it; a large checkpoint was read once for each)."""
    # A rerun into the same --work-dir resumes this run only with the same start weights,
    # learning rate and data (--steps may grow; a --labelled json's image ids may repeat
    # another's, so it is named by its digest); anything else is refused, not reported stale.
    check_same_run(
        args.work_dir / tag,
        {"weights_sha256": weights_sha256, "lr": args.lr,
         "samples": [s.image_id for s in samples], "automatic_json": data_digest,
         # None (absent from runs before --labelled) for the BSDS500 masks
         "labelled": labelled},
    )
    model = build_composer_tiny(checkpoint=str(args.weights))
    config = TrainConfig(
        steps=args.steps,
        masks_per_image=16,
        num_corrective=1,
        no_point_rounds=1,
        lr=args.lr,
        warmup_steps=50,
        loss=LossWeights(focal=2.0),
        multimask_prob=0.5,
        freeze=("image_encoder.backbone",),
        checkpoint_dir=str(args.work_dir / tag),
        checkpoint_every=250,
        seed=1,
    )
    trainer = Trainer(model, config, samples)
    trainer.resume()
    if trainer.step > args.steps:
        # a finished run is not trained again, and the comparison (control against engine,
        # "both runs N steps") would set runs of other lengths side by side
        raise ValueError(
            f"{args.work_dir / tag} holds a run of {trainer.step} steps, more than --steps "
            f"{args.steps}; rerun with --steps {trainer.step} or more, or use another --work-dir"
        )
    if not trainer.done():
        trainer.fit(progress=True)
    logging.info("%s: %d steps, %.1f min", tag, trainer.step, trainer.elapsed / 60)
    return model.eval()


def evaluation_setup() -> dict:
    """What an evaluation measured besides the weights: the held-out sets' folders (under
    ``SAM_COMPOSER_DATA``, resolved) and the click protocol of :func:`evaluate`."""
    from composer.data.paths import data_root

    sets = {name: str((data_root() / name).resolve()) for name in ("grabcut", "berkeley")}
    return {"sets": sets, "max_clicks": EVAL_MAX_CLICKS}


def evaluated(model, out_json: Path, weights_digest: str | None) -> dict:
    """``evaluate(model(), out_json)``, or what ``out_json`` holds when it was written for the
    same weights (``weights_digest``, recorded in it as ``evaluated_weights``) on the same
    held-out sets with the same clicks (:func:`evaluation_setup`, as ``evaluated_on``): a
    rerun after an interruption evaluated every model again (minutes each) before it went
    on, and a rerun with another ``SAM_COMPOSER_DATA`` must not report the old sets' scores."""
    setup = evaluation_setup()
    if weights_digest is not None and out_json.is_file():
        try:
            done = json.loads(out_json.read_text())
        except ValueError:
            done = None
        if (
            isinstance(done, dict)
            and done.get("evaluated_weights") == weights_digest
            and done.get("evaluated_on") == setup
        ):
            logging.info("%s: evaluated earlier (same weights and sets), reused", out_json)
            return done
    results = evaluate(model(), out_json, max_clicks=EVAL_MAX_CLICKS)
    if weights_digest is not None:
        results = {**results, "evaluated_weights": weights_digest, "evaluated_on": setup}
        out_json.write_text(json.dumps(results, indent=2))
    return results


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", type=Path, default=PACKAGED_WEIGHTS)
    parser.add_argument(
        "--work-dir", type=Path, default=Path.home() / ".cache/sam-composer/data_engine"
    )
    parser.add_argument("--images", type=Path, default=None, help="unlabelled images folder")
    parser.add_argument(
        "--labelled",
        type=Path,
        default=None,
        metavar="JSON",
        help="human-labelled masks: a COCO instances json (with --labelled-images); "
        "default: the BSDS500 train+val regions",
    )
    parser.add_argument(
        "--labelled-images", type=Path, default=None, metavar="DIR",
        help="image folder of --labelled",
    )
    parser.add_argument("--limit", type=int, default=None, help="first N unlabelled images")
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument(
        "--pred-iou-thresh",
        type=float,
        default=None,
        help="default: the model's calibrated value (composer_tiny: AMG_THRESHOLDS)",
    )
    parser.add_argument(
        "--stability-thresh",
        type=float,
        default=None,
        help="default: the model's calibrated value (composer_tiny: AMG_THRESHOLDS)",
    )
    parser.add_argument("--steps", type=int, default=1500, help="fine-tuning steps per run")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    # Numbers the fine-tuning would refuse (or train NaN with) only after the automatic stage.
    for flag, value in (("--steps", args.steps), ("--points-per-side", args.points_per_side),
                        ("--threads", args.threads), ("--limit", args.limit)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        parser.error(f"--lr must be a positive number, got {args.lr}")
    if args.images is not None and not args.images.is_dir():
        parser.error(f"--images {args.images} is not a folder")
    if (args.labelled is None) != (args.labelled_images is None):
        parser.error("--labelled and --labelled-images go together")
    if args.labelled is not None and not args.labelled.is_file():
        parser.error(f"--labelled {args.labelled} is not a file")
    if args.labelled_images is not None and not args.labelled_images.is_dir():
        parser.error(f"--labelled-images {args.labelled_images} is not a folder")
    check_out_dir(parser, args.work_dir, "--work-dir")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not os.environ.get("SAM_COMPOSER_TRACEBACK"):
        item_log = logging.getLogger(annotate_folder.__module__)
        if not any(isinstance(f, _NoItemTracebacks) for f in item_log.filters):
            item_log.addFilter(_NoItemTracebacks())
    torch.set_num_threads(args.threads)
    if not Path(args.weights).is_file():
        raise ValueError(f"no weights at {args.weights}; run recipes/train_default.py first")
    check_evaluation_data()
    args.work_dir.mkdir(parents=True, exist_ok=True)

    images = args.images or unlabelled_folder(args.work_dir)
    auto_json = automatic_stage(args, images)

    low = ComposerTinyConfig().low_res_size
    model = build_composer_tiny(checkpoint=str(args.weights))
    # caches named by the backbone: a fine-tuned one's features are not the ImageNet one's
    if args.labelled is None:
        human_refs = bsds_item_refs(("train", "val"), exclude=evaluation_bsds_ids())
        human_cache, human_digest = cache_name(model), None
    else:
        # named by the masks and the image folder: entries are keyed by "coco/<image id>",
        # which another json (or folder) reuses for other images
        human_digest = labelled_digest(args.labelled, args.labelled_images)
        human_refs = coco_item_refs(args.labelled, args.labelled_images)
        human_cache = cache_name(model, f"labelled-{human_digest}")
    # a --labelled image that cannot be read is left out (named), as `sam-composer train` does
    unreadable: list[dict] = []
    human = cached_samples(
        model, human_cache, human_refs, 4, low, min_area=200,
        failures=unreadable if args.labelled is not None else None,
    )
    digest = annotations_digest(auto_json)
    pseudo = cached_samples(
        model, cache_name(model, f"engine-{digest}"), coco_item_refs(auto_json, images), 2, low,
        min_area=50,
    )
    logging.info("human samples %d, automatic samples %d", len(human), len(pseudo))
    if not human:
        raise ValueError(
            f"no usable human-labelled mask in {args.labelled} "
            f"({len(unreadable)} images could not be read)"
        )
    if not pseudo:
        raise SystemExit("the automatic stage produced no usable mask; lower the thresholds")

    weights_sha256 = file_digest(args.weights)
    results = {
        "start": evaluated(
            lambda: build_composer_tiny(checkpoint=str(args.weights)),
            args.work_dir / "eval_start.json",
            weights_sha256,
        )
    }
    control = finetune(args, human, "control_human_only", weights_sha256, None, human_digest)
    results["control_human_only"] = evaluated(
        lambda: control, args.work_dir / "eval_control.json",
        file_digest(args.work_dir / "control_human_only" / "last.pt"),
    )
    engine = finetune(
        args, human + pseudo, "engine_human_plus_automatic", weights_sha256, digest, human_digest
    )
    results["engine_human_plus_automatic"] = evaluated(
        lambda: engine, args.work_dir / "eval_engine.json",
        file_digest(args.work_dir / "engine_human_plus_automatic" / "last.pt"),
    )
    engine_file = save_state_file(engine.state_dict(), args.work_dir / "engine_model.pt")
    logging.info("engine weights: %s (sha256 %s)", engine_file, file_digest(engine_file))

    rows = []
    for name, r in results.items():
        rows.append(
            (
                name,
                r["GrabCut"]["points/mIoU@1"],
                r["GrabCut"]["points/mIoU@5"],
                r["Berkeley"]["points/mIoU@1"],
                r["Berkeley"]["points/mIoU@5"],
            )
        )
    print(f"{'weights':<30} GrabCut@1 GrabCut@5 Berkeley@1 Berkeley@5")
    for row in rows:
        print(f"{row[0]:<30} {row[1]:9.3f} {row[2]:9.3f} {row[3]:10.3f} {row[4]:10.3f}")
    summary = {
        "automatic_json": str(auto_json),
        "labelled": str(args.labelled) if args.labelled else "BSDS500 train+val regions",
        "human_samples": len(human),
        "labelled_failures": unreadable,
        "automatic_samples": len(pseudo),
        "steps_per_run": args.steps,
        "results": {
            r[0]: dict(
                zip(("grabcut@1", "grabcut@5", "berkeley@1", "berkeley@5"), r[1:], strict=True)
            )
            for r in rows
        },
    }
    eng, ctl = rows[2], rows[1]
    eng_sum, ctl_sum = sum(eng[1:]), sum(ctl[1:])
    summary["engine_improves_over_control"] = bool(eng_sum > ctl_sum)
    n_masks = {name: int(results["start"][name]["points/n_masks"]) for name in ("GrabCut", "Berkeley")}
    measure = (
        f"sum of the four held-out mIoU columns (GrabCut, {n_masks['GrabCut']} masks, and "
        f"Berkeley, {n_masks['Berkeley']}: mIoU after the first (centre) click and after 5 "
        f"clicks in all), neither set seen by any stage; both runs {args.steps} steps from the "
        f"same weights, one seed each"
    )
    summary["comparison"] = {
        "measure": measure,
        "engine_human_plus_automatic": round(eng_sum, 4),
        "control_human_only": round(ctl_sum, 4),
        "difference": round(eng_sum - ctl_sum, 4),
    }
    (args.work_dir / "data_engine.json").write_text(json.dumps(summary, indent=2))
    print(
        "automatic masks "
        + ("improved" if summary["engine_improves_over_control"] else "did not improve")
        + f" the held-out mIoU over the human-only control: {eng_sum:.3f} against "
        + f"{ctl_sum:.3f} ({eng_sum - ctl_sum:+.3f}), the {measure}"
    )
    print(f"written: {args.work_dir / 'data_engine.json'}")

if __name__ == "__main__":
    main()
