"""SAM's ViT image encoder (ViT-B/L/H): windowed and global attention with decomposed
relative positions (MViTv2 / ViTDet style) and a convolutional neck.

Module and parameter names equal the official ``segment_anything`` ones (``patch_embed.proj``,
``pos_embed``, ``blocks.{i}.attn.qkv``, ``blocks.{i}.attn.rel_pos_h``, ``neck.{0..3}`` ...), so
official checkpoints load with ``strict=True``. Attention runs through
``torch.nn.functional.scaled_dot_product_attention`` with the relative-position terms passed as an
additive float mask, which is the same computation as the explicit softmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, MLPBlock

# Largest query block of a global attention (tokens); see Attention.forward.
QUERY_BLOCK_TOKENS = 1024


class ImageEncoderViT(nn.Module):
    """ViT backbone producing SAM's image embedding.

    The constructor mirrors the official one argument for argument, so code written against
    ``segment_anything.modeling.ImageEncoderViT`` builds the same module tree here.

    Args:
        img_size: side of the square, padded input image in pixels (1024 for SAM).
        patch_size: side of a patch; the token grid is ``img_size // patch_size`` square.
        in_chans: input image channels.
        embed_dim: token width.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width as a multiple of ``embed_dim``.
        out_chans: channels of the output embedding (the neck's width).
        qkv_bias: learn a bias for the query/key/value projection.
        norm_layer: normalisation class, called as ``norm_layer(embed_dim)``.
        act_layer: activation class of the MLP blocks.
        use_abs_pos: learn an absolute position embedding of the token grid.
        use_rel_pos: add decomposed relative position terms to the attention logits.
        rel_pos_zero_init: kept for interface parity; relative tables always start at zero.
        window_size: side of the attention windows of non-global blocks; 0 = all global.
        global_attn_indexes: indexes of blocks that attend over the whole token grid.
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        norm_layer: type[nn.Module] | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        use_abs_pos: bool = True,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        window_size: int = 0,
        global_attn_indexes: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        if img_size % patch_size != 0:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        if embed_dim % num_heads != 0:
            raise ValueError(f"num_heads {num_heads} does not divide embed_dim {embed_dim}")
        norm = norm_layer if norm_layer is not None else nn.LayerNorm
        self.img_size = img_size
        grid = img_size // patch_size

        self.patch_embed = PatchEmbed(
            kernel_size=(patch_size, patch_size),
            stride=(patch_size, patch_size),
            in_chans=in_chans,
            embed_dim=embed_dim,
        )
        self.pos_embed: nn.Parameter | None = None
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))

        global_set = set(global_attn_indexes)
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                norm_layer=norm,
                act_layer=act_layer,
                use_rel_pos=use_rel_pos,
                rel_pos_zero_init=rel_pos_zero_init,
                window_size=0 if i in global_set else window_size,
                input_size=(grid, grid),
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode a batch of preprocessed images.

        Args:
            x: (B, in_chans, img_size, img_size) float normalised, padded images
                (see ``Sam.preprocess``).

        Returns:
            (B, out_chans, img_size / patch_size, img_size / patch_size) float embedding
            (for SAM: (B, 256, 64, 64)).
        """
        if x.ndim != 4 or tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(
                f"expected a (B, C, {self.img_size}, {self.img_size}) input, got {tuple(x.shape)}"
            )
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))


class PatchEmbed(nn.Module):
    """Non-overlapping patchify convolution, returning channels-last tokens.

    Args:
        kernel_size: patch size (kh, kw).
        stride: stride (sh, sw), equal to the kernel for non-overlapping patches.
        padding: convolution padding (ph, pw).
        in_chans: input channels.
        embed_dim: output token width.
    """

    def __init__(
        self,
        kernel_size: tuple[int, int] = (16, 16),
        stride: tuple[int, int] = (16, 16),
        padding: tuple[int, int] = (0, 0),
        in_chans: int = 3,
        embed_dim: int = 768,
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            in_chans, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) float -> (B, H / kh, W / kw, embed_dim) float."""
        return self.proj(x).permute(0, 2, 3, 1)


