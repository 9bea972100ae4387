"""SAM's two-way transformer: prompt tokens and image tokens attend to each other.

Parameter names equal the official ones (``layers.{i}.self_attn.q_proj``, ``norm1..4``,
``cross_attn_token_to_image``, ``cross_attn_image_to_token``, ``final_attn_token_to_image``,
``norm_final_attn`` ...). Attention uses ``scaled_dot_product_attention``, the same computation
as the official explicit softmax(QK^T / sqrt(d)) V.

Speed (same function, different order of operations): a decoder has a handful of prompt tokens
(T ~ 7) and thousands of image tokens (N = 4096 for SAM), decoded for many prompts at once. The
official code projects every image token of every prompt (keys and values of the
token-to-image attentions, queries and outputs of the image-to-token attention: ~N D^2 / 2
multiply-adds each). Here

* an image embedding shared by all prompts (automatic masks, any prompt batch without mask
  input) enters with batch 1 and its projections are computed once, then broadcast;
* otherwise the few tokens are mapped through the projection instead of the many image tokens:
  ``softmax(W_q q . (W_k x + b_k))`` = ``softmax((W_k^T W_q q) . x)`` (the bias term is
  constant over the softmax axis) and ``sum_n a_n (W_v x_n + b_v)`` = ``W_v (sum_n a_n x_n) + b_v``,
  which costs ~2 H T N D instead of ~N D^2 (2.3x fewer for SAM's D = 256, H = 8, T = 7); the
  image-to-token attention likewise folds ``W_q`` into the token keys and ``W_out`` into the
  token values;
* where the image tokens are shared, all prompts' tokens of a head form one matrix (no
  broadcast copy of the image tokens per prompt), and a caller decoding prompts in chunks
  passes one ``shared`` dict so those projections are computed once per call.

Outputs equal the official ones to float rounding (tests compare with ``segment_anything``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import MLPBlock


class TwoWayTransformer(nn.Module):
    """Decoder that updates prompt tokens (queries) and image tokens (keys) jointly.

    Args:
        depth: number of two-way blocks.
        embedding_dim: token width D.
        num_heads: attention heads; must divide ``embedding_dim // attention_downsample_rate``.
        mlp_dim: hidden width of the token MLP.
        activation: MLP activation class.
        attention_downsample_rate: the cross-attention layers project to
            ``embedding_dim // attention_downsample_rate`` channels.
    """

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                activation=activation,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self,
        image_embedding: Tensor,
        image_pe: Tensor,
        point_embedding: Tensor,
        shared: dict | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Run the blocks and a final token-to-image attention.

        Args:
            image_embedding: (B, D, h, w) float image features (plus dense prompt embedding),
                or (1, D, h, w) shared by all B prompts (computed once, broadcast).
            image_pe: (B, D, h, w) or (1, D, h, w) float positional encoding of the grid.
            point_embedding: (B, T, D) float prompt and output tokens; also used as their
                positional encoding.
            shared: a dict that keeps the projections of a batch-1 ``image_embedding``
                between calls with the same image embedding and positional encoding (a caller
                decoding many prompts in chunks passes one dict to every chunk); None: no
                caching.

        Returns:
            queries: (B, T, D) float updated tokens.
            keys: (B, h * w, D) float updated image tokens, row-major over (h, w).
        """
        if image_pe.shape[1:] != image_embedding.shape[1:] or image_pe.shape[0] not in (
            1,
            image_embedding.shape[0],
        ):
            raise ValueError(
                f"image_pe {tuple(image_pe.shape)} does not match image_embedding "
                f"{tuple(image_embedding.shape)}"
            )
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for i, layer in enumerate(self.layers):
            queries, keys = layer(
                queries=queries,
                keys=keys,
                query_pe=point_embedding,
                key_pe=key_pe,
                # only the input image tokens are the same for every call that shares the
                # cache: after a block they belong to this call's prompts, even when there is
                # one prompt (a batch of 1 is not a shared image then)
                shared=shared if i == 0 and keys.shape[0] == 1 else None,
            )
        attn_out = self.final_attn_token_to_image.tokens_to_image(
            queries + point_embedding, keys + key_pe, keys
        )
        queries = self.norm_final_attn(queries + attn_out)
        return queries, keys


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token-to-image attention, token MLP, image-to-token attention.

    Each sub-layer is residual and followed by a LayerNorm, except that the first block's
    self-attention (``skip_first_layer_pe``) has neither positional encoding nor residual,
    exactly as in the official model.

    Args:
        embedding_dim: token width D.
        num_heads: attention heads.
        mlp_dim: hidden width of the token MLP.
        activation: MLP activation class.
        attention_downsample_rate: channel reduction of the cross-attention layers.
        skip_first_layer_pe: the first-block behaviour described above.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: Tensor,
        keys: Tensor,
        query_pe: Tensor,
        key_pe: Tensor,
        shared: dict | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(B, T, D) tokens and (B or 1, N, D) image tokens, with their positional encodings,
        -> updated (B, T, D) tokens and (B, N, D) image tokens. ``shared``: a cache for the
        projections of batch-1 image tokens (see ``TwoWayTransformer.forward``)."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        k = _cached(shared, (id(self), "k"), lambda: keys + key_pe)
        queries = self.norm2(
            queries + self.cross_attn_token_to_image.tokens_to_image(q, k, keys, shared)
        )

        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(
            self.cross_attn_image_to_token.image_to_tokens(k, q, queries, keys, shared)
        )
        return queries, keys


