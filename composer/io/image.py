"""Reading images of any common kind into (H, W, 3) uint8 RGB arrays."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageLike = Any  # str | os.PathLike | np.ndarray | PIL.Image.Image

#: File suffixes taken as images when a folder is read (instances, text, everything): formats
#: that :func:`load_image` (Pillow) reads.
IMAGE_SUFFIXES = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".gif", ".tif", ".tiff", ".webp",
    ".ppm", ".pgm", ".pbm", ".pnm",
)


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ValueError("image contains NaN or infinite values")
        lo = float(arr.min()) if arr.size else 0.0
        hi = float(arr.max()) if arr.size else 0.0
        if lo < -0.5 and hi < 8.0:
            # mean/std-normalised data (ImageNet's: about -2.1..2.6) is not an image's pixels:
            # read as 0..255 it came out black
            raise ValueError(
                f"float image has values from {lo:.3g} to {hi:.3g}: give pixels in [0, 1] or "
                "[0, 255], not a normalised tensor"
            )
        # Floats in [0, 1] are the usual convention, up to a resampling overshoot (a bicubic
        # resize of [0, 1] data reaches ~1.1; read as 0..255 it came out black); larger data
        # is taken as 0..255. Values outside the range are clipped.
        scale = 255.0 if hi <= 1.5 else 1.0
        return np.clip(np.round(arr * scale), 0, 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        hi = int(arr.max()) if arr.size else 0
        if arr.min() < 0:
            raise ValueError(f"integer image has negative values (min {int(arr.min())})")
        if hi <= 255:
            return arr.astype(np.uint8)
        # Wider data: scale the range of the smallest bit depth that holds it (9 bits or more)
        # down to 8 bits, so 12-bit sensor data in a 16-bit file (or 20-bit data in a 32-bit
        # one) is not left nearly black, one pixel just above 255 does not darken the whole
        # image 256-fold, and data wider than 32 bits does not wrap around.
        bits = max(9, int(hi).bit_length())
        return (arr.astype(np.float64) / (2**bits - 1) * 255 + 0.5).astype(np.uint8)
    raise ValueError(f"unsupported image dtype {arr.dtype}")


def _from_array(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"image is empty (shape {arr.shape})")
    c = arr.shape[2]
    arr = _to_uint8(arr)
    if c == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif c == 2:  # gray + alpha
        arr = np.repeat(arr[..., :1], 3, axis=2)
    elif c == 4:
        arr = arr[..., :3]
    elif c != 3:
        raise ValueError(f"image must have 1, 2, 3 or 4 channels, got {c}")
    return np.ascontiguousarray(arr)


def _from_pil(img: Image.Image) -> np.ndarray:
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img)
        if img.mode == "I":
            # 32-bit data keeps its range (scaled by its bit depth, not saturated at 16 bits)
            return _from_array(np.clip(arr.astype(np.int64), 0, None))
        return _from_array(arr.astype(np.uint16))
    if img.mode == "F":
        return _from_array(np.asarray(img, dtype=np.float32))
    if img.mode in ("RGBA", "LA", "PA") or (
        img.mode in ("P", "L", "RGB") and "transparency" in img.info
    ):
        # composite on white so transparent areas do not turn into arbitrary colours (a PNG's
        # tRNS chunk makes one grey level or RGB colour transparent, as it does a palette index)
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    return _from_array(np.asarray(img.convert("RGB")))


def load_image(image: ImageLike) -> np.ndarray:
    """Read an image as RGB.

    Args:
        image: a path, an (H, W[, C]) array (uint8, uint16, bool, or float: [0, 1] when its
            maximum is at most 1.5, a resampling overshoot clipped, else [0, 255]; a
            mean/std-normalised tensor is refused), or a PIL image. Grayscale, gray+alpha, RGBA, palette, 16-bit and EXIF-rotated inputs
            are converted; a file's or PIL image's alpha (and PNG tRNS transparency) is
            composited on white, while an array's alpha channel is dropped.

    Returns:
        (H, W, 3) uint8 RGB array, upright per the EXIF orientation.

    Raises:
        ValueError: for a missing, empty, corrupt or non-image file, a URL (never fetched) or
            an unusable array.
    """
    if isinstance(image, np.ndarray):
        return _from_array(image)
    if isinstance(image, Image.Image):
        return _from_pil(image)
    if isinstance(image, (str, os.PathLike)):
        if isinstance(image, str) and "://" in image and not Path(image).exists():
            # was "image file not found: https:/host/a.png" (Path folds the double slash)
            raise ValueError(f"{image} is a URL; images are read from local files only (download it first)")
        path = Path(image)
        if path.is_dir():
            raise ValueError(f"{path} is a folder, not an image file")
        if not path.exists():
            raise ValueError(f"image file not found: {path}")
        if not path.is_file():  # a FIFO or device would block or never end
            raise ValueError(f"{path} is not a regular file")
        if path.stat().st_size == 0:
            raise ValueError(f"image file is empty: {path}")
        try:
            # Opened from a file object, not the path: Pillow memory-maps uncompressed files it
            # opens by name, and on that path scrambles TIFFs whose orientation tag is 5..8.
            with open(path, "rb") as fh, Image.open(fh) as img:
                img.load()
                return _from_pil(img)
        except Image.DecompressionBombError as exc:
            raise ValueError(
                f"cannot read image {path}: {exc} (raise PIL.Image.MAX_IMAGE_PIXELS to allow it)"
            ) from exc
        except UnidentifiedImageError as exc:
            # Pillow's own text names the file object ("<_io.BufferedReader name='x.jpg'>")
            raise ValueError(
                f"cannot read image {path}: not an image file (no image format recognised)"
            ) from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            # Pillow reports some corrupt headers as ValueError or EOFError (a bad PPM size
            # field, a short PNG IHDR chunk); our own checks (NaN in a float TIFF) say which file
            raise ValueError(f"cannot read image {path}: {exc}") from exc
    try:
        import torch

        if isinstance(image, torch.Tensor):
            t = image.detach().cpu()
            if t.dtype == torch.bfloat16:  # numpy has no bfloat16
                t = t.float()
            if t.ndim == 3 and t.shape[0] in (1, 3, 4):
                if t.shape[0] in (3, 4) and t.shape[2] in (3, 4):
                    # (3, 50, 3) is a 3x50 HWC image or a 50x3 CHW one; a numpy array of this
                    # shape is read as HWC, so guessing CHW here would differ silently
                    raise ValueError(
                        f"image tensor of shape {tuple(t.shape)} is ambiguous between CHW and "
                        "HWC: pass t.permute(1, 2, 0).numpy() (CHW) or t.numpy() (HWC)"
                    )
                t = t.permute(1, 2, 0)
            return _from_array(t.numpy())
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"cannot read an image from {type(image).__name__}")


def size_mismatch(path: str | os.PathLike, loaded: tuple[int, int], expected: tuple[int, int]) -> str:
    """A one-line message for an image file whose size, as :func:`load_image` turns it upright,
    is ``loaded`` (H, W) where the annotations say ``expected``.

    When the file's EXIF orientation is what makes the two differ (the stored pixels have the
    annotations' size), the message says so: the annotations were drawn on the stored pixels.
    """
    (h, w), (eh, ew) = loaded, expected
    text = f"the image file is {w}x{h} (WxH) but the json says {ew}x{eh}"
    try:
        with Image.open(path) as img:
            stored = (img.height, img.width)
            orientation = int(img.getexif().get(0x0112, 1))
    except Exception:  # the message must not fail; the size difference stands as it is
        return text
    if orientation != 1 and stored == tuple(expected):
        text += (
            f": the file stores {stored[1]}x{stored[0]} pixels with EXIF orientation "
            f"{orientation}, which turns them upright to {w}x{h}; the json's size is of the "
            "stored pixels, so re-save the image without the orientation tag (or give the "
            "json the upright size, if the annotations were drawn upright)"
        )
    return text
