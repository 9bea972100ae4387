"""Small building blocks shared by the SAM encoder, prompt encoder and mask decoder.

Parameter names (``lin1``, ``lin2``, ``layers``, ``weight``, ``bias``) follow the official
``segment_anything`` state-dict keys, so official checkpoints load with ``strict=True``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLPBlock(nn.Module):
    """Two-layer feed-forward block ``lin2(act(lin1(x)))`` applied over the last axis.

    Args:
        embedding_dim: width of the input and output features.
        mlp_dim: width of the hidden layer.
        act: activation class, instantiated without arguments.
    """

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., embedding_dim) float -> (..., embedding_dim) float."""
        return self.lin2(self.act(self.lin1(x)))


class LayerNorm2d(nn.Module):
    """Layer normalisation over the channel axis of a channels-first feature map.

    Args:
        num_channels: C, the number of channels normalised together.
        eps: added to the variance for numerical stability.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps
        self.num_channels = int(num_channels)  # a constant (not a traced shape) under export

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float -> (B, C, H, W) float, each pixel's C values normalised."""
        # F.layer_norm on a channels-last view is one fused kernel instead of five passes.
        y = F.layer_norm(x.permute(0, 2, 3, 1), (self.num_channels,), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class MLP(nn.Module):
    """A stack of ``num_layers`` linear layers with ReLU between them (none after the last).

    Args:
        input_dim: width of the input features.
        hidden_dim: width of every hidden layer.
        output_dim: width of the output features.
        num_layers: number of linear layers, >= 1.
        sigmoid_output: apply a sigmoid to the output.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.num_layers = num_layers
        widths = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(
            nn.Linear(n_in, n_out) for n_in, n_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., input_dim) float -> (..., output_dim) float."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


def weight_dtype(module: nn.Module) -> torch.dtype:
    """Floating dtype of ``module``'s weights (float32 when it has none): what its inputs
    must be cast to after ``.half()`` or ``.to(torch.bfloat16)``."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32
