"""How much IoU the 64x64 low-res output of composer_tiny can reach at all, per benchmark.

Puts each ground-truth mask through the model's low-res frame (the image resized so its longest
side is 512, then area-averaged to ``--low-res`` per 512 pixels) and back (bilinear
upsampling of the soft mask, threshold 0.5), and prints the mean IoU with the original mask and
how many objects stay below 0.85 / 0.90 (GrabCut's 128 band ignored). An IoU below the NoC
targets here means no click sequence can reach them; above, the model is what limits NoC.

    python recipes/lowres_ceiling.py              # 64 (composer_tiny) and 128
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import one_line_errors  # noqa: E402

from composer.data.interactive import Berkeley, GrabCut  # noqa: E402


def ceiling(gt: np.ndarray, ignore: np.ndarray | None, low_res: int, img_size: int = 512) -> float:
    """IoU of ``gt`` (H, W) bool after the round trip through a ``low_res`` frame."""
    h, w = gt.shape
    scale = img_size / max(h, w)
    ih, iw = int(h * scale + 0.5), int(w * scale + 0.5)
    lh, lw = max(1, round(ih * low_res / img_size)), max(1, round(iw * low_res / img_size))
    soft = cv2.resize(gt.astype(np.float32), (lw, lh), interpolation=cv2.INTER_AREA)
    back = cv2.resize(soft - 0.5, (w, h), interpolation=cv2.INTER_LINEAR) > 0
    valid = np.ones_like(gt) if ignore is None else ~ignore
    union = ((back | gt) & valid).sum()
    return float(((back & gt) & valid).sum() / max(union, 1))


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--low-res", type=int, nargs="+", default=[64, 128])
    args = parser.parse_args(argv)
    for name, ds in (("GrabCut", GrabCut()), ("Berkeley", Berkeley())):
        items = list(ds)
        for low in args.low_res:
            v = np.array([ceiling(it.gt_mask.astype(bool), it.ignore, low) for it in items])
            print(
                f"{name} low-res {low}: mean IoU {v.mean():.3f}, below .85: {(v < 0.85).sum()}, "
                f"below .90: {(v < 0.90).sum()} of {len(v)}"
            )


if __name__ == "__main__":
    main()
