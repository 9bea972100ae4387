"""composer.sam against the official segment_anything modules on shared random weights.

The official model is built with the same dims, its parameters are re-drawn at unit gain (norms,
biases, position embeddings and relative tables included) so every path carries signal,
its state dict is saved to a .pth file and loaded strictly by ``build_sam``. Outputs must agree to
1e-3 (max abs) on the image embedding, prompt embeddings, mask logits and IoU predictions.

ViT-B runs at real size, but a full 1024x1024 encoder pass costs about a minute on a shared
2-core CPU, so its encoder is checked module by module (patch embedding, a windowed block, a
global block, the neck); set SAM_COMPOSER_FULL_PARITY=1 to also run the full ViT-B encoder.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from composer.sam import CONFIGS, Sam, SamConfig, build_sam
from composer.sam.build import build_sam_from_config

sam_modeling = pytest.importorskip("segment_anything.modeling")

TOL = 1e-3
Prompt = dict[str, Any]


# ------------------------------------------------------------------------------------- helpers
def official_from_config(cfg: SamConfig) -> nn.Module:
    """The official module tree with ``cfg``'s dims (on the current default device)."""
    m = sam_modeling
    grid = cfg.image_embedding_size
    dim = cfg.prompt_embed_dim
    return m.Sam(
        image_encoder=m.ImageEncoderViT(
            depth=cfg.encoder_depth,
            embed_dim=cfg.encoder_embed_dim,
            img_size=cfg.img_size,
            mlp_ratio=cfg.mlp_ratio,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            num_heads=cfg.encoder_num_heads,
            patch_size=cfg.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=cfg.encoder_global_attn_indexes,
            window_size=cfg.window_size,
            out_chans=cfg.out_chans,
        ),
        prompt_encoder=m.PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(grid, grid),
            input_image_size=(cfg.img_size, cfg.img_size),
            mask_in_chans=cfg.mask_in_chans,
        ),
        mask_decoder=m.MaskDecoder(
            num_multimask_outputs=cfg.num_multimask_outputs,
            transformer=m.TwoWayTransformer(
                depth=cfg.decoder_depth,
                embedding_dim=dim,
                mlp_dim=cfg.decoder_mlp_dim,
                num_heads=cfg.decoder_num_heads,
            ),
            transformer_dim=dim,
            iou_head_depth=cfg.iou_head_depth,
            iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        ),
    ).eval()


@torch.no_grad()
def randomize(model: nn.Module, seed: int) -> None:
    """Draw every tensor of ``model``: weights at unit gain (PyTorch's default init shrinks
    signals, leaving near-zero logits), noisy norms and biases, non-zero position embeddings
    and relative tables."""
    g = torch.Generator().manual_seed(seed)

    def normal(p: torch.Tensor, mean: float, std: float) -> None:
        p.normal_(mean, std, generator=g)

    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            fan_in = module.weight[0].numel()
            if isinstance(module, nn.ConvTranspose2d):
                fan_in = module.weight.shape[0]
            bound = (3 / fan_in) ** 0.5  # uniform with variance 1 / fan_in; faster than normal
            module.weight.uniform_(-bound, bound, generator=g)
            if module.bias is not None:
                normal(module.bias, 0.0, 0.1)
        elif isinstance(module, (nn.LayerNorm, sam_modeling.common.LayerNorm2d)):
            normal(module.weight, 1.0, 0.2)
            normal(module.bias, 0.0, 0.2)
        elif isinstance(module, nn.Embedding):
            normal(module.weight, 0.0, 1.0)
    for name, p in model.named_parameters():
        if name.endswith(("pos_embed", "rel_pos_h", "rel_pos_w")):
            normal(p, 0.0, 0.5)
    normal(model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix, 0.0, 1.0)


