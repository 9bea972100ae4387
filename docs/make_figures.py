"""Render the tutorial pictures in docs/images/ with the default segmenter.

    python docs/make_figures.py            # writes docs/images/*.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from skimage import data  # noqa: E402

OUT = Path(__file__).resolve().parent / "images"
sys.path.insert(0, str(OUT.parents[1]))

import composer  # noqa: E402
from composer.io.visualize import overlay  # noqa: E402
from composer.segmenters.base import best_per_prompt  # noqa: E402


def save(fig: plt.Figure, name: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / name, dpi=80, bbox_inches="tight")
    plt.close(fig)
    print(OUT / name)


def panels(images: list[np.ndarray], titles: list[str], name: str) -> None:
    fig, axes = plt.subplots(1, len(images), figsize=(4.2 * len(images), 4.4))
    for ax, img, title in zip(np.atleast_1d(axes), images, titles, strict=True):
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    save(fig, name)


def main() -> None:
    from tasks.base import TaskContext
    from tasks.edges import EdgeConfig, EdgeTask
    from tasks.edges_classic import classic_edges
    from tasks.instances import InstanceConfig, InstanceTask

    seg = composer.load_segmenter()
    cache = composer.EmbeddingCache()
    image = data.astronaut()
    emb = cache.get(image, seg)
    point, box = np.array([[270.0, 140.0]]), np.array([[330.0, 10.0, 470.0, 150.0]])
    multi = seg.predict(emb, points=point)
    pics = [overlay(image, multi.masks[i], points=point) for i in range(len(multi))]
    iou = multi.extras["predicted_iou"]
    # with a contrast ranking (composer_tiny) the score is predicted IoU + weight x contrast
    titles = [f"point, mask {i}: predicted IoU {iou[i]:.2f}, score {multi.scores[i]:.2f}"
              for i in range(len(multi))]
    boxed = best_per_prompt(seg.predict(emb, boxes=box))
    pics.append(overlay(image, boxed.masks, boxes=box))
    titles.append(f"box: predicted IoU {boxed.extras['predicted_iou'][0]:.2f}")
    panels(pics, titles, "quickstart.png")

    # the model's calibrated thresholds where it has them (composer_tiny), else 0.7 / 0.8
    loose = {} if seg.amg_thresholds else {"pred_iou_thresh": 0.7, "stability_score_thresh": 0.8}
    amg = composer.AutomaticMaskGenerator(seg, cache=cache, points_per_side=16, **loose)
    everything = amg.generate(image)
    panels([image, overlay(image, everything.masks, alpha=0.6)],
           ["image", f"segment everything: {len(everything)} masks"], "everything.png")

    coffee = data.coffee()
    ctx = TaskContext(coffee, "coffee", cache)
    edges = EdgeTask(seg, EdgeConfig(points_per_side=16))(ctx)
    panels([coffee, classic_edges(coffee, "canny").edges, edges.edges],
           ["image", "Canny (baseline)", f"edges from {seg.model_id}"], "edges.png")

    detector = composer.load_detector()
    ctx = TaskContext(image, 1, cache)
    inst = InstanceTask(seg, detector, InstanceConfig(score_threshold=0.4))(ctx)
    names = inst.meta.get("class_names", {})
    label = ", ".join(f"{names.get(int(c), c)} {s:.2f}" for c, s in zip(inst.labels, inst.scores, strict=True))
    panels([overlay(image, inst.masks, boxes=inst.boxes)], [f"SSD boxes -> masks: {label}"],
           "instances.png")


if __name__ == "__main__":
    main()
