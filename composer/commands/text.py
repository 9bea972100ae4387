"""``sam-composer text IMAGE "a red car" --out DIR``: masks of what a text prompt names."""

from __future__ import annotations

import argparse
import dataclasses
import stat
from pathlib import Path
from typing import Any

from .._tasks_import import tasks_import
from .common import (
    add_model_args,
    add_overwrite_arg,
    add_worker_args,
    describe,
    load_model,
    parse_zoom_small,
    zoom_small_setting,
)
from .instances import (
    EXIT_HELP,
    OUT_HELP,
    ImageFn,
    add_detector_args,
    check_slice_args,
    load_detector_from_args,
    run_folder_command,
    write_result,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "text",
        help="segment the objects a text prompt names",
        description="detector strategy (default): the prompt is matched to the "
        "detector's classes and their boxes are segmented; clip "
        "strategy: mask proposals ranked by an open_clip model. Flags of the other strategy "
        "are refused, not ignored. " + EXIT_HELP,
    )
    p.add_argument("input", help="image file or folder of images")
    p.add_argument("prompt", help='what to segment, e.g. "a red car"')
    add_model_args(p)
    p.add_argument("--strategy", choices=("detector", "clip"), default="detector",
                   help="detector (default): segment the detector's boxes of the class the "
                   "prompt names; clip: rank automatic-mask proposals with open_clip")
    add_detector_args(p)
    p.add_argument("--clip-arch", default=None,
                   help="open_clip architecture (clip strategy; default ViT-B-16)")
    p.add_argument(
        "--clip-weights",
        default=None,
        help="open_clip weights file (clip strategy; required unless --download)",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="clip strategy: let open_clip fetch --clip-weights given as a pretrained tag",
    )
    p.add_argument(
        "--max-masks",
        type=int,
        default=None,
        help="masks to return (default: the class's boxes, at most 100 / the best 3 proposals)",
    )
    p.add_argument("--refine", action="store_true", help="refinement pass on the masks")
    p.add_argument(
        "--zoom-small", default="auto", metavar="auto|off|FRACTION",
        help="detector strategy: boxes smaller than this fraction of the image's longer side "
        "are segmented again in a crop (auto, default: the model's recommendation)",
    )
    p.add_argument("--limit", type=int, default=None, help="folder mode: only the first N images")
    p.add_argument("--out", required=True, help=OUT_HELP)
    add_overwrite_arg(p)
    add_worker_args(p)
    # unset (None) until run(): the clip strategy refuses these flags when they are given
    p.set_defaults(func=run, score_threshold=None, zoom_small=None)


#: How a prompt matches a class by its names and synonyms alone, before a sentence encoder is
#: asked (``composer.models.text.Match.method``).
_LEXICAL = ("exact", "synonym", "head noun")


class ResolvedPrompt:
    """A text matcher that knows one prompt's match already: folder-mode workers get the main
    process's match of the prompt (the same for every image), so none loads a sentence
    encoder."""

    encoder = None

    def __init__(self, prompt: str, match: Any, class_names: dict[int, str]) -> None:
        self.prompt, self._match, self.class_names = prompt, match, class_names

    def match(self, prompt: str) -> Any:
        if prompt != self.prompt:
            raise ValueError(f"this matcher knows only the prompt {self.prompt!r}")
        return self._match


def _file_stamp(path: str | None) -> tuple[str, int, int] | None:
    """(resolved path, size, mtime_ns) of a weights file, or None where ``path`` is no file
    (a pretrained tag): what tells a worker that the file the main process hashed is
    unchanged."""
    if path is None:
        return None
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return str(p.resolve()), st.st_size, st.st_mtime_ns