def seeded_official(cfg: SamConfig, seed: int) -> nn.Module:
    """The official model with ``cfg``'s dims and every tensor drawn by :func:`randomize`
    (built on the meta device first: PyTorch's own init of ViT-B would cost seconds)."""
    with torch.device("meta"):
        model = official_from_config(cfg)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.fill_(float("nan"))
        model.pixel_mean.copy_(torch.tensor(cfg.pixel_mean).view(-1, 1, 1))
        model.pixel_std.copy_(torch.tensor(cfg.pixel_std).view(-1, 1, 1))
    randomize(model, seed)
    tensors = [*model.named_parameters(), *model.named_buffers()]
    unset = [n for n, t in tensors if t.reshape(-1)[0].isnan()]
    assert not unset, unset
    return model


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.detach().float() - b.detach().float()).abs().max()) if a.numel() else 0.0


def prompt_cases(cfg: SamConfig, input_hw: tuple[int, int], seed: int) -> dict[str, Prompt]:
    """Point / multi-point / box / box+point / mask prompts in the model input frame."""
    g = torch.Generator().manual_seed(seed)
    h, w = input_hw
    scale = torch.tensor([w, h], dtype=torch.float32)

    def pts(b: int, k: int) -> torch.Tensor:
        return torch.rand(b, k, 2, generator=g) * scale

    def boxes(b: int) -> torch.Tensor:
        a, c = pts(b, 1)[:, 0], pts(b, 1)[:, 0]
        return torch.cat([torch.minimum(a, c), torch.maximum(a, c)], dim=1)

    low = cfg.low_res_size
    return {
        "point": {"points": (pts(1, 1), torch.tensor([[1]])), "boxes": None, "masks": None},
        "multi_point": {
            "points": (pts(2, 3), torch.tensor([[1, 0, 1], [0, 1, -1]])),
            "boxes": None,
            "masks": None,
        },
        "box": {"points": None, "boxes": boxes(3), "masks": None},
        "box_point": {
            "points": (pts(2, 2), torch.tensor([[1, 0], [1, 1]])),
            "boxes": boxes(2),
            "masks": None,
        },
        "mask_point": {
            "points": (pts(2, 1), torch.tensor([[1], [0]])),
            "boxes": None,
            "masks": 4 * torch.randn(2, 1, low, low, generator=g),
        },
        "mask_only": {
            "points": None,
            "boxes": None,
            "masks": 4 * torch.randn(1, 1, low, low, generator=g),
        },
    }


@torch.no_grad()
def decode(model: nn.Module, embedding: torch.Tensor, prompt: Prompt, multimask: bool) -> dict:
    sparse, dense = model.prompt_encoder(**prompt)
    masks, iou = model.mask_decoder(
        image_embeddings=embedding,
        image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )
    return {"sparse": sparse, "dense": dense, "masks": masks, "iou": iou}


def assert_decode_parity(
    ours: Sam,
    ref: nn.Module,
    emb_ours: torch.Tensor,
    emb_ref: torch.Tensor,
    prompt: Prompt,
    multimask: bool,
) -> dict[str, torch.Tensor]:
    """Decode with both models, assert agreement, return the official outputs."""
    a = decode(ours, emb_ours, prompt, multimask)
    b = decode(ref, emb_ref, prompt, multimask)
    assert a["masks"].shape[1] == (3 if multimask else 1)
    # The logits carry signal, so agreement to TOL is meaningful.
    assert b["masks"].std() > 0.1
    for key in ("sparse", "dense", "masks", "iou"):
        diff = max_diff(a[key], b[key])
        assert diff < TOL, f"{key}: max abs diff {diff}"
    return b


# ------------------------------------------------------------------------------------ tiny model
@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cfg = CONFIGS["vit_tiny_test"]
    ref = seeded_official(cfg, seed=1)
    path = tmp_path_factory.mktemp("tiny") / "tiny.pth"
    torch.save(ref.state_dict(), path)
    ours = build_sam("vit_tiny_test", checkpoint=path)
    g = torch.Generator().manual_seed(2)
    image = torch.rand(3, 96, 128, generator=g) * 255  # landscape: padded at the bottom
    with torch.no_grad():
        x_ours = ours.preprocess(image)[None]
        x_ref = ref.preprocess(image)[None]
        emb_ours = ours.image_encoder(x_ours)
        emb_ref = ref.image_encoder(x_ref)
    return {
        "cfg": cfg, "ref": ref, "ours": ours, "path": path, "image": image,
        "x": (x_ours, x_ref), "emb": (emb_ours, emb_ref),
    }  # fmt: skip