class Attention(nn.Module):
    """Multi-head attention whose projections may shrink the channels by ``downsample_rate``.

    Args:
        embedding_dim: input and output width D.
        num_heads: heads; must divide ``embedding_dim // downsample_rate``.
        downsample_rate: internal width is ``embedding_dim // downsample_rate``.
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads != 0:
            raise ValueError(
                f"num_heads {num_heads} does not divide the internal width {self.internal_dim}"
            )
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _separate_heads(self, x: Tensor) -> Tensor:
        """(B, N, C) -> (B, heads, N, C / heads)."""
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    @staticmethod
    def _recombine_heads(x: Tensor) -> Tensor:
        """(B, heads, N, c) -> (B, N, heads * c)."""
        b, h, n, c = x.shape
        return x.transpose(1, 2).reshape(b, n, h * c)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Queries (B, Nq, D) attend to keys (B, Nk, D) / values (B, Nk, D) -> (B, Nq, D)."""
        q = self._separate_heads(self.q_proj(q))
        k = self._separate_heads(self.k_proj(k))
        v = self._separate_heads(self.v_proj(v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(self._recombine_heads(out))

    # ------------------------------------------------------------------ fast paths
    def _heads_weight(self, linear: nn.Linear) -> Tensor:
        """(internal, D) weight of a projection -> (heads, c, D)."""
        return linear.weight.reshape(self.num_heads, -1, linear.weight.shape[1])

    def tokens_to_image(
        self, q: Tensor, k: Tensor, v: Tensor, shared: dict | None = None
    ) -> Tensor:
        """Few queries (B, T, D) attend to many keys/values (B or 1, N, D) -> (B, T, D).

        Same result as ``forward``; see the module docstring for the order of operations.
        ``shared`` caches the projections of batch-1 keys/values between calls.
        """
        b, t, d = q.shape
        n = k.shape[1]
        heads, c = self.num_heads, self.internal_dim // self.num_heads
        qh = self._separate_heads(self.q_proj(q))  # (B, H, T, c)
        if k.shape[0] == 1 and b > 1:
            # Shared image tokens: project them once, and put all prompts' queries of a head
            # in one matrix, (H, B*T, c), so no prompt gets a broadcast copy of the keys.
            kh, vh = _cached(  # each (H, N, c)
                shared,
                (id(self), "kv"),
                lambda: (
                    self._separate_heads(self.k_proj(k))[0],
                    self._separate_heads(self.v_proj(v))[0],
                ),
            )
            qs = qh.transpose(0, 1).reshape(heads, b * t, c)
            attn = torch.softmax((qs @ kh.transpose(-1, -2)) / math.sqrt(c), dim=-1)
            out = (attn @ vh).reshape(heads, b, t, c).transpose(0, 1)  # (B, H, T, c)
            return self.out_proj(self._recombine_heads(out))
        if k.shape[0] != b or 2 * heads * t >= d:
            return self.forward(q, k, v)  # few image tokens or many queries: classic order
        # Fold W_k into the queries: (B, H, T, D); scores against the raw image tokens.
        qk = (qh @ self._heads_weight(self.k_proj)) / math.sqrt(c)
        scores = (qk.reshape(b, heads * t, d) @ k.transpose(1, 2)).reshape(b, heads, t, n)
        attn = torch.softmax(scores, dim=-1)
        # Attention-weighted raw values, then W_v: (B, H, T, D) -> (B, H, T, c).
        mixed = (attn.reshape(b, heads * t, n) @ v).reshape(b, heads, t, d)
        out = torch.einsum("bhtd,hcd->bhtc", mixed, self._heads_weight(self.v_proj))
        out = out + self.v_proj.bias.reshape(1, heads, 1, c)
        return self.out_proj(self._recombine_heads(out))

    def image_to_tokens(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        residual: Tensor | None = None,
        shared: dict | None = None,
    ) -> Tensor:
        """Many queries (B or 1, N, D) attend to few keys/values (B, T, D) -> (B, N, D).

        Same result as ``forward`` (broadcast over a shared query batch of 1), plus
        ``residual`` (broadcastable to (B, N, D)) when given, added inside the last matmul.
        ``shared`` caches the projection of batch-1 queries between calls.
        """
        b, t, d = k.shape
        n = q.shape[1]
        heads, c = self.num_heads, self.internal_dim // self.num_heads
        if q.shape[0] not in (1, b) or 2 * heads * t >= d:
            out = self.forward(q.expand(b, -1, -1), k, v)
            return out if residual is None else residual + out
        kh = self._separate_heads(self.k_proj(k))  # (B, H, T, c)
        vh = self._separate_heads(self.v_proj(v))
        scale = 1.0 / math.sqrt(c)
        if q.shape[0] == 1 and b > 1:
            # Shared image queries: project them once; one matrix per head holds every
            # prompt's keys, (H, c, B*T), so the queries are never copied per prompt.
            qh = _cached(  # (H, N, c)
                shared, (id(self), "q"), lambda: self._separate_heads(self.q_proj(q))[0]
            )
            ks = kh.permute(1, 3, 0, 2).reshape(heads, c, b * t)
            attn = _softmax_few((qh @ ks).view(heads, n, b, t) * scale)  # (H, N, B, T)
            attn = attn.permute(2, 1, 0, 3).reshape(b, n, heads * t)
        else:
            # Fold W_q (and the scale) into the token keys; the bias term varies over the
            # tokens, so it stays. Scores stay in (B, N, H*T) order: no permuted copies.
            kq = (kh @ self._heads_weight(self.q_proj)) * scale  # (B, H, T, D)
            bias = (kh @ self.q_proj.bias.reshape(heads, c, 1)) * scale  # (B, H, T, 1)
            scores = torch.baddbmm(
                bias.reshape(b, 1, heads * t),
                q.expand(b, -1, -1),
                kq.reshape(b, heads * t, d).transpose(1, 2),
            )
            attn = _softmax_few(scores.view(b, n, heads, t)).view(b, n, heads * t)
        # Fold W_out into the token values: (B, H, T, D); sum over heads and tokens. Each
        # head's weights sum to 1 over the tokens, so the output bias folds in as bias / H.
        w_out = self.out_proj.weight.reshape(d, heads, c).permute(1, 2, 0)  # (H, c, D)
        vo = (vh @ w_out + self.out_proj.bias / heads).reshape(b, heads * t, d)
        if residual is None:
            return attn @ vo
        return torch.baddbmm(residual.expand(b, n, d), attn, vo)


def _cached(shared: dict | None, key: Any, compute: Callable[[], Any]) -> Any:
    """``compute()``, kept in ``shared`` under ``key`` for later calls (no cache: None)."""
    if shared is None:
        return compute()
    value = shared.get(key)
    if value is None:
        value = shared[key] = compute()
    return value


def _softmax_few(x: Tensor) -> Tensor:
    """Softmax over a short last axis (the few prompt tokens) for inference.

    ``torch.softmax`` over ~7 elements per row is several times slower on the CPU than this: max,
    exp in place, and the row sums as a matmul with ones. Same values to float rounding; under autograd
    the plain softmax is used (the in-place steps would break the backward pass).
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return torch.softmax(x, dim=-1)
    e = (x - x.amax(dim=-1, keepdim=True)).exp_()
    return e.div_(e @ e.new_ones(e.shape[-1], 1))
