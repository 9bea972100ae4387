"""``classic``: a promptable segmenter with no learned weights.

The toolkit's default on a fresh machine and the baseline a trained model must beat. Per image
(``embed``): the image resized to ``work_size`` on its longest side, SLIC superpixels, their
adjacency graph with colour/edge step costs, a colour gradient map and a k-means colour palette.
Per prompt (``decode``): rough masks of three extents from superpixel geodesic distances (the
clicked superpixels against the image border, the outside of the box and the negative clicks),
each refined by GrabCut and scored from click centrality, colour separation from its
surroundings, boundary contrast, agreement with the rough mask, border contact and size.

Frames: the work frame is the resized image; the padded square has side ``pad_size`` =
``work_size`` and the low-res logits cover it pixel for pixel (``low_res_size`` = (work_size,
work_size)), so ``mask_input`` maps back to the work frame without resampling.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from ..embedding import ImageEmbedding
from ..io.image import load_image
from ..structures import Prompts
from . import _classic_ops as ops
from .base import MaskLogits, PromptableSegmenter, mirror_prompts

logger = logging.getLogger(__name__)

_EXTRA_KEYS = (
    "superpixels",
    "sp_pairs",
    "sp_weights",
    "sp_centroids",
    "border_superpixels",
    "edges",
    "palette",
    "palette_index",
)


@dataclass(frozen=True)
class ClassicConfig:
    """Settings of :class:`ClassicSegmenter` (the defaults are the measured ones).

    Attributes:
        work_size: longest side, in pixels, of the frame everything is computed in; also the
            padded square's side and the low-res logit size. 400 gained ~2.5 points on
            Berkeley and lost ~1 on GrabCut at ~1.7x the time (measured with 2 iterations).
        n_superpixels: SLIC superpixels per image (approximate).
        compactness: SLIC compactness (higher = more regular superpixels).
        edge_weight: weight of the boundary edge strength in the superpixel step cost (the
            mean-Lab colour distance has weight 1).
        palette_size: colours of the k-means palette that seeds GrabCut's colour models.
        extents: geodesic ratios of the three candidate masks, small to large: a superpixel
            joins the candidate when its distance to the clicks is below ``extent`` times its
            distance to the background seeds.
        grabcut_iters: GrabCut iterations per candidate, the main cost: 1 (default) takes
            about 0.3 s per prompt on a 481x321 image; 2 is about 1.5x slower for +1.3 points
            single-click mIoU on GrabCut (none on Berkeley); 0 skips the refinement (~0.04 s,
            about 12 points worse).
        seed_radius: radius of the fixed-foreground disk around each click, as a fraction of
            ``work_size`` (clipped to the clicked superpixel).
        border_exclusion: border superpixels closer than this fraction of ``work_size`` to a
            positive click are not background seeds (objects cut by the image border).
        border_width: width in work pixels of the image-border strip fixed to background in
            point mode (where the rough mask does not reach it).
        max_hole_fraction: holes smaller than this fraction of the mask area are filled.
        score_weights: weights of the six cues of ``mask_features`` (centrality, colour
            separation, boundary edge, rough-mask agreement, border contact, area).
        score_bias: constant term of the score; the score is clipped to [0, 1].
        box_fit_weight: share of the score given, for box prompts, to the IoU between the
            mask's bounding box and the prompt box.
        prior_weight: share of the score given, with ``mask_input``, to the IoU with it.
        logit_clip: logits are signed distances in work pixels clipped to this magnitude.
        seed: seed of the palette's k-means sampling (results are deterministic).
    """

    work_size: int = 320
    n_superpixels: int = 400
    compactness: float = 10.0
    edge_weight: float = 3.0
    palette_size: int = 24
    extents: tuple[float, float, float] = (0.75, 1.5, 3.0)
    grabcut_iters: int = 1
    seed_radius: float = 0.02
    border_exclusion: float = 0.08
    border_width: int = 2
    max_hole_fraction: float = 0.5
    score_weights: tuple[float, float, float, float, float, float] = (
        0.55,
        0.2,
        0.3,
        0.2,
        -0.65,
        0.3,
    )
    score_bias: float = -0.3
    box_fit_weight: float = 0.5
    prior_weight: float = 0.3
    logit_clip: float = 20.0
    seed: int = 0

    def __post_init__(self) -> None:
        """Check the settings.

        Raises:
            ValueError: a setting out of range or not a finite number (a negative
                ``edge_weight`` made the superpixel graph's shortest paths abort the process;
                a ``compactness`` of 0 divided by zero in SLIC; a NaN ``logit_clip`` emptied
                every mask).
        """
        if self.work_size < 8:
            raise ValueError(f"work_size must be >= 8, got {self.work_size}")
        if self.n_superpixels < 1 or self.palette_size < 1 or self.palette_size > 256:
            raise ValueError(
                f"n_superpixels must be >= 1 and palette_size in [1, 256], got "
                f"{self.n_superpixels}, {self.palette_size}"
            )
        if len(self.extents) != 3 or not all(0 < e < float("inf") for e in self.extents):
            raise ValueError(f"extents must be three positive ratios, got {self.extents}")
        if not 0 < self.compactness < float("inf"):
            raise ValueError(f"compactness must be a finite number > 0, got {self.compactness}")
        if not 0 <= self.edge_weight < float("inf"):
            raise ValueError(f"edge_weight must be a finite number >= 0, got {self.edge_weight}")
        if self.grabcut_iters < 0:
            raise ValueError(f"grabcut_iters must be >= 0, got {self.grabcut_iters}")
        if len(self.score_weights) != 6:
            raise ValueError(f"score_weights must have 6 entries, got {len(self.score_weights)}")
        if not 0 < self.logit_clip < float("inf"):
            raise ValueError(f"logit_clip must be a finite number > 0, got {self.logit_clip}")


@dataclass
class _Image:
    """Numpy views of one embedding's tensors (work frame)."""

    bgr: np.ndarray  # (h, w, 3) uint8
    labels: np.ndarray  # (h, w) int32
    pairs: np.ndarray  # (E, 2) int64
    weights: np.ndarray  # (E,) float64
    centroids: np.ndarray  # (n, 2) float32 XY
    border: np.ndarray  # (B,) int64
    edges: np.ndarray  # (h, w) float32
    palette: np.ndarray  # (k, 3) float32
    index: np.ndarray  # (h, w) uint8

    @property
    def n(self) -> int:
        return len(self.centroids)