def test_tiny_loads_strictly_and_is_eval(tiny: dict[str, Any]) -> None:
    ours, ref = tiny["ours"], tiny["ref"]
    assert isinstance(ours, Sam) and not ours.training
    a, b = ours.state_dict(), ref.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_tiny_preprocess_and_encoder_match(tiny: dict[str, Any]) -> None:
    (x_ours, x_ref), (emb_ours, emb_ref) = tiny["x"], tiny["emb"]
    assert x_ours.shape == (1, 3, 128, 128)
    assert max_diff(x_ours, x_ref) < 1e-5
    assert emb_ours.shape == (1, 32, 8, 8)
    assert emb_ref.abs().max() > 0.5  # the comparison is not between near-zero tensors
    assert max_diff(emb_ours, emb_ref) < TOL


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize(
    "case", ["point", "multi_point", "box", "box_point", "mask_point", "mask_only"]
)
def test_tiny_prompts_match(tiny: dict[str, Any], case: str, multimask: bool) -> None:
    prompt = prompt_cases(tiny["cfg"], (96, 128), seed=3)[case]
    emb_ours, emb_ref = tiny["emb"]
    # End to end: each model decodes its own embedding.
    assert_decode_parity(tiny["ours"], tiny["ref"], emb_ours, emb_ref, prompt, multimask)


def test_tiny_end_to_end_forward_matches(tiny: dict[str, Any]) -> None:
    cfg, image = tiny["cfg"], tiny["image"]
    prompts = prompt_cases(cfg, (96, 128), seed=4)
    batch = [
        {
            "image": image,
            "original_size": (300, 400),
            "point_coords": prompts["box_point"]["points"][0],
            "point_labels": prompts["box_point"]["points"][1],
            "boxes": prompts["box_point"]["boxes"],
        },
        {"image": image[:, :, :80], "original_size": (96, 80), "boxes": prompts["box"]["boxes"]},
    ]
    ours = tiny["ours"](batch, multimask_output=True)
    ref = tiny["ref"](batch, multimask_output=True)
    for rec, a, b in zip(batch, ours, ref, strict=True):
        n = rec["boxes"].shape[0]
        assert a["masks"].shape == b["masks"].shape == (n, 3, *rec["original_size"])
        assert max_diff(a["low_res_logits"], b["low_res_logits"]) < TOL
        assert max_diff(a["iou_predictions"], b["iou_predictions"]) < TOL
        # Thresholded masks may only flip where the logit sits near the threshold.
        up = tiny["ref"].postprocess_masks(
            b["low_res_logits"], rec["image"].shape[-2:], rec["original_size"]
        )
        flips = a["masks"] != b["masks"]
        assert flips.sum() <= int((up.abs() < 1e-2).sum())


def test_postprocess_matches_official(tiny: dict[str, Any]) -> None:
    logits = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    for input_size, original in [((96, 128), (300, 400)), ((128, 50), (640, 250))]:
        a = tiny["ours"].postprocess_masks(logits, input_size, original)
        b = tiny["ref"].postprocess_masks(logits, input_size, original)
        assert a.shape == (2, 3, *original)
        assert max_diff(a, b) < 1e-5


def test_bad_inputs_raise(tiny: dict[str, Any]) -> None:
    ours = tiny["ours"]
    with pytest.raises(ValueError, match="exceeds"):
        ours.preprocess(torch.zeros(3, 129, 64))
    with pytest.raises(ValueError, match="labels"):
        ours.prompt_encoder(points=(torch.zeros(1, 1, 2), torch.tensor([[2]])), boxes=None,
                            masks=None)  # fmt: skip
    with pytest.raises(ValueError, match="batch sizes"):
        ours.prompt_encoder(points=(torch.zeros(2, 1, 2), torch.ones(2, 1)),
                            boxes=torch.zeros(3, 4), masks=None)  # fmt: skip
    with pytest.raises(ValueError, match="mask inputs"):
        ours.prompt_encoder(points=None, boxes=None, masks=torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, C, 128, 128\)"):
        ours.image_encoder(torch.zeros(1, 3, 96, 128))


