"""What the embedding cache's copies cost: ``EmbeddingCache.get`` hands every caller its own
copy of the entry (``ImageEmbedding.clone``), so no caller's in-place change reaches the cache.

Part 1 times, for a SAM ViT-sized embedding ((1, 256, 64, 64) float32, 4 MB) with the photo in
``extras["image"]`` (as composer_tiny keeps it), a memory hit with the copy (``get``) next to the
same hit without it (``_shared``, the entry itself: the behaviour before) and the copy alone.

The process's allocator is tuned as the ``sam-composer`` command tunes it
(``composer.allocator.tune_allocator``); with ``--untuned`` glibc's defaults serve each copy
fresh pages (a minor page fault per 4 KB), which costs several times the copy itself.

Part 2 runs the automatic mask generator through a cache (composer_tiny, ``crop_n_layers=1``:
five cache gets per image) and reports the time its gets spend copying next to the whole run.

    python benchmarks/bench_cache_copies.py --side 1024 --repeats 200
    python benchmarks/bench_cache_copies.py --untuned --amg-points 0
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's composer, not an installed one
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_args import check_at_least, run_main  # noqa: E402


class _Fixed:
    """A segmenter double whose embedding is a SAM ViT's size; it keeps the photo."""

    model_id = "bench-fixed"

    def embed(self, image: np.ndarray):
        from composer.embedding import ImageEmbedding

        h, w = image.shape[:2]
        s = 1024 / max(h, w)
        return ImageEmbedding(torch.randn(1, 256, 64, 64), (h, w), (round(h * s), round(w * s)),
                              1024, self.model_id, extras={"image": torch.tensor(image)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=1024, help="photo's longer side (4:3)")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--amg-points", type=int, default=16, help="points per side; 0 skips part 2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--untuned", action="store_true", help="keep glibc's malloc thresholds")
    args = parser.parse_args(argv)
    check_at_least(parser, [("--side", args.side, 4), ("--repeats", args.repeats, 1),
                            ("--amg-points", args.amg_points, 0), ("--threads", args.threads, 1)])
    torch.set_num_threads(args.threads)
    from composer.allocator import tune_allocator
    from composer.embedding import EmbeddingCache
    from composer.io.image import load_image

    tuned = False if args.untuned else tune_allocator()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (args.side * 3 // 4, args.side, 3), np.uint8)
    seg, cache = _Fixed(), EmbeddingCache()
    cache.get(image, seg)
    arr = load_image(image)
    entry = cache._shared(arr, seg, None)
    # interleaved, one of each per round, so a load that drifts (a shared machine) hits all
    # three alike; the first round pays the first large allocations' fresh pages
    calls = {"get": lambda: cache.get(image, seg),
             "shared": lambda: cache._shared(load_image(image), seg, None),
             "clone": entry.clone}
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(args.repeats + 1):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    first_copy = times["get"][0] * 1e3
    with_copy, without, copy = (float(np.median(times[k][1:])) * 1e3 for k in calls)
    mb = entry.nbytes / 2**20
    print(f"memory hit, {mb:.1f} MB entry (features + {image.shape[1]}x{image.shape[0]} photo), "
          f"{args.threads} thread(s), malloc {'tuned' if tuned else 'untuned'}, "
          f"median of {args.repeats}:")
    print(f"  get (a copy) {with_copy:7.3f} ms   entry itself {without:7.3f} ms   "
          f"ratio x{with_copy / without:4.2f}   clone alone {copy:7.3f} ms")
    print(f"  (the first get, fresh pages: {first_copy:7.3f} ms)")
    if args.amg_points:
        from composer import load_segmenter
        from composer.automatic import AutomaticMaskGenerator

        tiny = load_segmenter("composer_tiny", device=args.device)
        photo = rng.integers(0, 255, (480, 640, 3), np.uint8)
        clone_s = [0.0]
        real_clone = type(entry).clone

        def timed_clone(self):
            t0 = time.perf_counter()
            out = real_clone(self)
            clone_s[0] += time.perf_counter() - t0
            return out

        amg_cache = EmbeddingCache()
        gen = AutomaticMaskGenerator(tiny, cache=amg_cache, points_per_side=args.amg_points,
                                     crop_n_layers=1)
        gen.generate(photo)  # embeddings cached: the second run is all hits, as across tasks
        type(entry).clone = timed_clone  # type: ignore[method-assign]
        try:
            t0 = time.perf_counter()
            dets = gen.generate(photo)
            total = time.perf_counter() - t0
        finally:
            type(entry).clone = real_clone  # type: ignore[method-assign]
        print(f"AMG composer_tiny 640x480, {args.amg_points}^2 points, crop_n_layers=1 "
              f"({amg_cache.hits} hits, {len(dets)} masks) on {args.device}: "
              f"{total:.2f} s, of which copies {clone_s[0] * 1e3:.2f} ms "
              f"({100 * clone_s[0] / total:.3f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