@dataclass
class _Prompt:
    """One prompt in the work frame."""

    pos: np.ndarray  # (P, 2) int XY
    neg: np.ndarray  # (Q, 2) int XY
    box: tuple[int, int, int, int] | None  # x0, y0, x1, y1 pixel index range (exclusive end)
    prior: np.ndarray | None  # (h, w) bool


class ClassicSegmenter(PromptableSegmenter):
    """Promptable segmenter from superpixel geodesics and GrabCut; needs no weights.

    Args:
        config: settings; ``ClassicConfig()`` by default.
        prompt_batch: prompts per ``decode`` call (see ``PromptableSegmenter``).

    Attributes:
        model_id: ``"classic-v1"`` for the default config, else ``"classic-v1-<hash>"`` so
            that embeddings made with other settings are never mixed up.
    """

    mask_threshold = 0.0

    def __init__(self, config: ClassicConfig | None = None, prompt_batch: int = 64) -> None:
        self.config = config or ClassicConfig()
        default = self.config == ClassicConfig()
        self.model_id = "classic-v1" if default else f"classic-v1-{_config_hash(self.config)}"
        self.low_res_size = (self.config.work_size, self.config.work_size)
        self.prompt_batch = int(prompt_batch)
        self.description = "no learned weights: superpixel geodesics + GrabCut"

    # ------------------------------------------------------------------ embed
    @property
    def device(self) -> torch.device:
        """Always the CPU: superpixels, geodesics and GrabCut run in NumPy and OpenCV."""
        return torch.device("cpu")

    def embed(self, image: Any) -> ImageEmbedding:
        """Precompute everything that does not depend on the prompts.

        Args:
            image: path, (H, W[, C]) array or PIL image (see ``load_image``).

        Returns:
            ImageEmbedding with ``features`` (1, 3, h, w) float32 RGB work image in [0, 255]
            (h, w = ``input_size``), ``pad_size`` = ``work_size`` and extras: ``superpixels``
            (h, w) int32, ``sp_pairs`` (E, 2) int64, ``sp_weights`` (E,) float64,
            ``sp_centroids`` (n, 2) float32 XY, ``border_superpixels`` (B,) int64, ``edges``
            (h, w) float32, ``palette`` (k, 3) float32 BGR, ``palette_index`` (h, w) uint8.
        """
        cfg = self.config
        rgb = load_image(image)
        big_h, big_w = rgb.shape[:2]
        h, w = ops.work_shape(big_h, big_w, cfg.work_size)
        work = ops.resize_image(rgb, (h, w))
        lab = cv2.cvtColor(work.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
        edges = ops.edge_strength(lab)
        labels = ops.superpixels(work, cfg.n_superpixels, cfg.compactness)
        pairs, weights, _ = ops.superpixel_graph(labels, lab, edges, cfg.edge_weight)
        n = int(labels.max()) + 1
        area = np.bincount(labels.ravel(), minlength=n).astype(np.float64)
        ys, xs = np.mgrid[:h, :w]
        centroids = (
            np.stack(
                [
                    np.bincount(labels.ravel(), xs.ravel(), n),
                    np.bincount(labels.ravel(), ys.ravel(), n),
                ],
                1,
            )
            / area[:, None]
        )
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        bgr = np.ascontiguousarray(work[..., ::-1])
        colours, index = ops.palette(bgr, cfg.palette_size, cfg.seed)
        extras = {
            "superpixels": torch.from_numpy(labels),
            "sp_pairs": torch.from_numpy(np.ascontiguousarray(pairs, np.int64)),
            "sp_weights": torch.from_numpy(weights.astype(np.float64)),
            "sp_centroids": torch.from_numpy(centroids.astype(np.float32)),
            "border_superpixels": torch.from_numpy(border.astype(np.int64)),
            "edges": torch.from_numpy(edges),
            "palette": torch.from_numpy(colours.astype(np.float32)),
            "palette_index": torch.from_numpy(index),
            **self.image_extras(rgb),
        }
        features = torch.from_numpy(work.astype(np.float32)).permute(2, 0, 1)[None].contiguous()
        return ImageEmbedding(
            features=features,
            original_size=(big_h, big_w),
            input_size=(h, w),
            pad_size=cfg.work_size,
            model_id=self.model_id,
            extras=extras,
        )

    def mirror_prompts(self, prompts: Prompts, embedding: ImageEmbedding) -> Prompts:
        """Flip TTA's mirrored prompts in classic's frame: a point x falls in work column
        ``floor(x * sx)`` and a box spans ``[floor(x0 * sx), ceil(x1 * sx))``, so the
        continuous mirror ``W - x`` lands in the mirrored column and box exactly."""
        return mirror_prompts(prompts, embedding.original_size[1], 0.0)

    # ------------------------------------------------------------------ decode
    def decode(
        self, embedding: ImageEmbedding, prompts: Prompts, multimask: bool = True
    ) -> MaskLogits:
        """Masks for validated prompts.

        Args:
            embedding: from :meth:`embed`.
            prompts: N prompts in original-image pixels; ``mask_input`` (N, 1, s, s) logits
                with s = ``work_size`` (e.g. a previous ``low_res_logits``) is a prior.
            multimask: three candidates of increasing extent per prompt, else the top one.

        Returns:
            MaskLogits: ``logits`` (N, M, s, s) float32 signed distances (work pixels, > 0
            inside) on the padded square, M = 3 or 1; ``iou_pred`` (N, M) float32 in [0, 1].
            A prompt with nothing to segment (only negative clicks) gives empty masks
            scored 0.
        """
        missing = [k for k in _EXTRA_KEYS if k not in embedding.extras]
        if missing or embedding.pad_size != self.config.work_size:
            raise ValueError(
                f"embedding is not from this classic config (missing {missing}, "
                f"pad_size {embedding.pad_size})"
            )
        img = self._image(embedding)
        m_out = 3 if multimask else 1
        n = len(prompts)
        s = self.config.work_size
        logits = np.empty((n, m_out, s, s), np.float32)
        scores = np.zeros((n, m_out), np.float32)
        for i in range(n):
            prompt = self._prompt(embedding, prompts, i, img.labels.shape)
            masks, sc = self._segment(img, prompt, multimask)
            logits[i] = ops.signed_distance_logits(masks, s, self.config.logit_clip)
            scores[i] = sc
        return MaskLogits(torch.from_numpy(logits), torch.from_numpy(scores))

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _image(embedding: ImageEmbedding) -> _Image:
        ex = embedding.extras
        feats = embedding.features[0].permute(1, 2, 0).numpy()
        bgr = np.ascontiguousarray(np.clip(feats[..., ::-1], 0, 255).astype(np.uint8))
        return _Image(
            bgr=bgr,
            labels=ex["superpixels"].numpy(),
            pairs=ex["sp_pairs"].numpy(),
            weights=ex["sp_weights"].numpy(),
            centroids=ex["sp_centroids"].numpy(),
            border=ex["border_superpixels"].numpy(),
            edges=ex["edges"].numpy(),
            palette=ex["palette"].numpy(),
            index=ex["palette_index"].numpy(),
        )

    def _prompt(
        self, embedding: ImageEmbedding, prompts: Prompts, i: int, shape: tuple[int, int]
    ) -> _Prompt:
        h, w = shape
        big_h, big_w = embedding.original_size
        sx, sy = w / big_w, h / big_h
        pos = neg = np.zeros((0, 2), np.int64)
        if prompts.points is not None and prompts.labels is not None:
            pts, lab = prompts.points[i], prompts.labels[i]
            xy = np.stack(
                [
                    np.clip(np.floor(pts[:, 0] * sx), 0, w - 1),
                    np.clip(np.floor(pts[:, 1] * sy), 0, h - 1),
                ],
                1,
            ).astype(np.int64)
            pos, neg = xy[lab == 1], xy[lab == 0]
        box = None
        if prompts.boxes is not None:
            x0, y0, x1, y1 = (float(v) for v in prompts.boxes[i])
            c0, r0 = (
                int(np.clip(np.floor(x0 * sx), 0, w - 1)),
                int(np.clip(np.floor(y0 * sy), 0, h - 1)),
            )
            c1, r1 = (
                int(np.clip(np.ceil(x1 * sx), c0 + 1, w)),
                int(np.clip(np.ceil(y1 * sy), r0 + 1, h)),
            )
            box = (c0, r0, c1, r1)
        prior = None
        if prompts.mask_input is not None:
            prior = np.asarray(prompts.mask_input[i, 0, :h, :w]) > self.mask_threshold
        return _Prompt(pos, neg, box, prior)

    def _segment(self, img: _Image, p: _Prompt, multimask: bool) -> tuple[np.ndarray, np.ndarray]:
        """(M, h, w) bool masks and (M,) scores for one prompt (M = 3 or 1)."""
        cfg = self.config
        h, w = img.labels.shape
        m_out = 3 if multimask else 1
        has_prior = p.prior is not None and bool(p.prior.any())
        if len(p.pos) == 0 and p.box is None and not has_prior:
            return np.zeros((m_out, h, w), bool), np.zeros(m_out)
        radius = max(1.0, cfg.seed_radius * cfg.work_size)
        fg_seed = ops.disk_seeds(img.labels, p.pos, radius)
        bg_seed = ops.disk_seeds(img.labels, p.neg, radius) & ~fg_seed
        inside = np.ones((h, w), bool)
        if p.box is not None:
            c0, r0, c1, r1 = p.box
            inside[:] = False
            # one pixel of slack: a tight box must not cut the object's edge pixels
            inside[max(0, r0 - 1) : r1 + 1, max(0, c0 - 1) : c1 + 1] = True
            bg_seed |= ~inside & ~fg_seed
        strip = np.zeros((h, w), bool)
        if p.box is None and cfg.border_width > 0:
            b = cfg.border_width
            strip[:b], strip[-b:], strip[:, :b], strip[:, -b:] = True, True, True, True
        raws = self._rough_masks(img, p, inside, has_prior)
        cands: list[tuple[np.ndarray, np.ndarray]] = []
        done: dict[bytes, np.ndarray] = {}
        for raw in raws:
            key = np.packbits(raw).tobytes()
            if key not in done:
                out = ops.grabcut(
                    img.bgr,
                    raw,
                    fg_seed,
                    bg_seed | (strip & ~raw & ~fg_seed),
                    cfg.grabcut_iters,
                    img.palette,
                    img.index,
                )
                out = ops.keep_components(out, fg_seed if len(p.pos) else None)
                done[key] = ops.fill_holes(out, cfg.max_hole_fraction, bg_seed)
            cands.append((raw, done[key]))
        scores = np.empty(len(cands))
        for j, (raw, m) in enumerate(cands):
            if not m.any() and raw.any():
                # GrabCut found nothing to cut out: fall back on the rough mask, trusted less
                cands[j] = (raw, (raw & ~bg_seed) | fg_seed)
                scores[j] = 0.5 * self._score(img, p, raw, cands[j][1])
            else:
                scores[j] = self._score(img, p, raw, m)
        masks = np.stack([m for _, m in cands])
        if not multimask:
            best = int(np.argmax(scores))
            return masks[best : best + 1], scores[best : best + 1]
        if len(cands) > 3:  # keep the three best, ordered by area (small to large)
            top = np.argsort(-scores, kind="stable")[:3]
            top = top[np.argsort(masks[top].sum((1, 2)), kind="stable")]
            masks, scores = masks[top], scores[top]
        return masks, scores

    def _rough_masks(
        self, img: _Image, p: _Prompt, inside: np.ndarray, has_prior: bool
    ) -> list[np.ndarray]:
        """Rough candidate masks (h, w) bool, small to large."""
        cfg = self.config
        labels = img.labels
        raws: list[np.ndarray] = []
        if has_prior:
            assert p.prior is not None
            prior = p.prior & inside
            kernel = np.ones((5, 5), np.uint8)
            raws.append(prior)
            if len(p.pos) == 0:  # no clicks to grow from: shrunk and grown versions of the prior
                shrunk = cv2.erode(prior.astype(np.uint8), kernel).astype(bool)
                grown = cv2.dilate(prior.astype(np.uint8), kernel).astype(bool) & inside
                return [shrunk if shrunk.any() else prior, prior, grown]
        if len(p.pos):
            src = labels[p.pos[:, 1], p.pos[:, 0]]
        else:  # a box without clicks: grow from the superpixel at its centre
            assert p.box is not None
            c0, r0, c1, r1 = p.box
            src = np.array([labels[(r0 + r1 - 1) // 2, (c0 + c1 - 1) // 2]])
        d_fg = ops.geodesic(img.n, img.pairs, img.weights, src)
        if p.box is not None:
            bg_src = np.unique(labels[~inside]) if not inside.all() else img.border
        else:
            bg_src = img.border
            if len(p.pos):
                gap = np.linalg.norm(
                    img.centroids[bg_src][:, None] - p.pos[None].astype(np.float32), axis=-1
                )
                bg_src = bg_src[gap.min(1) >= cfg.border_exclusion * cfg.work_size]
        if len(p.neg):
            bg_src = np.concatenate([bg_src, labels[p.neg[:, 1], p.neg[:, 0]]])
        bg_src = np.setdiff1d(bg_src, src)
        d_bg = ops.geodesic(img.n, img.pairs, img.weights, bg_src)
        extents = list(cfg.extents)
        if p.box is not None and not len(p.pos):
            extents = extents[:2]  # the third candidate is the classic box-filling GrabCut init
        for e in extents:
            sel = d_fg < e * d_bg
            sel[src] = True
            raws.append(sel[labels] & inside)
        if p.box is not None and not len(p.pos):
            raws.append(inside.copy())
        return raws

    def _score(self, img: _Image, p: _Prompt, raw: np.ndarray, mask: np.ndarray) -> float:
        cfg = self.config
        if not mask.any():
            return 0.0
        f = ops.mask_features(mask, raw, p.pos, img.edges, img.index, len(img.palette))
        score = float(np.dot(cfg.score_weights, f) + cfg.score_bias)
        if len(p.neg) and mask[p.neg[:, 1], p.neg[:, 0]].any():
            score -= 0.5  # a mask that swallows a negative click contradicts the prompt
        if p.box is not None:
            ys, xs = np.nonzero(mask)
            fit = _box_iou((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), p.box)
            score = (1 - cfg.box_fit_weight) * score + cfg.box_fit_weight * fit
        if p.prior is not None and p.prior.any():
            agree = (mask & p.prior).sum() / max(int((mask | p.prior).sum()), 1)
            score = (1 - cfg.prior_weight) * score + cfg.prior_weight * float(agree)
        return float(np.clip(score, 0.0, 1.0))


def _box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _config_hash(config: ClassicConfig) -> str:
    import hashlib

    return hashlib.sha1(repr(config).encode()).hexdigest()[:8]
