"""SAM's prompt encoder: points and boxes become sparse tokens, a mask input becomes a dense map.

Parameter names equal the official ones (``pe_layer.positional_encoding_gaussian_matrix``,
``point_embeddings.{0..3}``, ``not_a_point_embed``, ``mask_downscaling.*``, ``no_mask_embed``).
All coordinates here are in the *model input frame*: pixels of the resized image before padding,
i.e. the caller has already scaled original-image coordinates by ``img_size / max(H, W)``.

Optional click maps (``map_dim`` > 0; composer_tiny, not SAM): the clicks and the mask input are
also drawn at the decoder's low-res size (RITM-style disk maps) and encoded by a small conv
branch (:class:`ClickMapBranch`) into ``map_dim`` channels, which the decoder adds to its
upscaled embedding. They travel packed (``pixel_unshuffle(4)``) after the D channels of the
dense embedding, so every caller passes them through unchanged.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d

# Which learned embedding is added to each kind of sparse token.
_NEG_POINT, _POS_POINT, _BOX_TOP_LEFT, _BOX_BOTTOM_RIGHT = 0, 1, 2, 3


class PositionEmbeddingRandom(nn.Module):
    """Fourier features of 2-D coordinates with a fixed random Gaussian frequency matrix.

    Args:
        num_pos_feats: F; the encoding has 2F channels (sin and cos).
        scale: standard deviation of the frequencies; None or <= 0 means 1.
    """

    positional_encoding_gaussian_matrix: torch.Tensor  # (2, F) float buffer

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer(
            "positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats))
        )

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        """(..., 2) XY in [0, 1] -> (..., 2F) float encoding."""
        gaussian = self.positional_encoding_gaussian_matrix
        proj = (2.0 * coords - 1.0) @ gaussian
        proj = (2.0 * math.pi) * proj
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of the centres of an (h, w) grid of cells.

        Args:
            size: grid size (h, w).

        Returns:
            (2F, h, w) float encoding.
        """
        h, w = size
        gaussian = self.positional_encoding_gaussian_matrix
        ys = (torch.arange(h, device=gaussian.device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=gaussian.device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack(
            [xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1
        )  # (h, w, 2) XY
        return self._pe_encoding(grid.to(gaussian.dtype)).permute(2, 0, 1)

    def forward_with_coords(
        self, coords_input: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """Encoding of pixel coordinates.

        Args:
            coords_input: (B, N, 2) XY coordinates in pixels of an image of ``image_size``.
            image_size: (H, W) of that image.

        Returns:
            (B, N, 2F) float encoding.
        """
        gaussian = self.positional_encoding_gaussian_matrix
        size_xy = torch.tensor(
            [float(image_size[1]), float(image_size[0])], device=coords_input.device
        )
        coords = coords_input.to(torch.float32) / size_xy
        return self._pe_encoding(coords.to(gaussian.dtype))


class ClickMapBranch(nn.Module):
    """Clicks and mask input at the low-res size -> (B, out_dim, 4h, 4w) features.

    Input channels: positive clicks, negative clicks (Gaussian disks of ``sigma`` low-res
    pixels), the mask input squashed (``tanh(logits / 4)``) and a mask-given flag. The last
    conv starts at zero, so a model gains the branch without changing its masks.
    """

    in_chans = 4

    def __init__(self, out_dim: int, hidden: int = 16, sigma: float = 1.0) -> None:
        super().__init__()
        self.sigma = float(sigma)
        self.conv1 = nn.Conv2d(self.in_chans, hidden, kernel_size=3, padding=1)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(hidden, out_dim, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(cast(torch.Tensor, self.conv2.bias))

    def rasterize(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        masks: torch.Tensor | None,
        bs: int,
        size: tuple[int, int],
        input_size: tuple[int, int],
        device: torch.device,
    ) -> torch.Tensor:
        """(B, 4, *size) float maps of the prompts; points in the input frame."""
        h, w = size
        maps = torch.zeros((bs, self.in_chans, h, w), device=device)
        if points is not None and points[0].shape[1] > 0:
            coords, labels = points
            # Point (input-frame pixel index) -> low-res pixel units, centres aligned.
            gx = (coords[..., 0].float() + 0.5) * (w / input_size[1]) - 0.5
            gy = (coords[..., 1].float() + 0.5) * (h / input_size[0]) - 0.5
            ys = torch.arange(h, device=device, dtype=torch.float32)
            xs = torch.arange(w, device=device, dtype=torch.float32)
            dy = (ys[None, None, :] - gy[..., None]) ** 2  # (B, N, h)
            dx = (xs[None, None, :] - gx[..., None]) ** 2  # (B, N, w)
            d2 = dy[..., :, None] + dx[..., None, :]  # (B, N, h, w)
            g = torch.exp(-d2 / (2 * self.sigma**2))
            for ch, label in ((0, 1), (1, 0)):
                sel = (labels == label)[..., None, None]
                maps[:, ch] = torch.where(sel, g, torch.zeros_like(g)).amax(dim=1)
        if masks is not None:
            maps[:, 2] = torch.tanh(masks[:, 0].float() / 4)
            maps[:, 3] = 1.0
        return maps

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(maps)))


class PromptEncoder(nn.Module):
    """Encodes point, box and mask prompts for the mask decoder.

    Args:
        embed_dim: width D of the prompt embeddings (equal to the image embedding's channels).
        image_embedding_size: (h, w) of the image embedding, e.g. (64, 64).
        input_image_size: (H, W) of the padded model input, e.g. (1024, 1024).
        mask_in_chans: hidden channels of the mask-input downscaler.
        activation: activation class of the mask-input downscaler.
        map_dim: 0 (SAM) or D/8: click-map channels packed after the dense embedding (see the
            module docstring); the decoder needs the same ``map_dim``.
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
        map_dim: int = 0,
    ) -> None:
        super().__init__()
        if embed_dim % 2 != 0:
            raise ValueError(f"embed_dim must be even, got {embed_dim}")
        if mask_in_chans % 4 != 0:
            raise ValueError(f"mask_in_chans must be a multiple of 4, got {mask_in_chans}")
        self.embed_dim = embed_dim
        self.input_image_size = (int(input_image_size[0]), int(input_image_size[1]))
        self.image_embedding_size = (int(image_embedding_size[0]), int(image_embedding_size[1]))
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)

        # Negative point, positive point, box top-left corner, box bottom-right corner.
        self.num_point_embeddings = 4
        self.point_embeddings = nn.ModuleList(
            nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings)
        )
        self.not_a_point_embed = nn.Embedding(1, embed_dim)

        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        self.map_dim = int(map_dim)
        self.click_maps = ClickMapBranch(self.map_dim) if self.map_dim else None

    def get_dense_pe(self) -> torch.Tensor:
        """(1, D, h, w) float positional encoding of the image-embedding grid."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """(B, N, 2) input-frame XY and (B, N) labels -> (B, N [+1], D) tokens."""
        points = points + 0.5  # pixel centres
        if pad:
            # A "not a point" token stands in for the missing box, as in training.
            pad_point = points.new_zeros((points.shape[0], 1, 2))
            pad_label = -labels.new_ones((labels.shape[0], 1))
            points = torch.cat([points, pad_point], dim=1)
            labels = torch.cat([labels, pad_label], dim=1)
        pe = self.pe_layer.forward_with_coords(points, self.input_image_size)
        labels = labels[..., None]
        emb = torch.where(labels == -1, self.not_a_point_embed.weight, pe)
        neg = self._point_weight(_NEG_POINT)
        pos = self._point_weight(_POS_POINT)
        emb = torch.where(labels == _NEG_POINT, emb + neg, emb)
        return torch.where(labels == _POS_POINT, emb + pos, emb)

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """(B, 4) input-frame XYXY -> (B, 2, D) corner tokens."""
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        emb = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_embed = torch.cat(
            [
                self._point_weight(_BOX_TOP_LEFT),
                self._point_weight(_BOX_BOTTOM_RIGHT),
            ],
            dim=0,
        )
        return emb + corner_embed

    def _embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """(B, 1, 4h, 4w) logits -> (B, D, h, w) dense embedding (in the weights' dtype, so
        float32 logits prompt a ``.half()`` model)."""
        return self.mask_downscaling(masks.to(self.no_mask_embed.weight.dtype))

    def _get_batch_size(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> int:
        if points is not None:
            return int(points[0].shape[0])
        if boxes is not None:
            return int(boxes.shape[0])
        if masks is not None:
            return int(masks.shape[0])
        return 1

    def _get_device(self) -> torch.device:
        return self._point_weight(0).device

    def _point_weight(self, index: int) -> torch.Tensor:
        """(1, D) learned embedding ``index`` of ``point_embeddings``."""
        return cast(nn.Embedding, self.point_embeddings[index]).weight

    def _check(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> None:
        sizes = {}
        if points is not None:
            coords, labels = points
            if coords.ndim != 3 or coords.shape[-1] != 2:
                raise ValueError(f"point coords must be (B, N, 2), got {tuple(coords.shape)}")
            if tuple(labels.shape) != tuple(coords.shape[:2]):
                raise ValueError(
                    f"point labels must be (B, N) = {tuple(coords.shape[:2])}, "
                    f"got {tuple(labels.shape)}"
                )
            bad = labels[(labels != -1) & (labels != 0) & (labels != 1)]
            if bad.numel():
                raise ValueError(f"point labels must be -1, 0 or 1, got {bad.unique().tolist()}")
            sizes["points"] = coords.shape[0]
        if boxes is not None:
            if boxes.ndim != 2 or boxes.shape[-1] != 4:
                raise ValueError(f"boxes must be (B, 4) or (B, 1, 4), got {tuple(boxes.shape)}")
            sizes["boxes"] = boxes.shape[0]
        if masks is not None:
            expected = (1, *self.mask_input_size)
            if masks.ndim != 4 or tuple(masks.shape[1:]) != expected:
                raise ValueError(f"mask inputs must be (B, {expected}), got {tuple(masks.shape)}")
            sizes["masks"] = masks.shape[0]
        if len(set(sizes.values())) > 1:
            raise ValueError(f"prompt batch sizes differ: {sizes}")
        # NaN or inf would flow through the Fourier features into NaN masks without a word.
        # Mask inputs are not checked here: in training they are the model's own fed-back
        # logits, whose NaN the trainer reports with the sample at the loss (Sam.forward and
        # the predictor check a caller's mask inputs).
        given = (("point coords", None if points is None else points[0]), ("boxes", boxes))
        for name, t in given:
            if t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} contain NaN or infinite values")

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed a batch of B prompts.

        Args:
            points: optional ((B, N, 2) float XY, (B, N) int labels) in the model input frame;
                label 1 foreground, 0 background, -1 padding (ignored).
            boxes: optional (B, 4) (or (B, 1, 4), as the official ``SamPredictor`` passes them)
                float XYXY boxes in the model input frame.
            masks: optional (B, 1, 4h, 4w) float mask logits (256x256 for SAM), the low-res
                frame of the decoder output.

        Returns:
            sparse: (B, T, D) float tokens, T = N (+1 padding token when no box) (+2 per box).
            dense: (B, D, h, w) float embedding of the mask input (or the learned no-mask
                embedding broadcast over the grid); with ``map_dim``, (B, D + 16 map_dim, h, w)
                with the packed click maps after the D channels.

        Raises:
            ValueError: on wrong shapes, unknown labels, inconsistent batch sizes, or NaN or
                infinite point or box coordinates.
        """
        if boxes is not None and boxes.ndim == 3 and boxes.shape[1] == 1:
            boxes = boxes[:, 0]
        self._check(points, boxes, masks)
        bs = self._get_batch_size(points, boxes, masks)
        tokens = []
        if points is not None:
            coords, labels = points
            tokens.append(self._embed_points(coords, labels, pad=boxes is None))
        if boxes is not None:
            tokens.append(self._embed_boxes(boxes))
        if tokens:
            sparse = torch.cat(tokens, dim=1)
        else:
            weight = self.no_mask_embed.weight
            sparse = weight.new_empty((bs, 0, self.embed_dim))

        if masks is not None:
            dense = self._embed_masks(masks)
        else:
            h, w = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(bs, -1, h, w)
        if self.click_maps is not None:
            raster = self.click_maps.rasterize(
                points, masks, bs, self.mask_input_size, self.input_image_size, self._get_device()
            )
            packed = F.pixel_unshuffle(self.click_maps(raster.to(dense.dtype)), 4)
            dense = torch.cat([dense.expand(bs, -1, -1, -1), packed], dim=1)
        return sparse, dense