# ------------------------------------------------------------------------------- build_sam API
def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="vit_b.*vit_h.*vit_l.*vit_t"):
        build_sam("vit_x")


def test_random_init_is_seeded_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a = build_sam("vit_tiny_test", seed=7).state_dict()
    b = build_sam("vit_tiny_test", seed=7).state_dict()
    c = build_sam("vit_tiny_test", seed=8).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["mask_decoder.iou_token.weight"], c["mask_decoder.iou_token.weight"])


def test_wrong_architecture_checkpoint_names_keys(tiny: dict[str, Any], tmp_path: Path) -> None:
    # Another architecture: one more block and no absolute position embedding.
    other = official_from_config(dataclasses.replace(tiny["cfg"], encoder_depth=3, name="other"))
    other.image_encoder.pos_embed = None
    path = tmp_path / "other.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(ValueError) as info:
        build_sam("vit_tiny_test", checkpoint=path)
    msg = str(info.value)
    assert "vit_tiny_test" in msg
    assert "missing" in msg and "image_encoder.pos_embed" in msg
    assert "unexpected" in msg and "image_encoder.blocks.2.attn.qkv.weight" in msg


def test_local_fallback_without_hub(
    tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without composer.hub.load_checkpoint, build_sam reads the file itself, just as strictly.
    monkeypatch.setitem(sys.modules, "composer.hub", types.ModuleType("composer.hub"))
    ours = build_sam("vit_tiny_test", checkpoint=tiny["path"])
    ref = tiny["ref"].state_dict()
    assert all(torch.equal(ours.state_dict()[k], ref[k]) for k in ref)
    state = {k: v for k, v in ref.items() if k != "image_encoder.pos_embed"}
    state["image_encoder.cls_token"] = torch.zeros(1, 32)
    torch.save({"model": state}, tmp_path / "wrapped.pth")
    with pytest.raises(ValueError, match=r"missing.*pos_embed.*unexpected.*cls_token"):
        build_sam("vit_tiny_test", checkpoint=tmp_path / "wrapped.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_sam("vit_tiny_test", checkpoint=tmp_path / "nope.pth")


def test_misshaped_checkpoint_raises(tiny: dict[str, Any], tmp_path: Path) -> None:
    state = dict(tiny["ref"].state_dict())
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 7)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="mask_decoder.iou_token.weight"):
        build_sam("vit_tiny_test", checkpoint=path)


def test_missing_checkpoint_file_raises(tmp_path: Path) -> None:
    with pytest.raises((FileNotFoundError, ValueError), match="nope.pth"):
        build_sam("vit_tiny_test", checkpoint=tmp_path / "nope.pth")


@pytest.mark.parametrize("name", ["vit_l", "vit_h"])
def test_meta_build_keys_and_shapes_match_official(name: str) -> None:
    ours = build_sam(name, meta=True)
    assert all(p.is_meta for p in ours.parameters())
    with torch.device("meta"):
        ref = official_from_config(CONFIGS[name])
    a, b = ours.state_dict(), ref.state_dict()
    assert list(a) == list(b), sorted(set(a) ^ set(b))[:10]
    assert all(a[k].shape == b[k].shape for k in b)
    assert ours.image_encoder.img_size == 1024
    assert ours.prompt_encoder.get_dense_pe().shape == (1, 256, 64, 64)


def test_meta_refuses_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="meta"):
        build_sam("vit_tiny_test", tmp_path / "x.pth", meta=True)


def test_vit_t_shares_prompt_encoder_and_decoder_keys() -> None:
    pytest.importorskip("composer.sam.tiny_vit")
    vit_t = build_sam("vit_t", meta=True).state_dict()
    vit_b = build_sam("vit_b", meta=True).state_dict()
    head = [k for k in vit_b if not k.startswith("image_encoder.")]
    assert head == [k for k in vit_t if not k.startswith("image_encoder.")]
    assert all(vit_t[k].shape == vit_b[k].shape for k in head)
    assert build_sam_from_config(CONFIGS["vit_t"], meta=True).image_encoder.img_size == 1024