def build_processor(args: argparse.Namespace) -> tuple[ImageFn, list[str]]:
    """The models of ``args`` (segmenter, detector and text matcher, or CLIP) and the
    per-image function on them.

    The detector strategy matches the prompt to a class once and records the match in
    ``args.prompt_match``, where the workers of folder mode (built from a copy of ``args``)
    find it instead of loading the sentence encoder. Likewise the clip strategy records the
    weights file's SHA-256 (part of the CLIP model id) in ``args.clip_sha256``, with the
    file's path, size and modification time, so the workers do not read a multi-GB file again
    to hash it (a file changed since is hashed again).

    What decides the outputs is recorded in ``args.run_settings`` (the folder run's settings):
    the prompt, the segmenter's model id (weights fingerprint) and mask settings, the detector
    (id, score floor), text matcher and what the prompt matched (``prompt_match``: class, id
    and method, or None) or the CLIP model, and the task config. The text matcher is left
    out of the comparison with an earlier run (``args.run_settings_dropped``) when the prompt
    matched by a class name or synonym, before any sentence encoder is asked; the recorded
    match is still compared, and a log written before it was recorded resumes on such a
    match (``args.run_settings_aliases``), not on an encoder's.
    """
    import numpy as np

    with tasks_import():
        from tasks.base import TaskContext
        from tasks.text_to_mask import TextConfig, TextToMaskTask

    from ..embedding import EmbeddingCache
    from ..io.image import load_image
    from ..runner.records import NOT_RECORDED, segmenter_settings

    seg = load_model(args)
    header = [describe(seg)]
    dropped: list[tuple[str, ...]] = []
    aliases: dict[tuple[str, ...], list[Any]] = {}
    if args.strategy == "detector":
        detector = load_detector_from_args(args)
        header.append(f"detector: {detector.model_id}")
        cfg = TextConfig(
            strategy="detector",
            score_threshold=args.score_threshold,
            refine=args.refine,
            max_masks=args.max_masks or 100,
            zoom_small=parse_zoom_small(args.zoom_small),
        )
        resolved = getattr(args, "prompt_match", None)
        matcher = None if resolved is None else ResolvedPrompt(*resolved)
        task = TextToMaskTask(seg, cfg, detector=detector, matcher=matcher)
        if resolved is None:
            assert task.matcher is not None
            args.prompt_match = (args.prompt, task.matcher.match(args.prompt),
                                 dict(task.matcher.class_names))
        encoder = getattr(task.matcher, "encoder", None)
        matcher_id = getattr(encoder, "model_id", "names and synonyms only")
        header.append(f"text matcher: {matcher_id}")
        match = args.prompt_match[1]
        if match is not None and match.method in _LEXICAL:
            # matched before any sentence encoder is asked: a run with another one (or none)
            # matches the same class (the recorded match, compared), so resumes
            dropped.append(("text_matcher",))
            # logs written before the match was recorded: resumed on the lexical match alone
            aliases[("prompt_match",)] = [NOT_RECORDED]
        models: dict[str, Any] = {
            "detector": {"model_id": detector.model_id, "score_threshold": args.score_threshold},
            "text_matcher": matcher_id,
            # what the prompt matched decides the outputs: compared, so a release whose class
            # names or synonyms match the prompt otherwise does not resume an earlier run
            "prompt_match": None if match is None else {
                "matched_class": match.name, "matched_id": int(match.class_id),
                "match_method": match.method,
            },
        }
    else:
        from ..models.clip import ClipModel

        if args.clip_weights is None:
            raise ValueError(
                "the clip strategy needs --clip-weights (a local open_clip weights file)"
            )
        stamp = _file_stamp(args.clip_weights)
        known = getattr(args, "clip_sha256", None)
        digest = known[1] if known is not None and stamp is not None and known[0] == stamp \
            else None
        clip = ClipModel.load(args.clip_arch, args.clip_weights, download=args.download,
                              sha256=digest)
        if clip.weights_sha256 is not None and stamp is not None:
            args.clip_sha256 = (stamp, clip.weights_sha256)
        header.append(f"clip: {clip.model_id}")
        cfg = TextConfig(strategy="clip", refine=args.refine, max_masks=args.max_masks or 3)
        task = TextToMaskTask(seg, cfg, clip=clip)
        models = {"clip": clip.model_id}
    config = dataclasses.asdict(cfg)
    for key in ("clip_batch", "cache_images"):  # speed and memory, not outputs
        config.pop(key)
    # the proposal thresholds as they resolve (None: the segmenter's recommended ones); logs
    # written before they could be None recorded SAM's 0.7 / 0.8, which still resume where
    # they are what the thresholds resolve to, or where nothing uses them (detector strategy)
    amg = task.proposal_config()
    for key, old_default in (("pred_iou_thresh", 0.7), ("stability_score_thresh", 0.8)):
        config[key] = float(getattr(amg, key))
        if cfg.strategy == "detector" or config[key] == old_default:
            aliases[("config", key)] = [old_default, None]
    if cfg.strategy == "detector":
        config["zoom_small"], spellings = zoom_small_setting(seg, cfg.zoom_small)
        aliases[("config", "zoom_small")] = spellings
    args.run_settings_aliases = aliases
    args.run_settings_dropped = dropped
    args.run_settings = {"prompt": args.prompt, "model_id": seg.model_id,
                         "segmenter": segmenter_settings(seg), **models, "config": config}
    cache = EmbeddingCache()
    out = Path(args.out)

    def one(path: Path, stem: str) -> dict[str, Any]:
        cache.clear()  # each image comes once: the last one's embeddings would only fill memory
        image = load_image(path)
        dets = task(TaskContext(image, path.stem, cache), args.prompt)
        if "matched_class" in dets.meta:
            print(
                f"{path.name}: prompt {args.prompt!r} -> class {dets.meta['matched_class']!r} "
                f"({dets.meta['match_method']})"
            )
        if dets.labels is None:  # open vocabulary: the prompt is the class
            dets.extras["class_name"] = np.array([args.prompt] * len(dets), dtype=object)
        written = write_result(dets, image, out, stem, image_file=path.name,
                               owned=Path(args.input).is_dir())
        if len(dets) == 0:
            print(f"{path.name}: {dets.meta.get('message', 'nothing found')}")
        else:
            shown = [] if dets.scores is None else dets.scores[:5].tolist()
            scores = ", ".join(f"{s:.2f}" for s in shown)
            print(f"{path.name}: {len(dets)} masks (scores {scores}) -> {written['overlay']}, "
                  f"{written['json']}")
        return {"count": len(dets), "json": written["json"], "overlay": written["overlay"]}

    return one, header