class Block(nn.Module):
    """Pre-norm transformer block whose attention is windowed (``window_size > 0``) or global.

    Args:
        dim: token width.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        qkv_bias: learn a bias for the qkv projection.
        norm_layer: normalisation class.
        act_layer: MLP activation class.
        use_rel_pos: add decomposed relative position terms.
        rel_pos_zero_init: kept for interface parity.
        window_size: window side; 0 means global attention.
        input_size: (h, w) token grid of global attention, which sizes the relative tables.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        window_size: int = 0,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            rel_pos_zero_init=rel_pos_zero_init,
            input_size=input_size if window_size == 0 else (window_size, window_size),
        )
        self.norm2 = norm_layer(dim)
        self.mlp = MLPBlock(embedding_dim=dim, mlp_dim=int(dim * mlp_ratio), act=act_layer)
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, dim) float tokens -> (B, H, W, dim) float tokens."""
        h = self.norm1(x)
        if self.window_size > 0:
            size = (x.shape[1], x.shape[2])
            windows, padded = window_partition(h, self.window_size)
            h = window_unpartition(self.attn(windows), self.window_size, padded, size)
        else:
            h = self.attn(h)
        x = x + h
        return x + self.mlp(self.norm2(x))


class Attention(nn.Module):
    """Multi-head self-attention over a 2-D token grid with optional decomposed relative
    position terms.

    Args:
        dim: token width.
        num_heads: heads; must divide ``dim``.
        qkv_bias: learn a bias for the qkv projection.
        use_rel_pos: add relative position terms; needs ``input_size``.
        rel_pos_zero_init: kept for interface parity; the tables start at zero.
        input_size: (h, w) token grid the relative tables are sized for.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"num_heads {num_heads} does not divide dim {dim}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("input_size is required when use_rel_pos is True")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, dim) float tokens -> (B, H, W, dim) float tokens."""
        b, h, w, dim = x.shape
        # qkv features are laid out as (3, heads, head_dim), the official order.
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, H*W, head_dim)
        # Global attention over a large grid (SAM: 64x64 tokens, a 12 x 4096 x 4096 logit
        # matrix per image) runs in blocks of query rows, so the bias and the attention
        # weights exist for one block at a time: peak memory falls ~4x, results are the same.
        rows = h if h * w <= QUERY_BLOCK_TOKENS else max(1, QUERY_BLOCK_TOKENS // w)
        if self.use_rel_pos:
            r_h = get_rel_pos(h, h, self.rel_pos_h).to(q.dtype)
            r_w = get_rel_pos(w, w, self.rel_pos_w).to(q.dtype)
        outs = []
        buffer = None  # the bias of one block, reused: a fresh ~200 MB tensor per block costs
        # page faults on every write (twice the time of the attention itself for SAM's 64x64)
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            qb = q[:, :, r0 * w : r1 * w]
            bias = None
            if self.use_rel_pos:
                if torch.jit.is_tracing() or (
                    torch.is_grad_enabled() and (qb.requires_grad or r_h.requires_grad)
                ):
                    pass  # autograd and the ONNX tracer record no out= writes: a fresh tensor
                elif buffer is None or buffer.shape[2] != (r1 - r0) * w:
                    buffer = qb.new_empty(b, self.num_heads, (r1 - r0) * w, h * w)
                bias = _rel_pos_bias_rows(qb, r_h[r0:r1], r_w, (r1 - r0, w), (h, w), out=buffer)
            outs.append(F.scaled_dot_product_attention(qb, k, v, attn_mask=bias, scale=self.scale))
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        out = out.transpose(1, 2).reshape(b, h, w, dim)
        return self.proj(out)


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split a token grid into non-overlapping square windows, zero-padding the bottom/right.

    Args:
        x: (B, H, W, C) tokens.
        window_size: window side S.

    Returns:
        (B * nh * nw, S, S, C) windows in row-major window order, and the padded grid size
        (Hp, Wp) with ``Hp = nh * S`` and ``Wp = nw * S``.
    """
    b, h, w, c = x.shape
    pad_h = -h % window_size
    pad_w = -w % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window_size, window_size, wp // window_size, window_size, c)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)
    return windows, (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: stitch windows back and drop the padding.

    Args:
        windows: (B * nh * nw, S, S, C) windows.
        window_size: window side S.
        pad_hw: padded grid size (Hp, Wp).
        hw: original grid size (H, W).

    Returns:
        (B, H, W, C) tokens.
    """
    hp, wp = pad_hw
    h, w = hw
    nh, nw = hp // window_size, wp // window_size
    b = windows.shape[0] // (nh * nw)
    x = windows.view(b, nh, nw, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    if hp > h or wp > w:
        x = x[:, :h, :w, :].contiguous()
    return x


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative position embeddings for every (query, key) pair along one axis.

    The table is resampled linearly when it was trained for another length, and coordinates
    of the shorter axis are stretched when query and key lengths differ.

    Args:
        q_size: query length along the axis.
        k_size: key length along the axis.
        rel_pos: (L, C) learned table of relative offsets.

    Returns:
        (q_size, k_size, C) embeddings.
    """
    length = 2 * max(q_size, k_size) - 1
    table = rel_pos
    if rel_pos.shape[0] != length:
        resized = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=length, mode="linear"
        )
        table = resized.reshape(-1, length).permute(1, 0)
    q_scale = max(k_size / q_size, 1.0)
    k_scale = max(q_size / k_size, 1.0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * q_scale
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * k_scale
    offsets = (q_coords - k_coords) + (k_size - 1) * k_scale
    return table[offsets.long()]


def decomposed_rel_pos_bias(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> torch.Tensor:
    """Additive attention bias of decomposed relative positions (MViTv2).

    ``bias[q, k] = <q, R_h[qy, ky]> + <q, R_w[qx, kx]>`` with the *unscaled* query, as in the
    official model.

    Args:
        q: (B, heads, q_h * q_w, C) queries, row-major over the query grid.
        rel_pos_h: (Lh, C) table for the vertical axis.
        rel_pos_w: (Lw, C) table for the horizontal axis.
        q_size: query grid (q_h, q_w).
        k_size: key grid (k_h, k_w).

    Returns:
        (B, heads, q_h * q_w, k_h * k_w) bias in q's dtype.
    """
    r_h = get_rel_pos(q_size[0], k_size[0], rel_pos_h).to(q.dtype)
    r_w = get_rel_pos(q_size[1], k_size[1], rel_pos_w).to(q.dtype)
    return _rel_pos_bias_rows(q, r_h, r_w, q_size, k_size)


def _rel_pos_bias_rows(
    q: torch.Tensor,
    r_h: torch.Tensor,
    r_w: torch.Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`decomposed_rel_pos_bias` from gathered tables ``r_h`` (q_h, k_h, C) and ``r_w``
    (q_w, k_w, C); ``q`` and ``r_h`` may be a block of query rows. ``out``: a contiguous
    (B, heads, q_h * q_w, k_h * k_w) tensor to write the bias into."""
    q_h, q_w = q_size
    k_h, k_w = k_size
    b, n, _, c = q.shape
    grid_q = q.reshape(b, n, q_h, q_w, c)
    # einsum may return permuted strides; contiguous terms make the broadcast sum come out
    # contiguous too, so the final reshape is a view and not a copy of the whole bias.
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", grid_q, r_h).contiguous()
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", grid_q, r_w).contiguous()
    shape = (b, n, q_h, q_w, k_h, k_w)
    if out is None:
        return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, n, q_h * q_w, k_h * k_w)
    torch.add(rel_h[..., :, None], rel_w[..., None, :], out=out.view(shape))
    return out