# ------------------------------------------------------------------------------ ViT-B real size
@pytest.fixture(scope="module")
def vit_b(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cfg = CONFIGS["vit_b"]
    ref = seeded_official(cfg, seed=11)
    path = tmp_path_factory.mktemp("vit_b") / "vit_b.pth"
    torch.save(ref.state_dict(), path)
    ours = build_sam("vit_b", checkpoint=path)
    path.unlink()  # 360 MB; nothing else needs it
    return {"cfg": cfg, "ref": ref, "ours": ours}


@torch.no_grad()
def test_vit_b_encoder_modules_match(vit_b: dict[str, Any]) -> None:
    ours, ref = vit_b["ours"].image_encoder, vit_b["ref"].image_encoder
    g = torch.Generator().manual_seed(12)
    image = torch.rand(3, 768, 1024, generator=g) * 255
    x_ours, x_ref = vit_b["ours"].preprocess(image)[None], vit_b["ref"].preprocess(image)[None]
    assert max_diff(x_ours, x_ref) < 1e-5

    tokens_ours = ours.patch_embed(x_ours) + ours.pos_embed
    tokens_ref = ref.patch_embed(x_ref) + ref.pos_embed
    assert tokens_ours.shape == (1, 64, 64, 768)
    assert max_diff(tokens_ours, tokens_ref) < TOL

    # Windowed block 0 on a 20x20 grid: 14-wide windows with padding, as on the 64x64 grid.
    grid = torch.randn(1, 20, 20, 768, generator=g)
    assert ours.blocks[0].window_size == 14
    assert max_diff(ours.blocks[0](grid), ref.blocks[0](grid)) < TOL
    # Global block 2 on a 16x16 grid: relative tables resampled from 127 to 31 entries.
    grid = torch.randn(1, 16, 16, 768, generator=g)
    assert ours.blocks[2].window_size == 0
    assert max_diff(ours.blocks[2](grid), ref.blocks[2](grid)) < TOL
    feats = torch.randn(1, 768, 64, 64, generator=g)
    assert max_diff(ours.neck(feats), ref.neck(feats)) < TOL


@pytest.mark.skipif(
    os.environ.get("SAM_COMPOSER_FULL_PARITY") != "1",
    reason="full ViT-B encoder pass takes ~1 min per model on CPU; SAM_COMPOSER_FULL_PARITY=1",
)
@torch.no_grad()
def test_vit_b_full_encoder_matches(vit_b: dict[str, Any]) -> None:
    image = torch.rand(3, 683, 1024, generator=torch.Generator().manual_seed(13)) * 255
    a = vit_b["ours"].image_encoder(vit_b["ours"].preprocess(image)[None])
    b = vit_b["ref"].image_encoder(vit_b["ref"].preprocess(image)[None])
    assert a.shape == (1, 256, 64, 64)
    assert max_diff(a, b) < TOL


def first_prompt(prompt: Prompt) -> Prompt:
    """The first of a batch of prompts (the real-size decoder costs ~0.3 s per prompt)."""
    points = prompt["points"]
    return {
        "points": None if points is None else (points[0][:1], points[1][:1]),
        "boxes": None if prompt["boxes"] is None else prompt["boxes"][:1],
        "masks": None if prompt["masks"] is None else prompt["masks"][:1],
    }


def test_vit_b_prompts_match(vit_b: dict[str, Any]) -> None:
    # A stand-in embedding with the statistics of the neck's LayerNorm output.
    emb = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(14))
    cases = prompt_cases(vit_b["cfg"], (768, 1024), seed=15)
    # Points, a box, a mask input and both output modes at real size (all combinations run on
    # the tiny model).
    runs = [("multi_point", True), ("box_point", False), ("mask_point", True)]
    for name, multimask in runs:
        prompt = first_prompt(cases[name])
        out = assert_decode_parity(vit_b["ours"], vit_b["ref"], emb, emb, prompt, multimask)
        assert out["masks"].shape == (1, 3 if multimask else 1, 256, 256)


