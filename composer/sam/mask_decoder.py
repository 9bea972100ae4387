"""SAM's mask decoder: a two-way transformer over prompt tokens and image tokens, then a
hypernetwork per output token that turns upscaled image features into mask logits, plus an
IoU-prediction head.

Token order and parameter names equal the official ones (``iou_token``, ``mask_tokens``,
``output_upscaling``, ``output_hypernetworks_mlps.{i}.layers.{j}``,
``iou_prediction_head.layers.{j}``, ``transformer.*``). Output 0 is the single-mask output,
outputs 1..3 are the multimask (ambiguity-aware) outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP, LayerNorm2d

# Most prompts decoded together inside one call (see MaskDecoder.predict_masks).
PROMPT_CHUNK = 16
# On the CPU, the most bytes of one chunk's per-prompt image tokens (chunk x h*w x D floats)
# and of its upscaled maps. Tensors of this size are recycled by the C allocator; larger ones
# (glibc maps those over 32 MiB afresh) pay page faults on every write and fall out of the
# last-level cache: for SAM (4 MiB of tokens per prompt) chunks of 4 instead of 16 prompts made
# the decoder 1.3-1.4x faster (benchmarks/bench_decoder.py).
CHUNK_BYTES = 16 * 2**20
# On an accelerator, where each chunk pays kernel-launch latency, chunks hold at least
# PROMPT_CHUNK prompts and grow to this many bytes of per-prompt image tokens (64 prompts of
# SAM in float32, ~0.4 GB of activations with the upscaled maps).
ACCEL_CHUNK_BYTES = 256 * 2**20
#: Logit of masks not computed because their predicted IoU is below ``min_iou`` (an empty mask).
SKIPPED_LOGIT = -1.0e4


class MaskDecoder(nn.Module):
    """Predicts mask logits and their IoU from image and prompt embeddings.

    Args:
        transformer_dim: channel width D of tokens and image embedding.
        transformer: the two-way transformer (see ``TwoWayTransformer``).
        num_multimask_outputs: masks returned when ``multimask_output`` is True.
        activation: activation class of the upscaler.
        iou_head_depth: linear layers of the IoU head.
        iou_head_hidden_dim: hidden width of the IoU head.
        hires_dim: 0 (SAM) or D/8: the image embedding then carries, after its D channels, a
            high-resolution feature map of D/8 channels at the upscaled (4h, 4w) size, packed
            by ``pixel_unshuffle(4)`` into D/8 x 16 channels (see :func:`pack_hires`). It is
            added to the upscaled embedding before the hypernetwork product (as in HQ-SAM),
            so the masks can follow image edges finer than the embedding grid.
        map_dim: 0 (SAM) or D/8: the dense prompt embedding then carries the prompt encoder's
            packed click maps after its D channels; they are added to the upscaled embedding
            like the hi-res map.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        hires_dim: int = 0,
        map_dim: int = 0,
    ) -> None:
        super().__init__()
        if transformer_dim % 8 != 0:
            raise ValueError(f"transformer_dim must be a multiple of 8, got {transformer_dim}")
        if hires_dim not in (0, transformer_dim // 8):
            raise ValueError(
                f"hires_dim must be 0 or transformer_dim // 8 = {transformer_dim // 8}, got {hires_dim}"
            )
        if map_dim not in (0, transformer_dim // 8):
            raise ValueError(
                f"map_dim must be 0 or transformer_dim // 8 = {transformer_dim // 8}, got {map_dim}"
            )
        self.transformer_dim = transformer_dim
        self.hires_dim = hires_dim
        self.map_dim = map_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs

        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)

        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        min_iou: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode B prompts against one image (or B images, one prompt each).

        Args:
            image_embeddings: (1, D, h, w) or (B, D, h, w) float image embedding.
            image_pe: (1, D, h, w) float positional encoding of the embedding grid.
            sparse_prompt_embeddings: (B, T, D) float point/box tokens.
            dense_prompt_embeddings: (B, D, h, w) float mask-input embedding.
            multimask_output: return the 3 multimask outputs instead of the single one.
            min_iou: when given, the masks of a prompt whose returned outputs all have a
                predicted IoU <= ``min_iou`` are not computed (the IoU head does not need them)
                and are filled with :data:`SKIPPED_LOGIT`; its ``iou_pred`` is exact. For
                callers that drop such masks anyway (automatic generation's IoU filter): the
                upscaling (a third to a half of a prompt's cost for SAM's sizes on a CPU) then
                runs only for prompts that can survive.

        Returns:
            masks: (B, M, 4h, 4w) float mask logits in the low-res frame (256x256 for SAM: the
                padded model input scaled by 1/4); M = 3 if ``multimask_output`` else 1.
            iou_pred: (B, M) float predicted IoU of each mask.
        """
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        image_embeddings, dense_prompt_embeddings, hires = self.split_inputs(
            image_embeddings, dense_prompt_embeddings
        )
        masks, iou_pred = self.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse_prompt_embeddings,
            dense_prompt_embeddings=dense_prompt_embeddings,
            min_iou=min_iou,
            outputs=chosen,
            hires=hires,
        )
        return masks[:, chosen], iou_pred[:, chosen]

    def split_inputs(
        self, image_embeddings: torch.Tensor, dense_prompt_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The D-channel image embedding, the D-channel dense prompt embedding and the map
        added to the upscaled embedding (the hi-res map plus the click maps; None without
        either), from the packed inputs of :meth:`forward`."""
        image_embeddings, hires = self.split_embedding(image_embeddings)
        dense_prompt_embeddings, maps = self.split_dense(dense_prompt_embeddings)
        if maps is not None:
            hires = maps if hires is None else hires + maps
        return image_embeddings, dense_prompt_embeddings, hires

    def _unpack(
        self, x: torch.Tensor, extra_dim: int, what: str
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, D [+ 16 extra_dim], h, w) -> the D channels and the (B, extra_dim, 4h, 4w) map
        packed after them by ``pixel_unshuffle(4)`` (None when ``extra_dim`` is 0)."""
        d = self.transformer_dim
        want = d + 16 * extra_dim
        if x.ndim != 4 or x.shape[1] != want:
            raise ValueError(
                f"{what} must have {want} channels for this decoder, got shape {tuple(x.shape)}"
            )
        if not extra_dim:
            return x, None
        return x[:, :d], F.pixel_shuffle(x[:, d:], 4)

    def split_embedding(
        self, image_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, D [+ 16 hires_dim], h, w) -> the D-channel embedding and the (B, hires_dim, 4h,
        4w) high-resolution map (None when ``hires_dim`` is 0).

        Raises:
            ValueError: the embedding has the wrong number of channels for this decoder.
        """
        return self._unpack(image_embeddings, self.hires_dim, "image embedding")

    def split_dense(
        self, dense_prompt_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, D [+ 16 map_dim], h, w) -> the D-channel dense embedding and the (B, map_dim,
        4h, 4w) click-map features (None when ``map_dim`` is 0).

        Raises:
            ValueError: the dense embedding has the wrong number of channels for this decoder.
        """
        dense, maps = self._unpack(dense_prompt_embeddings, self.map_dim, "dense prompt embedding")
        if maps is not None and dense.shape[0] > 1 and bool((dense == dense[:1]).all()):
            # No mask inputs: one broadcast vector again, so the decoder can share the image
            # tokens' transformer pass between prompts (exact).
            dense = dense[:1].expand_as(dense)
        return dense, maps

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        min_iou: float | None = None,
        outputs: slice = slice(None),
        hires: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``num_mask_tokens`` outputs: (B, 4, 4h, 4w) logits and (B, 4) IoU; see forward.

        With ``min_iou``, a prompt whose outputs selected by ``outputs`` all have a predicted
        IoU <= ``min_iou`` gets :data:`SKIPPED_LOGIT` masks instead of computed ones.
        ``hires``: (1 or B, D/8, 4h, 4w) map added to the upscaled embedding (``hires_dim``,
        plus the click maps with ``map_dim``).
        """
        n = sparse_prompt_embeddings.shape[0]
        if hires is not None and hires.shape[0] not in (1, n):
            raise ValueError(f"hires batch {hires.shape[0]} must be 1 or the number of prompts {n}")
        if image_embeddings.shape[0] not in (1, n):
            raise ValueError(
                f"image_embeddings batch {image_embeddings.shape[0]} must be 1 or the number "
                f"of prompts {n}"
            )
        if dense_prompt_embeddings.shape[0] != n:
            raise ValueError(
                f"dense_prompt_embeddings batch {dense_prompt_embeddings.shape[0]} != {n} prompts"
            )
        # One image embedding is shared by all prompts; broadcasting replaces the copy. Without
        # mask inputs the dense embedding is one broadcast vector, so the transformer gets the
        # image tokens once (batch 1) and projects them once for all prompts (``shared`` keeps
        # those projections across the chunks below).
        dense = dense_prompt_embeddings
        shared: dict | None = None
        if image_embeddings.shape[0] == 1 and n > 1 and dense.stride(0) == 0:
            src = image_embeddings + dense[:1]
            shared = {}
        _, d, h, w = image_embeddings.shape
        per_prompt = image_embeddings.element_size() * h * w * d
        if image_embeddings.device.type == "cpu":
            chunk = max(1, min(PROMPT_CHUNK, CHUNK_BYTES // per_prompt))
        else:
            chunk = max(PROMPT_CHUNK, ACCEL_CHUNK_BYTES // per_prompt)
        # Decode in chunks of prompts: the per-prompt image tokens and upscaled maps (~20 MB per
        # prompt at SAM's size) then bound memory instead of the batch size.
        parts = []
        for s in range(0, max(n, 1), chunk):
            if shared is None:
                one = (
                    image_embeddings
                    if image_embeddings.shape[0] == 1
                    else image_embeddings[s : s + chunk]
                )
                src = one + dense[s : s + chunk]
            hr = hires if hires is None or hires.shape[0] == 1 else hires[s : s + chunk]
            parts.append(
                self._decode_chunk(
                    src,
                    image_pe,
                    sparse_prompt_embeddings[s : s + chunk],
                    min_iou,
                    outputs,
                    shared,
                    hr,
                )
            )
        if len(parts) == 1:
            return parts[0]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _decode_chunk(
        self,
        src: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        min_iou: float | None,
        outputs: slice,
        shared: dict | None,
        hires: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`predict_masks` for one chunk of B prompts; ``src`` is the (1 or B, D, h, w)
        image embedding plus dense prompt embedding; ``shared`` caches projections of a
        batch-1 ``src`` between chunks (None: nothing is shared); ``hires`` the chunk's (1 or
        B) high-resolution maps."""
        n = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat(
            [output_tokens.unsqueeze(0).expand(n, -1, -1), sparse_prompt_embeddings], dim=1
        )
        hs, keys = self.transformer(src, image_pe, tokens, shared=shared)
        keys = keys.expand(n, -1, -1)  # a no-op unless the transformer had no blocks
        b, h, w = n, src.shape[2], src.shape[3]
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        iou_pred = self.iou_prediction_head(iou_token_out)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )  # (B, num_mask_tokens, D / 8)
        if min_iou is not None:
            need = (iou_pred[:, outputs] > min_iou).any(dim=1)
            if not bool(need.all()):
                masks = hyper_in.new_full((b, self.num_mask_tokens, 4 * h, 4 * w), SKIPPED_LOGIT)
                idx = torch.nonzero(need).reshape(-1)
                if idx.numel():
                    hr = hires if hires is None or hires.shape[0] == 1 else hires[idx]
                    masks[idx] = self._masks(keys[idx], hyper_in[idx], h, w, hr)
                return masks, iou_pred
        return self._masks(keys, hyper_in, h, w, hires), iou_pred

    def _masks(
        self,
        keys: torch.Tensor,
        hyper_in: torch.Tensor,
        h: int,
        w: int,
        hires: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B or 1, h*w, D) image tokens and (B, K, D/8) hypernetwork outputs -> (B, K, 4h, 4w);
        ``hires`` (1 or B, D/8, 4h, 4w) is added to the upscaled maps."""
        b, c = hyper_in.shape[0], keys.shape[-1]
        # The upscaled maps are 2x the image tokens' size per prompt (D/8 channels at 4x the
        # side): run the upscaler on sub-chunks within the same byte budget.
        step = (
            b
            if keys.device.type != "cpu"
            else max(1, CHUNK_BYTES // (keys.element_size() * 2 * h * w * c))
        )
        if b > step:
            return torch.cat(
                [
                    self._masks(
                        keys[s : s + step] if keys.shape[0] > 1 else keys,
                        hyper_in[s : s + step],
                        h,
                        w,
                        hires if hires is None or hires.shape[0] == 1 else hires[s : s + step],
                    )
                    for s in range(0, b, step)
                ]
            )
        upscaled = self.output_upscaling(keys.expand(b, -1, -1).transpose(1, 2).reshape(b, c, h, w))
        if hires is not None:
            upscaled = upscaled + hires
        c, hh, ww = upscaled.shape[1:]
        return (hyper_in @ upscaled.reshape(b, c, hh * ww)).reshape(b, -1, hh, ww)