def run(args: argparse.Namespace) -> int:
    if not args.prompt.strip():
        raise ValueError("the prompt is empty")
    if args.max_masks is not None and args.max_masks < 1:  # 0 fell back to the default
        raise ValueError(f"--max-masks must be >= 1, got {args.max_masks}")
    if args.strategy == "detector":
        if args.score_threshold is None:
            args.score_threshold = 0.3
        if args.zoom_small is None:
            args.zoom_small = "auto"
        check_slice_args(args)  # bad values fail before the models load
        parse_zoom_small(args.zoom_small)
        for flag, given in (("--clip-arch", args.clip_arch is not None),
                            ("--clip-weights", args.clip_weights is not None),
                            ("--download", args.download)):
            if given:  # the detector strategy loads no CLIP model: the flag would be ignored
                raise ValueError(f"{flag} needs --strategy clip")
    else:
        if args.clip_arch is None:
            args.clip_arch = "ViT-B-16"
        for flag, value in (("--detector", args.detector),
                            ("--detector-weights", args.detector_weights),
                            ("--score-threshold", args.score_threshold),
                            ("--slice", args.slice),
                            ("--slice-overlap", args.slice_overlap),
                            ("--zoom-small", args.zoom_small)):
            if value is not None:  # the clip strategy segments proposals, not boxes
                raise ValueError(f"{flag} needs --strategy detector")
    return run_folder_command("text", build_processor, args)