@pytest.mark.parametrize("shared", [False, True])
def test_attention_fast_paths_equal_the_plain_order(shared: bool) -> None:
    from composer.sam.transformer import Attention

    torch.manual_seed(0)
    attn = Attention(256, 8, downsample_rate=2)
    b, t, n = 5, 7, 300
    tokens = torch.randn(b, t, 256)
    image = torch.randn(1 if shared else b, n, 256)
    full = image.expand(b, -1, -1)
    ref = attn(tokens, full, full)
    assert torch.allclose(attn.tokens_to_image(tokens, image, image), ref, atol=1e-5)
    ref2 = attn(full, tokens, tokens)
    assert torch.allclose(attn.image_to_tokens(image, tokens, tokens), ref2, atol=1e-5)
    # the residual is added inside the last matmul (shared or per-prompt residual)
    res = torch.randn(image.shape[0], n, 256)
    assert torch.allclose(attn.image_to_tokens(image, tokens, tokens, res), res + ref2, atol=1e-5)
    # Many tokens: falls back to the plain order.
    many = torch.randn(b, 20, 256)
    assert torch.allclose(
        attn.tokens_to_image(many, image, image), attn(many, full, full), atol=1e-5
    )
    assert torch.allclose(
        attn.image_to_tokens(image, many, many, res), res + attn(full, many, many), atol=1e-5
    )


def test_decoder_shares_the_image_tokens_without_changing_outputs() -> None:
    from composer.sam.build import build_sam

    model = build_sam("vit_tiny_test")
    pe = model.prompt_encoder
    g = pe.image_embedding_size
    emb = torch.randn(1, pe.embed_dim, *g)
    pts = torch.rand(6, 1, 2) * model.image_encoder.img_size
    sparse, dense = pe(points=(pts, torch.ones(6, 1, dtype=torch.int64)), boxes=None, masks=None)
    assert dense.stride(0) == 0  # the no-mask embedding is a broadcast view
    with torch.no_grad():
        fast = model.mask_decoder(emb, pe.get_dense_pe(), sparse, dense, True)
        slow = model.mask_decoder(emb, pe.get_dense_pe(), sparse, dense.contiguous(), True)
    for a, b in zip(fast, slow, strict=True):
        assert torch.allclose(a, b, atol=1e-4)


def test_global_attention_in_query_blocks_equals_one_block(monkeypatch) -> None:
    import composer.sam.image_encoder as ie

    torch.manual_seed(0)
    attn = ie.Attention(64, num_heads=4, use_rel_pos=True, input_size=(40, 36))
    with torch.no_grad():
        attn.rel_pos_h.normal_()
        attn.rel_pos_w.normal_()
    x = torch.randn(1, 40, 36, 64)
    with torch.no_grad():
        blocked = attn(x)  # 1440 tokens > QUERY_BLOCK_TOKENS: 28-row blocks
        monkeypatch.setattr(ie, "QUERY_BLOCK_TOKENS", 10**9)
        whole = attn(x)
    assert torch.allclose(blocked, whole, atol=1e-5)


def test_decoder_prompt_chunks_equal_one_pass(monkeypatch) -> None:
    import composer.sam.mask_decoder as md
    from composer.sam.build import build_sam

    model = build_sam("vit_tiny_test")
    pe = model.prompt_encoder
    emb = torch.randn(1, pe.embed_dim, *pe.image_embedding_size)
    n = md.PROMPT_CHUNK * 2 + 3
    pts = torch.rand(n, 2, 2) * model.image_encoder.img_size
    masks = torch.randn(n, 1, *pe.mask_input_size)
    sparse, dense = pe(points=(pts, torch.ones(n, 2, dtype=torch.int64)), boxes=None, masks=masks)
    with torch.no_grad():
        chunked = model.mask_decoder(emb, pe.get_dense_pe(), sparse, dense, True)
        monkeypatch.setattr(md, "PROMPT_CHUNK", 10**6)
        whole = model.mask_decoder(emb, pe.get_dense_pe(), sparse, dense, True)
    for a, b in zip(chunked, whole, strict=True):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("per_chunk", [3, 1])
def test_decoder_chunks_share_image_projections(monkeypatch, per_chunk: int) -> None:
    """Prompts without mask input share the image tokens: chunks sized by CHUNK_BYTES reuse
    one cached set of projections and give the outputs of one unchunked pass (chunks of one
    prompt too: after the first block the image tokens are that prompt's, not shared)."""
    import composer.sam.mask_decoder as md
    from composer.sam.build import build_sam

    model = build_sam("vit_tiny_test")
    pe = model.prompt_encoder
    emb = torch.randn(1, pe.embed_dim, *pe.image_embedding_size)
    n = 11
    pts = torch.rand(n, 2, 2) * model.image_encoder.img_size
    sparse, dense = pe(points=(pts, torch.ones(n, 2, dtype=torch.int64)), boxes=None, masks=None)
    assert dense.stride(0) == 0
    per_prompt = 4 * emb[0].numel()
    calls = []
    real = model.mask_decoder._decode_chunk

    def spy(src, image_pe, sparse_chunk, min_iou, outputs, shared, hires=None):
        calls.append((src.shape[0], sparse_chunk.shape[0], shared))
        assert hires is None  # SAM has no hi-res path
        return real(src, image_pe, sparse_chunk, min_iou, outputs, shared, hires)

    with torch.no_grad():
        monkeypatch.setattr(md, "CHUNK_BYTES", per_chunk * per_prompt)
        monkeypatch.setattr(model.mask_decoder, "_decode_chunk", spy)
        chunked = model.mask_decoder(emb, pe.get_dense_pe(), sparse, dense, True)
        assert [c[1] for c in calls] == ([3, 3, 3, 2] if per_chunk == 3 else [1] * n)
        assert all(c[0] == 1 for c in calls)  # image tokens passed once, not per prompt
        shared = calls[0][2]
        assert shared and all(c[2] is shared for c in calls)
        monkeypatch.setattr(md, "CHUNK_BYTES", 10**12)
        whole = model.mask_decoder(emb, pe.get_dense_pe(), sparse, dense, True)
        # the plain (official) order: every prompt gets its own copy of the image tokens
        per_prompt_dense = dense.contiguous()
        plain = model.mask_decoder(
            emb.expand(n, -1, -1, -1), pe.get_dense_pe(), sparse, per_prompt_dense, True
        )
    for a, b, c in zip(chunked, whole, plain, strict=True):
        assert a.shape == b.shape == c.shape
        assert torch.allclose(a, b, atol=1e-4) and torch.allclose(a, c, atol=1e-4)


@pytest.mark.parametrize("multimask", [True, False])
def test_decoder_skips_only_masks_below_min_iou(multimask: bool) -> None:
    import composer.sam.mask_decoder as md
    from composer.sam.build import build_sam

    model = build_sam("vit_tiny_test")
    pe = model.prompt_encoder
    emb = torch.randn(1, pe.embed_dim, *pe.image_embedding_size)
    n = md.PROMPT_CHUNK + 5  # two chunks
    pts = torch.rand(n, 1, 2) * model.image_encoder.img_size
    sparse, dense = pe(points=(pts, torch.ones(n, 1, dtype=torch.int64)), boxes=None, masks=None)
    args = (emb, pe.get_dense_pe(), sparse, dense, multimask)
    with torch.no_grad():
        masks, iou = model.mask_decoder(*args)
        thr = float(iou.max(dim=1).values.median())  # about half the prompts survive
        gated, gated_iou = model.mask_decoder(*args, min_iou=thr)
    keep = (iou > thr).any(dim=1)
    assert 0 < int(keep.sum()) < n
    assert torch.allclose(gated_iou, iou, atol=1e-5)
    assert torch.allclose(gated[keep], masks[keep], atol=1e-4)
    assert bool((gated[~keep] == md.SKIPPED_LOGIT).all())
